//! `nimbus server`, `nimbus agent` and `nimbus dev`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nimbus_agent::tls::ServerTrust;
use nimbus_agent::{Agent, AgentConfig};
use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Control};
use nimbus_core::auth::Permissions;
use nimbus_driver::container::inventory::is_root;
use nimbus_driver::sim::{SimConfig, SimDriver};
use nimbus_driver::Driver;
use tokio::net::TcpListener;

use crate::common::{self, open_control};
use crate::StoreArgs;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How `nimbus server` speaks TLS and where agents connect.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerTlsArgs {
    /// Certificate chain (PEM). With `--tls-key`; reloaded on SIGHUP and when the file changes.
    /// Without both, a self-signed certificate is made in `<data-dir>/tls/` on first start.
    #[arg(long, env = "NIMBUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "NIMBUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra names (DNS names or IP addresses) for the self-signed certificate; repeatable.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Serve plain HTTP: only behind a proxy that terminates TLS on the same machine.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub no_tls: bool,
    /// Serve the agent protocol on this address only (and not on `--listen`), so that it can be
    /// firewalled away from tenants.
    #[arg(long, env = "NIMBUS_AGENT_LISTEN")]
    pub agent_listen: Option<String>,
    /// Serve Prometheus `/metrics` on this address, plain HTTP and without credentials: bind
    /// it to a management address your scraper reaches and tenants do not.
    #[arg(long, env = "NIMBUS_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Also serve `/metrics` on `--listen` to a bearer of this token (16+ characters).
    #[arg(long, env = "NIMBUS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

async fn bind_opt(addr: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(a) => Ok(Some(TcpListener::bind(a).await.with_context(|| format!("binding {a}"))?)),
        None => Ok(None),
    }
}

fn self_signed_names(listen: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_owned());
    }
    if let Ok(a) = listen.parse::<std::net::SocketAddr>() {
        if !a.ip().is_unspecified() {
            names.push(a.ip().to_string());
        }
    }
    names.extend(extra.iter().cloned());
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

pub async fn run_server(listen: &str, tls: &ServerTlsArgs, store: &StoreArgs) -> anyhow::Result<()> {
    let (control, dir) = open_control(store, "server", |_| {}).await?;
    let server_tls = if tls.no_tls {
        None
    } else {
        let (cert, key) = match (&tls.tls_cert, &tls.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let (c, k, made) = nimbus_api::tls::ensure_self_signed(&dir, &self_signed_names(listen, &tls.tls_san))?;
                if made {
                    println!("made a self-signed certificate: {}", c.display());
                }
                (c, k)
            }
        };
        Some(nimbus_api::tls::ServerTls::load(&cert, &key)?)
    };
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let metrics_token = match &tls.metrics_token {
        Some(t) => Some(Arc::new(nimbus_api::metrics::Token::new(t).map_err(anyhow::Error::msg).context("--metrics-token")?)),
        None => None,
    };
    let opts = nimbus_api::server::ServeOptions {
        tls: server_tls,
        agent_listener: bind_opt(tls.agent_listen.as_deref()).await?,
        metrics_listener: bind_opt(tls.metrics_listen.as_deref()).await?,
        metrics_token,
    };
    let handle = nimbus_api::server::start_with(control, listener, opts)?;
    tracing::info!(url = %handle.url(), data_dir = %dir.display(), "nimbus server listening");
    println!("nimbus server listening on {}", handle.url());
    if handle.agent_addr.is_some() {
        println!("agent protocol on {}", handle.agent_url());
    }
    if let Some(a) = handle.metrics_addr {
        println!("metrics on http://{a}/metrics");
    }
    if let Some(t) = &handle.tls {
        println!("certificate fingerprint (sha256): {}", t.fingerprint());
        println!("agents: nimbus agent --server {} --server-fingerprint {} ...", handle.agent_url(), t.fingerprint());
    }
    shutdown_signal().await;
    handle.shutdown().await?;
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// vCPUs the sim host offers (default: this machine's; with --sim-gpus, as many as a
    /// server with those GPUs has: 26 per GPU, as an 8-GPU H100 server's 208).
    #[arg(long)]
    pub sim_vcpus: Option<i64>,
    /// Memory the sim host offers in GiB (default: this machine's; with --sim-gpus, 225 GiB per
    /// GPU).
    #[arg(long)]
    pub sim_memory_gib: Option<i64>,
    /// Disk the sim host offers in GiB (default: 200; with --sim-gpus, 2,816 GiB per GPU).
    #[arg(long)]
    pub sim_disk_gib: Option<i64>,
    /// Fake GPUs as `MODEL:COUNT`, e.g. `"NVIDIA H100 80GB HBM3:8"`; repeatable.
    #[arg(long)]
    pub sim_gpus: Vec<String>,
    /// Fake MIG devices as `GPU_INDEX:PROFILE:COUNT`, e.g. `0:1g.18gb:7`; repeatable.
    #[arg(long)]
    pub sim_mig: Vec<String>,
    /// Fault injection for the fake GPUs: a JSON file `{"<GPU index>": {"xids": [79], ...}}`
    /// read on every report (docs/gpu.md, "GPU health").
    #[arg(long)]
    pub sim_gpu_faults: Option<PathBuf>,
}

/// Which driver a host runs and how it is set up (shared by `nimbus agent` and `nimbus dev`).
#[derive(clap::Args, Debug, Clone)]
pub struct DriverArgs {
    /// Instance driver: `container` (real instances; root) or `sim` (a simulation for demos and tests).
    #[arg(long, default_value = "container")]
    pub driver: String,
    #[command(flatten)]
    pub images: crate::image::ImagesDir,
    #[command(flatten)]
    pub offer: OfferArgs,
    #[command(flatten)]
    pub net: HostNetArgs,
    #[command(flatten)]
    pub sim: SimArgs,
    /// Whether the agent resets idle GPUs (`nvidia-smi --gpu-reset`) between tenants and to
    /// clear a condition only a reset clears: `auto` (the default) or `never` (then a GPU whose
    /// last tenant's processes are gone counts as checked, and one that needs a reset stays
    /// out until an operator resets it).
    #[arg(long, default_value = "auto", value_parser = ["auto", "never"])]
    pub gpu_reset: String,
}

/// The names and addresses a container host's instances live under. Several agents on one
/// machine (a test bed of hosts) each need their own bridge and subnet; every name the driver
/// makes (network namespaces `<bridge>-…`, the cgroup parent `nimbus-<bridge>`, the nftables
/// tables named after the bridge) follows from the bridge's name, so a distinct bridge is enough.
#[derive(clap::Args, Debug, Clone)]
pub struct HostNetArgs {
    /// The host's instance bridge (at most 15 characters: letters, digits, `-`, `_`).
    #[arg(long, default_value = "nimbus0")]
    pub bridge: String,
    /// The instances' subnet on that bridge; the bridge takes its first address. Unique in the
    /// region: it is where the instances' private addresses come from.
    #[arg(long, default_value = "10.200.0.0/16")]
    pub instance_subnet: String,
    /// This host's address on the network between hosts: with one, the host joins its region's
    /// private network (a VXLAN tunnel to every other host; UDP 4789 between hosts).
    #[arg(long)]
    pub underlay: Option<std::net::Ipv4Addr>,
}

/// What `HostNetArgs` resolve to: bridge, gateway, prefix length, namespace prefix, cgroup parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub bridge: String,
    pub gateway: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub ns_prefix: String,
    pub cgroup_parent: String,
}

impl HostNetArgs {
    pub fn resolve(&self) -> anyhow::Result<HostNet> {
        let b = &self.bridge;
        if b.is_empty() || b.len() > 15 || !b.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("--bridge {b:?}: 1 to 15 characters of letters, digits, '-' and '_' (a Linux interface name)");
        }
        let (addr, len) = self.instance_subnet.split_once('/').context("--instance-subnet takes A.B.C.D/N")?;
        let addr: std::net::Ipv4Addr = addr.parse().with_context(|| format!("--instance-subnet {:?}", self.instance_subnet))?;
        let prefix_len: u8 = len.parse().with_context(|| format!("--instance-subnet {:?}: bad prefix length", self.instance_subnet))?;
        if !(8..=28).contains(&prefix_len) {
            bail!("--instance-subnet {:?}: the prefix length must be 8 to 28", self.instance_subnet);
        }
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        if u32::from(addr) & !mask != 0 {
            bail!(
                "--instance-subnet {:?}: host bits are set (the network is {}/{prefix_len})",
                self.instance_subnet,
                std::net::Ipv4Addr::from(u32::from(addr) & mask)
            );
        }
        // The default host keeps the names it always had, so existing instances are adopted.
        let (ns_prefix, cgroup_parent) =
            if b == "nimbus0" { ("nimbus-".to_owned(), "nimbus".to_owned()) } else { (format!("{b}-"), format!("nimbus-{b}")) };
        Ok(HostNet { bridge: b.clone(), gateway: std::net::Ipv4Addr::from(u32::from(addr) + 1), prefix_len, ns_prefix, cgroup_parent })
    }
}

/// What a container host offers, when it should differ from the machine (overcommit).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OfferArgs {
    /// vCPUs to offer (default: this machine's; more overcommits CPU).
    #[arg(long)]
    pub offer_vcpus: Option<i64>,
    /// Memory to offer in GiB (default: this machine's).
    #[arg(long)]
    pub offer_memory_gib: Option<i64>,
    /// Disk to offer in GiB (default: the size of the file system holding the data dir).
    #[arg(long)]
    pub offer_disk_gib: Option<i64>,
    /// Give instances outbound internet by masquerading their traffic (also enable
    /// net.ipv4.ip_forward on the host).
    #[arg(long)]
    pub outbound_nat: bool,
    /// The address clients reach this host's forwarded ports on (the public IP of a VM in the
    /// Voltage Park dialect). Default: none for `nimbus agent`, 127.0.0.1 for `nimbus dev`.
    #[arg(long)]
    pub public_ip: Option<std::net::IpAddr>,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Server root URL, or several replicas' URLs separated by commas (the agent moves to the
    /// next when one stops answering).
    #[arg(long, env = "NIMBUS_SERVER")]
    pub server: String,
    /// SHA-256 fingerprint of the server's certificate (what `nimbus server` prints), for a
    /// self-signed server certificate.
    #[arg(long, env = "NIMBUS_SERVER_FINGERPRINT", conflicts_with = "server_ca")]
    pub server_fingerprint: Option<String>,
    /// CA certificate(s) (PEM) the server's certificate must chain to; default: the Mozilla roots.
    #[arg(long, env = "NIMBUS_SERVER_CA")]
    pub server_ca: Option<PathBuf>,
    /// Allow plain HTTP to a server that is not on loopback (the host secret and instances'
    /// user_data then cross the network in the clear).
    #[arg(long)]
    pub insecure: bool,
    /// Host registration token (`nimbus admin host-token create`, or `nimbus admin hosts
    /// re-enrol`); only used while the agent has no host secret in its data dir.
    #[arg(long, env = "NIMBUS_HOST_TOKEN")]
    pub token: String,
    #[arg(long, env = "NIMBUS_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run in this network namespace (`/run/netns/NAME`): one of several hosts on one machine
    /// (`nimbus dev --hosts N` makes them). Only the network namespace changes.
    #[arg(long)]
    pub netns: Option<String>,
    /// Stop when the process that started this agent goes (`nimbus dev --hosts`).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
    /// Serve this agent's Prometheus `/metrics` (driver latencies, instances, GPU health) on
    /// this address, plain HTTP and without credentials: a management address only.
    #[arg(long, env = "NIMBUS_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub host: DriverArgs,
}

fn sim_driver(args: &SimArgs, data_dir: &Path, hostname: &str) -> anyhow::Result<Arc<dyn Driver>> {
    let mut gpus = Vec::new();
    for g in &args.sim_gpus {
        let (model, count) = g.rsplit_once(':').context("--sim-gpus takes MODEL:COUNT")?;
        gpus.push((model.to_owned(), count.parse::<i64>().context("--sim-gpus COUNT must be a number")?));
    }
    let mut mig_devices = Vec::new();
    for m in &args.sim_mig {
        let bad = || anyhow::anyhow!("--sim-mig takes GPU_INDEX:PROFILE:COUNT, e.g. 0:1g.18gb:7");
        let mut parts = m.splitn(3, ':');
        let (Some(g), Some(p), Some(n)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
        if !nimbus_core::catalog::valid_mig_profile(p) {
            return Err(bad());
        }
        mig_devices.push((g.parse::<i64>().map_err(|_| bad())?, p.to_owned(), n.parse::<i64>().map_err(|_| bad())?));
    }
    // A sim host with GPUs is sized as a server with those GPUs would be (the catalog's 8-GPU
    // types need 208 vCPUs and 1,800 GiB), not as this laptop: else it offers no GPU type at all.
    let n_gpus: i64 = gpus.iter().map(|(_, n)| *n).sum();
    let here_vcpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(2);
    let here_mib = nimbus_driver::container::inventory::memory_mib();
    let vcpus = args.sim_vcpus.unwrap_or(here_vcpus.max(26 * n_gpus));
    let memory_mib = args.sim_memory_gib.map(|g| g * 1024).unwrap_or(here_mib.max(225 * 1024 * n_gpus));
    let disk_gib = args.sim_disk_gib.unwrap_or(200.max(2816 * n_gpus));
    let gpu_list: Vec<String> = gpus.iter().map(|(m, n)| format!("{n}x {m}")).collect();
    eprintln!(
        "sim host: {vcpus} vCPUs, {} GiB memory, {disk_gib} GiB disk, GPUs: {}",
        memory_mib / 1024,
        if gpu_list.is_empty() { "none".to_owned() } else { gpu_list.join(", ") }
    );
    let cfg = SimConfig {
        hostname: hostname.to_owned(),
        vcpus,
        memory_mib,
        disk_gib,
        gpus,
        state_file: Some(data_dir.join("sim-instances.json")),
        address_block: 0,
        mig_devices,
        faults_file: args.sim_gpu_faults.clone(),
    };
    Ok(Arc::new(SimDriver::new(cfg)))
}

fn announce_sim() {
    let line = "=".repeat(78);
    eprintln!("{line}\n  WARNING: this agent uses the `sim` driver. Instances are SIMULATED: nothing runs,\n  their addresses are fake (198.19.x.x), and SSH will not reach them. For real\n  instances: --driver container (root).\n{line}");
}

fn local_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The driver named on the command line. `container` needs root and builds the default image on
/// first use.
pub async fn make_driver(args: &DriverArgs, dir: &Path) -> anyhow::Result<Arc<dyn Driver>> {
    let DriverArgs { driver: name, sim, images, offer, net, gpu_reset } = args;
    match name.as_str() {
        "sim" => {
            announce_sim();
            sim_driver(sim, dir, &local_hostname())
        }
        "container" => {
            if !is_root() {
                bail!("the container driver needs root (namespaces, cgroups, mounts); run as root, or pass `--driver sim` for a simulated demo");
            }
            let images_dir = images.path();
            let d = images_dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::image::ensure_host_tools()?;
                crate::image::ensure_default(&d, "debian-12", None)
            })
            .await??;
            let host_net = net.resolve()?;
            let mut cfg = nimbus_driver::container::driver::ContainerConfig::new(&dir.join("container"), &images_dir);
            cfg.bridge = host_net.bridge;
            cfg.gateway = host_net.gateway;
            cfg.prefix_len = host_net.prefix_len;
            cfg.ns_prefix = host_net.ns_prefix;
            cfg.cgroup_parent = host_net.cgroup_parent;
            cfg.outbound_nat = offer.outbound_nat;
            cfg.underlay = net.underlay;
            cfg.public_ip = offer.public_ip;
            cfg.gpu_reset = gpu_reset == "auto";
            cfg.launcher = Some(nimbus_driver::container::runtime::Launcher::current_exe()?);
            if offer.offer_vcpus.is_some() || offer.offer_memory_gib.is_some() || offer.offer_disk_gib.is_some() {
                std::fs::create_dir_all(&cfg.data_dir)?;
                let mut inv = nimbus_driver::container::inventory::read(&cfg.data_dir);
                inv.vcpus = offer.offer_vcpus.unwrap_or(inv.vcpus);
                inv.memory_mib = offer.offer_memory_gib.map(|g| g * 1024).unwrap_or(inv.memory_mib);
                inv.disk_gib = offer.offer_disk_gib.unwrap_or(inv.disk_gib);
                cfg.inventory = Some(inv);
            }
            let driver = tokio::task::spawn_blocking(move || nimbus_driver::container::driver::ContainerDriver::new(cfg)).await?;
            Ok(Arc::new(driver.map_err(|e| anyhow::anyhow!("container driver: {e}"))?))
        }
        other => bail!("unknown driver {other:?}; expected `container` or `sim`"),
    }
}

/// Starts the agent's metrics listener, when it has one; it stops with the agent.
fn serve_agent_metrics(agent: &Arc<Agent>, listener: Option<TcpListener>, stop: &tokio::sync::watch::Receiver<bool>) {
    if let Some(l) = listener {
        if let Ok(a) = l.local_addr() {
            println!("agent metrics on http://{a}/metrics");
        }
        tokio::spawn(nimbus_agent::metrics::serve_metrics(agent.clone(), l, stop.clone()));
    }
}

pub async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.clone().unwrap_or_else(|| common::default_data_dir("agent"));
    std::fs::create_dir_all(&dir)?;
    let trust = match (&a.server_fingerprint, &a.server_ca) {
        (Some(fp), _) => ServerTrust::fingerprint(fp).map_err(anyhow::Error::msg)?,
        (None, Some(ca)) => ServerTrust::ca_file(ca).map_err(anyhow::Error::msg)?,
        (None, None) => ServerTrust::PublicRoots,
    };
    nimbus_agent::tls::server_urls(&a.server, a.insecure).map_err(anyhow::Error::msg)?;
    let driver = make_driver(&a.host, &dir).await?;
    let agent = Agent::new(
        AgentConfig {
            server_url: a.server,
            token: a.token,
            data_dir: dir,
            poll_wait: Duration::from_secs(25),
            public_ip: a.host.offer.public_ip.map(|a| a.to_string()),
            trust,
            insecure: a.insecure,
        },
        driver,
    )?;
    let metrics_listener = bind_opt(a.metrics_listen.as_deref()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    serve_agent_metrics(&agent, metrics_listener, &stop_rx);
    let task = tokio::spawn(agent.run(stop_rx));
    let parent_gone = async {
        if !a.exit_with_parent {
            return std::future::pending().await;
        }
        let parent = std::os::unix::process::parent_id();
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! { _ = shutdown_signal() => {}, _ = parent_gone => {} }
    let _ = stop_tx.send(true);
    let _ = task.await;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Make this exact key the dev organization's ADMIN key (for scripts).
    #[arg(long, env = "NIMBUS_API_KEY")]
    pub api_key: Option<String>,
    /// Region of the local host.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Run N container hosts, each a network namespace with its own agent, bridge, subnet and
    /// tunnel endpoint, joined by one region-wide private network (a test bed of hosts on one
    /// machine; root). Without it, one host in this process.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub hosts: Option<u8>,
    /// With `--hosts`: remove the test bed's namespaces, links and routes, and exit (terminate
    /// its instances first: their networks hang off the hosts').
    #[arg(long, requires = "hosts")]
    pub teardown: bool,
    /// With `--hosts`: the bed's names and addresses as `PREFIX,A.B.C,S.T` (name prefix,
    /// underlay /24, instance subnets S.T.i.0/24), so that a test's bed and a demo's coexist.
    #[arg(long, hide = true, requires = "hosts", default_value = "nbd,198.51.100,10.210")]
    pub bed_layout: String,
    /// Serve the server's Prometheus `/metrics` on this address (plain HTTP, no credentials).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Serve the local agent's `/metrics` on this address (plain HTTP, no credentials).
    #[arg(long, conflicts_with = "hosts")]
    pub agent_metrics_listen: Option<String>,
    #[command(flatten)]
    pub host: DriverArgs,
}

/// Reads a secret persisted in the data dir, or creates it with `make` and stores it (0600).
async fn persisted_secret<F, Fut>(path: &Path, make: F) -> anyhow::Result<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    if let Ok(s) = std::fs::read_to_string(path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    let s = make().await?;
    std::fs::write(path, &s)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(s)
}

async fn dev_org_and_key(control: &Control, dir: &Path, wanted: Option<&str>) -> anyhow::Result<String> {
    let org = match admin::org_find(control, "dev").await {
        Ok(o) => o,
        Err(_) => admin::org_create(control, "dev", Some("dev@nimbus.local")).await.map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    if let Some(k) = wanted {
        if !admin::api_key_exists(control, k).await.map_err(|e| anyhow::anyhow!("{e}"))? {
            admin::api_key_create(control, &org, "dev (--api-key)", Permissions::admin(), Some(k))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        return Ok(k.to_owned());
    }
    let key_file = dir.join("dev-api-key");
    persisted_secret(&key_file, || async {
        let (_, plain) =
            admin::api_key_create(control, &org, "dev", Permissions::admin(), None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(plain)
    })
    .await
}

pub async fn run_dev(d: DevArgs) -> anyhow::Result<()> {
    // A test bed's region hands out public addresses from the top of its underlay's /24.
    let bed_pool = match d.hosts {
        Some(n) => Some(crate::testbed::TestBed::new(crate::testbed::Layout::parse(&d.bed_layout, n)?)?.public_pool()),
        None => None,
    };
    let region = d.region.clone();
    let (control, dir) = open_control(&d.store, "dev", |cfg| {
        if let Some(pool) = &bed_pool {
            if !cfg.public_addresses.iter().any(|p| p.region == region) {
                cfg.public_addresses.push(nimbus_control::config::PublicPool { region: region.clone(), prefixes: vec![pool.clone()] });
            }
        }
        cfg.rate_limits = RateLimits::generous();
        // A laptop or CI run (and the API fuzzer in scripts/test) should never meet the
        // production plans' hourly budgets.
        for p in cfg.rate_limits.plans.values_mut() {
            p.per_hour = p.per_hour.max(10_000_000);
            p.burst = p.burst.max(100_000);
        }
        cfg.agents.heartbeat_interval_ms = 1_000;
        cfg.agents.host_timeout_ms = 10_000;
    })
    .await?;
    let key = dev_org_and_key(&control, &dir, d.api_key.as_deref()).await?;
    let started = control.now();
    // A fresh one-use token on every start (tokens expire): the agent registers with it only
    // when it has no host secret yet (first start, or a wiped agent dir) and otherwise
    // re-registers with the secret in its agent.json.
    let token = admin::host_token_create(&control, &d.region).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = TcpListener::bind(&d.listen).await.with_context(|| format!("binding {}", d.listen))?;
    if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        // dev is for one machine; anything reachable from others wants `nimbus server` (HTTPS).
        tracing::warn!(listen = %d.listen, "nimbus dev serves plain HTTP; API keys sent to this address cross the network in the clear");
    }
    if let Some(n) = d.hosts {
        return run_dev_hosts(&d, control, listener, &dir, &key, n).await;
    }
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    // The driver first: a missing image is built (with progress) before anything listens.
    let driver = make_driver(&d.host, &agent_dir).await?;
    let opts = nimbus_api::server::ServeOptions { metrics_listener: bind_opt(d.metrics_listen.as_deref()).await?, ..Default::default() };
    let agent_metrics = bind_opt(d.agent_metrics_listen.as_deref()).await?;
    let handle = nimbus_api::server::start_with(control.clone(), listener, opts)?;
    let url = handle.url();
    let hosts_before = control.store().host_list(None, true).await.map_err(|e| anyhow::anyhow!("{e}"))?.len();
    // On one machine the forwarded ports are reached on the loopback address.
    let public_ip = Some(d.host.offer.public_ip.map_or_else(|| "127.0.0.1".to_owned(), |a| a.to_string()));
    let agent = Agent::new(
        AgentConfig {
            server_url: url.clone(),
            token,
            data_dir: agent_dir,
            poll_wait: Duration::from_secs(25),
            public_ip,
            trust: ServerTrust::default(),
            insecure: false,
        },
        driver,
    )?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    serve_agent_metrics(&agent, agent_metrics, &stop_rx);
    let agent_task = tokio::spawn(agent.run(stop_rx));
    // Print the URL only once the local host offers capacity, so that a script can use it at once.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        let up = control.store().host_list(None, true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let registered = up.len() > hosts_before || (hosts_before > 0 && up.iter().any(|h| h.last_seen_at >= started));
        // ...and its GPUs were checked by the agent (a GPU is placed only then).
        if registered && up.iter().all(|h| h.gpus.iter().all(|g| g.clean || g.instance_id.is_some())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("Nimbus dev is running.");
    println!("  URL:      {url}");
    println!("  API key:  {key}");
    println!("  Data dir: {}", dir.display());
    if let Some(a) = handle.metrics_addr {
        println!("  Metrics:  http://{a}/metrics");
    }
    print_console(&control, &url).await?;
    println!("Try:  curl -u {key}: {url}/api/v1/instance-types");
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = agent_task.await;
    handle.shutdown().await?;
    Ok(())
}

/// The `--offer-*` flags of `o`, for an agent of the test bed (each host offers what was asked,
/// by default the whole machine: hosts of a bed share it).
fn offer_args(o: &OfferArgs) -> Vec<String> {
    let mut v = Vec::new();
    for (flag, val) in
        [("--offer-vcpus", o.offer_vcpus), ("--offer-memory-gib", o.offer_memory_gib), ("--offer-disk-gib", o.offer_disk_gib)]
    {
        if let Some(x) = val {
            v.extend([flag.to_owned(), x.to_string()]);
        }
    }
    if o.outbound_nat {
        v.push("--outbound-nat".to_owned());
    }
    v
}

/// `nimbus dev --hosts N`: the server here, N agents as child processes in the hosts of a test
/// bed (`testbed`). The bed and the instances outlive this process, as one host's do; a new
/// start adopts them.
async fn run_dev_hosts(d: &DevArgs, control: Control, listener: TcpListener, dir: &Path, key: &str, n: u8) -> anyhow::Result<()> {
    if d.host.driver != "container" || !is_root() {
        bail!("--hosts runs container hosts in network namespaces: it needs root and --driver container");
    }
    let bed = crate::testbed::TestBed::new(crate::testbed::Layout::parse(&d.bed_layout, n)?)?;
    if d.teardown {
        bed.remove();
        println!("removed the test bed of {n} hosts");
        return Ok(());
    }
    bed.ensure()?;
    let images = d.host.images.path();
    let img = images.clone();
    tokio::task::spawn_blocking(move || {
        crate::image::ensure_host_tools()?;
        crate::image::ensure_default(&img, "debian-12", None)
    })
    .await??;
    let agent_listener = TcpListener::bind((bed.machine_addr(), 0)).await.context("binding the test bed's agent address")?;
    let opts = nimbus_api::server::ServeOptions {
        agent_listener: Some(agent_listener),
        metrics_listener: bind_opt(d.metrics_listen.as_deref()).await?,
        ..Default::default()
    };
    let handle = nimbus_api::server::start_with(control.clone(), listener, opts)?;
    let token = admin::host_token_create_with(&control, &d.region, admin::HostTokenLimits { uses: i64::from(n), ttl_secs: 600 })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for h in &bed.hosts {
        let hdir = dir.join("hosts").join(format!("h{}", h.index));
        std::fs::create_dir_all(&hdir)?;
        let log = std::fs::File::create(hdir.join("agent.log"))?;
        let child = tokio::process::Command::new(&exe)
            .arg("agent")
            .args(bed.agent_args(h, &handle.agent_url(), &token.secret, &hdir))
            .arg("--images-dir")
            .arg(&images)
            .args(offer_args(&d.host.offer))
            .arg("--exit-with-parent")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the agent of {}", h.netns))?;
        children.push(child);
    }
    let t = std::time::Instant::now();
    let mut up = 0;
    while t.elapsed() < Duration::from_secs(30) {
        let hosts = control.store().host_list(Some(&d.region), true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        up = bed.hosts.iter().filter(|b| hosts.iter().any(|h| h.underlay.as_deref() == Some(b.underlay.to_string().as_str()))).count();
        if up == bed.hosts.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if up < bed.hosts.len() {
        tracing::warn!(up, wanted = bed.hosts.len(), "not every test-bed host registered; see hosts/h*/agent.log in the data dir");
    }
    let url = handle.url();
    println!("Nimbus dev is running with {n} hosts.");
    println!("  URL:      {url}");
    println!("  API key:  {key}");
    println!("  Data dir: {}", dir.display());
    print_console(&control, &url).await?;
    for h in &bed.hosts {
        println!("  host {}: netns {}, underlay {}, instances {}", h.index, h.netns, h.underlay, h.subnet);
    }
    println!("  public addresses: {} (each instance's ip; reached from this machine)", bed.public_pool());
    println!("Try:  curl -u {key}: {url}/api/v1/instance-types");
    shutdown_signal().await;
    for c in &mut children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    handle.shutdown().await?;
    Ok(())
}

/// The console's URL on a line of its own (sign in there with the API key), and a one-use
/// operator login link for the hosts and organizations pages.
async fn print_console(control: &nimbus_control::Control, url: &str) -> anyhow::Result<()> {
    let link = nimbus_control::console::operator_link_create(control, 3600 * 1_000_000).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("Console: {url}/console/");
    println!("  operator console (one use, 1 h): {url}/console/login?link={link}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::HostNetArgs;

    fn net(bridge: &str, subnet: &str) -> anyhow::Result<super::HostNet> {
        HostNetArgs { bridge: bridge.into(), instance_subnet: subnet.into(), underlay: None }.resolve()
    }

    #[test]
    fn the_default_host_keeps_its_names_and_others_get_their_own() {
        let d = net("nimbus0", "10.200.0.0/16").expect("default");
        let default = nimbus_driver::container::driver::ContainerConfig::new(std::path::Path::new("/x"), std::path::Path::new("/y"));
        assert_eq!(
            (d.bridge.as_str(), d.gateway, d.prefix_len, d.ns_prefix.as_str(), d.cgroup_parent.as_str()),
            (default.bridge.as_str(), default.gateway, default.prefix_len, default.ns_prefix.as_str(), default.cgroup_parent.as_str()),
            "the flags' defaults are the driver's"
        );
        let h = net("nb-h2", "10.201.4.0/24").expect("second host");
        assert_eq!(h.gateway, std::net::Ipv4Addr::new(10, 201, 4, 1));
        assert_eq!((h.ns_prefix.as_str(), h.cgroup_parent.as_str()), ("nb-h2-", "nimbus-nb-h2"));
    }

    #[test]
    fn bad_bridges_and_subnets_are_refused() {
        for (b, s) in [
            ("", "10.0.0.0/24"),
            ("a-bridge-name-too-long", "10.0.0.0/24"),
            ("br/0", "10.0.0.0/24"),
            ("br0", "10.0.0.0"),
            ("br0", "10.0.0.0/33"),
            ("br0", "10.0.0.0/30"),
            ("br0", "10.0.0.1/24"),
            ("br0", "fd00::/64"),
        ] {
            assert!(net(b, s).is_err(), "{b} {s}");
        }
    }
}
