//! Metering with a controllable clock: a known sequence of launches, stops, starts and
//! terminations gives exact charges, to the micro-dollar, across a month boundary, in the usage
//! endpoint and in the hourly ledger alike.

use std::sync::Arc;

use nimbus_core::clock::{parse_rfc3339, ManualClock};
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::add_key;

#[tokio::test]
async fn exact_charges_across_a_month_boundary() {
    let t0 = parse_rfc3339("2026-01-31T22:00:00Z").unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let s = TestServer::builder()
        .clock(clock.clone())
        // The clock jumps by hours; the sim host must not be declared lost meanwhile.
        .config(|c| c.agents.host_timeout_ms = 30 * 24 * 3_600_000)
        .host("us-east-1", sim_host("h", 8, 0))
        .start()
        .await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    // cpu_1x_small: 2 ¢/h = 20,000 µ$/h, 10 GiB disk; storage 137 µ$/GiB-h → 1,370 µ$/h.
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let id = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    let path = format!("/instances/{id}");
    s.wait_native_status(&path, "running").await; // compute from 22:00:00

    clock.advance_secs(30 * 60 + 7);
    s.nexpect("POST", &format!("{path}/stop"), None, 200).await; // 22:30:07: compute → storage
    s.wait_native_status(&path, "stopped").await;
    clock.advance_secs(2 * 3600);
    s.nexpect("POST", &format!("{path}/start"), None, 200).await; // 00:30:07 (Feb 1)
    s.wait_native_status(&path, "running").await; // storage → compute at 00:30:07
    clock.advance_secs(3600);
    s.nexpect("DELETE", &path, None, 200).await; // 01:30:07: compute ends

    // compute 22:00:00–22:30:07 = 1,807 s → 10,038; storage 22:30:07–00:30:07 in hourly pieces
    // 1,793 s → 682, 3,600 s → 1,370, 1,807 s → 687; compute 00:30:07–01:30:07 in pieces
    // 1,793 s → 9,961 and 1,807 s → 10,038. Each piece rounds down to the micro-dollar.
    let jan = (10_038 + 682 + 1_370, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z");
    let feb = (687 + 9_961 + 10_038, "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");
    for (want, start, end) in [jan, feb] {
        let u = s.nexpect("GET", &format!("/billing/usage?start={start}&end={end}"), None, 200).await;
        assert_eq!(u["total_micros"], want, "{start}: {u}");
    }
    let u = s.nexpect("GET", "/billing/usage?start=2026-01-31T00:00:00Z&end=2026-02-02T00:00:00Z", None, 200).await;
    assert_eq!(u["total_micros"], 32_776);
    assert_eq!(u["total_usd"], "0.032776");
    let compute: i64 =
        u["lines"].as_array().unwrap().iter().filter(|l| l["kind"] == "compute").map(|l| l["seconds"].as_i64().unwrap()).sum();
    let storage: i64 =
        u["lines"].as_array().unwrap().iter().filter(|l| l["kind"] == "storage").map(|l| l["seconds"].as_i64().unwrap()).sum();
    assert_eq!((compute, storage), (1_807 + 3_600, 7_200), "per-second granularity");

    // The hourly ledger holds the same pieces: roll up past the last hour and compare.
    clock.advance_secs(3600);
    nimbus_control::metering::roll_up(&s.control).await.unwrap();
    nimbus_control::metering::roll_up(&s.control).await.unwrap(); // idempotent
    let sum = |from: &str, to: &str| {
        let (f, t) = (parse_rfc3339(from).unwrap() / 1_000_000, parse_rfc3339(to).unwrap() / 1_000_000);
        let s = &s;
        async move { s.control.store().ledger_list_by_org(&s.org.id, f, t).await.unwrap().iter().map(|e| e.amount_micros).sum::<i64>() }
    };
    assert_eq!(sum(jan.1, jan.2).await, jan.0);
    assert_eq!(sum(feb.1, feb.2).await, feb.0);
}
