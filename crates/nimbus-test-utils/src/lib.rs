//! Test harness: a real server on `127.0.0.1:0` over a real database (a temp SQLite file, or a
//! fresh database in the PostgreSQL named by `NIMBUS_TEST_DATABASE_URL`), with real agents
//! running the `sim` driver as hosts, and a small HTTP helper that asserts statuses.

#![allow(clippy::unwrap_used)]

pub mod webhook_receiver;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_agent::{Agent, AgentConfig};
use nimbus_api::server::ServerHandle;
use nimbus_control::config::{AgentTimings, RateLimits};
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_core::model::Org;
use nimbus_driver::sim::{SimConfig, SimDriver};
use nimbus_store::Store;
use serde_json::Value;
use tokio::sync::watch;

pub use nimbus_driver::sim::SimConfig as Sim;

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nimbus-test-{tag}-{}", nimbus_core::ids::random_hex_id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The database the suite runs against: PostgreSQL when `NIMBUS_TEST_DATABASE_URL` is set (a new
/// database is created in it for each server), SQLite in `dir` otherwise.
pub async fn test_database_url(dir: &std::path::Path) -> String {
    match std::env::var("NIMBUS_TEST_DATABASE_URL") {
        Ok(admin_url) if !admin_url.is_empty() => {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let name = format!("nimbus_t_{}", &nimbus_core::ids::random_hex_id()[..16]);
            let mut c = sqlx::AnyConnection::connect(&admin_url).await.expect("connect to NIMBUS_TEST_DATABASE_URL");
            sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut c).await.expect("create test database");
            let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin_url.clone());
            format!("{base}/{name}")
        }
        _ => format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display()),
    }
}

pub fn backend_name() -> &'static str {
    if std::env::var("NIMBUS_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        "postgres"
    } else {
        "sqlite"
    }
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub struct TestServer {
    pub url: String,
    /// Where agents connect (the agent listener when the server has one).
    pub agent_url: String,
    /// The server's self-signed certificate (PEM), when it serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    agent_trust: nimbus_agent::tls::ServerTrust,
    pub control: Control,
    pub org: Org,
    /// ADMIN key of `org`.
    pub key: String,
    pub http: reqwest::Client,
    handle: Option<ServerHandle>,
    agents: Vec<AgentSlot>,
    pub dir: TempDir,
    /// With `Builder::metrics`: the server's metrics listener (`http://…/metrics`).
    pub metrics_url: Option<String>,
    /// With `Builder::metrics`: each agent serves its own `/metrics` too.
    agent_metrics: bool,
}

/// The metrics token of a server started with `Builder::metrics`.
pub const METRICS_TOKEN: &str = "metrics-token-for-tests-0123456789";

#[derive(Clone)]
pub enum HostDriver {
    Sim(SimConfig),
    Container(Box<nimbus_driver::container::driver::ContainerConfig>),
}

struct AgentSlot {
    token: String,
    dir: PathBuf,
    sim: HostDriver,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// `http://…/metrics` of this agent, with `Builder::metrics`.
    metrics_url: Option<String>,
}

pub struct Builder {
    config: Config,
    hosts: Vec<(String, SimConfig)>,
    clock: Option<Arc<dyn nimbus_core::clock::Clock>>,
    tls: bool,
    agent_listener: bool,
    metrics: bool,
}

impl Builder {
    /// Serve HTTPS with a self-signed certificate: `http` trusts it, agents pin its fingerprint.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Serve the agent protocol on its own listener (`--agent-listen`), and only there.
    pub fn agent_listener(mut self) -> Self {
        self.agent_listener = true;
        self
    }

    /// A metrics listener (`metrics_url`), `/metrics` on the main listener for
    /// [`METRICS_TOKEN`], and a metrics listener on every agent (`agent_metrics_url`).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// The server's clock (default: the system clock), e.g. a `ManualClock` for metering tests.
    pub fn clock(mut self, clock: Arc<dyn nimbus_core::clock::Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Adds a sim host in `region`.
    pub fn host(mut self, region: &str, sim: SimConfig) -> Self {
        self.hosts.push((region.to_owned(), sim));
        self
    }

    pub async fn start(self) -> TestServer {
        init_logs();
        let dir = TempDir::new("srv");
        let url = test_database_url(&dir.0).await;
        let store = Store::connect(&url).await.unwrap();
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let control = Control::new(store, clock, self.config).await.unwrap();
        let org = admin::org_create(&control, "org-a", Some("a@example.com")).await.unwrap();
        let (_, key) = admin::api_key_create(&control, &org, "admin", Permissions::admin(), None).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut opts = nimbus_api::server::ServeOptions::default();
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        let mut tls_cert = None;
        let mut agent_trust = nimbus_agent::tls::ServerTrust::default();
        if self.tls {
            let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
            let (cert, key, _) = nimbus_api::tls::ensure_self_signed(&dir.0, &names).unwrap();
            let tls = nimbus_api::tls::ServerTls::load(&cert, &key).unwrap();
            agent_trust = nimbus_agent::tls::ServerTrust::fingerprint(&tls.fingerprint()).unwrap();
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap());
            opts.tls = Some(tls);
            tls_cert = Some(cert);
        }
        if self.agent_listener {
            opts.agent_listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        if self.metrics {
            opts.metrics_listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
            opts.metrics_token = Some(Arc::new(nimbus_api::metrics::Token::new(METRICS_TOKEN).unwrap()));
        }
        let handle = nimbus_api::server::start_with(control.clone(), listener, opts).unwrap();
        let mut s = TestServer {
            url: handle.url(),
            agent_url: handle.agent_url(),
            tls_cert,
            agent_trust,
            control,
            org,
            key,
            http: http.build().unwrap(),
            metrics_url: handle.metrics_addr.map(|a| format!("http://{a}/metrics")),
            agent_metrics: self.metrics,
            handle: Some(handle),
            agents: Vec::new(),
            dir,
        };
        for (region, sim) in self.hosts {
            s.add_host(&region, sim).await;
        }
        s
    }
}

/// A sim host with `vcpus` and `gpus` H100s.
pub fn sim_host(name: &str, vcpus: i64, h100s: i64) -> SimConfig {
    SimConfig {
        hostname: name.to_owned(),
        vcpus,
        memory_mib: vcpus * 8 * 1024,
        disk_gib: vcpus * 100,
        gpus: if h100s > 0 { vec![("NVIDIA H100 80GB HBM3".to_owned(), h100s)] } else { vec![] },
        state_file: None,
        address_block: 0,
        ..SimConfig::default()
    }
}

impl TestServer {
    /// Generous rate limits, fast heartbeats, no hosts.
    pub fn builder() -> Builder {
        let config = Config {
            rate_limits: RateLimits::generous(),
            agents: AgentTimings { heartbeat_interval_ms: 200, host_timeout_ms: 5_000 },
            ..Config::default()
        };
        Builder { config, hosts: Vec::new(), clock: None, tls: false, agent_listener: false, metrics: false }
    }

    /// One host in us-east-1 with 64 vCPUs and 8 H100s.
    pub async fn start() -> TestServer {
        Self::builder().host("us-east-1", sim_host("h1", 64, 8)).start().await
    }

    /// Registers a real agent with a sim driver; returns its index. Waits until the host is up.
    pub async fn add_host(&mut self, region: &str, mut sim: SimConfig) -> usize {
        let before = self.control.store().host_list(None, true).await.unwrap().len();
        let token = admin::host_token_create(&self.control, region).await.unwrap();
        let agent_dir = self.dir.0.join(format!("agent-{}", self.agents.len()));
        std::fs::create_dir_all(&agent_dir).unwrap();
        sim.address_block = self.agents.len() as u8;
        if sim.state_file.is_none() {
            sim.state_file = Some(agent_dir.join("sim.json"));
        }
        self.spawn_agent(&token, agent_dir, HostDriver::Sim(sim));
        self.wait_for("host registration", || async { self.control.store().host_list(None, true).await.unwrap().len() > before }).await;
        // A new host's GPUs are placed once its agent has checked them (its first reports).
        self.wait_for("the new host's GPUs checked", || async {
            self.control
                .store()
                .host_list(None, true)
                .await
                .unwrap()
                .iter()
                .all(|h| h.gpus.iter().all(|g| g.clean || g.instance_id.is_some()))
        })
        .await;
        self.agents.len() - 1
    }

    /// Registers a real agent with the container driver (root only); returns its index.
    pub async fn add_container_host(&mut self, region: &str, cfg: nimbus_driver::container::driver::ContainerConfig) -> usize {
        let before = self.control.store().host_list(None, true).await.unwrap().len();
        let token = admin::host_token_create(&self.control, region).await.unwrap();
        let agent_dir = self.dir.0.join(format!("agent-{}", self.agents.len()));
        std::fs::create_dir_all(&agent_dir).unwrap();
        self.spawn_agent(&token, agent_dir, HostDriver::Container(Box::new(cfg)));
        self.wait_for("host registration", || async { self.control.store().host_list(None, true).await.unwrap().len() > before }).await;
        self.agents.len() - 1
    }

    fn spawn_agent(&mut self, token: &str, dir: PathBuf, sim: HostDriver) {
        let slot = self.run_agent(token, dir, sim);
        self.agents.push(slot);
    }

    fn run_agent(&self, token: &str, dir: PathBuf, sim: HostDriver) -> AgentSlot {
        let driver: Arc<dyn nimbus_driver::Driver> = match &sim {
            HostDriver::Sim(c) => Arc::new(SimDriver::new(c.clone())),
            HostDriver::Container(c) => {
                Arc::new(nimbus_driver::container::driver::ContainerDriver::new((**c).clone()).expect("container driver"))
            }
        };
        let agent = Agent::new(
            AgentConfig {
                server_url: self.agent_url.clone(),
                token: token.to_owned(),
                data_dir: dir.clone(),
                poll_wait: Duration::from_secs(5),
                public_ip: Some("127.0.0.1".into()),
                trust: self.agent_trust.clone(),
                insecure: false,
            },
            driver,
        )
        .expect("agent config");
        let (tx, rx) = watch::channel(false);
        let mut metrics_url = None;
        if self.agent_metrics {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            metrics_url = Some(format!("http://{}/metrics", l.local_addr().unwrap()));
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tokio::spawn(nimbus_agent::metrics::serve_metrics(agent.clone(), l, rx.clone()));
        }
        let task = tokio::spawn(agent.run(rx));
        AgentSlot { token: token.to_owned(), dir, sim, stop: tx, task: Some(task), metrics_url }
    }

    /// Agent `i`'s `/metrics`, with `Builder::metrics`.
    pub fn agent_metrics_url(&self, i: usize) -> Option<String> {
        self.agents[i].metrics_url.clone()
    }

    /// Stops agent `i`: its host goes silent, its sim instances stay in its state file.
    pub async fn stop_agent(&mut self, i: usize) {
        let slot = &mut self.agents[i];
        let _ = slot.stop.send(true);
        if let Some(t) = slot.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Starts agent `i` again with the same token, data dir and driver state, as after a restart.
    pub fn restart_agent(&mut self, i: usize) {
        let (token, dir, sim) = (self.agents[i].token.clone(), self.agents[i].dir.clone(), self.agents[i].sim.clone());
        self.agents[i] = self.run_agent(&token, dir, sim);
    }

    /// Creates another organization with a key of the given permissions.
    pub async fn org_with_key(&self, name: &str, perms: &str) -> (Org, String) {
        let org = match admin::org_find(&self.control, name).await {
            Ok(o) => o,
            Err(_) => admin::org_create(&self.control, name, None).await.unwrap(),
        };
        let (_, key) = admin::api_key_create(&self.control, &org, "k", Permissions::parse_list(perms).unwrap(), None).await.unwrap();
        (org, key)
    }

    pub fn lambda(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// Sends `method url` with `key` (Bearer) and an optional JSON body; returns (status, body,
    /// parsed as JSON when it is JSON).
    pub async fn send(&self, key: &str, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, url).bearer_auth(key);
        if let Some(b) = body {
            rb = rb.body(serde_json::to_vec(&b).unwrap());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// `send` to the Lambda dialect (`/api/v1{path}`).
    pub async fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(key, method, self.lambda(path), body).await
    }

    /// `send` to the native API (`/v1{path}`).
    pub async fn native(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(key, method, format!("{}/v1{path}", self.url), body).await
    }

    /// Like `native` with the admin key, asserting the status; returns `data`.
    pub async fn nexpect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (s, v) = self.native(&self.key, method, path, body).await;
        assert_eq!(s, status, "{method} /v1{path} -> {s}: {v}");
        if s < 300 {
            v["data"].clone()
        } else {
            v
        }
    }

    /// Waits until `GET /v1{path}` has `data.status == status`.
    pub async fn wait_native_status(&self, path: &str, status: &str) -> Value {
        let t = Instant::now();
        loop {
            let (s, v) = self.native(&self.key, "GET", path, None).await;
            assert_eq!(s, 200, "{v}");
            if v["data"]["status"] == status {
                return v["data"].clone();
            }
            assert!(t.elapsed() < Duration::from_secs(15), "{path} never became {status}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Like `call` with the admin key, asserting the status.
    pub async fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (s, v) = self.call(&self.key, method, path, body).await;
        assert_eq!(s, status, "{method} {path} -> {s}: {v}");
        v
    }

    /// Polls `cond` every 20 ms for up to 15 s.
    pub async fn wait_for<F, Fut>(&self, what: &str, cond: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let t = Instant::now();
        while !cond().await {
            assert!(t.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the instance's Lambda status is `status`.
    pub async fn wait_status(&self, key: &str, id: &str, status: &str) -> Value {
        let t = Instant::now();
        loop {
            let (s, v) = self.call(key, "GET", &format!("/instances/{id}"), None).await;
            assert_eq!(s, 200, "{v}");
            if v["data"]["status"] == status {
                return v["data"].clone();
            }
            assert!(t.elapsed() < Duration::from_secs(15), "instance {id} never became {status}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SHA-256 fingerprint of the certificate served now (HTTPS only).
    pub fn fingerprint(&self) -> Option<String> {
        self.handle.as_ref()?.tls.as_ref().map(|t| t.fingerprint())
    }

    pub async fn shutdown(mut self) {
        for slot in self.agents.drain(..) {
            let _ = slot.stop.send(true);
            if let Some(t) = slot.task {
                t.abort();
            }
        }
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown().await;
        }
        self.control.store().close().await;
    }
}
