//! The host agent: registers with the server, reports inventory and actual instance state, and
//! reconciles the desired state it long-polls for against what its driver has.
//!
//! The agent keeps no state that matters in memory: its credentials live in `<data-dir>/agent.json`
//! and its instances are whatever the driver lists, so a restarted agent re-registers as the same
//! host and adopts running instances instead of recreating them. Anything the driver has that the
//! server no longer wants (an orphan) is destroyed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nimbus_driver::Driver;
use nimbus_proto as proto;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

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
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
}

/// How often instances are sampled (the metrics stream pushes at this rate).
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server root, e.g. `http://127.0.0.1:8080`.
    pub server_url: String,
    /// Host registration token.
    pub token: String,
    pub data_dir: PathBuf,
    /// Long-poll window.
    pub poll_wait: Duration,
    /// The address clients reach this host's forwarded ports on, reported with the inventory.
    pub public_ip: Option<String>,
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
}

impl Agent {
    pub fn new(cfg: AgentConfig, driver: Arc<dyn Driver>) -> Arc<Agent> {
        // No overall timeout: long-polls legitimately take poll_wait; connect failures still fail fast.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Arc::new(Agent {
            cfg,
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
        })
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
        std::fs::create_dir_all(&self.cfg.data_dir)?;
        let tmp = self.creds_path().with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, self.creds_path())?;
        Ok(())
    }

    async fn post<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Req,
    ) -> Result<Resp, AgentError> {
        let mut rb = self.http.post(format!("{}{path}", self.cfg.server_url.trim_end_matches('/'))).json(body);
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        let resp = rb.send().await.map_err(AgentError::Transport)?;
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

    /// Registers (or re-registers as the same machine) and stores the new host credential.
    pub async fn register(&self) -> Result<proto::RegisterResponse, AgentError> {
        let mut creds = self.load_creds()?;
        let mut inventory = self.driver.inventory().await?;
        if self.cfg.public_ip.is_some() {
            inventory.public_ip = self.cfg.public_ip.clone();
        }
        let req = proto::RegisterRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            token: self.cfg.token.clone(),
            machine_id: creds.machine_id.clone(),
            inventory,
        };
        let resp: proto::RegisterResponse = self.post(proto::PATH_REGISTER, None, &req).await?;
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
        let instances = self.driver.list().await?;
        // One guard, cloned out before the request is built (two locks of it in one expression
        // would deadlock: a temporary guard lives to the end of the statement).
        let mut storage = self.storage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Used bytes change without any desired-state change (an instance writes), so they are
        // measured for every report, not at the last apply.
        match self.driver.volume_usage().await {
            Ok(usage) => {
                for v in &mut storage.volumes {
                    v.used_bytes = usage.iter().find(|(id, _)| *id == v.id).map(|(_, b)| *b);
                }
            }
            Err(e) => tracing::debug!(error = %e, "measuring volumes failed"),
        }
        let req = proto::ReportRequest {
            instances,
            applied_generation: self.applied_generation.load(Ordering::SeqCst),
            volumes: storage.volumes,
            snapshots: storage.snapshots,
            vpns: self.vpn_reports.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        let secret = self.secret().await;
        self.post(proto::PATH_REPORT, secret.as_deref(), &req).await
    }

    /// Brings the driver in line with `desired`. Errors on one instance do not stop the others.
    pub async fn apply(self: &Arc<Self>, desired: &proto::DesiredResponse) -> Result<(), AgentError> {
        // Volumes and snapshots before instances, so an attached volume exists when it is mounted.
        self.sync_storage(desired).await;
        let actual: HashMap<String, proto::InstanceReport> = self.driver.list().await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let wanted: HashSet<&str> = desired.instances.iter().map(|d| d.id.as_str()).collect();
        for d in &desired.instances {
            let res = match (actual.get(&d.id), d.power) {
                (None, _) => self.driver.ensure(d).await.map(|_| ()),
                (Some(a), proto::Power::Running) if a.restart_generation < d.restart_generation => self.driver.restart(d).await.map(|_| ()),
                (Some(a), proto::Power::Running) if a.state != proto::ActualState::Running => self.driver.ensure(d).await.map(|_| ()),
                (Some(a), proto::Power::Stopped) if a.state == proto::ActualState::Running => self.driver.stop(&d.id).await,
                (Some(_), proto::Power::Running) if self.last_applied(&d.id).as_ref() != Some(d) => self.driver.ensure(d).await.map(|_| ()),
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
        for id in actual.keys().filter(|id| !wanted.contains(id.as_str())) {
            if let Err(e) = self.driver.destroy(id).await {
                tracing::warn!(instance = %id, error = %e, "driver failed to destroy instance");
            }
        }
        // Again after instances: which volumes are mounted where has changed, and a volume that
        // was detached is deleted only once unmounted.
        self.sync_storage(desired).await;
        // Gateways after instances, so they forward to addresses that exist.
        match self.driver.sync_vpns(&desired.vpns).await {
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
            let req = proto::DesiredRequest { known_generation: known, wait_ms: self.cfg.poll_wait.as_millis() as u64 };
            let secret = self.secret().await;
            let res = tokio::select! {
                r = self.post::<_, proto::DesiredResponse>(proto::PATH_DESIRED, secret.as_deref(), &req) => r,
                _ = stop.changed() => break,
            };
            match res {
                Ok(d) => {
                    if let Err(e) = self.apply(&d).await {
                        tracing::warn!(error = %e, "apply failed");
                    }
                    known = d.generation;
                    self.report_now.notify_one();
                }
                Err(AgentError::Unauthorized) => self.register_until_ok(&stop).await,
                Err(e) => {
                    tracing::warn!(error = %e, "desired-state poll failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
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
        match self.driver.sync_storage(&desired.volumes, &desired.snapshots).await {
            Ok(r) => *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = r,
            Err(e) => tracing::warn!(error = %e, "driver failed to converge volumes and snapshots"),
        }
    }

    /// Samples every running instance once and ships the samples; metrics are best effort, so
    /// a failure is logged and the next tick tries again with fresh samples.
    pub async fn send_metrics(&self) {
        let samples = match self.driver.sample().await {
            Ok(s) if s.is_empty() => return,
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "sampling failed");
                return;
            }
        };
        let secret = self.secret().await;
        let req = proto::MetricsRequest { samples };
        if let Err(e) = self.post::<_, serde_json::Value>(proto::PATH_METRICS, secret.as_deref(), &req).await {
            tracing::debug!(error = %e, "sending metrics failed");
        }
    }
}
