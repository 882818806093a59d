//! `nimbus bench`: benchmarks that print figures (kept in docs/benchmarks.md).
//!
//! `bench api` starts a real server (SQLite in a temp dir by default), registers real agents with
//! `sim` drivers as hosts, launches instances through the Lambda API, then drives the read
//! endpoints with N concurrent keep-alive HTTP/1.1 connections and reports throughput and latency
//! percentiles. The load generator shares the machine (and the process) with the server, as wrk
//! would.
//!
//! `bench rss` starts `nimbus server` as a child process and reports its idle resident memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nimbus_agent::{Agent, AgentConfig};
use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_driver::sim::{SimConfig, SimDriver};
use nimbus_store::Store;
use tokio::net::TcpStream;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Lambda API throughput and latency with many instances in one org.
    Api {
        #[arg(long, default_value_t = 1000)]
        instances: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Seconds per read phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Sim hosts to register.
        #[arg(long, default_value_t = 4)]
        hosts: usize,
        /// Database; default: SQLite in a temp dir.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Container instances as a client sees them: launch → `active` → first successful `ssh …
    /// true`, terminate → fully cleaned, on an empty host, with instances running, and a batch;
    /// optionally beside the LXD peer (root; builds the image if missing).
    Launch(crate::bench_launch::LaunchArgs),
    /// What the rate limiter and the idempotency layer add to a request (p50 difference).
    Middleware {
        /// Requests per phase per round.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// What HTTPS costs a client beside plain HTTP: per request on a kept connection, and per
    /// new connection (the handshake).
    Tls {
        /// Requests per phase per round.
        #[arg(long, default_value_t = 500)]
        requests: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// What metering adds to a state transition, and invoice time for 10,000 intervals.
    Metering {
        #[arg(long, default_value_t = 2000)]
        transitions: usize,
        #[arg(long, default_value_t = 10_000)]
        intervals: usize,
    },
    /// Webhook delivery latency (commit to receipt) at a sustained event rate.
    Webhooks(crate::bench_webhooks::WebhooksArgs),
    /// Creating an N-node cluster on sim hosts: until every node is scheduled, and until CREATED.
    Cluster(crate::bench_cluster::ClusterArgs),
    /// The private network between hosts: TCP throughput and latency between instances on one
    /// host and across two test-bed hosts, and membership convergence (root; a 2-host test bed).
    Network(crate::bench_network::NetworkArgs),
    /// The measuring peer `bench network` runs inside instances' network namespaces.
    #[command(hide = true)]
    TcpPeer(crate::bench_network::TcpPeerArgs),
    /// Launch -> agent apply when the agent long-polls another replica than the one taking the
    /// launch (PostgreSQL LISTEN/NOTIFY), beside the same replica.
    Replicas(crate::bench_replicas::ReplicasArgs),
    /// The control plane at fleet size with sim hosts (simulated, for scale only): heartbeat
    /// latency and database CPU per 1,000 hosts, launch placements/s, and instance lists.
    Scale(crate::bench_scale::ScaleArgs),
    /// Idle resident memory of `nimbus server`.
    Rss {
        #[arg(long, default_value_t = 3)]
        settle_seconds: u64,
    },
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Middleware { requests, rounds } => crate::bench_middleware::middleware(requests, rounds).await,
        BenchCmd::Tls { requests, rounds } => crate::bench_tls::run(requests, rounds).await,
        BenchCmd::Metering { transitions, intervals } => crate::bench_metering::metering(transitions, intervals).await,
        BenchCmd::Api { instances, concurrency, seconds, hosts, database_url } => {
            api(instances, concurrency, Duration::from_secs(seconds), hosts, database_url).await
        }
        BenchCmd::Rss { settle_seconds } => rss(settle_seconds).await,
        BenchCmd::Webhooks(a) => crate::bench_webhooks::run(a).await,
        BenchCmd::Cluster(a) => crate::bench_cluster::run(a).await,
        BenchCmd::Launch(a) => crate::bench_launch::run(a).await,
        BenchCmd::Network(a) => crate::bench_network::run(a).await,
        BenchCmd::Replicas(a) => crate::bench_replicas::run(a).await,
        BenchCmd::Scale(a) => crate::bench_scale::run(a).await,
        BenchCmd::TcpPeer(a) => tokio::task::spawn_blocking(move || crate::bench_network::tcp_peer(&a)).await?,
    }
}

/// Starts `hosts` real agents with sim drivers (`sim(i)` for host `i`) against `server_url`,
/// stopped by `stop`, and waits until every one has registered (on one token minted with that
/// many uses).
pub(crate) async fn spawn_sim_hosts(
    control: &Control,
    server_url: &str,
    dir: &std::path::Path,
    hosts: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
    sim: impl Fn(usize) -> SimConfig,
) -> anyhow::Result<()> {
    let limits = admin::HostTokenLimits { uses: i64::try_from(hosts.max(1))?, ttl_secs: 3600 };
    let minted = admin::host_token_create_with(control, "us-east-1", limits).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = minted.secret.as_str();
    for h in 0..hosts {
        let agent = Agent::new(
            AgentConfig {
                server_url: server_url.to_owned(),
                token: token.to_owned(),
                data_dir: dir.join(format!("agent-{h}")),
                poll_wait: Duration::from_secs(25),
                public_ip: None,
                trust: Default::default(),
                insecure: false,
            },
            Arc::new(SimDriver::new(sim(h))),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokio::spawn(agent.run(stop.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // Registered, and their GPUs checked by their agents (a GPU is placed only then).
    loop {
        let up = control.store().host_list(None, true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if up.len() >= hosts && up.iter().all(|h| h.gpus.iter().all(|g| g.clean)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("sim hosts did not register and report their GPUs");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn temp_dir(tag: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("nimbus-bench-{tag}-{}", nimbus_core::ids::random_hex_id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

/// The `p` quantile (0..=1, nearest rank) of sorted latencies; zero for none.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

impl Phase {
    pub(crate) fn pct(&self, p: f64) -> Duration {
        pct(&self.latencies, p)
    }

    /// The header of the table `print` writes rows of.
    pub(crate) fn print_header() {
        println!(
            "| {:<34} | {:>8} | {:>6} | {:>10} | {:>8} | {:>8} | {:>8} |",
            "phase", "requests", "errors", "req/s", "p50 ms", "p99 ms", "max ms"
        );
        println!(
            "|{}|{}|{}|{}|{}|{}|{}|",
            "-".repeat(36),
            "-".repeat(10),
            "-".repeat(8),
            "-".repeat(12),
            "-".repeat(10),
            "-".repeat(10),
            "-".repeat(10)
        );
    }

    pub(crate) fn print(&self) {
        let rps = self.requests as f64 / self.elapsed.as_secs_f64();
        println!(
            "| {:<34} | {:>8} | {:>6} | {:>10.0} | {:>8.2} | {:>8.2} | {:>8.2} |",
            self.name,
            self.requests,
            self.errors,
            rps,
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3,
            self.latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

pub(crate) fn request(method: &str, path: &str, key: &str, body: Option<&str>) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?)
}

/// Runs `make(i)` requests from `concurrency` connections until `until` says stop.
pub(crate) async fn drive<F>(
    name: &str,
    addr: std::net::SocketAddr,
    concurrency: usize,
    limit: Option<usize>,
    duration: Option<Duration>,
    make: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> anyhow::Result<Request<Full<Bytes>>> + Send + Sync + 'static,
{
    drive_on(name, vec![addr], concurrency, limit, duration, make).await
}

/// [`drive`] over several servers: connection `c` goes to `addrs[c % addrs.len()]`.
pub(crate) async fn drive_on<F>(
    name: &str,
    addrs: Vec<std::net::SocketAddr>,
    concurrency: usize,
    limit: Option<usize>,
    duration: Option<Duration>,
    make: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> anyhow::Result<Request<Full<Bytes>>> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let make = make.clone();
        let counter = counter.clone();
        let mut sender = connect(addrs[c % addrs.len()]).await?;
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if limit.is_some_and(|l| i >= l) || duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                let req = make(i)?;
                let t = Instant::now();
                let resp = sender.send_request(req).await?;
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await?;
                lats.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            anyhow::Ok((lats, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Phase { name: name.to_owned(), requests: latencies.len(), errors, elapsed, latencies })
}

async fn api(n: usize, concurrency: usize, secs: Duration, hosts: usize, database_url: Option<String>) -> anyhow::Result<()> {
    let dir = temp_dir("api")?;
    let url = database_url.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display()));
    let mut cfg = Config { rate_limits: RateLimits::generous(), ..Config::default() };
    cfg.quotas.instances_per_org = (n as i64) * 2 + 100;
    cfg.agents.heartbeat_interval_ms = 2_000;
    let store = Store::connect(&url).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let control = Control::new(store, Arc::new(SystemClock), cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let org = admin::org_create(&control, &format!("bench-{}", &nimbus_core::ids::random_hex_id()[..8]), None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // A scraper reads /metrics through the API port with the metrics token.
    let token = nimbus_core::ids::random_hex_id();
    let opts = nimbus_api::server::ServeOptions {
        metrics_token: Some(Arc::new(nimbus_api::metrics::Token::new(&token).map_err(anyhow::Error::msg)?)),
        ..Default::default()
    };
    let server = nimbus_api::server::start_with(control.clone(), listener, opts)?;
    let addr = server.addr;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    spawn_sim_hosts(&control, &server.url(), &dir, hosts, &stop_rx, |h| SimConfig {
        hostname: format!("sim-{h}"),
        vcpus: 100_000,
        memory_mib: 1 << 30,
        disk_gib: 10_000_000,
        gpus: vec![("NVIDIA H100 80GB HBM3".to_owned(), 8)],
        state_file: None,
        address_block: h as u8,
        ..SimConfig::default()
    })
    .await?;
    let mut c = connect(addr).await?;
    let resp = c.send_request(request("POST", "/api/v1/ssh-keys", &key, Some(r#"{"name":"bench"}"#))?).await?;
    if !resp.status().is_success() {
        bail!("adding SSH key failed: {}", resp.status());
    }
    let _ = resp.into_body().collect().await?;

    println!(
        "nimbus bench api: {n} instances, {concurrency} connections, {hosts} sim hosts, database {}",
        if database_url.is_some() { "postgres" } else { "sqlite" }
    );
    Phase::print_header();

    let k = key.clone();
    let launch = drive("POST /instance-operations/launch", addr, concurrency, Some(n), None, move |i| {
        let body =
            format!(r#"{{"region_name":"us-east-1","instance_type_name":"cpu_1x_small","ssh_key_names":["bench"],"name":"bench-{i}"}}"#);
        request("POST", "/api/v1/instance-operations/launch", &k, Some(&body))
    })
    .await?;
    launch.print();
    if launch.errors > 0 {
        bail!("{} launches failed", launch.errors);
    }

    // Wait for the agents to bring every instance up, so the list phase reads a settled org.
    let t = Instant::now();
    let actor = nimbus_control::auth::authenticate(&control, &key).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let list = nimbus_control::instances::list(&control, &actor).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let active = list.iter().filter(|i| i.state == nimbus_core::instance::InstanceState::Active).count();
        if active == n {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("only {active}/{n} instances became active");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle = t.elapsed();
    let ids: Arc<Vec<String>> = Arc::new(
        nimbus_control::instances::list(&control, &actor)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .map(|i| i.id.to_string())
            .collect(),
    );

    let k = key.clone();
    let list = drive(&format!("GET /instances ({n} instances)"), addr, concurrency, None, Some(secs), move |_| {
        request("GET", "/api/v1/instances", &k, None)
    })
    .await?;
    list.print();
    let k = key.clone();
    let ids2 = ids.clone();
    let get = drive("GET /instances/{id}", addr, concurrency, None, Some(secs), move |i| {
        let id = &ids2[(i.wrapping_mul(7919)) % ids2.len()];
        request("GET", &format!("/api/v1/instances/{id}"), &k, None)
    })
    .await?;
    get.print();
    let k = key.clone();
    let types =
        drive("GET /instance-types", addr, concurrency, None, Some(secs), move |_| request("GET", "/api/v1/instance-types", &k, None))
            .await?;
    types.print();
    // One scraper, as Prometheus scrapes a target: one request at a time.
    let scrape = drive(&format!("GET /metrics ({n} instances, 1 conn)"), addr, 1, None, Some(secs), move |_| {
        request("GET", "/metrics", &token, None)
    })
    .await?;
    scrape.print();
    println!();
    println!("all {n} instances active {:.2} s after the last launch was accepted", settle.as_secs_f64());
    let body_len = {
        let mut c = connect(addr).await?;
        let resp = c.send_request(request("GET", "/api/v1/instances", &key, None)?).await?;
        resp.into_body().collect().await?.to_bytes().len()
    };
    println!("GET /instances body: {body_len} bytes");
    let _ = stop_tx.send(true);
    server.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS missing")
}

async fn rss(settle: u64) -> anyhow::Result<()> {
    let dir = temp_dir("rss")?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("child pid")?;
    let t = Instant::now();
    loop {
        if let Ok(mut s) = connect(([127, 0, 0, 1], port).into()).await {
            let r = s.send_request(Request::get("/healthz").header("host", "x").body(Full::new(Bytes::new()))?).await?;
            if r.status().is_success() {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let kib = rss_kib(pid)?;
    println!("nimbus server idle RSS: {:.1} MiB ({kib} KiB) after {settle} s", kib as f64 / 1024.0);
    child.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
