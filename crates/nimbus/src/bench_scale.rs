//! `nimbus bench scale`: the control plane at fleet size, with **sim hosts**: no agent process
//! and no driver, each host a task that speaks the agent protocol as an agent does (registered
//! once, then `POST report` every heartbeat, over HTTP). For scale only; every other test uses
//! real agents.
//!
//! N replicas in this process on a fresh database created on the given PostgreSQL server (and
//! dropped at the end). Phases:
//! 1. **Heartbeats**: H sim hosts report every `heartbeat_ms`, round-robin over the replicas,
//!    at random phases. Report latency p50/p99/max, reports/s, and the database's CPU (the
//!    utime+stime of every `postgres` process on this machine, from /proc) per 1,000 hosts.
//! 2. **Placements**: `concurrency` connections over all replicas send Lambda launches of
//!    `quantity` instances each until `instances` are placed (the hosts keep heartbeating):
//!    placements/s, beside Nomad's published C1M figure (3,750/s).
//! 3. **Lists** with every instance in one org, the heartbeats stopped: `GET /api/v1/instances`
//!    (all of them, Lambda has no paging) and the native first page `GET /v1/instances?limit=100`.
//!
//! Sim hosts report no instances (their launches stay `booting`): the figures are the control
//! plane's, not a driver's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_control::config::{AgentTimings, RateLimits};
use nimbus_control::{admin, agents, Config};
use nimbus_core::auth::Permissions;
use nimbus_proto as proto;
use rand::Rng;

use crate::bench::{drive_on, pct, request, Phase};
use crate::bench_replicas::{drop_database, fresh_database, start_replicas, stop_replicas};

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// A PostgreSQL server on this machine (its processes' CPU is measured): the bench creates
    /// a fresh database on it and drops it at the end.
    #[arg(long, env = "NIMBUS_DATABASE_URL")]
    pub database_url: String,
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Sim hosts.
    #[arg(long, default_value_t = 10_000)]
    pub hosts: usize,
    #[arg(long, default_value_t = 5_000)]
    pub heartbeat_ms: u64,
    /// Seconds of the heartbeat-only phase.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Instances to place (all in one org).
    #[arg(long, default_value_t = 100_000)]
    pub instances: usize,
    /// Instances per launch request.
    #[arg(long, default_value_t = 50)]
    pub quantity: usize,
    /// Connections sending launches (and list requests).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// CPU seconds used so far by every process named `postgres` on this machine, and by the
/// backends that exited (the postmaster's reaped children: its cutime+cstime).
fn postgres_cpu_seconds() -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        if std::fs::read_to_string(p.join("comm")).map(|c| c.trim() == "postgres").unwrap_or(false) {
            if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
                // Fields after the parenthesised command: state is field 3; utime 14, stime 15.
                let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
                let f: Vec<&str> = rest.split_whitespace().collect();
                let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                total += n(14) + n(15) + n(16) + n(17);
            }
        }
    }
    total as f64 / tick
}

pub async fn run(a: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.database_url.starts_with("postgres"), "--database-url postgres://… (a PostgreSQL server on this machine)");
    let e = |e: nimbus_core::Error| anyhow::anyhow!("{e}");
    let db = fresh_database(&a.database_url).await?;
    let mut cfg = Config {
        rate_limits: RateLimits { enabled: false, ..RateLimits::generous() },
        agents: AgentTimings { heartbeat_interval_ms: a.heartbeat_ms, host_timeout_ms: a.heartbeat_ms * 6 },
        ..Config::default()
    };
    cfg.quotas.instances_per_org = i64::try_from(a.instances)? + 1_000;
    // Every sim host connects from 127.0.0.1: the per-address cap (512) would refuse most.
    cfg.http.max_connections = 1 << 20;
    cfg.http.max_connections_per_ip = 1 << 20;
    cfg.quotas.max_launch_quantity = i64::try_from(a.quantity)?;
    let (controls, servers) = start_replicas(&db.1, a.replicas, &cfg).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let c0 = controls[0].clone();
    let org = admin::org_create(&c0, "bench-scale", None).await.map_err(e)?;
    let (_, key) = admin::api_key_create(&c0, &org, "bench", Permissions::admin(), None).await.map_err(e)?;
    println!(
        "nimbus bench scale: {} replicas on PostgreSQL, {} sim hosts (simulated: tasks speaking the agent protocol), heartbeat every {} ms",
        a.replicas, a.hosts, a.heartbeat_ms
    );

    // Registration (not timed as a figure): in-process, eight at a time.
    let t = Instant::now();
    let limits = admin::HostTokenLimits { uses: i64::try_from(a.hosts)?, ttl_secs: 3600 };
    let token = admin::host_token_create_with(&c0, "us-east-1", limits).await.map_err(e)?.secret;
    let secrets = Arc::new(Mutex::new(Vec::with_capacity(a.hosts)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut regs = Vec::new();
    for w in 0..8 {
        let (c, token, secrets, next, hosts) =
            (controls[w % controls.len()].clone(), token.clone(), secrets.clone(), next.clone(), a.hosts);
        regs.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= hosts {
                    return anyhow::Ok(());
                }
                let req = proto::RegisterRequest {
                    protocol_version: proto::PROTOCOL_VERSION,
                    token: token.clone(),
                    machine_id: format!("sim-machine-{i}"),
                    inventory: proto::Inventory {
                        hostname: format!("sim-{i}"),
                        cpu_model: "sim".into(),
                        vcpus: 64,
                        memory_mib: 512 * 1024,
                        disk_gib: 10_000,
                        gpus: vec![],
                        driver: "sim".into(),
                        public_ip: None,
                        network: None,
                        machines: vec![],
                    },
                };
                let r = agents::register(&c, req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                secrets.lock().unwrap_or_else(|p| p.into_inner()).push(r.host_secret);
            }
        }));
    }
    for r in regs {
        r.await??;
    }
    println!("registered {} sim hosts in {:.1} s", a.hosts, t.elapsed().as_secs_f64());

    // The heartbeats, for the whole run.
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(30)).build()?;
    let beats: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body = serde_json::to_vec(&proto::ReportRequest::default())?;
    let secrets = std::mem::take(&mut *secrets.lock().unwrap_or_else(|p| p.into_inner()));
    let every = Duration::from_millis(a.heartbeat_ms);
    let mut beaters = Vec::new();
    for (i, secret) in secrets.into_iter().enumerate() {
        let (http, beats, errors, stop, body) = (http.clone(), beats.clone(), errors.clone(), stop.clone(), body.clone());
        let url = format!("http://{}{}", addrs[i % addrs.len()], proto::PATH_REPORT);
        let phase = every.mul_f64(rand::thread_rng().gen::<f64>());
        beaters.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(every);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .bearer_auth(&secret)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    beats.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let every host beat once before measuring.
    tokio::time::sleep(every + Duration::from_secs(1)).await;
    beats.lock().unwrap_or_else(|p| p.into_inner()).clear();
    errors.store(0, Ordering::Relaxed);
    let cpu0 = postgres_cpu_seconds();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = postgres_cpu_seconds() - cpu0;
    let mut b = std::mem::take(&mut *beats.lock().unwrap_or_else(|p| p.into_inner()));
    b.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "heartbeats ({:.0} s): {} reports, {:.0}/s, {} failed; latency p50 {} p99 {} max {}",
        secs,
        b.len(),
        b.len() as f64 / secs,
        errors.load(Ordering::Relaxed),
        ms(pct(&b, 0.5)),
        ms(pct(&b, 0.99)),
        ms(pct(&b, 1.0))
    );
    println!(
        "database CPU: {:.2} cores in all, {:.3} cores per 1,000 hosts (postgres processes' utime+stime)",
        cpu / secs,
        cpu / secs / (a.hosts as f64 / 1000.0)
    );

    // Placements, with the heartbeats going on.
    let http_key = key.clone();
    let launches = a.instances.div_ceil(a.quantity);
    let q = a.quantity;
    let body_of = move |i: usize| {
        format!(
            r#"{{"region_name":"us-east-1","instance_type_name":"cpu_1x_small","ssh_key_names":["bench"],"quantity":{q},"name":"s{i}"}}"#
        )
    };
    let k = http_key.clone();
    drive_on("ssh key", addrs[..1].to_vec(), 1, Some(1), None, move |_| {
        request("POST", "/api/v1/ssh-keys", &k, Some(r#"{"name":"bench"}"#))
    })
    .await?;
    Phase::print_header();
    let k = http_key.clone();
    let place = drive_on("POST launch", addrs.clone(), a.concurrency, Some(launches), None, move |i| {
        request("POST", "/api/v1/instance-operations/launch", &k, Some(&body_of(i)))
    })
    .await?;
    place.print();
    let placed = launches * a.quantity;
    println!(
        "placements: {} instances in {:.1} s = {:.0}/s over {} replicas ({} launch requests failed); Nomad C1M: 3,750/s",
        placed - place.errors * a.quantity,
        place.elapsed.as_secs_f64(),
        (placed - place.errors * a.quantity) as f64 / place.elapsed.as_secs_f64(),
        a.replicas,
        place.errors
    );
    // The lists with the heartbeats stopped: on one machine both ends of every sim host's
    // connection hold a descriptor, and the lists need connections of their own.
    stop.store(true, Ordering::Relaxed);
    for b in beaters {
        b.abort();
    }
    drop(http);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let k = http_key.clone();
    let list = drive_on(&format!("GET /api/v1/instances ({placed})"), addrs.clone(), 4, None, Some(Duration::from_secs(10)), move |_| {
        request("GET", "/api/v1/instances", &k, None)
    })
    .await?;
    list.print();
    let k = http_key.clone();
    let page = drive_on("GET /v1/instances?limit=100", addrs.clone(), 4, None, Some(Duration::from_secs(10)), move |_| {
        request("GET", "/v1/instances?limit=100", &k, None)
    })
    .await?;
    page.print();

    stop_replicas(controls, servers).await;
    drop_database(&a.database_url, &db.0).await
}
