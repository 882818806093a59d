//! Lambda's default rate limits: 1 req/s with a burst, launch 1 per 10 s; 429 in Lambda's shape
//! with Retry-After, and a refused launch creates nothing.

use nimbus_control::config::{Rate, RateLimits};
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
