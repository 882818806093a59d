//! `nimbus bench tls`: what HTTPS costs a client, beside plain HTTP, on the same server.
//!
//! One server in this process (SQLite in a temp dir) with two listeners of the same router: plain
//! HTTP and HTTPS with a self-signed certificate (ECDSA P-256, as `nimbus server` makes). One
//! client (reqwest, rustls) sends `GET /v1/account` one request at a time, four ways: on one
//! keep-alive connection, and on a new connection per request (TCP + TLS handshake), each over
//! HTTP and HTTPS, alternating in rounds so that drift hits all alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_store::Store;

use crate::bench::{pct, temp_dir};

async fn timed(client: &reqwest::Client, url: &str, key: &str, n: usize, out: &mut Vec<Duration>) -> anyhow::Result<()> {
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(url).bearer_auth(key).send().await?;
        anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().await?;
        out.push(t.elapsed());
    }
    Ok(())
}

pub async fn run(per_round: usize, rounds: usize) -> anyhow::Result<()> {
    let dir = temp_dir("tls")?;
    let e = |e: nimbus_core::Error| anyhow::anyhow!("{e}");
    let db = format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display());
    let cfg = Config { rate_limits: RateLimits { enabled: false, ..RateLimits::generous() }, ..Config::default() };
    let control = Control::new(Store::connect(&db).await.map_err(e)?, Arc::new(SystemClock), cfg).await.map_err(e)?;
    let org = admin::org_create(&control, "bench-tls", None).await.map_err(e)?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(e)?;
    let (cert, tls_key, _) = nimbus_api::tls::ensure_self_signed(&dir, &["127.0.0.1".to_owned()])?;
    let tls = nimbus_api::tls::ServerTls::load(&cert, &tls_key)?;
    let plain = nimbus_api::server::start(control.clone(), tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    let opts = nimbus_api::server::ServeOptions { tls: Some(tls), ..Default::default() };
    let secure = nimbus_api::server::start_with(control, tokio::net::TcpListener::bind("127.0.0.1:0").await?, opts)?;
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert)?)?;
    let client = |reuse: bool| {
        let b = reqwest::Client::builder().add_root_certificate(root.clone()).timeout(Duration::from_secs(10));
        if reuse { b } else { b.pool_max_idle_per_host(0) }.build()
    };
    let (keep, fresh) = (client(true)?, client(false)?);
    let (http_url, https_url) = (format!("{}/v1/account", plain.url()), format!("{}/v1/account", secure.url()));
    let mut lat: [Vec<Duration>; 4] = Default::default();
    for round in 0..=rounds {
        let mut r: [Vec<Duration>; 4] = Default::default();
        timed(&keep, &http_url, &key, per_round, &mut r[0]).await?;
        timed(&keep, &https_url, &key, per_round, &mut r[1]).await?;
        timed(&fresh, &http_url, &key, per_round, &mut r[2]).await?;
        timed(&fresh, &https_url, &key, per_round, &mut r[3]).await?;
        // Round 0 warms caches and the keep-alive connections and is not counted.
        if round > 0 {
            for (all, part) in lat.iter_mut().zip(r) {
                all.extend(part);
            }
        }
    }
    let names = ["HTTP, keep-alive", "HTTPS, keep-alive", "HTTP, new connection each", "HTTPS, new connection each (TLS 1.3 handshake)"];
    println!("nimbus bench tls: {rounds} rounds of {per_round} sequential GET /v1/account per phase, one client, SQLite");
    println!("{:<48} {:>9} {:>9} {:>9}", "phase", "p50 µs", "p90 µs", "p99 µs");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (name, l) in names.iter().zip(lat.iter_mut()) {
        l.sort();
        println!("{name:<48} {:>9.0} {:>9.0} {:>9.0}", us(pct(l, 0.5)), us(pct(l, 0.9)), us(pct(l, 0.99)));
    }
    println!();
    println!("HTTPS adds {:.0} µs at p50 on a kept connection", us(pct(&lat[1], 0.5)) - us(pct(&lat[0], 0.5)));
    println!("a new HTTPS connection costs {:.0} µs more than a new HTTP one at p50", us(pct(&lat[3], 0.5)) - us(pct(&lat[2], 0.5)));
    plain.shutdown().await?;
    secure.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
