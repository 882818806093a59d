//! The host agent: registers with the server, reports inventory and actual instance state, and
//! reconciles the desired state it long-polls for against what its driver has.
//!
//! The agent keeps no state that matters in memory: its credentials live in `<data-dir>/agent.json`
//! and its instances are whatever the driver lists, so a restarted agent re-registers as the same
//! host (with its host secret, which proves it is that host) and adopts running instances instead
//! of recreating them. Anything the driver has that the server no longer wants (an orphan) is
//! destroyed.
//!
//! Each instance's `user_data` is kept in `<data-dir>/user-data/<instance id>` once received,
//! and every desired-state poll lists those instances, so the server sends each script once
//! rather than on every generation bump (and not again after a restart).
//!
//! The data dir holds the host secret and tenants' user data. Every file the agent writes in it
//! is created 0600 (a temp file opened with that mode, then renamed over the old one, never
//! written loose and chmodded after), the user data in a 0700 directory. The data dir itself is
//! 0711, and tightened to that on start (group and other lose read and write): nobody else can
//! list it, but others keep search permission, because the container driver keeps its instances
//! under `<data-dir>/container` and its launcher, once inside an instance's user namespace, runs
//! as a uid that does not own the dir and must still traverse it to reach the instance's root
//! file system (an ancestor at 0700 makes that EACCES). The driver's own files there (its
//! per-instance ledgers) are the driver's to keep private.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{DriverOp, ServerCall};
use nimbus_core::gpu_health::{idle_action, GpuState, IdleAction, Signals};
use nimbus_driver::files::write_private;
use nimbus_driver::Driver;
use nimbus_proto as proto;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

pub mod metrics;
pub mod tls;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("server rejected credentials")]
    Unauthorized,
    #[error("server error {status}: {body}")]
    Server { status: u16, body: String },
    #[error("transport: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("driver: {0}")]
    Driver(#[from] nimbus_driver::DriverError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
}

/// How often instances are sampled (the metrics stream pushes at this rate).
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server root, e.g. `http://127.0.0.1:8080`, or several replicas' roots separated by
    /// commas: the agent uses one and moves to the next when it stops answering.
    pub server_url: String,
    /// Host registration token: used when the agent has no host secret yet, or the server
    /// rejects the one it has (after an operator's re-enrolment). Tokens are single-use and
    /// expire by default, so a restarted agent relies on the secret in `agent.json`.
    pub token: String,
    pub data_dir: PathBuf,
    /// Long-poll window.
    pub poll_wait: Duration,
    /// The address clients reach this host's forwarded ports on, reported with the inventory.
    pub public_ip: Option<String>,
    /// What the server's certificate is checked against (an `https://` server URL).
    pub trust: tls::ServerTrust,
    /// Allow plain HTTP to a server that is not on loopback.
    pub insecure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credentials {
    machine_id: String,
    #[serde(default)]
    host_id: Option<String>,
    #[serde(default)]
    host_secret: Option<String>,
}

pub struct Agent {
    cfg: AgentConfig,
    /// The replicas from `cfg.server_url`, and which one is in use.
    servers: Vec<String>,
    server: AtomicUsize,
    driver: Arc<dyn Driver>,
    http: reqwest::Client,
    secret: tokio::sync::RwLock<Option<String>>,
    heartbeat: std::sync::Mutex<Duration>,
    applied_generation: AtomicI64,
    report_now: Notify,
    /// The spec each instance was last ensured with by this process; a changed spec (new
    /// firewall rules, say) is ensured again. Empty after a restart, so everything is ensured
    /// once (ensure is idempotent).
    applied: std::sync::Mutex<HashMap<String, proto::DesiredInstance>>,
    /// The VPN gateways' state after the last apply, sent with every report.
    vpn_reports: std::sync::Mutex<Vec<proto::VpnReport>>,
    /// The host's volumes and snapshots after the last apply, sent with every report.
    storage: std::sync::Mutex<nimbus_driver::StorageReport>,
    /// Instances whose readiness is being watched (one watcher each).
    watching: std::sync::Mutex<HashSet<String>>,
    /// Instances whose `user_data` is kept in `user-data/` (listed in every desired poll).
    held: std::sync::Mutex<BTreeSet<String>>,
    /// Serialises writes of files in the data dir (their temp files have fixed names).
    files: std::sync::Mutex<()>,
    /// What the agent knows of each GPU's health, by index (kept in `gpu-health.json`).
    gpu_states: std::sync::Mutex<BTreeMap<i64, GpuState>>,
    /// GPUs the host's instances hold, as of the last apply; `None` until the first apply, or
    /// while an instance the server no longer wants could not be destroyed: then every GPU
    /// counts as held, and none is reset or called clean.
    gpus_held: std::sync::Mutex<Option<BTreeSet<i64>>>,
    /// This agent's Prometheus registry (see the `metrics` module).
    metrics: metrics::Metrics,
}

/// The data dir: not listable by others, but traversable (see the module doc).
const DATA_DIR_MODE: u32 = 0o711;
/// Directories and files holding secrets or tenants' data: the agent's alone.
const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with `mode`, or takes from an existing one the
/// permission bits `mode` does not have (never adds any).
fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    tighten(dir, mode)
}

/// Clears the permission bits of an existing file or directory that `mode` does not allow.
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => Err(std::io::Error::other(format!("{} is a symbolic link", path.display()))),
        Ok(md) if md.permissions().mode() & 0o777 & !mode != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(md.permissions().mode() & 0o777 & mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An instance id the agent may use as a file name.
fn safe_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Agent {
    /// Fails on a server URL the agent must not use (plain HTTP off loopback without
    /// `insecure`) or a trust setting that does not load.
    pub fn new(cfg: AgentConfig, driver: Arc<dyn Driver>) -> Result<Arc<Agent>, AgentError> {
        let servers = tls::server_urls(&cfg.server_url, cfg.insecure).map_err(AgentError::Config)?;
        let http = tls::http_client(&cfg.trust).map_err(AgentError::Config)?;
        Ok(Arc::new(Agent {
            cfg,
            servers,
            server: AtomicUsize::new(0),
            driver,
            http,
            secret: tokio::sync::RwLock::new(None),
            heartbeat: std::sync::Mutex::new(Duration::from_secs(5)),
            applied_generation: AtomicI64::new(0),
            report_now: Notify::new(),
            applied: std::sync::Mutex::new(HashMap::new()),
            vpn_reports: std::sync::Mutex::new(Vec::new()),
            storage: std::sync::Mutex::new(nimbus_driver::StorageReport::default()),
            watching: std::sync::Mutex::new(HashSet::new()),
            held: std::sync::Mutex::new(BTreeSet::new()),
            files: std::sync::Mutex::new(()),
            gpu_states: std::sync::Mutex::new(BTreeMap::new()),
            gpus_held: std::sync::Mutex::new(None),
            metrics: metrics::Metrics::new(),
        }))
    }

    /// Reports as soon as instance `id`, just started, is reachable: SkyPilot and dstack SSH in
    /// the moment they see `active`, so readiness must not wait for the next heartbeat.
    fn watch_ready(self: &Arc<Self>, id: &str) {
        if !self.watching.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned()) {
            return;
        }
        let me = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if me.driver.wait_ready(&id).await {
                me.report_now.notify_one();
            }
            me.watching.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    fn creds_path(&self) -> PathBuf {
        self.cfg.data_dir.join("agent.json")
    }

    fn load_creds(&self) -> Result<Credentials, AgentError> {
        match std::fs::read(self.creds_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AgentError::Io(std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
                Ok(Credentials { machine_id: hex::encode(b), host_id: None, host_secret: None })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn save_creds(&self, c: &Credentials) -> Result<(), AgentError> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        make_dir(&self.cfg.data_dir, DATA_DIR_MODE)?;
        write_private(&self.creds_path(), &serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?)?;
        Ok(())
    }

    fn user_data_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("user-data")
    }

    /// Makes the data dir private (see the module doc; an older agent wrote it and agent.json
    /// with default modes) and reads which instances' user data it keeps.
    pub fn prepare_data_dir(&self) -> Result<(), AgentError> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        make_dir(&self.cfg.data_dir, DATA_DIR_MODE)?;
        tighten(&self.creds_path(), PRIVATE_FILE_MODE)?;
        let ud = self.user_data_dir();
        make_dir(&ud, PRIVATE_DIR_MODE)?;
        let mut held = BTreeSet::new();
        for e in std::fs::read_dir(&ud)? {
            let e = e?;
            let Ok(name) = e.file_name().into_string() else { continue };
            if !safe_id(&name) || !e.file_type()?.is_file() {
                // Leftover temp files (`.<id>.tmp`) and anything else not written by us.
                continue;
            }
            tighten(&e.path(), PRIVATE_FILE_MODE)?;
            held.insert(name);
        }
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
        let gpus = self.gpu_health_path();
        tighten(&gpus, PRIVATE_FILE_MODE)?;
        match std::fs::read(&gpus) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(states) => *self.gpu_states.lock().unwrap_or_else(|p| p.into_inner()) = states,
                // Starting afresh is safe: every GPU is then dirty until checked.
                Err(e) => tracing::warn!(error = %e, "unreadable gpu-health.json; GPUs are checked again"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn gpu_health_path(&self) -> PathBuf {
        self.cfg.data_dir.join("gpu-health.json")
    }

    /// One look at the host's GPUs: updates what the agent knows of each, resets idle ones
    /// that need it (see `nimbus_core::gpu_health::idle_action`), and says where each stands.
    /// `None` when the driver could not look: the server then keeps what it had.
    pub async fn gpu_health(&self) -> Option<Vec<proto::GpuHealthReport>> {
        let signals = match self.metrics.driver(DriverOp::GpuSignals, self.driver.gpu_signals()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading GPU health failed");
                return None;
            }
        };
        self.metrics.xids(&signals);
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default();
        let held = self.gpus_held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let resets = self.driver.gpu_resets();
        let before = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Vec::with_capacity(signals.len());
        for s in &signals {
            let in_use = held.as_ref().is_none_or(|h| h.contains(&s.index));
            let (mut a, action) = {
                let mut states = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner());
                let st = states.entry(s.index).or_insert_with(|| GpuState::new(&s.uuid, &boot));
                let a = st.observe(s, &boot);
                if held.is_some() && in_use {
                    st.dirty = true;
                }
                // A GPU in MIG mode is never reset: that would destroy the operator's MIG devices.
                let action = if in_use { IdleAction::Nothing } else { idle_action(st, &a, s.processes, resets && !s.mig_mode) };
                (a, action)
            };
            match action {
                IdleAction::Reset => match self.metrics.driver(DriverOp::ResetGpu, self.driver.reset_gpu(s.index)).await {
                    Ok(()) => {
                        tracing::info!(gpu = s.index, uuid = %s.uuid, "GPU reset");
                        let mut states = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(st) = states.get_mut(&s.index) {
                            st.reset_done();
                            // What the look saw was from before the reset; the next look sees afresh.
                            let after = Signals { index: s.index, uuid: s.uuid.clone(), processes: Some(0), ..Signals::default() };
                            a = st.observe(&after, &boot);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(gpu = s.index, error = %e, "GPU reset failed");
                        // Between tenants the reset is a "where the GPU allows" extra: with no
                        // process left it is checked all the same. A condition only a reset
                        // clears keeps it out.
                        if !a.condition.cleared_by_reset() {
                            if let Some(st) = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&s.index) {
                                st.dirty = false;
                            }
                        }
                        a.reasons.push(format!("reset failed: {e}"));
                    }
                },
                IdleAction::MarkClean => {
                    if let Some(st) = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&s.index) {
                        st.dirty = false;
                    }
                }
                IdleAction::Wait => a.reasons.push(format!(
                    "{} process(es) of its last instance still use it",
                    s.processes.map_or("unknown".into(), |n| n.to_string())
                )),
                IdleAction::Nothing => {}
            }
            let clean = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner()).get(&s.index).is_some_and(|st| !st.dirty);
            out.push(proto::GpuHealthReport { index: s.index, uuid: s.uuid.clone(), condition: a.condition, reasons: a.reasons, clean });
        }
        let after = self.gpu_states.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if after != before {
            let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
            let written =
                serde_json::to_vec_pretty(&after).map_err(std::io::Error::other).and_then(|b| write_private(&self.gpu_health_path(), &b));
            if let Err(e) = written {
                tracing::warn!(error = %e, "saving gpu-health.json failed");
            }
        }
        self.metrics.gpus_looked(&out);
        Some(out)
    }

    /// Instances whose user data this agent keeps (what it tells the server it holds).
    pub fn user_data_held(&self) -> Vec<String> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Fills in the user data the server left out (from `user-data/`) and keeps what it sent.
    /// Returns false when a kept copy turned out unreadable: it is forgotten, and the caller
    /// polls again at once so that the server sends it (nothing is applied without it).
    fn take_user_data(&self, d: &mut proto::DesiredResponse) -> bool {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.user_data_dir();
        let omitted: HashSet<&str> = d.user_data_omitted.iter().map(String::as_str).collect();
        let mut complete = true;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for i in &mut d.instances {
            if !safe_id(&i.id) {
                continue;
            }
            if omitted.contains(i.id.as_str()) {
                match std::fs::read(dir.join(&i.id)).map(String::from_utf8) {
                    Ok(Ok(u)) => i.user_data = Some(u),
                    other => {
                        tracing::warn!(instance = %i.id, result = ?other.map(|r| r.map(|_| ())), "kept user data unreadable; asking again");
                        held.remove(&i.id);
                        complete = false;
                    }
                }
            } else if let Some(u) = &i.user_data {
                if !held.contains(&i.id) {
                    match write_private(&dir.join(&i.id), u.as_bytes()) {
                        Ok(()) => {
                            held.insert(i.id.clone());
                        }
                        // Not kept: the server keeps sending it, which is only slower.
                        Err(e) => tracing::warn!(instance = %i.id, error = %e, "keeping user data failed"),
                    }
                }
            }
        }
        complete
    }

    /// Drops the kept user data of instances the host no longer has.
    fn forget_user_data(&self, d: &proto::DesiredResponse) {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashSet<&str> = d.instances.iter().map(|i| i.id.as_str()).collect();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = held.iter().filter(|id| !wanted.contains(id.as_str())).cloned().collect();
        for id in gone {
            match std::fs::remove_file(self.user_data_dir().join(&id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(instance = %id, error = %e, "removing kept user data failed");
                }
                _ => {
                    held.remove(&id);
                }
            }
        }
    }

    /// The replica in use now.
    pub fn server(&self) -> &str {
        &self.servers[self.server.load(Ordering::SeqCst) % self.servers.len()]
    }

    /// Moves to the next replica after `from` failed (unless another request moved already).
    fn next_server(&self, from: usize) {
        let next = (from + 1) % self.servers.len();
        if self.server.compare_exchange(from, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() && next != from {
            tracing::warn!(from = %self.servers[from], to = %self.servers[next], "the server stopped answering; trying another replica");
        }
    }

    /// One request to the replica in use. A replica that refuses the connection is skipped at
    /// once, trying each other replica once; one that fails mid-request (killed, restarting,
    /// 502/503 from a proxy) is left for the next request. The host's secret is valid with
    /// every replica (they share the database), so moving needs no re-registration.
    async fn post<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        call: ServerCall,
        bearer: Option<&str>,
        body: &Req,
    ) -> Result<Resp, AgentError> {
        let r = self.post_once(call.path(), bearer, body).await;
        self.metrics.server_request(call, &r);
        r
    }

    async fn post_once<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Req,
    ) -> Result<Resp, AgentError> {
        let mut tries = 0;
        let resp = loop {
            let i = self.server.load(Ordering::SeqCst) % self.servers.len();
            let mut rb = self.http.post(format!("{}{path}", self.servers[i])).json(body);
            if let Some(b) = bearer {
                rb = rb.bearer_auth(b);
            }
            match rb.send().await {
                Ok(r) if matches!(r.status().as_u16(), 502..=504) && self.servers.len() > 1 => {
                    self.next_server(i);
                    let status = r.status().as_u16();
                    return Err(AgentError::Server { status, body: r.text().await.unwrap_or_default() });
                }
                Ok(r) => break r,
                Err(e) => {
                    self.next_server(i);
                    tries += 1;
                    if !e.is_connect() || tries >= self.servers.len() {
                        return Err(AgentError::Transport(e));
                    }
                }
            }
        };
        let status = resp.status();
        if status.as_u16() == 401 {
            return Err(AgentError::Unauthorized);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(AgentError::Server { status: status.as_u16(), body });
        }
        resp.json().await.map_err(AgentError::Transport)
    }

    /// Registers (or re-registers as the same machine) and stores the host credential. A host
    /// that has a secret presents it (proving it is that host); the token is for a host that
    /// has none yet, or whose secret an operator revoked to re-enrol it.
    pub async fn register(&self) -> Result<proto::RegisterResponse, AgentError> {
        self.prepare_data_dir()?;
        let mut creds = self.load_creds()?;
        let mut inventory = self.metrics.driver(DriverOp::Inventory, self.driver.inventory()).await?;
        if self.cfg.public_ip.is_some() {
            inventory.public_ip = self.cfg.public_ip.clone();
        }
        // The credential travels in the Authorization header, never in the body.
        let req = proto::RegisterRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            token: String::new(),
            machine_id: creds.machine_id.clone(),
            inventory,
        };
        let with_token = || self.post::<_, proto::RegisterResponse>(ServerCall::Register, Some(&self.cfg.token), &req);
        let resp = match creds.host_secret.as_deref() {
            Some(secret) => match self.post(ServerCall::Register, Some(secret), &req).await {
                Err(AgentError::Unauthorized) if !self.cfg.token.is_empty() => {
                    tracing::warn!("the server rejected this host's secret; registering with the host token");
                    with_token().await?
                }
                r => r?,
            },
            None => with_token().await?,
        };
        creds.host_id = Some(resp.host_id.clone());
        creds.host_secret = Some(resp.host_secret.clone());
        self.save_creds(&creds)?;
        *self.secret.write().await = Some(resp.host_secret.clone());
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Duration::from_millis(resp.heartbeat_interval_ms.max(50));
        tracing::info!(host_id = %resp.host_id, region = %resp.region, driver = self.driver.name(), "agent registered");
        Ok(resp)
    }

    async fn secret(&self) -> Option<String> {
        self.secret.read().await.clone()
    }

    /// Sends one report of everything the driver has.
    pub async fn report(&self) -> Result<proto::ReportResponse, AgentError> {
        let instances = self.metrics.driver(DriverOp::List, self.driver.list()).await?;
        // One guard, cloned out before the request is built (two locks of it in one expression
        // would deadlock: a temporary guard lives to the end of the statement).
        let mut storage = self.storage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Used bytes change without any desired-state change (an instance writes), so they are
        // measured for every report, not at the last apply.
        match self.metrics.driver(DriverOp::VolumeUsage, self.driver.volume_usage()).await {
            Ok(usage) => {
                for v in &mut storage.volumes {
                    v.used_bytes = usage.iter().find(|(id, _)| *id == v.id).map(|(_, b)| *b);
                }
            }
            Err(e) => tracing::debug!(error = %e, "measuring volumes failed"),
        }
        // Read before the GPUs are looked at: the server trusts a GPU's "checked" only from a
        // report whose generation the look had already applied.
        let applied_generation = self.applied_generation.load(Ordering::SeqCst);
        let gpus = self.gpu_health().await;
        let req = proto::ReportRequest {
            instances,
            applied_generation,
            volumes: storage.volumes,
            snapshots: storage.snapshots,
            vpns: self.vpn_reports.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            gpus,
        };
        let secret = self.secret().await;
        let resp = self.post(ServerCall::Report, secret.as_deref(), &req).await?;
        self.metrics.reported();
        Ok(resp)
    }

    /// Brings the driver in line with `desired`. Errors on one instance do not stop the others.
    pub async fn apply(self: &Arc<Self>, desired: &proto::DesiredResponse) -> Result<(), AgentError> {
        let _timer = self.metrics.apply_timer();
        // The private network first: a member change (the common desired change on a busy
        // org) is then in force before any slow instance start.
        if let Some(f) = &desired.fabric {
            if let Err(e) = self.metrics.driver(DriverOp::SyncFabric, self.driver.sync_fabric(f)).await {
                tracing::warn!(error = %e, "driver failed to converge the private network");
            }
        }
        // Volumes and snapshots before instances, so an attached volume exists when it is mounted.
        self.sync_storage(desired).await;
        let actual: HashMap<String, proto::InstanceReport> =
            self.metrics.driver(DriverOp::List, self.driver.list()).await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let wanted: HashSet<&str> = desired.instances.iter().map(|d| d.id.as_str()).collect();
        // An instance that should run but whose processes died is restarted below, and its
        // tenant lost every process in it: the server hears of that first (a heartbeat might not
        // fall between the death and this restart), so the instance is `unhealthy` until back.
        let died = desired
            .instances
            .iter()
            .any(|d| d.power == proto::Power::Running && actual.get(&d.id).is_some_and(|a| a.state == proto::ActualState::Stopped));
        if died {
            if let Err(e) = self.report().await {
                tracing::warn!(error = %e, "reporting dead instances before restarting them failed");
            }
        }
        for d in &desired.instances {
            let res = match (actual.get(&d.id), d.power) {
                (None, _) => self.metrics.driver(DriverOp::Ensure, self.driver.ensure(d)).await.map(|_| ()),
                (Some(a), proto::Power::Running) if a.restart_generation < d.restart_generation => {
                    self.metrics.driver(DriverOp::Restart, self.driver.restart(d)).await.map(|_| ())
                }
                (Some(a), proto::Power::Running) if a.state != proto::ActualState::Running => {
                    self.metrics.driver(DriverOp::Ensure, self.driver.ensure(d)).await.map(|_| ())
                }
                (Some(a), proto::Power::Stopped) if a.state == proto::ActualState::Running => {
                    self.metrics.driver(DriverOp::Stop, self.driver.stop(&d.id)).await
                }
                (Some(_), proto::Power::Running) if self.last_applied(&d.id).as_ref() != Some(d) => {
                    self.metrics.driver(DriverOp::Ensure, self.driver.ensure(d)).await.map(|_| ())
                }
                _ => Ok(()),
            };
            match res {
                Ok(()) => {
                    self.applied.lock().unwrap_or_else(|p| p.into_inner()).insert(d.id.clone(), d.clone());
                    if d.power == proto::Power::Running && actual.get(&d.id).is_none_or(|a| a.state != proto::ActualState::Running) {
                        self.watch_ready(&d.id);
                    }
                }
                Err(e) => tracing::warn!(instance = %d.id, error = %e, "driver failed to converge instance"),
            }
        }
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| wanted.contains(id.as_str()));
        let mut all_gone = true;
        for id in actual.keys().filter(|id| !wanted.contains(id.as_str())) {
            if let Err(e) = self.metrics.driver(DriverOp::Destroy, self.driver.destroy(id)).await {
                tracing::warn!(instance = %id, error = %e, "driver failed to destroy instance");
                all_gone = false;
            }
        }
        let held: BTreeSet<i64> = desired
            .instances
            .iter()
            .flat_map(|d| d.gpu_indices.iter().copied().chain(d.mig_devices.iter().map(|m| m.parent_index)))
            .collect();
        *self.gpus_held.lock().unwrap_or_else(|p| p.into_inner()) = all_gone.then_some(held);
        // Again after instances: which volumes are mounted where has changed, and a volume that
        // was detached is deleted only once unmounted.
        self.sync_storage(desired).await;
        // Gateways after instances, so they forward to addresses that exist.
        match self.metrics.driver(DriverOp::SyncVpns, self.driver.sync_vpns(&desired.vpns)).await {
            Ok(r) => *self.vpn_reports.lock().unwrap_or_else(|p| p.into_inner()) = r,
            Err(e) => tracing::warn!(error = %e, "driver failed to converge VPN gateways"),
        }
        self.applied_generation.store(desired.generation, Ordering::SeqCst);
        Ok(())
    }

    fn last_applied(&self, id: &str) -> Option<proto::DesiredInstance> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    async fn register_until_ok(&self, stop: &watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        while !*stop.borrow() {
            match self.register().await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "agent registration failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Runs until `stop` turns true: a reporter task plus the long-poll/apply loop.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if let Err(e) = self.prepare_data_dir() {
            tracing::error!(error = %e, dir = %self.cfg.data_dir.display(), "securing the data dir failed");
        }
        self.register_until_ok(&stop).await;
        let reporter = {
            let me = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !*stop.borrow() {
                    match me.report().await {
                        Ok(_) => {}
                        Err(AgentError::Unauthorized) => me.register_until_ok(&stop).await,
                        Err(e) => tracing::warn!(error = %e, "report failed"),
                    }
                    let hb = *me.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
                    tokio::select! {
                        _ = tokio::time::sleep(hb) => {}
                        _ = me.report_now.notified() => {}
                    }
                }
            })
        };
        let sampler = {
            let me = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(METRICS_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !*stop.borrow() {
                    tick.tick().await;
                    me.send_metrics().await;
                }
            })
        };
        let mut known = -1i64;
        loop {
            let req = proto::DesiredRequest {
                known_generation: known,
                wait_ms: self.cfg.poll_wait.as_millis() as u64,
                user_data_held: self.user_data_held(),
            };
            let secret = self.secret().await;
            let res = tokio::select! {
                r = self.post::<_, proto::DesiredResponse>(ServerCall::Desired, secret.as_deref(), &req) => r,
                _ = stop.changed() => break,
            };
            match res {
                Ok(mut d) => {
                    if !self.take_user_data(&mut d) {
                        // Ask again at once; this time the server sends what was missing.
                        known = -1;
                        continue;
                    }
                    if let Err(e) = self.apply(&d).await {
                        tracing::warn!(error = %e, "apply failed");
                    }
                    self.forget_user_data(&d);
                    known = d.generation;
                    self.report_now.notify_one();
                }
                Err(AgentError::Unauthorized) => self.register_until_ok(&stop).await,
                Err(e) => {
                    tracing::warn!(error = %e, server = self.server(), "desired-state poll failed");
                    // Short: a failed poll has usually moved to another replica already.
                    tokio::time::sleep(Duration::from_millis(if self.servers.len() > 1 { 100 } else { 500 })).await;
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        reporter.abort();
        sampler.abort();
    }

    async fn sync_storage(&self, desired: &proto::DesiredResponse) {
        match self.metrics.driver(DriverOp::SyncStorage, self.driver.sync_storage(&desired.volumes, &desired.snapshots)).await {
            Ok(r) => *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = r,
            Err(e) => tracing::warn!(error = %e, "driver failed to converge volumes and snapshots"),
        }
    }

    /// Samples every running instance once and ships the samples; metrics are best effort, so
    /// a failure is logged and the next tick tries again with fresh samples.
    pub async fn send_metrics(&self) {
        let samples = match self.metrics.driver(DriverOp::Sample, self.driver.sample()).await {
            Ok(s) if s.is_empty() => return,
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "sampling failed");
                return;
            }
        };
        let secret = self.secret().await;
        let req = proto::MetricsRequest { samples };
        if let Err(e) = self.post::<_, serde_json::Value>(ServerCall::Metrics, secret.as_deref(), &req).await {
            tracing::debug!(error = %e, "sending metrics failed");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let mut b = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
        std::env::temp_dir().join(format!("nimbus-agent-{tag}-{}", hex::encode(b)))
    }

    /// An agent on a sim driver; nothing listens at its server address, so every call to the
    /// server fails at once.
    pub(crate) fn sim_agent(dir: &Path, sim: nimbus_driver::sim::SimConfig) -> Arc<Agent> {
        let cfg = AgentConfig {
            server_url: "http://127.0.0.1:1".into(),
            token: String::new(),
            data_dir: dir.to_owned(),
            poll_wait: Duration::from_secs(1),
            public_ip: None,
            trust: tls::ServerTrust::default(),
            insecure: false,
        };
        Agent::new(cfg, Arc::new(nimbus_driver::sim::SimDriver::new(sim))).unwrap()
    }

    fn agent(dir: &Path) -> Arc<Agent> {
        sim_agent(dir, nimbus_driver::sim::SimConfig::default())
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    pub(crate) fn instance(id: &str, user_data: Option<&str>) -> proto::DesiredInstance {
        proto::DesiredInstance {
            id: id.into(),
            hostname: id.into(),
            image: "debian-12".into(),
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 10,
            gpu_indices: vec![],
            mig_devices: vec![],
            ssh_public_keys: vec![],
            user_data: user_data.map(str::to_owned),
            power: proto::Power::Running,
            restart_generation: 0,
            file_system_mounts: vec![],
            firewall: vec![],
            volumes: vec![],
            source_snapshot: None,
            ssh_port: None,
            port_forwards: vec![],
            public_address: None,
            peers: vec![],
            tenant: "t".into(),
            privileged: false,
            machine: proto::Machine::Container,
        }
    }

    fn desired(instances: Vec<proto::DesiredInstance>, omitted: &[&str]) -> proto::DesiredResponse {
        proto::DesiredResponse {
            generation: 1,
            instances,
            volumes: vec![],
            snapshots: vec![],
            vpns: vec![],
            user_data_omitted: omitted.iter().map(|s| s.to_string()).collect(),
            fabric: None,
        }
    }

    /// The data dir is 0711 (not listable, traversable), and the files holding the host secret
    /// and tenants' user data are 0600 (the user data in a 0700 dir), whether the agent creates
    /// them or finds them looser (an older agent's).
    #[test]
    fn data_dir_and_files_are_private() {
        let dir = temp_dir("modes");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("agent.json"), br#"{"machine_id":"m","host_id":"h","host_secret":"s"}"#).unwrap();
        std::fs::set_permissions(dir.join("agent.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir_all(dir.join("user-data")).unwrap();
        std::fs::set_permissions(dir.join("user-data"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("user-data").join("old"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("user-data").join("old"), std::fs::Permissions::from_mode(0o644)).unwrap();

        let a = agent(&dir);
        a.prepare_data_dir().unwrap();
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&dir.join("agent.json")), 0o600);
        assert_eq!(mode(&dir.join("user-data")), 0o700);
        assert_eq!(mode(&dir.join("user-data").join("old")), 0o600);
        assert_eq!(a.user_data_held(), vec!["old".to_owned()]);

        // Written anew: through a temp file created 0600, renamed over the old file.
        let creds = a.load_creds().unwrap();
        a.save_creds(&creds).unwrap();
        assert_eq!(mode(&dir.join("agent.json")), 0o600);
        assert!(!dir.join(".agent.json.tmp").exists());
        let mut d = desired(vec![instance("i1", Some("#!/bin/sh\necho hi\n"))], &[]);
        assert!(a.take_user_data(&mut d));
        assert_eq!(mode(&dir.join("user-data").join("i1")), 0o600);

        // A fresh data dir (and its parents) is created 0711, and a 0700 one is left alone.
        let fresh = temp_dir("fresh").join("nested");
        let b = agent(&fresh);
        b.save_creds(&b.load_creds().unwrap()).unwrap();
        assert_eq!(mode(&fresh), 0o711);
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
        b.prepare_data_dir().unwrap();
        assert_eq!(mode(&fresh), 0o700, "tightening never adds a bit");
        assert_eq!(mode(&fresh.join("agent.json")), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(fresh.parent().unwrap());
    }

    /// User data arrives once, is kept, fills in answers that leave it out (after a restart
    /// too), is asked for again when the kept copy is gone, and is dropped with its instance.
    #[test]
    fn user_data_is_kept_and_filled_in() {
        let dir = temp_dir("ud");
        let big = format!("#!/bin/sh\n#{}\n", "x".repeat(1 << 20));
        let a = agent(&dir);
        a.prepare_data_dir().unwrap();
        let mut first = desired(vec![instance("i1", Some(&big)), instance("i2", None)], &[]);
        assert!(a.take_user_data(&mut first));
        assert_eq!(a.user_data_held(), vec!["i1".to_owned()], "an instance without user data keeps nothing");
        assert_eq!(std::fs::read_to_string(dir.join("user-data").join("i1")).unwrap(), big);

        // A restarted agent knows what it keeps, and fills in what the server left out.
        let b = agent(&dir);
        b.prepare_data_dir().unwrap();
        assert_eq!(b.user_data_held(), vec!["i1".to_owned()]);
        let mut later = desired(vec![instance("i1", None), instance("i2", None)], &["i1"]);
        assert!(b.take_user_data(&mut later));
        assert_eq!(later.instances[0].user_data.as_deref(), Some(big.as_str()));
        assert_eq!(later.instances[1].user_data, None);

        // The kept copy vanished: forgotten, and the answer is not to be applied.
        std::fs::remove_file(dir.join("user-data").join("i1")).unwrap();
        let mut broken = desired(vec![instance("i1", None)], &["i1"]);
        assert!(!b.take_user_data(&mut broken));
        assert!(b.user_data_held().is_empty());

        // An instance the host no longer has takes its user data with it.
        let mut again = desired(vec![instance("i1", Some(&big))], &[]);
        assert!(b.take_user_data(&mut again));
        assert_eq!(b.user_data_held(), vec!["i1".to_owned()]);
        b.forget_user_data(&desired(vec![], &[]));
        assert!(b.user_data_held().is_empty());
        assert!(!dir.join("user-data").join("i1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
