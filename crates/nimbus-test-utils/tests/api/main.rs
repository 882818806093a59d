//! HTTP integration tests: a real server on 127.0.0.1:0, a real database (SQLite, or PostgreSQL
//! when NIMBUS_TEST_DATABASE_URL is set), real agents with the sim driver.

#![allow(clippy::unwrap_used)]

mod account;
mod bad_input;
mod bad_input_sweep;
mod billing;
mod clients;
mod clusters;
mod console;
mod containers;
mod gpu_health;
mod hosts;
mod idempotency;
mod isolation;
mod lambda;
mod machines;
mod metrics;
mod native;
mod native_lifecycle;
mod permissions;
mod prometheus;
mod proto_v1;
mod protocol;
mod ratelimit;
mod replicas;
mod scheduling;
mod sdk;
mod service_accounts;
mod shape;
mod transport;
mod voltage;
mod voltage_seed;
mod voltage_storage;
mod voltage_vms;
mod webhooks;

use std::sync::Arc;

use nimbus_core::clock::{parse_rfc3339, ManualClock};
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

pub const PUBKEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a me@host";

/// Adds an SSH key named `name` with the admin key.
pub async fn add_key(s: &TestServer, name: &str) -> Value {
    s.expect("POST", "/ssh-keys", Some(json!({"name": name, "public_key": PUBKEY})), 200).await["data"].clone()
}

/// Launches one instance of `itype` and returns its id.
pub async fn launch(s: &TestServer, key: &str, itype: &str, ssh_key: &str) -> String {
    let (st, v) = s
        .call(
            key,
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": itype, "ssh_key_names": [ssh_key]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["data"]["instance_ids"][0].as_str().unwrap().to_owned()
}

/// Asserts a Lambda error body with this status and code.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// Two sim hosts of 64 vCPUs and 8 H100s in us-east-1 (distinct address blocks) under a manual
/// clock starting at `start` (RFC 3339); hosts never time out while the clock jumps ahead.
/// One 8-vCPU sim host, and a manual clock at `start` that may jump by hours (hosts are not
/// declared lost meanwhile).
pub async fn one_small_host_at(start: &str) -> (TestServer, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(parse_rfc3339(start).unwrap()));
    let s = TestServer::builder()
        .clock(clock.clone())
        .config(|c| c.agents.host_timeout_ms = 30 * 24 * 3_600_000)
        .host("us-east-1", sim_host("h", 8, 0))
        .start()
        .await;
    (s, clock)
}

pub async fn two_h100_hosts_at(start: &str) -> (TestServer, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(parse_rfc3339(start).unwrap()));
    let mut a = sim_host("a", 64, 8);
    a.address_block = 1;
    let mut b = sim_host("b", 64, 8);
    b.address_block = 2;
    let s = TestServer::builder()
        .clock(clock.clone())
        .config(|c| c.agents.host_timeout_ms = 30 * 24 * 3_600_000)
        .host("us-east-1", a)
        .host("us-east-1", b)
        .start()
        .await;
    (s, clock)
}

/// A Voltage Park call (`/api/v1{path}`) with the admin key that must succeed; its body.
pub async fn vp_ok(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (st, v) = s.send(&s.key, method, format!("{}/api/v1{path}", s.url), body).await;
    assert!(st < 300, "{method} {path} -> {st}: {v}");
    v
}
