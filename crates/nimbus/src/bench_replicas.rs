//! `nimbus bench replicas`: how long a launch takes to reach a host's agent when the agent
//! long-polls another replica than the one that took the launch (the wake-up crosses replicas
//! through PostgreSQL `LISTEN/NOTIFY`), beside the same launch through the agent's own replica.
//!
//! N server replicas in this process on one PostgreSQL database (given; it must be empty or
//! Nimbus's), each with its own HTTP listener; one real agent with a sim driver long-polling
//! replica 0 with a 25 s window. Launches go one at a time through the Lambda API of replica 1
//! ("cross") and replica 0 ("same"), alternating; each is timed from the request to the moment
//! the agent's driver has the instance (polled every 0.5 ms: "apply") and to `active` as the
//! API answers, then terminated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_agent::{Agent, AgentConfig};
use nimbus_api::server::ServerHandle;
use nimbus_control::config::{AgentTimings, RateLimits};
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_driver::sim::{SimConfig, SimDriver};
use nimbus_driver::Driver;
use nimbus_store::Store;
use serde_json::{json, Value};

use crate::bench::{pct, temp_dir};

#[derive(clap::Args, Debug)]
pub struct ReplicasArgs {
    /// A PostgreSQL server (e.g. a throwaway `initdb`): the bench creates a fresh database on
    /// it for the replicas to share, and drops it at the end.
    #[arg(long, env = "NIMBUS_DATABASE_URL")]
    pub database_url: String,
    /// Launches per path (cross-replica and same-replica).
    #[arg(long, default_value_t = 200)]
    pub launches: usize,
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
}

pub async fn run(a: ReplicasArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.database_url.starts_with("postgres"), "replicas share a PostgreSQL database; --database-url postgres://…");
    anyhow::ensure!(a.replicas >= 2, "--replicas must be at least 2");
    let e = |e: nimbus_core::Error| anyhow::anyhow!("{e}");
    let dir = temp_dir("replicas")?;
    let db = fresh_database(&a.database_url).await?;
    let cfg = Config {
        rate_limits: RateLimits { enabled: false, ..RateLimits::generous() },
        agents: AgentTimings { heartbeat_interval_ms: 1_000, host_timeout_ms: 30_000 },
        ..Config::default()
    };
    let (controls, servers) = start_replicas(&db.1, a.replicas, &cfg).await?;
    let urls: Vec<String> = servers.iter().map(ServerHandle::url).collect();
    let c0 = &controls[0];
    let org = admin::org_create(c0, &format!("bench-replicas-{}", &nimbus_core::ids::random_hex_id()[..8]), None).await.map_err(e)?;
    let (_, key) = admin::api_key_create(c0, &org, "bench", Permissions::admin(), None).await.map_err(e)?;
    let token = admin::host_token_create(c0, "us-east-1").await.map_err(e)?;
    let sim = SimConfig {
        hostname: "bench-replicas".into(),
        vcpus: 4096,
        memory_mib: 4096 * 8192,
        disk_gib: 409_600,
        gpus: vec![],
        state_file: None,
        address_block: 0,
        ..SimConfig::default()
    };
    let driver = Arc::new(SimDriver::new(sim));
    let agent = Agent::new(
        AgentConfig {
            server_url: urls[0].clone(),
            token,
            data_dir: dir.join("agent"),
            poll_wait: Duration::from_secs(25),
            public_ip: None,
            trust: Default::default(),
            insecure: false,
        },
        driver.clone(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(agent.run(stop));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c0.store().host_list(None, true).await.map_err(e)?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the agent did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http = reqwest::Client::new();
    let call = |url: &str, m: reqwest::Method, path: &str, body: Option<Value>| {
        let mut rb = http.request(m, format!("{url}/api/v1{path}")).bearer_auth(&key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let path = path.to_owned();
        async move {
            let r = rb.send().await?;
            let st = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            anyhow::ensure!(st.is_success(), "{path}: {st} {v}");
            Ok::<Value, anyhow::Error>(v)
        }
    };
    call(&urls[1], reqwest::Method::POST, "/ssh-keys", Some(json!({"name": "k"}))).await?;
    // Let the agent settle into its long-poll on replica 0.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});
    let (mut apply, mut active) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for i in 0..a.launches * 2 {
        let path = i % 2; // 0: cross (replica 1), 1: same (replica 0)
        let url = &urls[1 - path];
        let t = Instant::now();
        let v = call(url, reqwest::Method::POST, "/instance-operations/launch", Some(launch.clone())).await?;
        let id = v["data"]["instance_ids"][0].as_str().unwrap_or_default().to_owned();
        while !driver.list().await?.iter().any(|r| r.id == id) {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "{id} never reached the agent");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        apply[path].push(t.elapsed());
        loop {
            let v = call(url, reqwest::Method::GET, &format!("/instances/{id}"), None).await?;
            if v["data"]["status"] == "active" {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "{id} never became active");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        active[path].push(t.elapsed());
        call(url, reqwest::Method::POST, "/instance-operations/terminate", Some(json!({"instance_ids": [id]}))).await?;
    }
    let _ = stop_tx.send(true);
    let _ = run.await;
    stop_replicas(controls, servers).await;
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{} replicas on PostgreSQL, one sim host whose agent long-polls replica 0 (25 s window), {} launches per path",
        a.replicas, a.launches
    );
    println!("{:<34} {:>10} {:>10} {:>10}", "path", "p50", "p99", "max");
    let [cross_apply, same_apply] = apply;
    let [cross_active, same_active] = active;
    let rows = [
        ("cross-replica: launch -> apply", cross_apply),
        ("cross-replica: launch -> active", cross_active),
        ("same replica:  launch -> apply", same_apply),
        ("same replica:  launch -> active", same_active),
    ];
    for (name, mut v) in rows {
        v.sort();
        println!("{:<34} {:>10} {:>10} {:>10}", name, ms(pct(&v, 0.5)), ms(pct(&v, 0.99)), ms(pct(&v, 1.0)));
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop_database(&a.database_url, &db.0).await
}

/// `n` replicas in this process on the database at `url`, each with its own HTTP listener on
/// 127.0.0.1.
pub(crate) async fn start_replicas(url: &str, n: usize, cfg: &Config) -> anyhow::Result<(Vec<Control>, Vec<ServerHandle>)> {
    let e = |e: nimbus_core::Error| anyhow::anyhow!("{e}");
    let (mut controls, mut servers) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let control = Control::new(Store::connect(url).await.map_err(e)?, Arc::new(SystemClock), cfg.clone()).await.map_err(e)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        servers.push(nimbus_api::server::start(control.clone(), listener)?);
        controls.push(control);
    }
    Ok((controls, servers))
}

/// Shuts the replicas down and closes their stores (so their database can be dropped).
pub(crate) async fn stop_replicas(controls: Vec<Control>, servers: Vec<ServerHandle>) {
    for s in servers {
        let _ = s.shutdown().await;
    }
    for c in controls {
        c.store().close().await;
    }
}

/// A new database on the server `admin_url` names: (name, URL).
pub(crate) async fn fresh_database(admin_url: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let name = format!("nimbus_bench_{}", &nimbus_core::ids::random_hex_id()[..12]);
    let mut c = sqlx::AnyConnection::connect(admin_url).await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut c).await?;
    let base = admin_url.split('?').next().unwrap_or(admin_url);
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Ok((name.clone(), format!("{base}/{name}")))
}

pub(crate) async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut c = sqlx::AnyConnection::connect(admin_url).await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await?;
    Ok(())
}
