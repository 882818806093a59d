//! `nimbus bench middleware`: what the rate limiter and the idempotency layer add to a request.
//!
//! Two real servers in this process (SQLite in temp dirs), identical except that one has rate
//! limiting switched off. One keep-alive connection sends requests one at a time, so latency is
//! the server's path and not queueing; phases alternate in rounds so that drift (page cache,
//! CPU frequency) hits both sides alike. The cost of a middleware is the difference of medians:
//! - rate limiter: `GET /v1/account` with limits on minus limits off;
//! - idempotency: `PATCH /v1/account` with a fresh `Idempotency-Key` (claim + store of the
//!   response, two extra writes) minus without one, both with limits on.

use std::sync::Arc;
use std::time::Duration;

use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_store::Store;

use crate::bench::{drive, request, temp_dir, Phase};

struct Side {
    addr: std::net::SocketAddr,
    key: String,
    server: nimbus_api::server::ServerHandle,
    dir: std::path::PathBuf,
}

async fn side(limits: bool) -> anyhow::Result<Side> {
    let dir = temp_dir("mw")?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display());
    let mut rl = RateLimits::generous();
    rl.enabled = limits;
    for p in rl.plans.values_mut() {
        // High enough never to refuse: the limiter runs in full but always says yes.
        p.per_hour = u32::MAX;
        p.burst = u32::MAX / 2;
    }
    let cfg = Config { rate_limits: rl, ..Config::default() };
    let e = |e: nimbus_core::Error| anyhow::anyhow!("{e}");
    let store = Store::connect(&url).await.map_err(e)?;
    let control = Control::new(store, Arc::new(SystemClock), cfg).await.map_err(e)?;
    let org = admin::org_create(&control, "bench-mw", None).await.map_err(e)?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(e)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = nimbus_api::server::start(control, listener)?;
    Ok(Side { addr: server.addr, key, server, dir })
}

fn merge(name: &str, parts: Vec<Phase>) -> Phase {
    let mut latencies: Vec<Duration> = parts.iter().flat_map(|p| p.latencies.iter().copied()).collect();
    latencies.sort();
    Phase {
        name: name.to_owned(),
        requests: latencies.len(),
        errors: parts.iter().map(|p| p.errors).sum(),
        elapsed: parts.iter().map(|p| p.elapsed).sum(),
        latencies,
    }
}

pub async fn middleware(per_round: usize, rounds: usize) -> anyhow::Result<()> {
    let on = side(true).await?;
    let off = side(false).await?;
    let (mut get_off, mut get_on, mut patch_plain, mut patch_idem) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let body = r#"{"email":"ops@example.com"}"#;
    for round in 0..=rounds {
        let (k_off, k_on, k1, k2) = (off.key.clone(), on.key.clone(), on.key.clone(), on.key.clone());
        let a = drive("off", off.addr, 1, Some(per_round), None, move |_| request("GET", "/v1/account", &k_off, None)).await?;
        let b = drive("on", on.addr, 1, Some(per_round), None, move |_| request("GET", "/v1/account", &k_on, None)).await?;
        let c = drive("plain", on.addr, 1, Some(per_round), None, move |_| request("PATCH", "/v1/account", &k1, Some(body))).await?;
        let d = drive("idem", on.addr, 1, Some(per_round), None, move |i| {
            let mut r = request("PATCH", "/v1/account", &k2, Some(body))?;
            let v = format!("bench-{round}-{i}").parse()?;
            r.headers_mut().insert("idempotency-key", v);
            Ok(r)
        })
        .await?;
        // Round 0 warms caches and connections and is not counted.
        if round > 0 {
            get_off.push(a);
            get_on.push(b);
            patch_plain.push(c);
            patch_idem.push(d);
        }
    }
    let phases = [
        merge("GET /v1/account, limits off", get_off),
        merge("GET /v1/account, limits on", get_on),
        merge("PATCH /v1/account", patch_plain),
        merge("PATCH /v1/account + Idempotency-Key", patch_idem),
    ];
    println!("nimbus bench middleware: {rounds} rounds of {per_round} sequential requests per phase, one connection, SQLite");
    Phase::print_header();
    for p in &phases {
        p.print();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let rl = us(phases[1].pct(0.5)) - us(phases[0].pct(0.5));
    let idem = us(phases[3].pct(0.5)) - us(phases[2].pct(0.5));
    println!();
    println!("rate limiter adds {rl:.0} µs at p50 (target ≤ 200 µs)");
    println!("idempotency layer adds {idem:.0} µs at p50 (target ≤ 200 µs)");
    let errors: usize = phases.iter().map(|p| p.errors).sum();
    on.server.shutdown().await?;
    off.server.shutdown().await?;
    let _ = std::fs::remove_dir_all(&on.dir);
    let _ = std::fs::remove_dir_all(&off.dir);
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    Ok(())
}
