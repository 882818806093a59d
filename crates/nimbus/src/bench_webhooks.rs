//! `nimbus bench webhooks`: webhook delivery latency under a sustained event rate.
//!
//! Starts a real server (SQLite in a temp dir by default, so the real delivery worker runs), a
//! local HTTP receiver on 127.0.0.1, and subscribes it through `POST /v1/webhooks`. Events are
//! then appended to the outbox **in-process through the store** by eight concurrent producers
//! (state changes come from concurrent requests), each event in its own committed transaction
//! exactly as a state change appends its event, at `--rate` per second for
//! `--seconds`. (Real API state changes cannot be produced at 1,000/s on the development machine:
//! `bench api` measures about 400 launches/s.) The receiver checks each signature and records
//! the receipt time; latency is receipt time minus the time the event's transaction committed,
//! both read from the same clock in the same process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::body::Bytes;
use axum::http::HeaderMap;
use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::{Clock, SystemClock};
use nimbus_core::ids::{InstanceId, OrgId};
use nimbus_store::{NewEvent, Store};
use serde_json::json;

#[derive(clap::Args)]
pub struct WebhooksArgs {
    /// Events committed per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of sustained load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Webhooks subscribed to every event (deliveries = events × webhooks).
    #[arg(long, default_value_t = 1)]
    webhooks: usize,
    /// Database; default: SQLite in a temp dir.
    #[arg(long)]
    database_url: Option<String>,
}

const SECRET: &str = "bench-webhook-secret-0123456789";

#[derive(Default)]
struct Receipts {
    /// Per event index, per webhook: receipt time (µs).
    at: Vec<Vec<i64>>,
    bad_signatures: usize,
    requests: usize,
}

fn now() -> i64 {
    SystemClock.now_micros()
}

async fn receiver(state: Arc<Mutex<Receipts>>) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let state = state.clone();
        async move {
            let t = now();
            let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let ts: i64 = header("x-nimbus-timestamp").parse().unwrap_or(0);
            let good = nimbus_core::webhook::sign(SECRET, ts, &body) == header("x-nimbus-signature");
            let index = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["data"]["name"].as_str().and_then(|n| n.strip_prefix("bench-")).and_then(|n| n.parse::<usize>().ok()));
            let mut r = state.lock().unwrap_or_else(|p| p.into_inner());
            r.requests += 1;
            if !good {
                r.bad_signatures += 1;
            }
            if let Some(slot) = index.and_then(|i| r.at.get_mut(i)) {
                slot.push(t);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

async fn append(store: &Store, org: &OrgId, i: usize) -> anyhow::Result<i64> {
    let mut tx = store.begin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rid = InstanceId::generate();
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: Some(org),
            kind: "instance.created",
            resource_type: "instance",
            resource_id: rid.as_str(),
            actor_key_id: None,
            payload: json!({"name": format!("bench-{i}"), "instance_type": "cpu_1x_small", "region": "us-east-1"}),
            now: now(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Store::commit(tx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(now())
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

pub async fn run(a: WebhooksArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("nimbus-bench-webhooks-{}", nimbus_core::ids::random_hex_id()));
    std::fs::create_dir_all(&dir)?;
    let url = a.database_url.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display()));
    let mut cfg = Config { rate_limits: RateLimits::generous(), ..Config::default() };
    cfg.webhooks.allow_private_targets = true;
    let settings = cfg.webhooks.clone();
    let store = Store::connect(&url).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let control = Control::new(store, Arc::new(SystemClock), cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let org = admin::org_create(&control, &format!("bench-{}", &nimbus_core::ids::random_hex_id()[..8]), None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = nimbus_api::server::start(control.clone(), tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;

    let total = usize::try_from(a.rate * a.seconds)?;
    let receipts = Arc::new(Mutex::new(Receipts { at: vec![Vec::new(); total], ..Receipts::default() }));
    let hook_url = receiver(receipts.clone()).await?;
    let http = reqwest::Client::new();
    for _ in 0..a.webhooks {
        let resp = http
            .post(format!("{}/v1/webhooks", server.url()))
            .bearer_auth(&key)
            .json(&json!({"url": hook_url, "events": ["instance.*"], "secret": SECRET}))
            .send()
            .await?;
        if resp.status().as_u16() != 201 {
            bail!("creating the webhook failed: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
    }
    println!(
        "nimbus bench webhooks: {} events/s for {} s ({total} events × {} webhook(s)), database {}, events appended in-process \
         through the store (one committed transaction each), delivered by the real worker over HTTP to a local receiver",
        a.rate,
        a.seconds,
        a.webhooks,
        if a.database_url.is_some() { "postgres" } else { "sqlite" }
    );
    println!(
        "worker settings: max_concurrency {}, per_webhook_concurrency {}, poll_interval_ms {} (commits wake it at once)",
        settings.max_concurrency, settings.per_webhook_concurrency, settings.poll_interval_ms
    );

    // Producers: state changes come from concurrent requests, so eight tasks share the schedule
    // (event i is due at i / rate seconds), each event in its own committed transaction.
    const PRODUCERS: usize = 8;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..PRODUCERS {
        let store = control.store().clone();
        let org = org.id.clone();
        let rate = a.rate as f64;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (k..total).step_by(PRODUCERS) {
                let due = Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                out.push((i, append(&store, &org, i).await?));
            }
            anyhow::Ok(out)
        }));
    }
    let mut committed = vec![0i64; total];
    for t in tasks {
        for (i, at) in t.await?? {
            committed[i] = at;
        }
    }
    let produce_secs = start.elapsed().as_secs_f64();

    // Wait for every delivery (or give up after 60 s).
    let want = total * a.webhooks;
    let t = Instant::now();
    loop {
        let got: usize = receipts.lock().unwrap_or_else(|p| p.into_inner()).at.iter().map(Vec::len).sum();
        if got >= want || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A copy, so no lock is held across the awaits below.
    let r = std::mem::take(&mut *receipts.lock().unwrap_or_else(|p| p.into_inner()));
    let mut lat: Vec<i64> = Vec::with_capacity(want);
    let mut first_commit = i64::MAX;
    let mut last_receipt = 0;
    for (idx, times) in r.at.iter().enumerate() {
        for t in times {
            lat.push(t - committed[idx]);
            first_commit = first_commit.min(committed[idx]);
            last_receipt = last_receipt.max(*t);
        }
    }
    lat.sort_unstable();
    let missing = r.at.iter().map(|t| a.webhooks.saturating_sub(t.len())).sum::<usize>();
    let duplicates = r.at.iter().map(|t| t.len().saturating_sub(a.webhooks)).sum::<usize>();
    println!();
    println!(
        "| events | produced/s | deliveries | delivered/s | p50 ms | p95 ms | p99 ms | max ms | missing | duplicates | bad signatures |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let delivered_secs = (last_receipt - first_commit).max(1) as f64 / 1e6;
    println!(
        "| {total} | {:.0} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {missing} | {duplicates} | {} |",
        total as f64 / produce_secs,
        lat.len(),
        lat.len() as f64 / delivered_secs,
        pct(&lat, 0.50),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        r.bad_signatures,
    );
    println!("(latency = receipt at the receiver − commit of the event's transaction; receiver requests: {})", r.requests);
    let ok = missing == 0 && r.bad_signatures == 0;
    server.shutdown().await?;
    control.store().close().await;
    let _ = std::fs::remove_dir_all(&dir);
    if !ok {
        bail!("some deliveries were missing or badly signed");
    }
    Ok(())
}
