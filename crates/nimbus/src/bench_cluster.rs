//! `nimbus bench cluster`: create a cluster of N nodes on sim hosts through the clusters API and
//! time (a) the create request until every node is placed (the request returns after the launch
//! transaction that schedules all nodes commits) and (b) until the cluster is `CREATED` (every
//! node reported active by its agent). Sim hosts: the figure is the control plane's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_driver::sim::SimConfig;
use nimbus_store::Store;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Nodes per cluster.
    #[arg(long, default_value_t = 100)]
    pub nodes: i64,
    /// Sim hosts (64 vCPUs each; nodes are `cpu_1x_small`).
    #[arg(long, default_value_t = 4)]
    pub hosts: usize,
    /// Clusters created (and deleted) one after the other.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Database; default: SQLite in a temp dir.
    #[arg(long)]
    pub database_url: Option<String>,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub async fn run(a: ClusterArgs) -> anyhow::Result<()> {
    let dir = crate::bench::temp_dir("cluster")?;
    let url = a.database_url.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display()));
    let mut cfg = Config { rate_limits: RateLimits::generous(), ..Config::default() };
    cfg.quotas.instances_per_org = a.nodes * 4 + 100;
    cfg.clusters.max_nodes = a.nodes.max(256);
    cfg.agents.heartbeat_interval_ms = 200;
    let control = Control::new(Store::connect(&url).await.map_err(err)?, Arc::new(SystemClock), cfg).await.map_err(err)?;
    let org = admin::org_create(&control, &format!("bench-{}", &nimbus_core::ids::random_hex_id()[..8]), None).await.map_err(err)?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(err)?;
    let server = nimbus_api::server::start(control.clone(), tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::bench::spawn_sim_hosts(&control, &server.url(), &dir, a.hosts, &stop_rx, |h| SimConfig {
        hostname: format!("sim-{h}"),
        vcpus: 64,
        memory_mib: 512 * 1024,
        disk_gib: 100_000,
        gpus: vec![],
        state_file: None,
        address_block: h as u8,
        ..SimConfig::default()
    })
    .await?;
    let http = reqwest::Client::new();
    let base = format!("{}/api/v1", server.url());
    let r = http.post(format!("{base}/ssh-keys")).bearer_auth(&key).json(&json!({"name": "bench"})).send().await?;
    if !r.status().is_success() {
        bail!("adding an SSH key failed: {}", r.status());
    }

    println!(
        "nimbus bench cluster: {} nodes (cpu_1x_small) on {} sim hosts, {} rounds, database {}",
        a.nodes,
        a.hosts,
        a.rounds,
        if a.database_url.is_some() { "postgres" } else { "sqlite" }
    );
    println!("| round | create → all nodes scheduled (ms) | create → CREATED (ms) |");
    println!("|------:|----------------------------------:|----------------------:|");
    let (mut scheduled, mut ready) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let body = json!({"name": format!("bench-{round}"), "provider": "NIMBUS",
            "spec": {"dedicated": {"region_nodes": {"us-east-1": a.nodes}, "machine_type": "cpu_1x_small"}}});
        let t = Instant::now();
        let r = http.post(format!("{base}/clusters")).bearer_auth(&key).json(&body).send().await?;
        let status = r.status();
        let v: Value = r.json().await?;
        let t_sched = t.elapsed();
        if !status.is_success() || v["state"] == "FAILED" {
            bail!("create failed ({status}): {v}");
        }
        let id = v["id"].as_str().context("cluster id")?.to_owned();
        // Every node is placed once the create returns: check it in the store.
        let placed = control.store().cluster_node_ids(&id.replace('-', "")).await.map_err(err)?.len();
        if i64::try_from(placed).unwrap_or(0) != a.nodes {
            bail!("{placed} of {} nodes placed after the create returned", a.nodes);
        }
        loop {
            let g: Value = http.get(format!("{base}/clusters/{id}")).bearer_auth(&key).send().await?.json().await?;
            if g["state"] == "CREATED" {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("cluster never CREATED: {g}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t_ready = t.elapsed();
        println!("| {round:>5} | {:>33.1} | {:>21.1} |", t_sched.as_secs_f64() * 1e3, t_ready.as_secs_f64() * 1e3);
        scheduled.push(t_sched);
        ready.push(t_ready);
        let r = http.delete(format!("{base}/clusters/{id}")).bearer_auth(&key).send().await?;
        if !r.status().is_success() {
            bail!("delete failed: {}", r.status());
        }
        // Wait for the capacity to come back before the next round.
        let deadline = Instant::now() + Duration::from_secs(60);
        while control.store().host_list(None, true).await.map_err(err)?.iter().any(|h| h.used.vcpus > 0) {
            if Instant::now() > deadline {
                bail!("capacity not released after delete");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    scheduled.sort();
    ready.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "all scheduled: p50 {:.1} ms, max {:.1} ms (target ≤ 1000 ms); CREATED: p50 {:.1} ms, max {:.1} ms",
        ms(scheduled[scheduled.len() / 2]),
        ms(*scheduled.last().unwrap_or(&Duration::ZERO)),
        ms(ready[ready.len() / 2]),
        ms(*ready.last().unwrap_or(&Duration::ZERO)),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
