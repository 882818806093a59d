//! Lambda's default rate limits: 1 req/s with a burst, launch 1 per 10 s; 429 in Lambda's shape
//! with Retry-After, and a refused launch creates nothing. An org's keys share the org's budget;
//! failed authentications from one address get it refused.

use nimbus_control::admin;
use nimbus_control::config::{AuthFailureLimit, PlanRate, Rate, RateLimits};
use nimbus_core::auth::Permissions;
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::{assert_error, PUBKEY};

#[tokio::test]
async fn defaults_limit_and_429_has_no_side_effects() {
    let s = TestServer::builder()
        .config(|c| {
            c.rate_limits = RateLimits {
                enabled: true,
                default: Rate { per_second: 1.0, burst: 5 },
                launch: Rate { per_second: 0.1, burst: 1 },
                ..RateLimits::default()
            }
        })
        .host("us-east-1", sim_host("h", 8, 0))
        .start()
        .await;
    s.expect("POST", "/ssh-keys", Some(json!({"name": "k", "public_key": PUBKEY})), 200).await;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});
    let (st, _) = s.call(&s.key, "POST", "/instance-operations/launch", Some(launch.clone())).await;
    assert_eq!(st, 200);
    // Second launch inside 10 s: 429, nothing created.
    let resp = s.http.post(s.lambda("/instance-operations/launch")).bearer_auth(&s.key).json(&launch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_error(429, &body, 429, "global/too-many-requests");
    let hosts = s.control.store().host_list(None, false).await.unwrap();
    assert_eq!(hosts[0].used.vcpus, 1, "the refused launch reserved nothing");

    // The general bucket: a burst of 5 (one already spent on ssh-keys), then 429.
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(s.call(&s.key, "GET", "/instances", None).await.0);
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 4, "{codes:?}");
    assert_eq!(codes.last(), Some(&429));
    // Another key has its own bucket.
    let (_, other) = s.org_with_key("org-a", "READ").await;
    assert_eq!(s.call(&other, "GET", "/instances", None).await.0, 200);
    s.shutdown().await;
}

/// Minting keys does not multiply an org's budget: every request also draws from the org's
/// bucket (the per-key rate times `org_multiplier`), and its refusal is the same 429 as a
/// per-key one, in the Lambda and the native shape.
#[tokio::test]
async fn keys_of_one_org_share_the_org_budget() {
    let s = TestServer::builder()
        .config(|c| {
            c.rate_limits =
                RateLimits { enabled: true, default: Rate { per_second: 0.01, burst: 3 }, org_multiplier: 2.0, ..RateLimits::default() };
            for p in c.rate_limits.plans.values_mut() {
                *p = PlanRate { per_hour: 36, burst: 3 };
            }
        })
        .start()
        .await;
    let mut keys = Vec::new();
    for i in 0..4 {
        let (_, k) =
            admin::api_key_create(&s.control, &s.org, &format!("k{i}"), Permissions::parse_list("READ").unwrap(), None).await.unwrap();
        keys.push(k);
    }

    // Lambda: four keys of burst 3 would be 12; the org's budget is 6.
    let mut codes = Vec::new();
    for i in 0..12 {
        codes.push(s.call(&keys[i % 4], "GET", "/instances", None).await.0);
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 6, "{codes:?}");
    let resp = s.http.get(s.lambda("/instances")).bearer_auth(&keys[3]).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_error(429, &body, 429, "global/too-many-requests");
    // Another org is unaffected.
    let (_, other) = s.org_with_key("budget-other", "READ").await;
    assert_eq!(s.call(&other, "GET", "/instances", None).await.0, 200);

    // Native (plan-limited): the same, with the X-RateLimit headers of a per-key 429.
    let mut ok = 0;
    for i in 0..12 {
        ok += usize::from(s.native(&keys[i % 4], "GET", "/instances", None).await.0 == 200);
    }
    assert_eq!(ok, 6);
    let resp = s.http.get(format!("{}/v1/instances", s.url)).bearer_auth(&keys[2]).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let h = resp.headers().clone();
    assert_eq!(h["x-ratelimit-limit"], "3", "the key's limit, as a per-key 429 reports it");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(h.contains_key("x-ratelimit-reset") && h.contains_key("retry-after"), "{h:?}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["retry_after"].as_u64().is_some_and(|r| r >= 1), "{body}");
    s.shutdown().await;
}

/// The failed-authentication limit, through the real router with real keys, the client address
/// injected as the serve loop's `ConnectInfo` (from a test header, so one test can be several
/// clients): after `burst` bad keys from one address even a good key from it gets 429, in the
/// dialect's shape; another address is unaffected.
#[tokio::test]
async fn failed_authentications_block_the_address() {
    use std::net::SocketAddr;

    use axum::extract::{ConnectInfo, Request};
    use axum::middleware::Next;

    let s = TestServer::builder()
        .config(|c| c.rate_limits.auth_failures = AuthFailureLimit { per_minute: 6, burst: 5, max_tracked_ips: 100 })
        .start()
        .await;
    async fn peer(mut req: Request, next: Next) -> axum::response::Response {
        let ip = req.headers().get("x-test-peer").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or([127, 0, 0, 1].into());
        req.extensions_mut().insert(ConnectInfo(SocketAddr::new(ip, 50_000)));
        next.run(req).await
    }
    let app = nimbus_api::router(nimbus_api::ApiState::new(s.control.clone())).layer(axum::middleware::from_fn(peer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let get = |path: &str, peer: &str, key: &str| s.http.get(format!("{url}{path}")).header("x-test-peer", peer).bearer_auth(key).send();

    let attacker = "203.0.113.9";
    for i in 0..5 {
        let st = get("/v1/account", attacker, &format!("secret_guess_{i}")).await.unwrap().status().as_u16();
        assert_eq!(st, 401, "guess {i}");
    }
    // The good key from the same address: refused before any lookup, in each dialect's shape.
    let resp = get("/v1/account", attacker, &s.key).await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let resp = get("/api/v1/instances", attacker, &s.key).await.unwrap();
    let st = resp.status().as_u16();
    assert_error(st, &resp.json().await.unwrap(), 429, "global/too-many-requests");
    let resp = get("/api/v1/clusters", attacker, &s.key).await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["code"], 8);
    // Without credentials the request still runs (and gets its ordinary 401).
    let st = s.http.get(format!("{url}/v1/account")).header("x-test-peer", attacker).send().await.unwrap().status();
    assert_eq!(st.as_u16(), 401);
    // Another address, with the good key and with a bad one, is unaffected.
    assert_eq!(get("/v1/account", "203.0.113.10", &s.key).await.unwrap().status().as_u16(), 200);
    assert_eq!(get("/v1/account", "203.0.113.10", "secret_guess_x").await.unwrap().status().as_u16(), 401);
    assert_eq!(get("/api/v1/instances", "203.0.113.10", &s.key).await.unwrap().status().as_u16(), 200);
    server.abort();
    s.shutdown().await;
}
