//! `sim`: a driver double for tests and benchmarks. It runs nothing: it records instances in
//! memory (and, when given a state file, on disk, so a restarted agent adopts them like a real
//! driver would) and reports them running at once. Its inventory is whatever it is configured
//! with, which lets a test register a host with eight fake H100s. Never the default driver; the
//! agent announces it loudly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use nimbus_core::gpu_health::Signals;
use nimbus_proto::{ActualState, DesiredInstance, GpuInfo, InstanceReport, Inventory, MigInfo, Power};

use crate::{Driver, DriverError, Result};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub hostname: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// `(model, count)`, e.g. `("NVIDIA H100 80GB HBM3", 8)`.
    pub gpus: Vec<(String, i64)>,
    /// Where to persist instances across agent restarts; `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// Third octet block for fake addresses, so several sim hosts hand out distinct ones.
    pub address_block: u8,
    /// MIG devices an "operator created": `(GPU index, profile, count)`, e.g. `(0, "1g.18gb", 7)`.
    pub mig_devices: Vec<(i64, String, i64)>,
    /// Fault injection: a JSON file the test writes, `{"<GPU index>": Signals}` (see
    /// `nimbus_core::gpu_health::Signals`; `xids` lists every Xid so far, each delivered once).
    /// Every GPU reset the agent asks for is appended to `<file>.resets`, one index a line.
    pub faults_file: Option<PathBuf>,
}

/// What NVML reports as the total memory of a GPU of this name (sim inventory).
pub fn sim_gpu_memory_mib(model: &str) -> i64 {
    if nimbus_core::catalog::gpu_model_matches("H200", model) {
        143_771
    } else if nimbus_core::catalog::gpu_model_matches("B200", model) {
        183_359
    } else {
        81_559
    }
}

/// A MIG profile's memory as its name says (`1g.18gb` → 18 GiB less NVML's reserve).
fn profile_memory_mib(profile: &str) -> i64 {
    let gb = profile.split_once("g.").and_then(|(_, m)| m.split(['g', '+']).next()).and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
    (gb * 1024 - 256).max(0)
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hostname: "sim-host".to_owned(),
            vcpus: 64,
            memory_mib: 512 * 1024,
            disk_gib: 10_000,
            gpus: Vec::new(),
            state_file: None,
            address_block: 0,
            mig_devices: Vec::new(),
            faults_file: None,
        }
    }
}

pub struct SimDriver {
    cfg: SimConfig,
    state: Mutex<BTreeMap<String, InstanceReport>>,
    next_addr: Mutex<u32>,
    /// Volume ids per instance, from the last ensure.
    specs: Mutex<BTreeMap<String, Vec<String>>>,
    /// Xids of the faults file already delivered, per GPU index.
    xids_seen: Mutex<BTreeMap<i64, usize>>,
}

impl SimDriver {
    pub fn new(cfg: SimConfig) -> Self {
        let state: BTreeMap<String, InstanceReport> =
            cfg.state_file.as_ref().and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let next = state.len() as u32 + 1;
        SimDriver {
            cfg,
            state: Mutex::new(state),
            next_addr: Mutex::new(next),
            specs: Mutex::new(BTreeMap::new()),
            xids_seen: Mutex::new(BTreeMap::new()),
        }
    }

    fn persist(&self, m: &BTreeMap<String, InstanceReport>) -> Result<()> {
        if let Some(p) = &self.cfg.state_file {
            let tmp = p.with_extension("tmp");
            let bytes = serde_json::to_vec(m).map_err(|e| DriverError::Host(e.to_string()))?;
            std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, p)).map_err(|e| DriverError::Host(e.to_string()))?;
        }
        Ok(())
    }

    fn addresses(&self) -> (String, String) {
        let mut n = self.next_addr.lock().unwrap_or_else(|p| p.into_inner());
        let k = *n;
        *n += 1;
        let (hi, lo) = ((k >> 8) & 0xff, k & 0xff);
        // Never routable (nothing ever sends traffic to a sim address), and telling: a client
        // that sees one knows the instance is simulated (`nimbus_core::net::SIMULATED`).
        (format!("198.19.{}.{}", hi.wrapping_add(u32::from(self.cfg.address_block)) & 0xff, lo), format!("10.255.{hi}.{lo}"))
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut BTreeMap<String, InstanceReport>) -> T) -> Result<T> {
        let mut m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut m);
        self.persist(&m)?;
        Ok(out)
    }
}

#[async_trait]
impl Driver for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    async fn inventory(&self) -> Result<Inventory> {
        let mut gpus = Vec::new();
        for (model, count) in &self.cfg.gpus {
            for _ in 0..*count {
                let index = gpus.len() as i64;
                let mut mig_devices = Vec::new();
                for (_, profile, n) in self.cfg.mig_devices.iter().filter(|(g, _, _)| *g == index) {
                    for _ in 0..*n {
                        let gi = mig_devices.len() as i64 + 1;
                        mig_devices.push(MigInfo {
                            uuid: format!("MIG-sim-{}-{index}-{gi}", self.cfg.hostname),
                            profile: profile.clone(),
                            memory_mib: profile_memory_mib(profile),
                            gpu_instance_id: gi,
                            compute_instance_id: 0,
                        });
                    }
                }
                gpus.push(GpuInfo {
                    index,
                    model: model.clone(),
                    memory_mib: sim_gpu_memory_mib(model),
                    uuid: format!("GPU-sim-{}-{index}", self.cfg.hostname),
                    mig_devices,
                    pci_bus_id: format!("00000000:{:02x}:00.0", 0x17 + index),
                });
            }
        }
        Ok(Inventory {
            hostname: self.cfg.hostname.clone(),
            cpu_model: "sim CPU".to_owned(),
            vcpus: self.cfg.vcpus,
            memory_mib: self.cfg.memory_mib,
            disk_gib: self.cfg.disk_gib,
            gpus,
            driver: "sim".to_owned(),
            public_ip: None,
            network: None,
            // A sim instance is the same nothing either way; VM types are placeable on sim hosts.
            machines: vec![nimbus_proto::Machine::Container, nimbus_proto::Machine::Vm],
        })
    }

    /// Healthy, idle GPUs unless the faults file says otherwise (re-read on every look).
    async fn gpu_signals(&self) -> Result<Vec<Signals>> {
        let inv = self.inventory().await?;
        let faults: BTreeMap<String, Signals> = match &self.cfg.faults_file {
            Some(p) => match std::fs::read(p) {
                Ok(b) => serde_json::from_slice(&b).map_err(|e| DriverError::Host(format!("sim faults file {}: {e}", p.display())))?,
                Err(_) => BTreeMap::new(),
            },
            None => BTreeMap::new(),
        };
        let mut seen = self.xids_seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inv
            .gpus
            .iter()
            .map(|g| {
                let f = faults.get(&g.index.to_string()).cloned().unwrap_or_default();
                let done = seen.entry(g.index).or_insert(0);
                let xids = f.xids.get(*done..).map(<[u64]>::to_vec).unwrap_or_default();
                *done = (*done).max(f.xids.len());
                Signals {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    xids,
                    processes: Some(f.processes.unwrap_or(0)),
                    mig_mode: !g.mig_devices.is_empty(),
                    ..f
                }
            })
            .collect())
    }

    fn gpu_resets(&self) -> bool {
        true
    }

    async fn reset_gpu(&self, index: i64) -> Result<()> {
        if let Some(p) = &self.cfg.faults_file {
            use std::io::Write;
            let log = p.with_extension("resets");
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| DriverError::Host(e.to_string()))?;
            writeln!(f, "{index}").map_err(|e| DriverError::Host(e.to_string()))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<InstanceReport>> {
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect())
    }

    async fn ensure(&self, spec: &DesiredInstance) -> Result<InstanceReport> {
        let vols = if spec.power == Power::Running { spec.volumes.iter().map(|v| v.volume_id.clone()).collect() } else { Vec::new() };
        self.specs.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.id.clone(), vols);
        let fresh = self.addresses();
        self.with_state(|m| {
            let r = m.entry(spec.id.clone()).or_insert_with(|| InstanceReport {
                id: spec.id.clone(),
                state: ActualState::Running,
                ip: Some(fresh.0.clone()),
                private_ip: Some(fresh.1.clone()),
                restart_generation: spec.restart_generation,
                message: None,
            });
            r.state = match spec.power {
                Power::Running => ActualState::Running,
                Power::Stopped => ActualState::Stopped,
            };
            r.clone()
        })
    }

    async fn restart(&self, spec: &DesiredInstance) -> Result<InstanceReport> {
        self.ensure(spec).await?;
        self.with_state(|m| {
            let r = m.get_mut(&spec.id).map(|r| {
                r.restart_generation = spec.restart_generation;
                r.state = ActualState::Running;
                r.clone()
            });
            r.ok_or_else(|| DriverError::Instance { id: spec.id.clone(), message: "vanished during restart".into() })
        })?
    }

    async fn stop(&self, id: &str) -> Result<()> {
        self.with_state(|m| {
            if let Some(r) = m.get_mut(id) {
                r.state = ActualState::Stopped;
            }
        })
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        self.specs.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.with_state(|m| {
            m.remove(id);
        })
    }

    /// Volumes and snapshots exist as soon as they are listed (this is the test double): every
    /// listed snapshot is ready at once, and a volume counts as mounted in every running
    /// instance whose spec lists it.
    async fn sync_storage(
        &self,
        volumes: &[nimbus_proto::HostVolume],
        snapshots: &[nimbus_proto::HostSnapshot],
    ) -> Result<crate::StorageReport> {
        let specs = self.specs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mounted_in =
            |vid: &str| -> Vec<String> { specs.iter().filter(|(_, vols)| vols.iter().any(|v| v == vid)).map(|(i, _)| i.clone()).collect() };
        Ok(crate::StorageReport {
            volumes: volumes
                .iter()
                .map(|v| {
                    let all = mounted_in(&v.id);
                    nimbus_proto::VolumeReport {
                        id: v.id.clone(),
                        size_gib: v.size_gib,
                        mounted_in: all.first().cloned(),
                        mounted_in_all: all,
                        // The sim has no file systems: nothing to measure.
                        used_bytes: None,
                        message: None,
                    }
                })
                .collect(),
            snapshots: snapshots
                .iter()
                .map(|s| nimbus_proto::SnapshotReport {
                    id: s.id.clone(),
                    state: nimbus_proto::SnapshotState::Ready,
                    size_bytes: 0,
                    message: None,
                })
                .collect(),
        })
    }

    async fn sync_vpns(&self, vpns: &[nimbus_proto::VpnGateway]) -> Result<Vec<nimbus_proto::VpnReport>> {
        Ok(sim_vpns(vpns).await)
    }

    /// Synthetic figures (this is the test double): a fixed load per running instance, so tests
    /// can check that samples flow end to end without real cgroups.
    async fn sample(&self) -> Result<Vec<nimbus_proto::MetricSample>> {
        let now = nimbus_core_now_micros();
        Ok(self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.state == ActualState::Running)
            .map(|r| nimbus_proto::MetricSample {
                instance_id: r.id.clone(),
                at: now,
                cpu_millicores: SIM_CPU_MILLICORES,
                memory_bytes: SIM_MEMORY_BYTES,
                disk_bytes: 0,
                net_rx_bps: 0,
                net_tx_bps: 0,
                gpu_util_permille: None,
                gpu_memory_bytes: None,
            })
            .collect())
    }
}

/// Gateways of the sim driver: reported up and never brought up (this is the test double).
async fn sim_vpns(vpns: &[nimbus_proto::VpnGateway]) -> Vec<nimbus_proto::VpnReport> {
    vpns.iter()
        .map(|v| nimbus_proto::VpnReport {
            id: v.id.clone(),
            up: true,
            endpoint: Some(format!("192.0.2.1:{}", v.listen_port)),
            network: Some("10.255.0.0/16".to_owned()),
            message: None,
        })
        .collect()
}

/// What every running sim instance reports using.
pub const SIM_CPU_MILLICORES: i64 = 250;
pub const SIM_MEMORY_BYTES: i64 = 64 << 20;

fn nimbus_core_now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
