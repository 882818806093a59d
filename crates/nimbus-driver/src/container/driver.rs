//! `ContainerDriver`: the `Driver` trait over cgroups, network namespaces and the runtime.
//!
//! Every instance is an unprivileged system container (docs/security.md): a user namespace
//! with its tenant's uid range (`idmap.rs`), the seccomp filter, a reduced bounding set, masked
//! `/proc` and `/sys`, a device filter, and per-port source checks on the bridge. Instance types
//! marked `privileged` by the operator run without the user namespace, loudly logged.
//!
//! Each instance has a directory `<data>/instances/<id>/` holding its ledger (`ledger.json`: the
//! spec it was created from and its address), its disk (`upper/`) and its console log. The
//! ledger is written before anything is created, so a crash at any point leaves something
//! `list` finds and `destroy` removes; namespaces and cgroups with our prefix but no ledger are
//! listed too, so orphans of a crashed agent are found and removed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::net::Subnet;
use nimbus_proto::{ActualState, DesiredInstance, InstanceReport, Inventory, Power};
use serde::{Deserialize, Serialize};

use super::cgroup::{Cgroups, Limits};
use super::gpu::{self, GpuPlan};
use super::idmap::{self, ImageMode};
use super::launch::IdMap;
use super::net::Network;
use super::runtime::{Launcher, Weaken};
use super::{image, runtime};
use crate::{Driver, DriverError, Result};

#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Instances live under `<data_dir>/instances`, file systems under `<data_dir>/file-systems`.
    pub data_dir: PathBuf,
    pub images_dir: PathBuf,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Prefix of network namespace names (`nimbus-`).
    pub ns_prefix: String,
    /// Parent cgroup the driver owns (`nimbus`).
    pub cgroup_parent: String,
    pub cgroup_mount: PathBuf,
    /// Inventory override for hosts whose resources are shared (tests); `None` reads the machine.
    pub inventory: Option<Inventory>,
    /// How long a started container may take before a silent sshd counts as a failure.
    pub sshd_grace: Duration,
    /// Masquerade instance traffic leaving the host (see `firewall::Options`).
    pub outbound_nat: bool,
    /// The program that starts containers (`nimbus __launch-container`, or a test binary's).
    /// Required: the driver refuses to start without one.
    pub launcher: Option<Launcher>,
    /// How instances see the shared image; `None` probes the kernel once (idmapped mounts where
    /// they work, shifted copies elsewhere).
    pub image_mode: Option<ImageMode>,
    /// Host uids handed out to tenants: `(first, count)`; `None` reads root's `/etc/subuid`
    /// entry or takes LXD's default window.
    pub id_window: Option<(u32, u32)>,
    /// Isolation layers turned off on purpose (the escape suite's self-test only).
    pub weaken: Weaken,
    /// This host's address between hosts (`--underlay`): with one, the host takes part in its
    /// region's private network (a VXLAN tunnel to every other host, see `fabric`).
    pub underlay: Option<Ipv4Addr>,
    /// The address clients reach this host on (`--public-ip`): VPN endpoints are there. `None`:
    /// the source address of the host's default route.
    pub public_ip: Option<std::net::IpAddr>,
    /// Reset idle GPUs between tenants and to clear a condition a reset clears
    /// (`--gpu-reset auto`, the default); `false`: never (`--gpu-reset never`), e.g. on a
    /// machine whose GPU settings are not the operator's to touch.
    pub gpu_reset: bool,
    /// Offer VMs where this host can run them (QEMU, genisoimage and a guest kernel prepared
    /// with `nimbus image build --vm`); `false`: containers only.
    pub vms: bool,
}

impl ContainerConfig {
    pub fn new(data_dir: &Path, images_dir: &Path) -> Self {
        ContainerConfig {
            data_dir: data_dir.to_owned(),
            images_dir: images_dir.to_owned(),
            bridge: "nimbus0".into(),
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            prefix_len: 16,
            ns_prefix: "nimbus-".into(),
            cgroup_parent: "nimbus".into(),
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            inventory: None,
            sshd_grace: Duration::from_secs(20),
            outbound_nat: false,
            launcher: None,
            image_mode: None,
            id_window: None,
            weaken: Weaken::default(),
            underlay: None,
            public_ip: None,
            gpu_reset: true,
            vms: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ledger {
    spec: DesiredInstance,
    /// Index of the instance's address in the bridge subnet.
    addr_index: u32,
    /// When the container was last started (seconds since the epoch).
    #[serde(default)]
    started_at: u64,
    /// Host uid that root of the instance's disk is owned as (its range's base; 0 for a
    /// privileged instance). `None`: a disk from before user namespaces, owned as host root.
    #[serde(default)]
    disk_base: Option<u32>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub struct ContainerDriver {
    cfg: ContainerConfig,
    net: Network,
    cgroups: Cgroups,
    /// Serializes structural changes (address allocation, create/destroy).
    lock: Mutex<()>,
    sampler: Mutex<super::metrics::Sampler>,
    /// NVML for GPU metrics, loaded on first use; `None` on hosts without the NVIDIA driver.
    nvml: std::sync::OnceLock<Option<nvml_wrapper::Nvml>>,
    /// NVML for GPU health (shared with the blocking thread a look runs on) and the Xid watcher.
    health_nvml: std::sync::OnceLock<Option<Arc<nvml_wrapper::Nvml>>>,
    xids: Arc<super::health::XidWatch>,
    vpns: super::vpn::Gateways,
    storage: super::storage::Storage,
    ranges: idmap::Ranges,
    image_mode: ImageMode,
    launcher: Launcher,
    /// When each instance's sshd last answered: a live instance is probed again only after
    /// [`HEALTH_RECHECK`] (every probe costs its sshd a fork), a new one every time.
    healthy: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The region's private network as last received (kept in `fabric.json`, so that a
    /// restarted agent filters exactly as before until the server answers), and whether this
    /// process has programmed it yet.
    fabric: Mutex<(nimbus_proto::Fabric, bool)>,
    publics: super::public::Publics,
    /// `Some` where VMs can run; filled in by the KVM probe (see `vm.rs`).
    vm: Option<Arc<std::sync::OnceLock<vm::VmHost>>>,
}

mod vm;

/// Where the driver keeps the last private network it was sent.
const FABRIC_FILE: &str = "fabric.json";

/// How long one banner probe waits, and the pause between probes. A VM's sshd (a fork in an
/// emulated guest, under TCG) can take far longer than a container's to say hello, and a probe
/// that hangs up early only fills its `MaxStartups`.
fn banner_wait(m: nimbus_proto::Machine) -> (Duration, Duration) {
    match m {
        nimbus_proto::Machine::Container => (Duration::from_millis(50), Duration::from_millis(5)),
        nimbus_proto::Machine::Vm => (Duration::from_secs(3), Duration::from_millis(100)),
    }
}

/// How long a banner seen from a live instance counts.
const HEALTH_RECHECK: Duration = Duration::from_secs(5);

fn err(id: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Instance { id: id.to_owned(), message: e.to_string() }
}

fn host_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Host(e.to_string())
}

/// The instance's `/etc/hosts` (bound over the image's): itself and its cluster peers by name.
/// Rewritten in place (the same inode, which the bind mount holds), only when it changes.
fn write_hosts(path: &Path, hostname: &str, peers: &[nimbus_proto::Peer]) -> std::io::Result<()> {
    let mut s = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n");
    for p in peers {
        // Names and addresses come from the server; keep anything odd out of the file.
        let ok_name = !p.name.is_empty() && p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok_name && p.ip.parse::<std::net::IpAddr>().is_ok() {
            s += &format!("{}\t{}\n", p.ip, p.name);
        }
    }
    if std::fs::read_to_string(path).ok().as_deref() != Some(s.as_str()) {
        std::fs::write(path, s)?;
    }
    Ok(())
}

/// The GPUs of instance `spec`: `None` when it has none (and then nothing GPU-related is even
/// looked at), an error naming the problem when this host cannot give it the GPUs it asks for,
/// so that an instance never runs without the GPUs it was scheduled with.
fn gpu_plan(spec: &DesiredInstance, read_host: impl FnOnce() -> gpu::Host) -> Result<Option<GpuPlan>> {
    if spec.gpu_indices.is_empty() && spec.mig_devices.is_empty() {
        return Ok(None);
    }
    read_host().plan_with_mig(&spec.gpu_indices, &spec.mig_devices).map(Some).map_err(|e| err(&spec.id, e))
}

impl ContainerDriver {
    pub fn new(cfg: ContainerConfig) -> Result<Self> {
        let launcher = cfg.launcher.clone().ok_or_else(|| host_err("no container launcher configured (ContainerConfig::launcher)"))?;
        let cgroups = Cgroups::detect(&cfg.cgroup_mount, &cfg.cgroup_parent).map_err(host_err)?;
        let net = Network::new(&cfg.bridge, cfg.gateway, cfg.prefix_len, &cfg.ns_prefix);
        net.ensure_bridge().map_err(host_err)?;
        std::fs::create_dir_all(cfg.data_dir.join("instances")).map_err(host_err)?;
        // Ledgers written before they were made private are tightened now.
        if let Ok(rd) = std::fs::read_dir(cfg.data_dir.join("instances")) {
            for e in rd.flatten() {
                let _ = std::fs::set_permissions(e.path().join("ledger.json"), std::fs::Permissions::from_mode(0o600));
            }
        }
        let network = Subnet::containing(cfg.gateway, cfg.prefix_len).to_string();
        let vpns = super::vpn::Gateways::new(&cfg.data_dir, &cfg.bridge, network, cfg.public_ip.map(|a| a.to_string()));
        let storage = super::storage::Storage::new(&cfg.data_dir);
        let window = cfg.id_window.unwrap_or_else(|| idmap::host_window(&std::fs::read_to_string("/etc/subuid").unwrap_or_default()));
        let ranges = idmap::Ranges::new(&cfg.data_dir, window);
        let image_mode = match cfg.image_mode {
            Some(m) => m,
            None => match idmap::probe(&cfg.data_dir.join(".idmap-probe")) {
                Ok(()) => ImageMode::Idmapped,
                Err(e) => {
                    tracing::info!(reason = %e, "this kernel cannot idmap an overlay's lower layer; each tenant gets a shifted copy of each image, made once");
                    ImageMode::ShiftedCopy
                }
            },
        };
        let fabric = std::fs::read(cfg.data_dir.join(FABRIC_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if cfg.weaken.any() {
            tracing::error!(weaken = ?cfg.weaken, "WEAKENED container host: isolation layers are off (tests only)");
        }
        let vm = if cfg.vms { vm::vm_capable(&cfg.images_dir).map(vm::probe_in_background) } else { None };
        Ok(ContainerDriver {
            vm,
            healthy: Mutex::new(std::collections::HashMap::new()),
            fabric: Mutex::new((fabric, false)),
            publics: super::public::Publics::new(&cfg.data_dir, cfg.public_ip.or(cfg.underlay.map(std::net::IpAddr::V4))),
            ranges,
            image_mode,
            launcher,
            storage,
            vpns,
            cfg,
            net,
            cgroups,
            lock: Mutex::new(()),
            sampler: Mutex::new(super::metrics::Sampler::default()),
            nvml: std::sync::OnceLock::new(),
            health_nvml: std::sync::OnceLock::new(),
            xids: Arc::default(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("instances").join(id)
    }

    fn ledger(&self, id: &str) -> Option<Ledger> {
        std::fs::read(self.dir(id).join("ledger.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn write_ledger(&self, id: &str, l: &Ledger) -> Result<()> {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| err(id, e))?;
        // The ledger holds the tenant's user_data and keys.
        let body = serde_json::to_vec_pretty(l).map_err(|e| err(id, e))?;
        crate::files::write_private(&dir.join("ledger.json"), &body).map_err(|e| err(id, e))
    }

    fn ids(&self) -> Vec<String> {
        std::fs::read_dir(self.cfg.data_dir.join("instances"))
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    fn free_index(&self) -> u32 {
        let used: BTreeSet<u32> = self.ids().iter().filter_map(|id| self.ledger(id)).map(|l| l.addr_index).collect();
        (1..).find(|i| !used.contains(i)).unwrap_or(1)
    }

    fn file_system_dir(&self, fs_id: &str) -> PathBuf {
        self.cfg.data_dir.join("file-systems").join(fs_id)
    }

    /// The instance's user namespace: its tenant's range, or none for a privileged type.
    fn userns(&self, s: &DesiredInstance) -> Result<Option<IdMap>> {
        if s.privileged {
            return Ok(None);
        }
        let base = self.ranges.base_for(&s.tenant).map_err(|e| err(&s.id, e))?;
        Ok(Some(IdMap { host_base: base, count: idmap::RANGE }))
    }

    fn runtime_spec(&self, l: &Ledger) -> Result<runtime::Spec> {
        let s = &l.spec;
        if !image::exists(&self.cfg.images_dir, &s.image) {
            return Err(err(&s.id, format!("image {:?} is not built on this host (nimbus image build --name {})", s.image, s.image)));
        }
        let userns = self.userns(s)?;
        let root = userns.map_or(0, |m| m.host_base);
        let mut mounts = Vec::new();
        for m in &s.file_system_mounts {
            let d = self.file_system_dir(&m.file_system_id);
            if !d.exists() {
                std::fs::create_dir_all(&d).map_err(|e| err(&s.id, e))?;
                // Owned by the default user, as Lambda's shared file systems are writable by it.
                std::os::unix::fs::chown(&d, Some(root + 1000), Some(root + 1000)).map_err(|e| err(&s.id, e))?;
            }
            mounts.push((d, m.mount_point.clone()));
        }
        let image_root = image::rootfs(&self.cfg.images_dir, &s.image);
        let (lower, idmap_lower) = match (userns, self.image_mode) {
            (None, _) => (image_root, false),
            (Some(_), ImageMode::Idmapped) => (image_root, true),
            (Some(m), ImageMode::ShiftedCopy) => (idmap::shifted_copy(&image_root, m.host_base).map_err(|e| err(&s.id, e))?, false),
        };
        let addr = self.net.address(l.addr_index);
        Ok(runtime::Spec {
            id: s.id.clone(),
            hostname: s.hostname.clone(),
            lower,
            idmap_lower,
            dir: self.dir(&s.id),
            limits: Limits {
                cpu_millis: u64::try_from(s.vcpus.max(1)).unwrap_or(1) * 1000,
                memory_bytes: u64::try_from(s.memory_mib.max(64)).unwrap_or(64) << 20,
                pids: 4096,
            },
            net: self.net.launch_spec(&s.id, addr),
            authorized_keys: s.ssh_public_keys.clone(),
            mounts,
            userns,
            first_boot: s
                .user_data
                .as_deref()
                .map(nimbus_core::cloudinit::first_boot_script)
                .transpose()
                .map_err(|e| err(&s.id, e.external_message()))?,
            password_ssh: s.user_data.as_deref().is_some_and(nimbus_core::cloudinit::wants_password_ssh),
            hosts_file: Some(self.dir(&s.id).join("hosts")),
            gpu: None,
            launcher: self.launcher.clone(),
            weaken: self.cfg.weaken,
        })
    }

    /// Rewrites the host's firewall table from every ledger.
    fn sync_firewall(&self) -> Result<()> {
        let ledgers: Vec<Ledger> = self.ids().iter().filter_map(|id| self.ledger(id)).collect();
        let entries: Vec<super::firewall::Entry<'_>> = ledgers
            .iter()
            .map(|l| super::firewall::Entry {
                id: &l.spec.id,
                addr: self.net.address(l.addr_index),
                port: self.net.port(&l.spec.id),
                mac: super::launch::mac_for(self.net.address(l.addr_index)),
                rules: &l.spec.firewall,
                forwards: l.spec.ssh_port.map(|p| (p, 22)).into_iter().chain(l.spec.port_forwards.iter().copied()).collect(),
                peers: l.spec.peers.iter().filter_map(|p| p.ip.parse().ok()).collect(),
                tenant: &l.spec.tenant,
                public: l.spec.public_address.as_deref().and_then(|a| a.parse().ok()),
            })
            .collect();
        let publics: BTreeSet<Ipv4Addr> = entries.iter().filter_map(|e| e.public).collect();
        if let Err(e) = self.publics.sync(&publics) {
            tracing::warn!(error = %e, "the host cannot hold its instances' public addresses");
        }
        let private = self.private(&entries);
        if entries.iter().any(|e| !e.forwards.is_empty()) {
            // Forwarded ports answer on 127.0.0.1 too: after DNAT such packets leave through the
            // bridge with a loopback source (then masqueraded), which the kernel only routes
            // with route_localnet on the bridge (ours; nothing else is affected).
            let p = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.cfg.bridge);
            std::fs::write(&p, "1").map_err(|e| host_err(format!("{p}: {e}")))?;
        }
        let network = self.subnet();
        let w = self.cfg.weaken;
        let opts = super::firewall::Options {
            outbound_nat: self.cfg.outbound_nat.then_some(network),
            antispoof: !w.antispoof,
            ipv6_drop: !w.ipv6_drop,
            host_input_drop: !w.host_input_drop,
            instance_rules: !w.firewall,
        };
        // Both tables in one transaction: never a moment with one and not the other.
        let text = super::firewall::render(&self.cfg.bridge, self.cfg.gateway, &entries, &private, opts)
            + &super::firewall::render_ports(&self.cfg.bridge, &entries, opts);
        super::firewall::apply(&text).map_err(host_err)
    }

    /// The bridge's subnet (its gateway is the first address).
    fn subnet(&self) -> Subnet {
        Subnet::containing(self.cfg.gateway, self.cfg.prefix_len)
    }

    /// The filters' view of the private network: the server's member lists joined with this
    /// host's own instances (whose addresses the server may not have heard of yet).
    fn private(&self, entries: &[super::firewall::Entry<'_>]) -> super::firewall::Private {
        let f = self.fabric.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
        let peers: Vec<super::fabric::Peer> = f.peers.iter().filter_map(super::fabric::Peer::from_proto).collect();
        let mut members: std::collections::BTreeMap<String, Vec<Ipv4Addr>> = std::collections::BTreeMap::new();
        for o in &f.orgs {
            members.entry(o.tenant.clone()).or_default().extend(o.addrs.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()));
        }
        for e in entries {
            members.entry(e.tenant.to_owned()).or_default().push(e.addr);
        }
        for m in members.values_mut() {
            m.sort_unstable();
            m.dedup();
        }
        // The server's list names every private subnet of the region (peers' and VPN tunnels');
        // this host's own counts before the server has answered.
        let mut subnets = vec![self.subnet()];
        subnets.extend(f.private.iter().filter_map(|s| Subnet::parse_any(s)));
        subnets.sort_unstable();
        subnets.dedup();
        super::firewall::Private {
            subnets,
            members,
            underlays: peers.iter().map(|p| p.underlay).collect(),
            tunnel: self.cfg.underlay.map(|_| super::fabric::device(&self.cfg.bridge)),
        }
    }

    fn observe(&self, id: &str) -> InstanceReport {
        let ledger = self.ledger(id);
        let running = runtime::running(&self.cgroups, id);
        let addr = ledger.as_ref().map(|l| self.net.address(l.addr_index));
        let mut message = None;
        let state = match (&ledger, running) {
            (None, _) => ActualState::Failed,
            (Some(l), true) => {
                // "active means reachable": running only once sshd answers. An instance still
                // in its first seconds is not probed here: the agent's readiness watcher probes
                // it (and marks it healthy the moment it answers), and a probe of an address
                // whose network is still being made waits out its whole timeout.
                let starting = now_secs().saturating_sub(l.started_at) <= self.cfg.sshd_grace.as_secs();
                let last = self.last_healthy(id);
                if last.is_some_and(|t| t.elapsed() < HEALTH_RECHECK) || ((last.is_some() || !starting) && self.probe(id, addr)) {
                    ActualState::Running
                } else if l.spec.power == Power::Stopped {
                    ActualState::Stopped
                } else if now_secs().saturating_sub(l.started_at) > self.cfg.sshd_grace.as_secs() {
                    message = Some("sshd is not answering on port 22".to_owned());
                    ActualState::Failed
                } else {
                    ActualState::Creating
                }
            }
            (Some(_), false) => ActualState::Stopped,
        };
        InstanceReport {
            id: id.to_owned(),
            state,
            // Its public address where it has one, else its private one (reachable from the host).
            ip: ledger.as_ref().and_then(|l| l.spec.public_address.clone()).or_else(|| addr.map(|a| a.to_string())),
            private_ip: addr.map(|a| a.to_string()),
            restart_generation: ledger.map(|l| l.spec.restart_generation).unwrap_or(0),
            message,
        }
    }

    /// When instance `id`'s sshd last answered since it was started.
    fn last_healthy(&self, id: &str) -> Option<std::time::Instant> {
        self.healthy.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    fn mark_healthy(&self, id: &str) {
        self.healthy.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), std::time::Instant::now());
    }

    /// Whether instance `id`'s sshd answers now; remembered either way.
    fn probe(&self, id: &str, addr: Option<Ipv4Addr>) -> bool {
        let machine = self.ledger(id).map(|l| l.spec.machine).unwrap_or_default();
        let wait = banner_wait(machine).0.max(Duration::from_millis(150));
        let ok = addr.is_some_and(|a| runtime::ssh_banner(a, wait));
        if ok {
            self.mark_healthy(id);
        } else {
            self.forget_health(id);
        }
        ok
    }

    fn forget_health(&self, id: &str) {
        self.healthy.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn start_locked(&self, spec: &DesiredInstance) -> Result<InstanceReport> {
        let id = &spec.id;
        let fresh = self.ledger(id).is_none();
        let mut ledger = self.ledger(id).unwrap_or(Ledger { spec: spec.clone(), addr_index: 0, started_at: 0, disk_base: None });
        if ledger.addr_index == 0 {
            ledger.addr_index = self.free_index();
        }
        ledger.spec = spec.clone();
        // The ledger first: whatever follows can be found and undone after a crash.
        self.write_ledger(id, &ledger)?;
        if spec.machine == nimbus_proto::Machine::Vm {
            self.start_vm_locked(&mut ledger)?;
            return Ok(self.observe(id));
        }
        let rs = self.runtime_spec(&ledger)?;
        // A disk restored from a snapshot starts as its copy (then gets this instance's keys).
        if let (true, Some(snap)) = (!rs.dir.join("upper").exists(), &spec.source_snapshot) {
            self.storage.restore_upper(snap, &rs.dir.join("upper")).map_err(|e| err(id, e))?;
        }
        // A disk owned under another range (made before user namespaces, or the type turned
        // privileged or back) is re-owned once, before anything runs on it.
        let upper = rs.dir.join("upper");
        let want = rs.root_uid();
        if upper.exists() && !fresh {
            let had = ledger.disk_base.unwrap_or(0);
            if had != want {
                tracing::info!(instance = %id, from = had, to = want, "re-owning the instance's disk for its id range");
                idmap::shift_tree_between(&upper, had, want).map_err(|e| err(id, e))?;
            }
        }
        // Idempotent, and touches nothing the instance's users made: the disk's directories
        // exist (an agent killed mid-start may have made only some of them).
        runtime::prepare(&rs).map_err(|e| err(id, e))?;
        if ledger.disk_base != Some(want) {
            ledger.disk_base = Some(want);
            self.write_ledger(id, &ledger)?;
        }
        write_hosts(&rs.dir.join("hosts"), &spec.hostname, &spec.peers).map_err(|e| err(id, e))?;
        let dir = rs.dir.clone();
        if runtime::running(&self.cgroups, id) {
            self.sync_firewall()?;
        } else {
            // Read at start only (NVML and `ldconfig -p` are not free), and before anything runs.
            let rs = runtime::Spec { gpu: gpu_plan(spec, gpu::Host::read)?, ..rs };
            ledger.started_at = now_secs();
            self.write_ledger(id, &ledger)?;
            // A namespace name left by the previous run (the launcher makes a fresh one, owned by
            // the new user namespace).
            self.net.destroy(id, None);
            // The host's tables are rewritten while the launcher builds the instance; it execs
            // the instance's first program only once they are in place.
            let mut fw = Ok(());
            let started = runtime::start(&rs, &self.cgroups, || {
                fw = self.sync_firewall();
                fw.is_ok()
            });
            fw?;
            started.map_err(|e| err(id, e))?;
        }
        // Attached volumes, mounted (or unmounted) in the running container without a restart.
        self.storage.mount_for(&dir, &spec.volumes).map_err(|e| err(id, e))?;
        Ok(self.observe(id))
    }

    /// Kills the instance and releases its namespace and volume mounts; the disk stays.
    fn stop_locked(&self, id: &str) -> Result<()> {
        self.forget_health(id);
        self.quit_vm(id);
        runtime::stop(&self.cgroups, id).map_err(|e| err(id, e))?;
        self.remove_vm_run_dir(id);
        self.net.destroy(id, None);
        super::storage::unmount_all(&self.dir(id));
        Ok(())
    }

    /// `(volume id, instance id, mount path)` of every volume mounted now.
    fn volume_mounts(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for id in self.ids() {
            let Some(l) = self.ledger(&id) else { continue };
            // A running VM uses its volumes' host mounts directly (over virtiofs).
            let vm_running = l.spec.machine == nimbus_proto::Machine::Vm && runtime::running(&self.cgroups, &id);
            for v in &l.spec.volumes {
                let at = if vm_running {
                    self.storage.mount_dir(&v.volume_id)
                } else {
                    super::storage::volumes_dir(&self.dir(&id)).join(&v.name)
                };
                if super::storage::is_mount(&at) {
                    out.push((v.volume_id.clone(), id.clone(), at));
                }
            }
        }
        out
    }
}

#[async_trait]
impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    async fn inventory(&self) -> Result<Inventory> {
        let mut inv = match &self.cfg.inventory {
            Some(i) => i.clone(),
            None => super::inventory::read(&self.cfg.data_dir),
        };
        inv.network = self.cfg.underlay.map(|u| nimbus_proto::HostNetwork {
            underlay: u.to_string(),
            instance_subnet: self.subnet().to_string(),
            routes: vec![],
        });
        inv.machines = vec![nimbus_proto::Machine::Container];
        if self.vm.is_some() {
            inv.machines.push(nimbus_proto::Machine::Vm);
        }
        Ok(inv)
    }

    async fn sync_fabric(&self, fabric: &nimbus_proto::Fabric) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut cur = self.fabric.lock().unwrap_or_else(|p| p.into_inner());
            if cur.1 && cur.0 == *fabric {
                return Ok(());
            }
            if cur.0 != *fabric {
                let body = serde_json::to_vec(fabric).map_err(host_err)?;
                crate::files::write_private(&self.cfg.data_dir.join(FABRIC_FILE), &body).map_err(host_err)?;
            }
            *cur = (fabric.clone(), false);
        }
        if let Some(local) = self.cfg.underlay {
            let peers: Vec<super::fabric::Peer> = fabric.peers.iter().filter_map(super::fabric::Peer::from_proto).collect();
            super::fabric::Tunnel::new(&self.cfg.bridge, self.cfg.gateway, fabric.vni, local).sync(&peers).map_err(host_err)?;
        }
        self.sync_firewall()?;
        self.fabric.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<InstanceReport>> {
        let mut ids: BTreeSet<String> = self.ids().into_iter().collect();
        // Orphans of a crash: our cgroups and namespaces without an instance directory.
        ids.extend(self.cgroups.list());
        for short in self.net.list() {
            if !ids.iter().any(|i| i.starts_with(&short)) {
                ids.insert(short);
            }
        }
        Ok(ids.iter().map(|id| self.observe(id)).collect())
    }

    async fn ensure(&self, spec: &DesiredInstance) -> Result<InstanceReport> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match spec.power {
            Power::Running => self.start_locked(spec),
            Power::Stopped => {
                self.stop_locked(&spec.id)?;
                Ok(self.observe(&spec.id))
            }
        }
    }

    async fn restart(&self, spec: &DesiredInstance) -> Result<InstanceReport> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.stop_locked(&spec.id)?;
        self.start_locked(spec)
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.stop_locked(id)
    }

    async fn wait_ready(&self, id: &str) -> bool {
        let Some(l) = self.ledger(id) else { return false };
        let addr = self.net.address(l.addr_index);
        let (wait, pause) = banner_wait(l.spec.machine);
        let deadline = std::time::Instant::now() + self.cfg.sshd_grace;
        // Off the async threads: each probe is a blocking connect of at most `wait`.
        let ready = tokio::task::spawn_blocking(move || {
            while std::time::Instant::now() < deadline {
                if runtime::ssh_banner(addr, wait) {
                    return true;
                }
                std::thread::sleep(pause);
            }
            false
        })
        .await
        .unwrap_or(false);
        if ready {
            self.mark_healthy(id);
        }
        ready
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.forget_health(id);
        self.quit_vm(id);
        runtime::stop(&self.cgroups, id).map_err(|e| err(id, e))?;
        self.remove_vm_run_dir(id);
        // Before the directory (and its record of them) goes.
        self.give_gpus_back(id)?;
        self.net.destroy(id, self.ledger(id).map(|l| self.net.address(l.addr_index)));
        let dir = self.dir(id);
        // Volumes first: removing the directory must never reach into a mounted volume.
        super::storage::unmount_all(&dir);
        if super::storage::is_mount(&super::storage::volumes_dir(&dir)) {
            return Err(err(id, "its volumes are still mounted; retrying later"));
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err(id, e))?;
        }
        self.sync_firewall()
    }

    async fn sync_storage(
        &self,
        volumes: &[nimbus_proto::HostVolume],
        snapshots: &[nimbus_proto::HostSnapshot],
    ) -> Result<crate::StorageReport> {
        let mounts = self.volume_mounts();
        let owner_of = |v: &nimbus_proto::HostVolume| -> std::result::Result<u32, String> {
            Ok(self.ranges.base_for(&v.tenant).map_err(|e| e.to_string())? + 1000)
        };
        let (volumes, snapshots) = self.storage.sync(volumes, snapshots, &self.cfg.data_dir.join("instances"), &mounts, &owner_of);
        Ok(crate::StorageReport { volumes, snapshots })
    }

    async fn sync_vpns(&self, vpns: &[nimbus_proto::VpnGateway]) -> Result<Vec<nimbus_proto::VpnReport>> {
        Ok(self.vpns.sync(vpns))
    }

    async fn gpu_signals(&self) -> Result<Vec<nimbus_core::gpu_health::Signals>> {
        let Some(nvml) = self.health_nvml.get_or_init(|| nvml_wrapper::Nvml::init().ok().map(Arc::new)).clone() else {
            return Ok(Vec::new());
        };
        self.xids.ensure_started();
        let xids = self.xids.clone();
        tokio::task::spawn_blocking(move || super::health::signals(&nvml, &xids))
            .await
            .map_err(|e| DriverError::Host(format!("GPU health look: {e}")))
    }

    fn gpu_resets(&self) -> bool {
        self.cfg.gpu_reset
    }

    async fn reset_gpu(&self, index: i64) -> Result<()> {
        if !self.cfg.gpu_reset {
            return Err(DriverError::Host("GPU resets are turned off on this host (--gpu-reset never)".into()));
        }
        super::health::reset(index).await.map_err(DriverError::Host)
    }

    async fn volume_usage(&self) -> Result<Vec<(String, i64)>> {
        Ok(self.storage.usage())
    }

    async fn sample(&self) -> Result<Vec<nimbus_proto::MetricSample>> {
        use super::metrics::{gpu_usage, Reading};
        let now = std::time::Instant::now();
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        let nvml = self.nvml.get_or_init(|| nvml_wrapper::Nvml::init().ok()).as_ref();
        let mut sampler = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::new();
        let mut out = Vec::new();
        for id in self.ids() {
            if !runtime::running(&self.cgroups, &id) {
                continue;
            }
            let Some((cpu_usec, memory)) = self.cgroups.usage(&id) else { continue };
            let (rx_bytes, tx_bytes) = self.net.counters(&id).unwrap_or((0, 0));
            live.push(id.clone());
            let Some((cpu_millicores, net_rx_bps, net_tx_bps)) = sampler.observe(&id, Reading { at: now, cpu_usec, rx_bytes, tx_bytes })
            else {
                continue;
            };
            let disk = sampler.disk(&id, &self.dir(&id).join("upper"), now);
            let gpus = self.ledger(&id).map(|l| l.spec.gpu_indices).unwrap_or_default();
            let (gpu_util_permille, gpu_memory_bytes) = gpu_usage(nvml, &gpus);
            out.push(nimbus_proto::MetricSample {
                instance_id: id,
                at,
                cpu_millicores,
                memory_bytes: i64::try_from(memory).unwrap_or(i64::MAX),
                disk_bytes: i64::try_from(disk).unwrap_or(i64::MAX),
                net_rx_bps,
                net_tx_bps,
                gpu_util_permille,
                gpu_memory_bytes,
            });
        }
        sampler.retain(&live);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gpus: Vec<i64>) -> DesiredInstance {
        DesiredInstance {
            id: "0123456789abcdef0123456789abcdef".into(),
            hostname: "h".into(),
            image: "debian-12".into(),
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 10,
            gpu_indices: gpus,
            mig_devices: vec![],
            ssh_public_keys: vec![],
            user_data: None,
            power: Power::Running,
            restart_generation: 0,
            file_system_mounts: vec![],
            firewall: vec![],
            volumes: vec![],
            source_snapshot: None,
            ssh_port: None,
            port_forwards: vec![],
            public_address: None,
            peers: vec![],
            tenant: "org".into(),
            privileged: false,
            machine: Default::default(),
        }
    }

    #[test]
    fn instances_without_gpus_never_look_at_the_host_gpus() {
        let plan = gpu_plan(&spec(vec![]), || panic!("the host was read for an instance without GPUs")).expect("no GPUs");
        assert_eq!(plan, None);
    }

    #[test]
    fn instances_with_gpus_on_a_host_without_nvidia_fail_to_start_clearly() {
        let empty = crate::container::TempDir::new();
        let host = || gpu::Host { root: empty.0.clone(), gpus: vec![], gpus_source: "NVML", ldconfig: String::new(), arch: "x86-64" };
        let e = gpu_plan(&spec(vec![0, 1]), host).expect_err("no driver");
        let DriverError::Instance { id, message } = &e else { panic!("{e:?}") };
        assert_eq!(id, "0123456789abcdef0123456789abcdef");
        assert_eq!(message, "the instance asks for GPUs [0, 1] but this host has no NVIDIA driver loaded (/dev/nvidiactl does not exist)");
    }

    /// An instance with only MIG devices is planned too: it never starts without its slice.
    #[test]
    fn instances_with_only_mig_devices_are_planned() {
        let empty = crate::container::TempDir::new();
        let mut s = spec(vec![]);
        s.mig_devices =
            vec![nimbus_proto::MigDeviceRef { parent_index: 0, uuid: "MIG-x".into(), gpu_instance_id: 1, compute_instance_id: 0 }];
        let host = || gpu::Host { root: empty.0.clone(), gpus: vec![], gpus_source: "NVML", ldconfig: String::new(), arch: "x86-64" };
        let e = gpu_plan(&s, host).expect_err("no driver here: the start fails instead of running without its MIG device");
        assert!(e.to_string().contains("no NVIDIA driver"), "{e}");
    }
}
