//! Operator configuration: the catalog (regions, instance types, images), quotas and rate limits,
//! read from TOML. Every section has defaults, so an empty file (or none) gives a working cloud:
//! Lambda's region codes, GPU types modelled on Lambda's real ones, and CPU-only types that fit a
//! small development machine.

use serde::{Deserialize, Serialize};

use nimbus_core::catalog::{InstanceType, Machine, Region, LAMBDA_REGION_CODES};
use nimbus_core::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_regions")]
    pub regions: Vec<Region>,
    #[serde(default = "default_instance_types")]
    pub instance_types: Vec<InstanceType>,
    #[serde(default = "default_images")]
    pub images: Vec<ImageConfig>,
    #[serde(default)]
    pub quotas: Quotas,
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub agents: AgentTimings,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub pricing: Pricing,
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhookSettings,
    #[serde(default)]
    pub port_forwards: PortForwards,
    /// Instant-deploy presets of the Voltage Park dialect; empty: one per instance type with
    /// the default image.
    #[serde(default)]
    pub presets: Vec<PresetConfig>,
    #[serde(default)]
    pub clusters: ClustersConfig,
    #[serde(default)]
    pub http: HttpServerConfig,
    /// Public addresses per region (`[[public_addresses]]`): every instance launched there gets
    /// one, routed to its host (the host holds it and NATs it 1:1 to the instance's private
    /// address). Regions without a pool give instances their private address as `ip`, and
    /// reach them from outside through port forwards of the host's address.
    #[serde(default)]
    pub public_addresses: Vec<PublicPool>,
}

/// One region's pool of public addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicPool {
    pub region: String,
    /// IPv4 prefixes (`A.B.C.D/N`, N from 16 to 32) whose every address may be handed out.
    pub prefixes: Vec<String>,
}

impl Config {
    /// Every address of `region`'s pool, in order; empty without a pool.
    pub fn public_addresses(&self, region: &str) -> Vec<std::net::Ipv4Addr> {
        let mut out = Vec::new();
        for p in self.public_addresses.iter().filter(|p| p.region == region) {
            for pre in &p.prefixes {
                if let Some(s) = nimbus_core::net::Subnet::parse_any(pre) {
                    let first = u32::from(s.addr);
                    let n = 1u64 << (32 - u32::from(s.len));
                    out.extend((0..n).filter_map(|i| u32::try_from(i).ok()).map(|i| std::net::Ipv4Addr::from(first + i)));
                }
            }
        }
        out
    }
}

/// How the HTTP listeners treat slow and numerous clients (`[http]`). A connection that has not
/// sent a full request head within `header_read_timeout_ms`, a body not read within
/// `body_read_timeout_ms`, or a keep-alive connection with no request in flight and no bytes
/// moving for `idle_timeout_ms`, is closed. Connections over `max_connections`, or over
/// `max_connections_per_ip` from one address, are answered 503 and closed at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpServerConfig {
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// `Strict-Transport-Security: max-age=...` on HTTPS answers; 0 sends none.
    pub hsts_max_age_s: u64,
    /// How often the certificate files are checked for a renewal (SIGHUP reloads at once).
    pub tls_reload_poll_ms: u64,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 8192,
            max_connections_per_ip: 512,
            hsts_max_age_s: 31_536_000,
            tls_reload_poll_ms: 2_000,
        }
    }
}

/// The clusters API (CockroachDB-Cloud-shaped).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClustersConfig {
    /// The name of this cloud as a cluster `provider`.
    pub provider: String,
    /// Other provider names accepted for it (tools written for CockroachDB Cloud send these).
    pub provider_aliases: Vec<String>,
    /// Machine type of serverless clusters' nodes.
    pub serverless_machine_type: String,
    pub max_nodes: i64,
    /// A node unhealthy this long on an up host is restarted.
    pub revive_after_ms: u64,
}

impl Default for ClustersConfig {
    fn default() -> Self {
        ClustersConfig {
            provider: "NIMBUS".into(),
            provider_aliases: vec!["GCP".into(), "AWS".into()],
            serverless_machine_type: "cpu_1x_small".into(),
            max_nodes: 256,
            revive_after_ms: 3_000,
        }
    }
}

/// Host ports that instances' SSH ports are forwarded from (the Voltage Park dialect's
/// `port_forwards`), the same range on every host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortForwards {
    pub first_port: u16,
    pub count: u16,
}

impl Default for PortForwards {
    fn default() -> Self {
        PortForwards { first_port: 20_000, count: 256 }
    }
}

impl PortForwards {
    pub fn ports(&self) -> impl Iterator<Item = i64> {
        let first = i64::from(self.first_port);
        first..(first + i64::from(self.count)).min(65_536)
    }
}

/// One instant-deploy bundle: an instance type (GPUs, vCPUs, RAM, disk) and an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetConfig {
    pub instance_type: String,
    /// Image family; default: the first configured image.
    #[serde(default)]
    pub image_family: Option<String>,
}

/// Prices that are not an instance type's hourly price, in micro-dollars.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pricing {
    /// Per GiB-hour of disk that is kept without compute (stopped instances, volumes):
    /// 137 µ$ ≈ $0.10 per GiB-month.
    pub storage_gib_hour_micros: i64,
    /// Component prices shown by the Voltage Park dialect (hostnode pricing): per vCPU-hour and
    /// per GiB-of-RAM-hour. A GPU's hourly price is that of the cheapest one-GPU instance type
    /// of its model.
    pub vcpu_hour_micros: i64,
    pub ram_gib_hour_micros: i64,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing { storage_gib_hour_micros: 137, vcpu_hour_micros: 30, ram_gib_hour_micros: 1 }
    }
}

/// Instance metrics kept by the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Samples older than this are deleted.
    pub retention_hours: i64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { retention_hours: 24 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    pub name: String,
    pub family: String,
    pub description: String,
    pub version: String,
    #[serde(default = "default_arch")]
    pub architecture: String,
}

fn default_arch() -> String {
    "x86_64".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    pub instances_per_org: i64,
    pub ssh_keys_per_org: i64,
    pub file_systems_per_org: i64,
    pub firewall_rulesets_per_org: i64,
    /// Most instances one launch request may ask for.
    pub max_launch_quantity: i64,
    pub volumes_per_org: i64,
    /// Sum of the sizes of an org's volumes.
    pub volume_gib_per_org: i64,
    /// Largest single volume.
    pub max_volume_gib: i64,
    pub snapshots_per_org: i64,
    /// Live (unrevoked, unexpired) API keys per org, service accounts' keys included: without
    /// a cap a tenant could mint keys without end, and with them per-key state (rate-limit
    /// buckets, auth cache entries). Checked in the creating transaction.
    pub api_keys_per_org: i64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            instances_per_org: 10_000,
            ssh_keys_per_org: 1024,
            file_systems_per_org: 100,
            firewall_rulesets_per_org: 100,
            max_launch_quantity: 50,
            volumes_per_org: 100,
            volume_gib_per_org: 10_240,
            max_volume_gib: 4_096,
            snapshots_per_org: 100,
            api_keys_per_org: 100,
        }
    }
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// Per-API-key limits by route class (defaults are Lambda's documented ones), the budget of each
/// org across all its keys, and the limit on failed authentications per client address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub enabled: bool,
    /// Lambda dialect, per API key.
    pub default: Rate,
    /// Lambda launches, per API key.
    pub launch: Rate,
    /// Native API, per API key, by the org's plan (seed 001: requests per hour and burst).
    pub plans: std::collections::BTreeMap<String, PlanRate>,
    /// Every request also draws from its org's bucket of the same route class, whose rate and
    /// burst are the per-key ones times this, so that N keys of one org together get at most
    /// this many keys' worth. 0 turns org budgets off.
    pub org_multiplier: f64,
    pub auth_failures: AuthFailureLimit,
}

/// Failed authentications (answers 401 to a request that carried credentials) per client
/// address: `burst` at once, then `per_minute`; beyond that the address's requests with
/// credentials are answered 429 before any key is looked up. IPv6 addresses count per /64.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFailureLimit {
    /// 0 turns the limit off.
    pub per_minute: u32,
    pub burst: u32,
    /// Most addresses tracked at once (memory bound); beyond it, those closest to a clean
    /// record are forgotten first.
    pub max_tracked_ips: usize,
}

impl Default for AuthFailureLimit {
    fn default() -> Self {
        AuthFailureLimit { per_minute: 20, burst: 20, max_tracked_ips: 10_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanRate {
    pub per_hour: u32,
    pub burst: u32,
}

fn default_plans() -> std::collections::BTreeMap<String, PlanRate> {
    [("free", 1_000, 50), ("professional", 10_000, 200), ("enterprise", 100_000, 1_000)]
        .into_iter()
        .map(|(n, per_hour, burst)| (n.to_owned(), PlanRate { per_hour, burst }))
        .collect()
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            default: Rate { per_second: 1.0, burst: 20 },
            launch: Rate { per_second: 0.1, burst: 1 },
            plans: default_plans(),
            org_multiplier: 4.0,
            auth_failures: AuthFailureLimit::default(),
        }
    }
}

impl RateLimits {
    /// Limits for `nimbus dev` and tests: high enough never to get in a developer's way.
    pub fn generous() -> Self {
        RateLimits {
            enabled: true,
            default: Rate { per_second: 100_000.0, burst: 100_000 },
            launch: Rate { per_second: 10_000.0, burst: 10_000 },
            plans: default_plans(),
            org_multiplier: 4.0,
            // Every test client is 127.0.0.1, and suites probe with bad keys on purpose.
            auth_failures: AuthFailureLimit { per_minute: 100_000, burst: 100_000, ..AuthFailureLimit::default() },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentTimings {
    /// Agents report at least this often.
    pub heartbeat_interval_ms: u64,
    /// A host not heard from for this long is marked down and its instances unhealthy.
    pub host_timeout_ms: u64,
}

impl Default for AgentTimings {
    fn default() -> Self {
        AgentTimings { heartbeat_interval_ms: 5_000, host_timeout_ms: 30_000 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            regions: default_regions(),
            instance_types: default_instance_types(),
            images: default_images(),
            quotas: Quotas::default(),
            rate_limits: RateLimits::default(),
            agents: AgentTimings::default(),
            metrics: MetricsConfig::default(),
            pricing: Pricing::default(),
            webhooks: Default::default(),
            port_forwards: PortForwards::default(),
            presets: Vec::new(),
            clusters: ClustersConfig::default(),
            http: HttpServerConfig::default(),
            public_addresses: Vec::new(),
        }
    }
}

impl Config {
    pub fn from_toml(s: &str) -> Result<Config, Error> {
        let raw: toml::Table = toml::from_str(s).map_err(|e| Error::invalid("config", e.to_string()))?;
        check_machines(&raw)?;
        let c: Config = toml::from_str(s).map_err(|e| Error::invalid("config", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let h = &self.http;
        if h.header_read_timeout_ms == 0 || h.body_read_timeout_ms == 0 || h.idle_timeout_ms == 0 || h.tls_reload_poll_ms == 0 {
            return Err(Error::invalid("config.http", "timeouts must be positive"));
        }
        if h.max_connections == 0 || h.max_connections_per_ip == 0 {
            return Err(Error::invalid("config.http", "connection caps must be positive"));
        }
        for r in &self.regions {
            if !LAMBDA_REGION_CODES.contains(&r.name.as_str()) {
                return Err(Error::invalid(
                    "config.regions",
                    format!("region {:?} is not a Lambda region code; real Lambda clients reject other names", r.name),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.instance_types {
            if !names.insert(&t.name) {
                return Err(Error::invalid("config.instance_types", format!("{} is listed twice", t.name)));
            }
            if t.vcpus <= 0 || t.memory_gib <= 0 || t.storage_gib <= 0 || t.gpus < 0 || t.price_cents_per_hour < 0 {
                return Err(Error::invalid("config.instance_types", format!("{} has a non-positive size", t.name)));
            }
            if (t.gpus > 0) == t.gpu_model.is_empty() {
                return Err(Error::invalid("config.instance_types", format!("{}: gpu_model is required exactly when gpus > 0", t.name)));
            }
            if t.gpu_memory_gib < 0 || (t.gpus == 0 && t.gpu_memory_gib > 0) {
                return Err(Error::invalid(
                    "config.instance_types",
                    format!("{}: gpu_memory_gib needs gpus > 0 and is not negative", t.name),
                ));
            }
            if !t.mig_profile.is_empty() && (t.gpus == 0 || !nimbus_core::catalog::valid_mig_profile(&t.mig_profile)) {
                return Err(Error::invalid(
                    "config.instance_types",
                    format!("{}: mig_profile {:?} needs gpus > 0 and must look like `1g.18gb`", t.name, t.mig_profile),
                ));
            }
            // A VM gets whole GPUs passed through by PCI address; a MIG slice has none of its own.
            if t.machine == Machine::Vm && !t.mig_profile.is_empty() {
                return Err(Error::invalid(
                    "config.instance_types",
                    format!("{}: machine = \"vm\" cannot have a mig_profile (MIG devices are not passed to VMs)", t.name),
                ));
            }
        }
        if self.images.is_empty() {
            return Err(Error::invalid("config.images", "at least one image is required"));
        }
        for p in &self.presets {
            if self.instance_type(&p.instance_type).is_none() {
                return Err(Error::invalid("config.presets", format!("unknown instance type {:?}", p.instance_type)));
            }
            if let Some(f) = &p.image_family {
                if !self.images.iter().any(|i| &i.family == f) {
                    return Err(Error::invalid("config.presets", format!("unknown image family {f:?}")));
                }
            }
        }
        let m = self.rate_limits.org_multiplier;
        if !m.is_finite() || m < 0.0 {
            return Err(Error::invalid("config.rate_limits.org_multiplier", "must be a finite number ≥ 0 (0 turns org budgets off)"));
        }
        if self.quotas.api_keys_per_org < 1 {
            return Err(Error::invalid("config.quotas.api_keys_per_org", "must be at least 1"));
        }
        let mut seen: Vec<nimbus_core::net::Subnet> = Vec::new();
        for p in &self.public_addresses {
            if self.region(&p.region).is_none() {
                return Err(Error::invalid("config.public_addresses", format!("unknown region {:?}", p.region)));
            }
            for pre in &p.prefixes {
                let s = nimbus_core::net::Subnet::parse_any(pre)
                    .filter(|s| s.len >= 16)
                    .ok_or_else(|| Error::invalid("config.public_addresses", format!("{pre:?} is not an IPv4 prefix A.B.C.D/16..32")))?;
                if seen.iter().any(|o| o.overlaps(&s)) {
                    return Err(Error::invalid("config.public_addresses", format!("{pre} overlaps another prefix")));
                }
                if s.overlaps(&nimbus_core::net::SIMULATED) {
                    let sim = nimbus_core::net::SIMULATED;
                    return Err(Error::invalid("config.public_addresses", format!("{pre} overlaps {sim}, the sim driver's addresses")));
                }
                seen.push(s);
            }
        }
        if self.port_forwards.first_port < 1024 || u32::from(self.port_forwards.first_port) + u32::from(self.port_forwards.count) > 65_536 {
            return Err(Error::invalid("config.port_forwards", "the range must lie within 1024..65535"));
        }
        self.webhooks.validate()
    }

    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types.iter().find(|t| t.name == name)
    }

    /// What instances of the type named `instance_type` run as. A name the catalog no longer has
    /// (and whole-host instances, which name none) is a container, as every instance was
    /// before VMs.
    pub fn machine_of(&self, instance_type: &str) -> Machine {
        self.instance_type(instance_type).map_or(Machine::Container, |t| t.machine)
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }
}

/// Every `[[instance_types]]` `machine` is one Nimbus knows, checked before the typed parse so
/// that the error names the type (serde's names only the value and a line).
fn check_machines(raw: &toml::Table) -> Result<(), Error> {
    let Some(types) = raw.get("instance_types").and_then(toml::Value::as_array) else { return Ok(()) };
    for t in types {
        let Some(m) = t.get("machine") else { continue };
        if m.as_str().and_then(Machine::parse).is_none() {
            let name = t.get("name").and_then(toml::Value::as_str).unwrap_or("(unnamed)");
            let known: Vec<&str> = Machine::ALL.iter().map(|m| m.as_str()).collect();
            return Err(Error::invalid("config.instance_types", format!("{name}: machine {m} is not one of {}", known.join(", "))));
        }
    }
    Ok(())
}

fn default_regions() -> Vec<Region> {
    let d = |n: &str, desc: &str| Region { name: n.to_owned(), description: desc.to_owned() };
    vec![
        d("us-east-1", "Virginia, USA"),
        d("us-east-2", "Washington DC, USA"),
        d("us-west-1", "California, USA"),
        d("us-west-2", "Arizona, USA"),
        d("us-west-3", "Utah, USA"),
        d("us-south-1", "Texas, USA"),
        d("us-midwest-1", "Illinois, USA"),
        d("europe-central-1", "Germany"),
        d("asia-northeast-1", "Tokyo, Japan"),
        d("asia-south-1", "India"),
        d("me-west-1", "Israel"),
        d("australia-east-1", "Australia"),
    ]
}

/// `shape` is `(vcpus, memory GiB, storage GiB, cents per hour)`.
fn gpu_type(name: &str, count: i64, model_desc: &str, gpu_model: &str, shape: (i64, i64, i64, i64)) -> InstanceType {
    let (vcpus, mem, disk, cents) = shape;
    InstanceType {
        name: name.to_owned(),
        description: format!("{count}x {model_desc}"),
        gpu_description: model_desc.to_owned(),
        price_cents_per_hour: cents,
        vcpus,
        memory_gib: mem,
        storage_gib: disk,
        gpus: count,
        gpu_model: gpu_model.to_owned(),
        gpu_memory_gib: 0,
        mig_profile: String::new(),
        privileged: false,
        machine: Machine::Container,
    }
}

fn with_gpu_memory(t: InstanceType, gib: i64) -> InstanceType {
    InstanceType { gpu_memory_gib: gib, ..t }
}

/// A MIG type: `gpu_memory_gib` is the parent GPU's floor, `profile` the slice's.
fn mig_type(t: InstanceType, gib: i64, profile: &str) -> InstanceType {
    InstanceType { gpu_memory_gib: gib, mig_profile: profile.to_owned(), ..t }
}

/// The same shape and price as `t`, run as a virtual machine.
fn as_vm(t: InstanceType, name: &str, description: &str) -> InstanceType {
    InstanceType { name: name.to_owned(), description: description.to_owned(), machine: Machine::Vm, ..t }
}

fn cpu_type(name: &str, desc: &str, vcpus: i64, mem: i64, disk: i64, cents: i64) -> InstanceType {
    InstanceType {
        name: name.to_owned(),
        description: desc.to_owned(),
        gpu_description: "None".to_owned(),
        price_cents_per_hour: cents,
        vcpus,
        memory_gib: mem,
        storage_gib: disk,
        gpus: 0,
        gpu_model: String::new(),
        gpu_memory_gib: 0,
        mig_profile: String::new(),
        privileged: false,
        machine: Machine::Container,
    }
}

/// Shapes and prices modelled on Lambda's public on-demand types; the `gpu_model` patterns match
/// the names NVML reports for those GPUs.
fn default_instance_types() -> Vec<InstanceType> {
    vec![
        gpu_type("gpu_1x_a10", 1, "A10 (24 GB PCIe)", "A10", (30, 200, 1400, 75)),
        gpu_type("gpu_1x_rtx6000", 1, "RTX 6000 (24 GB)", "RTX 6000", (14, 46, 512, 50)),
        gpu_type("gpu_1x_a6000", 1, "RTX A6000 (48 GB)", "RTX A6000", (14, 100, 512, 80)),
        gpu_type("gpu_2x_a6000", 2, "RTX A6000 (48 GB)", "RTX A6000", (28, 200, 1024, 160)),
        gpu_type("gpu_4x_a6000", 4, "RTX A6000 (48 GB)", "RTX A6000", (56, 400, 1024, 320)),
        gpu_type("gpu_1x_a100", 1, "A100 (40 GB PCIe)", "A100 PCIE", (30, 200, 512, 129)),
        gpu_type("gpu_1x_a100_sxm4", 1, "A100 (40 GB SXM4)", "A100 SXM4", (30, 200, 512, 129)),
        gpu_type("gpu_2x_a100", 2, "A100 (40 GB PCIe)", "A100 PCIE", (60, 400, 1024, 258)),
        gpu_type("gpu_4x_a100", 4, "A100 (40 GB PCIe)", "A100 PCIE", (120, 800, 1024, 516)),
        gpu_type("gpu_8x_a100", 8, "A100 (40 GB SXM4)", "A100 SXM4", (124, 1800, 5939, 1032)),
        gpu_type("gpu_8x_a100_80gb_sxm4", 8, "A100 (80 GB SXM4)", "A100 SXM4 80GB", (240, 1800, 19_858, 1432)),
        gpu_type("gpu_1x_h100_pcie", 1, "H100 (80 GB PCIe)", "H100 PCIe", (26, 200, 1024, 249)),
        gpu_type("gpu_1x_h100_sxm5", 1, "H100 (80 GB SXM5)", "H100 HBM3", (26, 225, 2816, 329)),
        gpu_type("gpu_2x_h100_sxm5", 2, "H100 (80 GB SXM5)", "H100 HBM3", (52, 450, 5632, 658)),
        gpu_type("gpu_4x_h100_sxm5", 4, "H100 (80 GB SXM5)", "H100 HBM3", (104, 900, 11_264, 1316)),
        gpu_type("gpu_8x_h100_sxm5", 8, "H100 (80 GB SXM5)", "H100 HBM3", (208, 1800, 22_528, 2392)),
        // The VM twin of gpu_1x_h100_sxm5, for hosts whose agent runs VMs (docs/gpu.md).
        as_vm(
            gpu_type("gpu_1x_h100_sxm5", 1, "H100 (80 GB SXM5)", "H100 HBM3", (26, 225, 2816, 329)),
            "gpu_1x_h100_sxm5_vm",
            "1x H100 (80 GB SXM5) VM",
        ),
        gpu_type("gpu_1x_gh200", 1, "GH200 (96 GB)", "GH200", (64, 432, 4096, 149)),
        gpu_type("gpu_8x_v100", 8, "Tesla V100 (16 GB)", "V100", (92, 448, 5996, 440)),
        // Current GPUs. Their shapes follow Lambda's per-GPU share of an 8-GPU host, and the
        // prices are Nimbus's operator defaults, not Lambda's list prices (which this build
        // could not check): an operator sets their own in the config. NVML names them
        // `NVIDIA H200` / `NVIDIA H200 NVL` (143,771 MiB) and `NVIDIA B200` (183,359 MiB); the
        // memory floor keeps a future smaller part of the same name from matching.
        with_gpu_memory(gpu_type("gpu_1x_h200", 1, "H200 (141 GB SXM5)", "H200", (26, 225, 2816, 379)), 130),
        with_gpu_memory(gpu_type("gpu_8x_h200", 8, "H200 (141 GB SXM5)", "H200", (208, 1800, 22_528, 3032)), 130),
        with_gpu_memory(gpu_type("gpu_1x_b200", 1, "B200 (180 GB SXM6)", "B200", (26, 362, 2816, 499)), 170),
        with_gpu_memory(gpu_type("gpu_8x_b200", 8, "B200 (180 GB SXM6)", "B200", (208, 2900, 22_528, 3992)), 170),
        // MIG slices of an H200, on MIG devices an operator created (docs/gpu.md, "MIG
        // devices"); about a seventh (1g) and three sevenths (3g) of a 1x H200's shape and price.
        mig_type(gpu_type("gpu_1x_h200_1g", 1, "H200 MIG 1g.18gb (18 GB)", "H200", (3, 32, 400, 59)), 130, "1g.18gb"),
        mig_type(gpu_type("gpu_1x_h200_3g", 1, "H200 MIG 3g.71gb (71 GB)", "H200", (11, 96, 1200, 169)), 130, "3g.71gb"),
        cpu_type("cpu_1x_small", "1 vCPU, 1 GiB RAM (CPU only)", 1, 1, 10, 2),
        as_vm(cpu_type("cpu_1x_small", "", 1, 1, 10, 2), "cpu_1x_small_vm", "1 vCPU, 1 GiB RAM (CPU only, VM)"),
        cpu_type("cpu_2x_medium", "2 vCPUs, 4 GiB RAM (CPU only)", 2, 4, 40, 8),
        cpu_type("cpu_4x_large", "4 vCPUs, 16 GiB RAM (CPU only)", 4, 16, 100, 20),
    ]
}

fn default_images() -> Vec<ImageConfig> {
    vec![ImageConfig {
        name: "debian-12".to_owned(),
        family: "debian-12".to_owned(),
        description: "Debian 12 (bookworm) with OpenSSH, sudo, python3, curl".to_owned(),
        version: "12".to_owned(),
        architecture: default_arch(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sim driver's addresses tell a client an instance is simulated only while no real
    /// pool hands them out.
    #[test]
    fn a_public_pool_may_not_overlap_the_sim_addresses() {
        let mut c = Config::default();
        let region = c.regions[0].name.clone();
        c.public_addresses = vec![PublicPool { region: region.clone(), prefixes: vec!["198.19.128.0/24".into()] }];
        let e = c.validate().expect_err("a pool inside 198.19.0.0/16");
        assert!(e.to_string().contains("sim driver"), "{e}");
        c.public_addresses = vec![PublicPool { region, prefixes: vec!["198.18.0.0/24".into()] }];
        c.validate().expect("198.18.0.0/24 is not the sim's");
    }

    #[test]
    fn defaults_are_valid_and_lambda_shaped() {
        let c = Config::default();
        c.validate().expect("default config validates");
        let a10 = c.instance_type("gpu_1x_a10").expect("a10");
        assert_eq!(a10.description, "1x A10 (24 GB PCIe)");
        // dstack's gpuhunt parses descriptions with this pattern.
        for t in c.instance_types.iter().filter(|t| t.gpus > 0) {
            let (count, rest) = t.description.split_once("x ").expect("NNx prefix");
            assert_eq!(count.len(), 1, "{}", t.name);
            assert!(rest.contains(" GB"), "{}", t.name);
        }
    }

    /// The current GPUs' types match what NVML reports for those GPUs, by name and memory,
    /// and nothing else.
    #[test]
    fn current_gpu_types_match_nvml_names_and_memory() {
        let c = Config::default();
        let matching = |model: &str, mib: i64| -> Vec<String> {
            c.instance_types.iter().filter(|t| t.gpus > 0 && t.gpu_want().accepts(model, mib)).map(|t| t.name.clone()).collect()
        };
        let h200 = ["gpu_1x_h200", "gpu_8x_h200", "gpu_1x_h200_1g", "gpu_1x_h200_3g"];
        assert_eq!(matching("NVIDIA H200", 143_771), h200);
        assert_eq!(matching("NVIDIA H200 NVL", 143_771), h200);
        let migs: Vec<&str> = c.instance_types.iter().filter(|t| !t.mig_profile.is_empty()).map(|t| t.mig_profile.as_str()).collect();
        assert_eq!(migs, ["1g.18gb", "3g.71gb"]);
        assert_eq!(matching("NVIDIA B200", 183_359), ["gpu_1x_b200", "gpu_8x_b200"]);
        assert!(matching("NVIDIA H200", 96 * 1024).is_empty(), "an H200 name with less memory is not the H200 sold");
        assert!(matching("NVIDIA GH200 480GB", 97_871).iter().all(|t| t == "gpu_1x_gh200"));
        assert_eq!(
            matching("NVIDIA H100 80GB HBM3", 81_559),
            ["gpu_1x_h100_sxm5", "gpu_2x_h100_sxm5", "gpu_4x_h100_sxm5", "gpu_8x_h100_sxm5", "gpu_1x_h100_sxm5_vm"],
            "the H100 SXM5 types (and the VM one), not the H200 ones"
        );
        let b200 = c.instance_type("gpu_8x_b200").expect("b200");
        assert_eq!((b200.gpus, b200.description.as_str()), (8, "8x B200 (180 GB SXM6)"));
    }

    #[test]
    fn gpu_memory_and_mig_profiles_are_checked() {
        let t = |extra: &str| {
            format!("[[instance_types]]\nname = \"x\"\ndescription = \"1x X\"\ngpu_description = \"X\"\nprice_cents_per_hour = 1\nvcpus = 1\nmemory_gib = 1\nstorage_gib = 1\n{extra}")
        };
        assert!(Config::from_toml(&t("gpus = 1\ngpu_model = \"H200\"\ngpu_memory_gib = 130\nmig_profile = \"1g.18gb\"\n")).is_ok());
        assert!(Config::from_toml(&t("gpus = 0\ngpu_memory_gib = 10\n")).is_err(), "memory without GPUs");
        assert!(Config::from_toml(&t("gpus = 1\ngpu_model = \"H200\"\nmig_profile = \"big\"\n")).is_err(), "not a profile");
        assert!(Config::from_toml(&t("gpus = 0\nmig_profile = \"1g.18gb\"\n")).is_err(), "a slice of no GPU");
    }

    #[test]
    fn machines_parse_and_are_checked() {
        let t = |name: &str, extra: &str| {
            format!("[[instance_types]]\nname = \"{name}\"\ndescription = \"1x X\"\ngpu_description = \"X\"\nprice_cents_per_hour = 1\nvcpus = 1\nmemory_gib = 1\nstorage_gib = 1\ngpus = 0\n{extra}")
        };
        let c = Config::from_toml(&t("x", "machine = \"vm\"\n")).expect("vm parses");
        assert_eq!(c.instance_type("x").map(|t| t.machine), Some(Machine::Vm));
        let c = Config::from_toml(&t("x", "machine = \"container\"\n")).expect("container parses");
        assert_eq!(c.instance_type("x").map(|t| t.machine), Some(Machine::Container));
        let c = Config::from_toml(&t("x", "")).expect("no machine parses");
        assert_eq!(c.instance_type("x").map(|t| t.machine), Some(Machine::Container), "containers by default");

        for bad in ["\"qemu\"", "\"VM\"", "1"] {
            let e = Config::from_toml(&t("my_type", &format!("machine = {bad}\n"))).expect_err(bad).to_string();
            assert!(e.contains("my_type") && e.contains("container, vm"), "{bad}: {e}");
        }

        let gpu = "gpus = 1\ngpu_model = \"H200\"\n";
        let mig = format!("{gpu}mig_profile = \"1g.18gb\"\n");
        assert!(Config::from_toml(&t("x", &format!("{gpu}machine = \"vm\"\n")).replace("gpus = 0\n", "")).is_ok(), "whole GPUs in a VM");
        assert!(Config::from_toml(&t("x", &mig).replace("gpus = 0\n", "")).is_ok(), "MIG in a container");
        let e = Config::from_toml(&t("slice_vm", &format!("{mig}machine = \"vm\"\n")).replace("gpus = 0\n", "")).expect_err("MIG VM");
        assert!(e.to_string().contains("slice_vm"), "{e}");

        let d = Config::default();
        let (small, small_vm) = (d.instance_type("cpu_1x_small").unwrap(), d.instance_type("cpu_1x_small_vm").unwrap());
        assert_eq!((small.machine, small_vm.machine), (Machine::Container, Machine::Vm));
        assert_eq!(
            InstanceType {
                name: small.name.clone(),
                description: small.description.clone(),
                machine: Machine::Container,
                ..small_vm.clone()
            },
            *small
        );
        let (h100, h100_vm) = (d.instance_type("gpu_1x_h100_sxm5").unwrap(), d.instance_type("gpu_1x_h100_sxm5_vm").unwrap());
        assert_eq!(h100_vm.machine, Machine::Vm);
        assert_eq!(
            InstanceType { name: h100.name.clone(), description: h100.description.clone(), machine: Machine::Container, ..h100_vm.clone() },
            *h100
        );
        assert!(d.instance_types.iter().filter(|t| t.machine == Machine::Vm).all(|t| t.name.ends_with("_vm")));
    }

    #[test]
    fn toml_overrides_and_rejects_bad_regions() {
        let c = Config::from_toml("[quotas]\ninstances_per_org = 3\n").expect("parses");
        assert_eq!(c.quotas.instances_per_org, 3);
        assert_eq!(c.quotas.ssh_keys_per_org, 1024);
        let c = Config::from_toml("[rate_limits.plans]\nfree = { per_hour = 10, burst = 2 }\n").expect("plans parse");
        assert_eq!(c.rate_limits.plans.get("free").map(|p| (p.per_hour, p.burst)), Some((10, 2)));
        assert_eq!(c.rate_limits.launch, RateLimits::default().launch, "other limits keep their defaults");
        let bad = "[[regions]]\nname = \"mars-1\"\ndescription = \"Mars\"\n";
        assert!(Config::from_toml(bad).is_err());
        assert!(Config::from_toml("[nonsense]\nx = 1\n").is_err());
    }

    /// The example in docs/configuration.md is a configuration this server accepts, and its
    /// `[http]` figures are the defaults (the page says they are).
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("closed");
        let c = Config::from_toml(&doc[start..end]).expect("the documented example parses");
        let (d, h) = (HttpServerConfig::default(), &c.http);
        assert_eq!(
            (h.header_read_timeout_ms, h.body_read_timeout_ms, h.idle_timeout_ms, h.max_connections, h.max_connections_per_ip),
            (d.header_read_timeout_ms, d.body_read_timeout_ms, d.idle_timeout_ms, d.max_connections, d.max_connections_per_ip)
        );
        assert_eq!((h.hsts_max_age_s, h.tls_reload_poll_ms), (d.hsts_max_age_s, d.tls_reload_poll_ms));
    }

    #[test]
    fn port_forwards_and_presets_are_checked() {
        let c = Config::from_toml("[port_forwards]\nfirst_port = 30000\ncount = 2\n[[presets]]\ninstance_type = \"cpu_1x_small\"\n")
            .expect("parses");
        assert_eq!(c.port_forwards.ports().collect::<Vec<_>>(), vec![30000, 30001]);
        assert_eq!(c.presets.len(), 1);
        assert!(Config::from_toml("[[presets]]\ninstance_type = \"nope\"\n").is_err(), "unknown type");
        assert!(Config::from_toml("[[presets]]\ninstance_type = \"cpu_1x_small\"\nimage_family = \"x\"\n").is_err(), "unknown image");
        assert!(Config::from_toml("[port_forwards]\nfirst_port = 22\n").is_err(), "privileged ports are refused");
        assert!(Config::from_toml("[port_forwards]\nfirst_port = 65000\ncount = 1000\n").is_err(), "past 65535");
    }
}
