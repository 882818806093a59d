//! The native API (`/v1`): envelope, pagination, filtering, sorting, errors, and one domain core
//! shared with the Lambda dialect.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::add_key;

async fn get(s: &TestServer, key: &str, path: &str) -> (u16, Value, Option<String>) {
    let r = s.http.get(format!("{}/v1{path}", s.url)).bearer_auth(key).header("x-request-id", "req-test-1").send().await.unwrap();
    let st = r.status().as_u16();
    let rid = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (st, r.json().await.unwrap(), rid)
}

#[tokio::test]
async fn envelope_pagination_filters_sorting_and_errors() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 0)).start().await;
    add_key(&s, "k").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let v = s
            .expect(
                "POST",
                "/instance-operations/launch",
                Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "name": format!("n{i:02}")})),
                200,
            )
            .await;
        ids.push(v["data"]["instance_ids"][0].as_str().unwrap().to_owned());
    }
    for id in &ids {
        s.wait_status(&s.key, id, "active").await;
    }
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [ids[0]]})), 200).await;

    // Launched through the Lambda dialect, listed here; the terminating one is included.
    let (st, v, rid) = get(&s, &s.key, "/instances?page=2&limit=10&sort=name&order=desc").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(rid.as_deref(), Some("req-test-1"));
    assert_eq!(v["metadata"]["request_id"], "req-test-1");
    assert!(v["metadata"]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["pagination"], json!({"page": 2, "limit": 10, "total_items": 25, "total_pages": 3, "has_next": true, "has_prev": true}));
    let names: Vec<&str> = v["data"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, (5..15).rev().map(|i| format!("n{i:02}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>());

    let (_, v, _) = get(&s, &s.key, "/instances?status=running&region=us-east-1&limit=100").await;
    assert_eq!(v["pagination"]["total_items"], 24, "combined filters: the terminating one is not running");
    assert!(v["data"].as_array().unwrap().iter().all(|i| i["status"] == "running"));
    let (_, v, _) = get(&s, &s.key, "/instances?name=n07").await;
    assert_eq!(v["data"][0]["id"], ids[7].as_str());

    let (st, v, _) = get(&s, &s.key, &format!("/instances/{}", ids[3])).await;
    assert_eq!(st, 200);
    assert_eq!(v["data"]["instance_type"], "cpu_1x_small");
    assert_eq!(v["data"]["vcpus"], 1);
    assert!(v.get("pagination").is_none());

    // Errors in the native shape.
    for (path, field) in [
        ("/instances?page=0", "page"),
        ("/instances?limit=500", "limit"),
        ("/instances?sort=ssn", "sort"),
        ("/instances?colour=red", "colour"),
    ] {
        let (st, v, _) = get(&s, &s.key, path).await;
        assert_eq!(st, 400, "{path}: {v}");
        assert_eq!(v["success"], false);
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["details"]["field"], field);
        assert_eq!(v["metadata"]["request_id"], "req-test-1");
    }
    let (_, v, _) = get(&s, &s.key, "/instances?sort=ssn").await;
    assert!(v["error"]["details"]["allowed_values"].as_array().unwrap().contains(&json!("created_at")));
    let (st, v, _) = get(&s, "nmb_wrong", "/instances").await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("authentication_failed")));
    let (st, v, _) = get(&s, &s.key, "/instances/0123456789abcdef0123456789abcdef").await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, v, _) = get(&s, &s.key, "/no-such-thing").await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));

    // Another org sees none of it.
    let (_, b) = s.org_with_key("org-b", "READ").await;
    let (_, v, _) = get(&s, &b, "/instances").await;
    assert_eq!(v["pagination"]["total_items"], 0);
    let (st, _, _) = get(&s, &b, &format!("/instances/{}", ids[3])).await;
    assert_eq!(st, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn plan_rate_limits_with_headers_on_every_response() {
    let s = TestServer::builder().start().await;
    nimbus_control::admin::org_set_plan(&s.control, &s.org, "free").await.unwrap();
    assert!(nimbus_control::admin::org_set_plan(&s.control, &s.org, "platinum").await.is_err());
    let mut remaining = Vec::new();
    for _ in 0..50 {
        let r = s.http.get(format!("{}/v1/instances", s.url)).bearer_auth(&s.key).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "50", "free plan: burst 50");
        let reset: i64 = r.headers()["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(reset > 1_700_000_000, "reset is a Unix time: {reset}");
        remaining.push(r.headers()["x-ratelimit-remaining"].to_str().unwrap().parse::<u32>().unwrap());
    }
    assert!(remaining.windows(2).all(|w| w[1] <= w[0]), "{remaining:?}");
    assert_eq!(remaining.last(), Some(&0));
    let r = s.http.get(format!("{}/v1/instances/nope", s.url)).bearer_auth(&s.key).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("x-ratelimit-remaining") && r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let retry = v["error"]["retry_after"].as_u64().unwrap();
    assert!((1..=4).contains(&retry), "1,000/h refills one request every 3.6 s: {retry}");
    // The Lambda dialect keeps its own limits.
    assert_eq!(s.call(&s.key, "GET", "/instances", None).await.0, 200);
    s.shutdown().await;
}

async fn send(s: &TestServer, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = s.http.request(method.parse().unwrap(), format!("{}/v1{path}", s.url)).header("x-api-key", key);
    if let Some(b) = body {
        rb = rb.body(serde_json::to_vec(&b).unwrap());
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn update_network_restart_and_delete_across_dialects() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    add_key(&s, "k").await;
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]})),
            200,
        )
        .await;
    let id = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    s.wait_status(&s.key, &id, "active").await;

    let (st, v) =
        send(&s, &s.key, "PATCH", &format!("/instances/{id}"), Some(json!({"name": "web-1", "tags": {"team": "ml", "env": "prod"}}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["name"], "web-1");
    assert_eq!(v["data"]["tags"], json!({"env": "prod", "team": "ml"}));
    // The Lambda dialect sees the same instance changed.
    let l = s.expect("GET", &format!("/instances/{id}"), None, 200).await;
    assert_eq!(l["data"]["name"], "web-1");
    assert_eq!(l["data"]["tags"].as_array().unwrap().len(), 2);
    // Tags are replaced as a whole; the name stays when absent.
    let (_, v) = send(&s, &s.key, "PATCH", &format!("/instances/{id}"), Some(json!({"tags": {}}))).await;
    assert_eq!((v["data"]["name"].as_str(), &v["data"]["tags"]), (Some("web-1"), &json!({})));
    for bad in [json!({"name": ""}), json!({"name": 5}), json!({"tags": {"": "x"}}), json!([])] {
        let (st, v) = send(&s, &s.key, "PATCH", &format!("/instances/{id}"), Some(bad.clone())).await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {v}");
    }

    let (st, v) = send(&s, &s.key, "GET", &format!("/instances/{id}/network"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["data"]["ssh_port"], 22);
    assert_eq!(v["data"]["ip"], l["data"]["ip"]);

    let (st, v) = send(&s, &s.key, "POST", &format!("/instances/{id}/restart"), None).await;
    assert_eq!((st, v["data"]["status"].as_str()), (200, Some("restarting")), "{v}");
    s.wait_status(&s.key, &id, "active").await;

    let (_, b) = s.org_with_key("org-b", "ADMIN").await;
    for (m, p) in [
        ("PATCH", format!("/instances/{id}")),
        ("DELETE", format!("/instances/{id}")),
        ("POST", format!("/instances/{id}/restart")),
        ("GET", format!("/instances/{id}/network")),
    ] {
        let body = (m == "PATCH").then(|| json!({"name": "stolen"}));
        let (st, v) = send(&s, &b, m, &p, body).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{m} {p}");
    }
    let (_, read) = s.org_with_key("org-a", "READ").await;
    let (st, v) = send(&s, &read, "DELETE", &format!("/instances/{id}"), None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));

    let (st, v) = send(&s, &s.key, "DELETE", &format!("/instances/{id}"), None).await;
    assert_eq!((st, v["data"]["status"].as_str()), (200, Some("terminating")));
    s.wait_status(&s.key, &id, "terminated").await;
    let (_, v) = send(&s, &s.key, "GET", &format!("/instances/{id}"), None).await;
    assert_eq!(v["data"]["status"], "terminated");
    s.shutdown().await;
}

#[tokio::test]
async fn serves_its_openapi_document_and_docs_page() {
    let s = TestServer::start().await;
    let r = s.http.get(format!("{}/v1/openapi.json", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/native.json")).unwrap();
    assert_eq!(served, checked_in, "the served document is the checked-in one");
    let doc: Value = serde_json::from_str(&served).unwrap();
    for p in ["/instances", "/volumes/{id}/attach", "/snapshots/{id}/restore", "/account/api-keys", "/firewall/rules"] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing");
    }
    let r = s.http.get(format!("{}/v1/docs", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("openapi.json"));
}
