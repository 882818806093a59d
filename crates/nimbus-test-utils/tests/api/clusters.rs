//! The clusters dialect (seed 003) on sim hosts: every example of the seed field by field
//! (tests/fixtures/clusters-seed-examples.json, extracted from the seed), all-or-nothing
//! placement, waiting for capacity, nodes' states, spend limits through the metering core,
//! pagination, errors as `{"code", "message"}`, and tenant isolation.

use std::sync::Arc;

use nimbus_core::clock::{parse_rfc3339, ManualClock};
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::shape::{diff, Rules};

fn examples() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/clusters-seed-examples.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const RULES: Rules<'static> = Rules { may_be_null: &["deleted_at"], data_keyed: &[] };

fn same_shape(example: &str, got: &Value) {
    let want = examples()[example].clone();
    assert!(!want.is_null(), "no example {example}");
    let mut out = Vec::new();
    diff(&want, got, &RULES, example, "", &mut out);
    assert!(out.is_empty(), "{example} differs from seed 003:\n{}\n{got}", out.join("\n"));
}

/// Clusters calls count against the org's plan (as the native API's); these tests poll.
fn generous_plans(c: &mut nimbus_control::Config) {
    for p in c.rate_limits.plans.values_mut() {
        p.per_hour = 10_000_000;
        p.burst = 100_000;
    }
}

async fn cl(s: &TestServer, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    s.send(key, method, format!("{}/api/v1{path}", s.url), body).await
}

async fn wait_state(s: &TestServer, id: &str, state: &str) -> Value {
    let t = std::time::Instant::now();
    loop {
        let (st, v) = cl(s, &s.key, "GET", &format!("/clusters/{id}"), None).await;
        assert_eq!(st, 200, "{v}");
        if v["state"] == state {
            return v;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(15), "cluster never {state}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn seed_examples_and_cluster_lifecycle() {
    let s = TestServer::builder().config(generous_plans).host("us-east-1", sim_host("a", 8, 0)).start().await;
    crate::add_key(&s, "k").await;

    // The seed's own request, with a region this cloud has.
    let mut body = examples()["create request (notorious-moose)"].clone();
    body["spec"]["serverless"]["regions"] = json!(["us-east-1"]);
    let (st, created) = cl(&s, &s.key, "POST", "/clusters", Some(body.clone())).await;
    assert_eq!(st, 200, "{created}");
    same_shape("create response", &created);
    assert_eq!(
        (created["name"].as_str(), created["cloud_provider"].as_str(), created["plan"].as_str(), created["state"].as_str()),
        (Some("notorious-moose"), Some("GCP"), Some("SERVERLESS"), Some("CREATING"))
    );
    assert_eq!(created["config"]["serverless"]["spend_limit"], 0);
    assert!(created["config"]["serverless"]["routing_id"].as_str().unwrap().starts_with("notorious-moose-"));
    assert_eq!(created["id"].as_str().unwrap().len(), 36);
    let id = created["id"].as_str().unwrap().to_owned();
    let got = wait_state(&s, &id, "CREATED").await;
    same_shape("get response", &got);
    assert_eq!(got["deleted_at"], Value::Null);
    assert!(!got["regions"][0]["sql_dns"].as_str().unwrap().is_empty(), "the head node's address: {got}");

    let (_, nodes) = cl(&s, &s.key, "GET", &format!("/clusters/{id}/nodes"), None).await;
    same_shape("nodes response", &nodes);
    assert_eq!(nodes["nodes"], json!([{"name": "notorious-moose-1", "region_name": "us-east-1", "status": "LIVE"}]));
    let (_, list) = cl(&s, &s.key, "GET", "/clusters", None).await;
    same_shape("list response", &list);
    assert_eq!((list["pagination"]["total_results"].as_i64(), list["pagination"]["order"].as_str()), (Some(1), Some("ASC")));
    let (_, regions) = cl(&s, &s.key, "GET", "/clusters/available-regions?provider=GCP", None).await;
    same_shape("available-regions response", &regions);
    assert_eq!(regions["regions"], json!(["us-east-1"]), "the only region with a host");

    // A service account's key creates as that account (`creator_id`), with CREATE alone, and
    // cannot read or delete without READ/DELETE (PERMISSION_DENIED).
    let sa = s.nexpect("POST", "/service-accounts", Some(json!({"name": "deployer", "permissions": ["CREATE"]})), 201).await;
    let sa_id = sa["id"].as_str().unwrap().to_owned();
    let secret = s.nexpect("POST", &format!("/service-accounts/{sa_id}/api-keys"), Some(json!({"name": "ci"})), 201).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut by_sa = body.clone();
    by_sa["name"] = json!("by-sa");
    let (st, made) = cl(&s, &secret, "POST", "/clusters", Some(by_sa)).await;
    assert_eq!((st, made["creator_id"].as_str()), (200, Some(sa_id.as_str())), "{made}");
    let (st, e) = cl(&s, &secret, "GET", "/clusters", None).await;
    assert_eq!((st, e["code"].as_i64()), (403, Some(7)), "{e}");
    let (st, _) = cl(&s, &secret, "DELETE", &format!("/clusters/{}", made["id"].as_str().unwrap()), None).await;
    assert_eq!(st, 403);
    assert_eq!(cl(&s, &s.key, "DELETE", &format!("/clusters/{}", made["id"].as_str().unwrap()), None).await.0, 200);

    // Names are unique among live clusters; errors carry gRPC codes.
    let (st, e) = cl(&s, &s.key, "POST", "/clusters", Some(body.clone())).await;
    assert_eq!((st, e["code"].as_i64(), e["message"].is_string()), (409, Some(6), true), "{e}");
    for (bad, what) in [
        (json!({"name": "has space", "provider": "GCP", "spec": {"serverless": {"regions": ["us-east-1"]}}}), "name"),
        (json!({"name": "x", "provider": "AZURE", "spec": {"serverless": {"regions": ["us-east-1"]}}}), "provider"),
        (json!({"name": "x", "provider": "GCP", "spec": {}}), "spec"),
        (
            json!({"name": "x", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": 1}, "machine_type": "nope"}}}),
            "machine type",
        ),
        (json!({"name": "x", "provider": "GCP", "spec": {"serverless": {"regions": ["mars-1"]}}}), "region"),
        // Wrong JSON types, decoded by the shared wire type: INVALID_ARGUMENT, never a 500.
        (json!([1, 2]), "an array body"),
        (json!({"provider": "GCP", "spec": {"serverless": {"regions": ["us-east-1"]}}}), "no name"),
        (json!({"name": 7, "provider": "GCP", "spec": {"serverless": {}}}), "a number as name"),
        (json!({"name": "x", "provider": "GCP", "spec": {"serverless": {"regions": "us-east-1"}}}), "regions not a list"),
        (json!({"name": "x", "provider": "GCP", "spec": {"serverless": {"regions": ["us-east-1"], "spendLimit": "5"}}}), "a string limit"),
        (
            json!({"name": "x", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": "3"}, "machine_type": "cpu_1x_small"}}}),
            "a string node count",
        ),
        (json!({"name": "x", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": 1}}}}), "no machine type"),
        (
            json!({"name": "x", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": -1}, "machine_type": "cpu_1x_small"}}}),
            "a negative node count",
        ),
        (
            json!({"name": "x", "provider": "GCP", "spec": {"serverless": {"regions": ["us-east-1"]}, "dedicated": {"region_nodes": {}, "machine_type": "cpu_1x_small"}}}),
            "both plans",
        ),
    ] {
        let (st, e) = cl(&s, &s.key, "POST", "/clusters", Some(bad.clone())).await;
        assert_eq!((st, e["code"].as_i64()), (400, Some(3)), "{what}: {bad} -> {e}");
    }
    let (st, e) = cl(&s, &s.key, "GET", "/clusters/0123456789abcdef0123456789abcdef", None).await;
    assert_eq!((st, e["code"].as_i64()), (404, Some(5)));
    let (st, e) = cl(&s, "nope", "GET", "/clusters", None).await;
    assert_eq!((st, e["code"].as_i64()), (401, Some(16)));
    let (st, e) = cl(&s, &s.key, "GET", "/clusters/available-regions", None).await;
    assert_eq!((st, e["code"].as_i64()), (400, Some(3)), "provider is required");

    // Spend limit: no body back; dedicated clusters have none.
    for bad in [json!({}), json!({"spendLimit": "500"}), json!({"spendLimit": 1.5}), json!("500")] {
        let (st, e) = cl(&s, &s.key, "PUT", &format!("/clusters/{id}/spend-limit"), Some(bad.clone())).await;
        assert_eq!((st, e["code"].as_i64()), (400, Some(3)), "{bad} -> {e}");
    }
    let (st, v) = cl(&s, &s.key, "PUT", &format!("/clusters/{id}/spend-limit"), Some(json!({"spend_limit": 400}))).await;
    assert_eq!((st, v), (200, json!({})), "CockroachDB's snake_case spelling");
    let (st, v) = cl(&s, &s.key, "PUT", &format!("/clusters/{id}/spend-limit"), Some(json!({"spendLimit": 500}))).await;
    assert_eq!((st, v), (200, json!({})));
    let (_, got) = cl(&s, &s.key, "GET", &format!("/clusters/{id}"), None).await;
    assert_eq!(got["config"]["serverless"]["spend_limit"], 500);

    // Another organization sees none of it.
    let (_, other) = s.org_with_key("other", "admin").await;
    let (st, _) = cl(&s, &other, "GET", &format!("/clusters/{id}"), None).await;
    assert_eq!(st, 404);
    let (st, _) = cl(&s, &other, "DELETE", &format!("/clusters/{id}"), None).await;
    assert_eq!(st, 404);
    assert_eq!(cl(&s, &other, "GET", "/clusters", None).await.1["clusters"], json!([]));

    // Delete: no body, nodes gone, only listed with show_inactive.
    let (st, v) = cl(&s, &s.key, "DELETE", &format!("/clusters/{id}"), None).await;
    assert_eq!((st, v), (200, json!({})));
    let deleted = wait_state(&s, &id, "DELETED").await;
    assert!(deleted["deleted_at"].is_string());
    assert_eq!(cl(&s, &s.key, "GET", "/clusters", None).await.1["clusters"], json!([]));
    assert_eq!(cl(&s, &s.key, "GET", "/clusters?show_inactive=true", None).await.1["clusters"][0]["state"], "DELETED");
    s.wait_for("the node gone", || async { cl(&s, &s.key, "GET", &format!("/clusters/{id}/nodes"), None).await.1["nodes"] == json!([]) })
        .await;
    let (st, _) = cl(&s, &s.key, "POST", "/clusters", Some(body)).await;
    assert_eq!(st, 200, "the name is free again");
}

#[tokio::test]
async fn dedicated_clusters_are_all_or_nothing_and_can_wait() {
    // 8 vCPUs: room for two cpu_4x_large nodes.
    let mut s = TestServer::builder().config(generous_plans).host("us-east-1", sim_host("a", 8, 0)).start().await;
    crate::add_key(&s, "k").await;
    let ded = |name: &str, n: i64, wait: bool| {
        json!({"name": name, "provider": "AWS", "wait_for_capacity": wait,
               "spec": {"dedicated": {"region_nodes": {"us-east-1": n}, "machine_type": "cpu_4x_large"}}})
    };
    let free = |s: &TestServer| {
        let s = s.control.clone();
        async move { s.store().host_list(None, true).await.unwrap().iter().map(|h| h.free().vcpus).sum::<i64>() }
    };

    // Three nodes do not fit: FAILED, nothing held.
    let (st, v) = cl(&s, &s.key, "POST", "/clusters", Some(ded("big", 3, false))).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("FAILED")), "{v}");
    assert_eq!(free(&s).await, 8);
    assert_eq!(cl(&s, &s.key, "GET", "/clusters", None).await.1["clusters"], json!([]), "failed ones are inactive");

    // Two fit: all placed in one go, CREATED once both run; the regions show node counts.
    let (_, v) = cl(&s, &s.key, "POST", "/clusters", Some(ded("pair", 2, false))).await;
    let pair = v["id"].as_str().unwrap().to_owned();
    assert_eq!(free(&s).await, 0);
    let got = wait_state(&s, &pair, "CREATED").await;
    assert_eq!((got["plan"].as_str(), got["regions"][0]["node_count"].as_i64()), (Some("DEDICATED"), Some(2)));
    assert_eq!(got["config"]["dedicated"]["machine_type"], "cpu_4x_large");
    let (_, n) = cl(&s, &s.key, "GET", &format!("/clusters/{pair}/nodes?pagination.limit=1"), None).await;
    assert_eq!(n["nodes"][0]["name"], "pair-1");
    assert_eq!(
        (n["pagination"]["next"].as_i64(), n["pagination"]["last"].as_i64(), n["pagination"]["total_results"].as_i64()),
        (Some(2), Some(2), Some(2))
    );
    let (_, n2) = cl(&s, &s.key, "GET", &format!("/clusters/{pair}/nodes?pagination.limit=1&pagination.page=2"), None).await;
    assert_eq!((n2["nodes"][0]["name"].as_str(), n2["pagination"]["next"].as_i64()), (Some("pair-2"), Some(0)));
    let (st, e) = cl(&s, &s.key, "PUT", &format!("/clusters/{pair}/spend-limit"), Some(json!({"spendLimit": 1}))).await;
    assert_eq!((st, e["code"].as_i64()), (400, Some(9)), "dedicated clusters have no spend limit");

    // A cluster that waits stays CREATING until capacity appears, then is placed whole.
    let (_, v) = cl(&s, &s.key, "POST", "/clusters", Some(ded("later", 2, true))).await;
    let later = v["id"].as_str().unwrap().to_owned();
    assert_eq!((v["state"].as_str(), v["operation_status"].as_str()), (Some("CREATING"), Some("WAITING_FOR_CAPACITY")), "{v}");
    s.add_host("us-east-1", sim_host("b", 8, 0)).await;
    let got = wait_state(&s, &later, "CREATED").await;
    assert_eq!(got["operation_status"], "CLUSTER_STATUS_UNSPECIFIED");

    // Deleting both gives every vCPU back.
    for id in [&pair, &later] {
        assert_eq!(cl(&s, &s.key, "DELETE", &format!("/clusters/{id}"), None).await.0, 200);
    }
    s.wait_for("all capacity back", || async { free(&s).await == 16 }).await;
}

#[tokio::test]
async fn a_lost_node_is_not_ready_then_live_again() {
    let mut s = TestServer::builder().config(generous_plans).host("us-east-1", sim_host("a", 8, 0)).start().await;
    crate::add_key(&s, "k").await;
    let (_, v) = cl(
        &s,
        &s.key,
        "POST",
        "/clusters",
        Some(json!({"name": "c", "provider": "NIMBUS", "spec": {"dedicated": {"region_nodes": {"us-east-1": 2}, "machine_type": "cpu_1x_small"}}})),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_owned();
    wait_state(&s, &id, "CREATED").await;
    async fn statuses(s: &TestServer, id: &str) -> Vec<String> {
        let (_, n) = cl(s, &s.key, "GET", &format!("/clusters/{id}/nodes"), None).await;
        n["nodes"].as_array().unwrap_or_else(|| panic!("{n}")).iter().map(|x| x["status"].as_str().unwrap().to_owned()).collect()
    }
    s.stop_agent(0).await;
    s.wait_for("nodes NOT_READY while their host is lost", || async { statuses(&s, &id).await == ["NOT_READY", "NOT_READY"] }).await;
    s.restart_agent(0);
    s.wait_for("nodes LIVE again", || async { statuses(&s, &id).await == ["LIVE", "LIVE"] }).await;
}

#[tokio::test]
async fn serverless_spend_limit_stops_the_nodes() {
    let clock = Arc::new(ManualClock::new(parse_rfc3339("2026-04-10T10:00:00Z").unwrap()));
    let s = TestServer::builder()
        .clock(clock.clone())
        .config(|c| {
            c.agents.host_timeout_ms = 30 * 24 * 3_600_000;
            generous_plans(c);
        })
        .host("us-east-1", sim_host("a", 8, 0))
        .start()
        .await;
    crate::add_key(&s, "k").await;
    // cpu_1x_small: 2 ¢/h. A 5 ¢ limit is reached after 2.5 hours.
    let body = json!({"name": "tiny", "provider": "GCP", "spec": {"serverless": {"regions": ["us-east-1"], "spendLimit": 5}}});
    let (_, v) = cl(&s, &s.key, "POST", "/clusters", Some(body)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    wait_state(&s, &id, "CREATED").await;
    let node_state = || async {
        let (_, n) = cl(&s, &s.key, "GET", &format!("/clusters/{id}/nodes"), None).await;
        n["nodes"][0]["status"].as_str().unwrap().to_owned()
    };
    clock.advance_secs(2 * 3600);
    nimbus_control::clusters::reconcile_once(&s.control).await.unwrap();
    assert_eq!(node_state().await, "LIVE", "4 ¢ spent: under the limit");
    clock.advance_secs(3600);
    nimbus_control::clusters::reconcile_once(&s.control).await.unwrap();
    s.wait_for("the node stopped at the limit", || async { node_state().await == "NOT_READY" }).await;
    let insts = s.control.store().instance_list_by_org(&s.org.id).await.unwrap();
    s.wait_for("stopped", || async {
        let i = s.control.store().instance_list_by_org(&s.org.id).await.unwrap();
        i.iter().all(|i| i.state == nimbus_core::instance::InstanceState::Stopped)
    })
    .await;
    assert_eq!(insts.len(), 1);
}
