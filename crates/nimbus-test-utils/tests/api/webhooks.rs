//! Webhooks (`/v1/webhooks`): real server, real sim agents, a real HTTP receiver on 127.0.0.1.
//! Every event arrives exactly once and signed, through retries; redelivery; validation and
//! isolation; a hanging receiver does not slow the API. Egress: a host name that resolves to the
//! server's own network is refused at connect time, redirects are not followed, and the tenant
//! cannot tell a refused address from a closed port.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_control::egress::{BaseResolver, FakeResolver};

use nimbus_test_utils::webhook_receiver::{verify_signature, Received, WebhookReceiver};
use nimbus_test_utils::{sim_host, Builder, TestServer};
use serde_json::{json, Value};

use crate::add_key;

const SECRET: &str = "test-secret-0123456789";
const TOLERANCE: Duration = Duration::from_secs(300);

async fn v1(s: &TestServer, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = s.http.request(method.parse().unwrap(), format!("{}/v1{path}", s.url)).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.body(serde_json::to_vec(&b).unwrap());
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Fast retries, receivers on loopback allowed.
fn builder() -> Builder {
    TestServer::builder().config(|c| {
        c.webhooks.allow_private_targets = true;
        c.webhooks.retry_initial_ms = 5;
        c.webhooks.retry_max_ms = 40;
        c.webhooks.poll_interval_ms = 50;
        c.webhooks.dispatch_lease_ms = 1_000;
        c.agents.host_timeout_ms = 2_000;
    })
}

/// Resolves to 127.0.0.1 through the test resolver: a stand-in for a hosts-file entry or an
/// attacker's DNS name that points at the server's own network.
const LOOPBACK_NAME: &str = "receiver.nimbus-test.invalid";
/// Resolves to both metadata-service addresses.
const METADATA_NAME: &str = "metadata.nimbus-test.invalid";
/// The tenant-visible error of every attempt that got no HTTP answer (and did not time out).
const CONNECTION_FAILED: &str = "connection failed";

/// Fast retries and the test resolver (names above; any other name fails to resolve, so no
/// query leaves the machine). The egress check wraps that resolver like any other.
fn resolving_builder(allow_private_targets: bool) -> Builder {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let dns =
        FakeResolver::new().with(LOOPBACK_NAME, &[ip("127.0.0.1")]).with(METADATA_NAME, &[ip("169.254.169.254"), ip("fd00:ec2::254")]);
    TestServer::builder().config(move |c| {
        c.webhooks.allow_private_targets = allow_private_targets;
        c.webhooks.resolver = BaseResolver::new(Arc::new(dns));
        c.webhooks.retry_initial_ms = 5;
        c.webhooks.retry_max_ms = 40;
        c.webhooks.poll_interval_ms = 50;
    })
}

/// Creates a webhook for every event; returns its id.
async fn hook_to(s: &TestServer, url: &str) -> String {
    let (st, v) = v1(s, &s.key, "POST", "/webhooks", Some(json!({"url": url, "events": ["*"]}))).await;
    assert_eq!(st, 201, "{url}: {v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// Waits until the webhook has deliveries and each has been attempted at least `n` times (or is
/// no longer pending, so that a wrongly successful delivery fails the caller's assertions at
/// once rather than as a timeout).
async fn attempted(s: &TestServer, hook: &str, n: i64) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let log = deliveries(s, hook).await;
        if !log.is_empty() && log.iter().all(|d| d["attempts"].as_i64().unwrap() >= n || d["state"] != "pending") {
            return log;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{hook}: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the tenant can read about one delivery's attempts, minus timings and identifiers.
#[derive(Debug, Clone, PartialEq)]
struct Readable {
    state: Value,
    last_status_code: Value,
    last_error: Value,
    /// Each attempt's `(status_code, error)`.
    history: Vec<(Value, Value)>,
}

impl Readable {
    /// The same, with only the first `n` attempts.
    fn first(&self, n: usize) -> Readable {
        Readable { history: self.history.iter().take(n).cloned().collect(), ..self.clone() }
    }
}

fn readable(log: &[Value]) -> Vec<Readable> {
    log.iter()
        .map(|d| Readable {
            state: d["state"].clone(),
            last_status_code: d["last_status_code"].clone(),
            last_error: d["last_error"].clone(),
            history: d["history"].as_array().unwrap().iter().map(|a| (a["status_code"].clone(), a["error"].clone())).collect(),
        })
        .collect()
}

async fn wait_native(s: &TestServer, id: &str, status: &str) {
    let t = Instant::now();
    loop {
        let (st, v) = v1(s, &s.key, "GET", &format!("/instances/{id}"), None).await;
        assert_eq!(st, 200, "{v}");
        if v["data"]["status"] == status {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "instance {id} never became {status}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_instance(s: &TestServer, key_id: &str, name: &str) -> String {
    let body = json!({"name": name, "instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let (st, v) = v1(s, &s.key, "POST", "/instances", Some(body)).await;
    assert_eq!(st, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

async fn deliveries(s: &TestServer, hook: &str) -> Vec<Value> {
    let (st, v) = v1(s, &s.key, "GET", &format!("/webhooks/{hook}/deliveries?limit=100&order=asc"), None).await;
    assert_eq!(st, 200, "{v}");
    v["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_event_arrives_once_signed_after_retries() {
    let mut s = builder().host("us-east-1", sim_host("h", 16, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let rx = WebhookReceiver::start(3).await;
    let (st, v) = v1(&s, &s.key, "POST", "/webhooks", Some(json!({"url": rx.url, "events": ["instance.*"], "secret": SECRET}))).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["data"]["secret"], SECRET, "the secret is shown at creation");
    assert_eq!(v["data"]["events"], json!(["instance.*"]));
    let hook = v["data"]["id"].as_str().unwrap().to_owned();

    // A lifecycle through the API and the sim host: created, started, stopped, started,
    // restarted, failed (host silent), back (not announced), terminated.
    let id = create_instance(&s, &key_id, "wh-1").await;
    wait_native(&s, &id, "running").await;
    assert_eq!(v1(&s, &s.key, "POST", &format!("/instances/{id}/stop"), None).await.0, 200);
    wait_native(&s, &id, "stopped").await;
    assert_eq!(v1(&s, &s.key, "POST", &format!("/instances/{id}/start"), None).await.0, 200);
    wait_native(&s, &id, "running").await;
    assert_eq!(v1(&s, &s.key, "POST", &format!("/instances/{id}/restart"), None).await.0, 200);
    wait_native(&s, &id, "running").await;
    s.stop_agent(0).await;
    wait_native(&s, &id, "unhealthy").await;
    s.restart_agent(0);
    wait_native(&s, &id, "running").await;
    assert_eq!(v1(&s, &s.key, "DELETE", &format!("/instances/{id}"), None).await.0, 200);
    wait_native(&s, &id, "terminated").await;

    let want = [
        "instance.created",
        "instance.started",
        "instance.stopped",
        "instance.started",
        "instance.restarted",
        "instance.failed",
        "instance.terminated",
    ];
    let ok = |r: &[Received]| r.iter().filter(|r| r.status == 200).count();
    let got = rx.wait_until("7 successful deliveries", Duration::from_secs(20), |r| ok(r) >= want.len()).await;
    // Nothing more arrives later (no duplicate from a retry racing a success).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_later = rx.received();
    assert_eq!(got_later.len(), got.len(), "no request after the last expected delivery");
    assert_eq!(got.len(), want.len() + 3, "7 deliveries plus the 3 refused attempts");
    assert_eq!(got.iter().filter(|r| r.status == 500).count(), 3);
    assert!(got[..3].iter().all(|r| r.status == 500), "the first three requests were refused");

    // Every request is signed over its timestamp and raw body, and its headers match its body.
    for r in &got {
        verify_signature(SECRET, r, TOLERANCE).unwrap_or_else(|e| panic!("{e}: {:?}", r.body));
        assert!(verify_signature("some-other-secret-000", r, TOLERANCE).is_err());
        let b = r.json();
        assert_eq!(r.header("x-nimbus-event-id"), b["id"].as_str().unwrap());
        assert_eq!(r.header("x-nimbus-webhook-id"), hook);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(b["data"]["instance_id"], id.as_str());
        assert!(b["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    // Exactly once: the successful deliveries are distinct events, and they are exactly the
    // outbox's instance events that have a public type, in outbox order.
    let delivered: Vec<Value> = got.iter().filter(|r| r.status == 200).map(Received::json).collect();
    let ids: HashSet<&str> = delivered.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), delivered.len(), "an event was delivered twice");
    let outbox = s.control.store().event_list_by_org(&s.org.id, 0, None, None, Some("instance"), 1000).await.unwrap();
    let public: Vec<(String, &str)> =
        outbox.iter().filter_map(|e| nimbus_core::webhook::public_event_type(&e.kind, &e.payload).map(|t| (e.id.to_string(), t))).collect();
    assert_eq!(public.iter().map(|p| p.1).collect::<Vec<_>>(), want, "outbox: {:?}", outbox.iter().map(|e| &e.kind).collect::<Vec<_>>());
    let seq: HashMap<&str, usize> = public.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let mut in_order = delivered.clone();
    in_order.sort_by_key(|b| seq[b["id"].as_str().unwrap()]);
    assert_eq!(in_order.iter().map(|b| b["type"].as_str().unwrap()).collect::<Vec<_>>(), want);
    assert_eq!(
        in_order[0]["data"],
        json!({"instance_id": id, "name": "wh-1", "status": "booting", "instance_type": "cpu_1x_small", "region": "us-east-1"})
    );
    assert_eq!(in_order[1]["data"]["status"], "running");
    assert_eq!(in_order[1]["data"]["name"], "wh-1", "the name is looked up when the event lacks it");
    assert_eq!(in_order[2]["data"]["status"], "stopped");
    assert_eq!(in_order[4]["data"]["previous_status"], "restarting");
    assert_eq!(in_order[5]["data"]["status"], "unhealthy");
    assert_eq!(in_order[6]["data"]["status"], "terminated");

    // The delivery log: all delivered, the refused attempts with their 500s, then a 200.
    let log = deliveries(&s, &hook).await;
    assert_eq!(log.len(), want.len());
    assert!(log.iter().all(|d| d["state"] == "delivered" && d["last_status_code"] == 200 && d.get("next_attempt_at").is_none()), "{log:?}");
    let attempts: Vec<&Value> = log.iter().flat_map(|d| d["history"].as_array().unwrap()).collect();
    assert_eq!(attempts.len(), want.len() + 3);
    assert_eq!(attempts.iter().filter(|a| a["status_code"] == 500).count(), 3);
    assert!(attempts.iter().filter(|a| a["status_code"] == 500).all(|a| a["error"] == "receiver answered HTTP 500"));
    for d in &log {
        let h = d["history"].as_array().unwrap();
        assert_eq!(d["attempts"], h.len());
        assert_eq!(h.last().unwrap()["status_code"], 200, "each ends with its 2xx: {d}");
        assert!(h[..h.len() - 1].iter().all(|a| a["status_code"] == 500), "{d}");
        assert!(ids.contains(d["event_id"].as_str().unwrap()));
    }
    let retried = log.iter().find(|d| d["attempts"].as_i64().unwrap() > 1).unwrap();
    assert!(retried["history"][0]["status_code"] == 500 && retried["last_status_code"] == 200);
    // Filters of the log.
    let (_, v) = v1(&s, &s.key, "GET", &format!("/webhooks/{hook}/deliveries?state=failed"), None).await;
    assert_eq!(v["pagination"]["total_items"], 0);
    let (_, v) = v1(&s, &s.key, "GET", &format!("/webhooks/{hook}/deliveries?event_type=instance.started&limit=1"), None).await;
    assert_eq!((v["pagination"]["total_items"].as_u64(), v["pagination"]["has_next"].as_bool()), (Some(2), Some(true)));
    let (st, v) = v1(&s, &s.key, "GET", &format!("/webhooks/{hook}/deliveries?state=lost"), None).await;
    assert_eq!((st, v["error"]["details"]["field"].as_str()), (400, Some("state")));
    s.shutdown().await;
}

#[tokio::test]
async fn redelivery_resends_and_deletion_stops_deliveries() {
    let s = builder().host("us-east-1", sim_host("h", 16, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let rx = WebhookReceiver::start(0).await;
    let (_, v) = v1(&s, &s.key, "POST", "/webhooks", Some(json!({"url": rx.url, "events": ["instance.created"]}))).await;
    let hook = v["data"]["id"].as_str().unwrap().to_owned();
    let secret = v["data"]["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() >= 40, "generated secret: {secret}");

    let id = create_instance(&s, &key_id, "r-1").await;
    rx.wait_until("the created event", Duration::from_secs(10), |r| r.len() == 1).await;
    wait_native(&s, &id, "running").await;
    let log = deliveries(&s, &hook).await;
    assert_eq!(log.len(), 1, "only instance.created is subscribed: {log:?}");
    let did = log[0]["id"].as_str().unwrap().to_owned();

    let (st, v) = v1(&s, &s.key, "POST", &format!("/webhooks/{hook}/deliveries/{did}/redeliver"), None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["data"]["state"] == "pending" || v["data"]["state"] == "delivered", "{v}");
    let got = rx.wait_until("the redelivery", Duration::from_secs(10), |r| r.len() == 2).await;
    assert_eq!(got[0].body, got[1].body, "the same body is sent again");
    assert_eq!(got[1].header("x-nimbus-event-id"), got[0].header("x-nimbus-event-id"));
    for r in &got {
        verify_signature(&secret, r, TOLERANCE).unwrap();
    }
    let t = Instant::now();
    loop {
        let log = deliveries(&s, &hook).await;
        if log[0]["state"] == "delivered" && log[0]["attempts"] == 2 {
            assert_eq!(log[0]["history"].as_array().unwrap().len(), 2);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Not found: another webhook's or an unknown delivery, another org's webhook.
    let (st, _) = v1(&s, &s.key, "POST", &format!("/webhooks/{hook}/deliveries/0123456789abcdef0123456789abcdef/redeliver"), None).await;
    assert_eq!(st, 404);
    let (_, other) = s.org_with_key("org-b", "ADMIN").await;
    let (st, v) = v1(&s, &other, "POST", &format!("/webhooks/{hook}/deliveries/{did}/redeliver"), None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (_, read) = s.org_with_key("org-a", "READ").await;
    let (st, _) = v1(&s, &read, "POST", &format!("/webhooks/{hook}/deliveries/{did}/redeliver"), None).await;
    assert_eq!(st, 403);

    // After deletion nothing more is delivered, and the webhook and its log are gone.
    let (st, v) = v1(&s, &s.key, "DELETE", &format!("/webhooks/{hook}"), None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["data"].get("secret").is_none());
    create_instance(&s, &key_id, "r-2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 2);
    assert_eq!(v1(&s, &s.key, "GET", &format!("/webhooks/{hook}"), None).await.0, 404);
    assert_eq!(v1(&s, &s.key, "GET", &format!("/webhooks/{hook}/deliveries"), None).await.0, 404);
    assert_eq!(v1(&s, &s.key, "DELETE", &format!("/webhooks/{hook}"), None).await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn validation_isolation_and_secrets_never_shown_again() {
    // Default settings: private receivers are refused.
    let s = TestServer::builder().start().await;
    let create = |body: Value| {
        let s = &s;
        async move { v1(s, &s.key, "POST", "/webhooks", Some(body)).await }
    };
    let good = json!({"url": "https://hooks.example.com/nimbus", "events": ["instance.created", "volume.*"]});
    for (body, field) in [
        (json!({"url": "ftp://example.com/x", "events": ["*"]}), "url"),
        (json!({"url": "not a url", "events": ["*"]}), "url"),
        (json!({"url": "http://127.0.0.1:9/x", "events": ["*"]}), "url"),
        (json!({"url": "http://169.254.169.254/latest", "events": ["*"]}), "url"),
        (json!({"url": "https://hooks.example.com/", "events": ["instance.exploded"]}), "events"),
        (json!({"url": "https://hooks.example.com/", "events": []}), "events"),
        (json!({"url": "https://hooks.example.com/", "events": ["*"], "secret": "too-short"}), "secret"),
    ] {
        let (st, v) = create(body.clone()).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["success"], false);
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
        assert!(v["metadata"]["request_id"].as_str().is_some());
    }
    let (_, v) = create(json!({"url": "https://hooks.example.com/", "events": ["instance.exploded"]})).await;
    let allowed = v["error"]["details"]["allowed_values"].as_array().unwrap();
    assert!(allowed.contains(&json!("instance.*")) && allowed.contains(&json!("snapshot.completed")), "{v}");
    let (st, v) = create(json!({"url": "https://hooks.example.com/", "events": ["*"], "colour": "red"})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_request")));

    let mut ids = Vec::new();
    for i in 0..3 {
        let (st, v) = create(json!({"url": format!("https://hooks.example.com/{i}"), "events": good["events"]})).await;
        assert_eq!(st, 201, "{v}");
        assert!(v["data"]["secret"].as_str().unwrap().starts_with("whsec_"));
        ids.push(v["data"]["id"].as_str().unwrap().to_owned());
    }
    let (st, v) = v1(&s, &s.key, "GET", &format!("/webhooks/{}", ids[1]), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["data"]["url"], "https://hooks.example.com/1");
    assert!(v["data"].get("secret").is_none(), "never returned after creation: {v}");
    let (_, v) = v1(&s, &s.key, "GET", "/webhooks?limit=2&sort=url&order=desc", None).await;
    assert_eq!(v["pagination"]["total_items"], 3);
    assert_eq!(v["pagination"]["has_next"], true);
    assert_eq!(v["data"][0]["url"], "https://hooks.example.com/2");
    assert!(v["data"].as_array().unwrap().iter().all(|h| h.get("secret").is_none()));

    // Another organization sees nothing and can touch nothing.
    let (_, other) = s.org_with_key("org-b", "ADMIN").await;
    let (_, v) = v1(&s, &other, "GET", "/webhooks", None).await;
    assert_eq!(v["pagination"]["total_items"], 0);
    for (m, p) in [
        ("GET", format!("/webhooks/{}", ids[0])),
        ("DELETE", format!("/webhooks/{}", ids[0])),
        ("GET", format!("/webhooks/{}/deliveries", ids[0])),
    ] {
        let (st, v) = v1(&s, &other, m, &p, None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{m} {p}");
    }
    assert_eq!(v1(&s, &s.key, "GET", "/webhooks/not-an-id", None).await.0, 404);
    // Permissions: READ lists, cannot create or delete.
    let (_, read) = s.org_with_key("org-a", "READ").await;
    assert_eq!(v1(&s, &read, "GET", "/webhooks", None).await.0, 200);
    let (st, v) = v1(&s, &read, "POST", "/webhooks", Some(good.clone())).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(v1(&s, &read, "DELETE", &format!("/webhooks/{}", ids[0]), None).await.0, 403);
    assert_eq!(v1(&s, &s.key, "DELETE", &format!("/webhooks/{}", ids[0]), None).await.0, 200);
    let (_, v) = v1(&s, &s.key, "GET", "/webhooks", None).await;
    assert_eq!(v["pagination"]["total_items"], 2);
    s.shutdown().await;
}

#[tokio::test]
async fn hanging_and_dead_receivers_do_not_slow_the_api() {
    let s = builder()
        .config(|c| {
            c.webhooks.request_timeout_ms = 60_000;
            c.webhooks.per_webhook_concurrency = 4;
        })
        .host("us-east-1", sim_host("h", 64, 0))
        .start()
        .await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let hang = WebhookReceiver::hanging().await;
    let (_, v) = v1(&s, &s.key, "POST", "/webhooks", Some(json!({"url": hang.url, "events": ["*"]}))).await;
    let hang_hook = v["data"]["id"].as_str().unwrap().to_owned();
    // Nothing listens on a just-closed port.
    let dead_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let (_, v) = v1(&s, &s.key, "POST", "/webhooks", Some(json!({"url": dead_url, "events": ["*"]}))).await;
    let dead_hook = v["data"]["id"].as_str().unwrap().to_owned();

    let mut slowest = Duration::ZERO;
    let mut ids = Vec::new();
    for i in 0..12 {
        let t = Instant::now();
        ids.push(create_instance(&s, &key_id, &format!("h-{i}")).await);
        slowest = slowest.max(t.elapsed());
    }
    hang.wait_until("hung attempts", Duration::from_secs(10), |_| hang.in_flight() >= 4).await;
    for id in &ids {
        wait_native(&s, id, "running").await;
    }
    // With every slot of the hanging webhook held, the API still answers at once.
    for id in &ids {
        let t = Instant::now();
        assert_eq!(v1(&s, &s.key, "POST", &format!("/instances/{id}/stop"), None).await.0, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_secs(2), "an API call took {slowest:?}");
    assert_eq!(hang.in_flight(), 4, "per-webhook concurrency bounds the attempts held by one receiver");
    assert!(hang.received().is_empty());

    let (_, v) = v1(&s, &s.key, "GET", &format!("/webhooks/{hang_hook}/deliveries?limit=100"), None).await;
    assert!(v["pagination"]["total_items"].as_u64().unwrap() >= 24, "{v}");
    assert!(v["data"].as_array().unwrap().iter().all(|d| d["state"] == "pending"));
    // The dead receiver's deliveries record the connection failures and stay pending for retry.
    let t = Instant::now();
    loop {
        let (_, v) = v1(&s, &s.key, "GET", &format!("/webhooks/{dead_hook}/deliveries?limit=100"), None).await;
        let log = v["data"].as_array().unwrap().clone();
        if !log.is_empty() && log.iter().all(|d| d["attempts"].as_i64().unwrap() >= 2) {
            for d in &log {
                assert_eq!(d["state"], "pending");
                assert!(d.get("last_status_code").is_none());
                assert_eq!(d["last_error"], CONNECTION_FAILED, "{d}");
                assert!(d["next_attempt_at"].as_str().is_some());
            }
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown().await;
}

/// The attack of issue 16: a host name that resolves to loopback (the server itself) passes the
/// create-time check, so the refusal must happen at connect time, on the resolved address.
#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused_at_connect_time() {
    // Control: with private targets allowed, the same name does reach a loopback receiver, so
    // the resolver is in use and what stops the request below is the check alone.
    let open = resolving_builder(true).start().await;
    let reached = WebhookReceiver::start(0).await;
    hook_to(&open, &format!("http://{LOOPBACK_NAME}:{}/hook", reached.addr.port())).await;
    append_events(open.control.store(), &open.org.id, 0, 1).await;
    reached.wait_until("the delivery by name", Duration::from_secs(10), |r| r.len() == 1).await;
    open.shutdown().await;

    let s = resolving_builder(false).start().await;
    let rx = WebhookReceiver::start(0).await;
    // A literal loopback address is refused at creation; a name cannot be judged then.
    let (st, _) = v1(&s, &s.key, "POST", "/webhooks", Some(json!({"url": rx.url, "events": ["*"]}))).await;
    assert_eq!(st, 400);
    let hook = hook_to(&s, &format!("http://{LOOPBACK_NAME}:{}/hook", rx.addr.port())).await;
    append_events(s.control.store(), &s.org.id, 0, 2).await;
    let log = attempted(&s, &hook, 3).await;
    assert_eq!(log.len(), 2);
    for d in readable(&log) {
        assert_eq!(
            (d.state.as_str(), &d.last_status_code, d.last_error.as_str()),
            (Some("pending"), &Value::Null, Some(CONNECTION_FAILED))
        );
        assert!(d.history.iter().all(|a| *a == (Value::Null, json!(CONNECTION_FAILED))), "{d:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.received().is_empty(), "the receiver behind the name got {} requests", rx.received().len());
    s.shutdown().await;
}

/// A closed port (private targets allowed), a name refused by policy, the metadata service and
/// an unresolvable name all read exactly the same in the delivery log.
#[tokio::test]
async fn closed_ports_and_refused_addresses_read_the_same() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let open = resolving_builder(true).start().await;
    let closed = hook_to(&open, &format!("http://127.0.0.1:{closed_port}/hook")).await;
    append_events(open.control.store(), &open.org.id, 0, 1).await;
    let baseline = readable(&attempted(&open, &closed, 2).await[..1]);
    assert_eq!(baseline[0].last_error, CONNECTION_FAILED, "{baseline:?}");
    open.shutdown().await;

    let s = resolving_builder(false).start().await;
    let rx = WebhookReceiver::start(0).await;
    let urls = [
        format!("http://{LOOPBACK_NAME}:{}/hook", rx.addr.port()),
        format!("http://{LOOPBACK_NAME}:{closed_port}/hook"),
        format!("http://{METADATA_NAME}/latest/meta-data"),
        "http://unknown.nimbus-test.invalid/hook".to_owned(),
    ];
    let mut hooks = Vec::new();
    for u in &urls {
        hooks.push(hook_to(&s, u).await);
    }
    append_events(s.control.store(), &s.org.id, 0, 1).await;
    for (u, h) in urls.iter().zip(&hooks) {
        let got = readable(&attempted(&s, h, 2).await);
        // Compare the first two attempts, as the baseline has them.
        let two = |r: &[Readable]| r.iter().map(|d| d.first(2)).collect::<Vec<_>>();
        assert_eq!(two(&got), two(&baseline), "{u}");
    }
    assert!(rx.received().is_empty());
    s.shutdown().await;
}

/// A receiver that answers 302 to another (loopback) URL: the redirect is not followed, even
/// with private targets allowed, and the attempt counts as failed.
#[tokio::test]
async fn redirects_are_not_followed() {
    let s = builder().start().await;
    let target = WebhookReceiver::start(0).await;
    let redirector = WebhookReceiver::redirecting(&target.url).await;
    let hook = hook_to(&s, &redirector.url).await;
    append_events(s.control.store(), &s.org.id, 0, 1).await;
    let log = attempted(&s, &hook, 3).await;
    let d = &log[0];
    assert_eq!((d["state"].as_str(), d["last_status_code"].as_i64()), (Some("pending"), Some(302)), "{d}");
    assert!(d["history"].as_array().unwrap().iter().all(|a| a["status_code"] == 302 && a["error"] == "receiver answered HTTP 302"), "{d}");
    assert!(redirector.received().len() >= 3);
    assert!(target.received().is_empty(), "the redirect was followed");
    s.shutdown().await;
}

/// Appends `n` events of a public type straight to the outbox of `org` through `store`, each in
/// its own transaction (as state changes do).
async fn append_events(store: &nimbus_store::Store, org: &nimbus_core::ids::OrgId, from: usize, n: usize) {
    for i in from..from + n {
        let mut tx = store.begin().await.unwrap();
        let rid = nimbus_core::ids::InstanceId::generate();
        nimbus_store::Store::event_append_in_txn(
            &mut tx,
            nimbus_store::NewEvent {
                org_id: Some(org),
                kind: "instance.created",
                resource_type: "instance",
                resource_id: rid.as_str(),
                actor_key_id: None,
                payload: json!({"name": format!("e-{i}")}),
                now: nimbus_core::clock::Clock::now_micros(&nimbus_core::clock::SystemClock),
            },
        )
        .await
        .unwrap();
        nimbus_store::Store::commit(tx).await.unwrap();
    }
}

/// Two server replicas on one database: each event is delivered once (one dispatcher holds the
/// lease, senders claim rows conditionally); when the lease holder stops, the other takes over.
#[tokio::test]
async fn two_replicas_deliver_each_event_once_and_take_over() {
    use std::sync::Arc;

    use nimbus_control::{admin, Control};
    use nimbus_core::clock::SystemClock;
    nimbus_test_utils::init_logs();
    let dir = nimbus_test_utils::TempDir::new("replicas");
    let url = nimbus_test_utils::test_database_url(&dir.0).await;
    let mut config = nimbus_control::Config::default();
    config.webhooks.allow_private_targets = true;
    config.webhooks.retry_initial_ms = 5;
    config.webhooks.retry_max_ms = 40;
    config.webhooks.poll_interval_ms = 50;
    config.webhooks.dispatch_lease_ms = 600;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = nimbus_store::Store::connect(&url).await.unwrap();
        let control = Control::new(store, Arc::new(SystemClock), config.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = nimbus_api::server::start(control.clone(), listener).unwrap();
        replicas.push((control, server));
    }
    let c0 = replicas[0].0.clone();
    let c1 = replicas[1].0.clone();
    let org = admin::org_create(&c0, "org-r", None).await.unwrap();
    let (_, key) = admin::api_key_create(&c0, &org, "k", nimbus_core::auth::Permissions::admin(), None).await.unwrap();
    let actor = nimbus_control::auth::authenticate(&c0, &key).await.unwrap();
    let rx = WebhookReceiver::start(3).await;
    let spec = nimbus_control::webhooks::WebhookSpec { url: rx.url.clone(), events: vec!["*".into()], secret: Some(SECRET.into()) };
    nimbus_control::webhooks::create(&c1, &actor, spec).await.unwrap();

    // Events committed through both replicas, interleaved.
    let (a, b) = tokio::join!(append_events(c0.store(), &org.id, 0, 100), append_events(c1.store(), &org.id, 100, 100));
    let _ = (a, b);
    let ok = |r: &[Received]| r.iter().filter(|r| r.status == 200).count();
    rx.wait_until("200 deliveries", Duration::from_secs(30), |r| ok(r) >= 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.received();
    let names: Vec<String> =
        got.iter().filter(|r| r.status == 200).map(|r| r.json()["data"]["name"].as_str().unwrap().to_owned()).collect();
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!((names.len(), distinct.len()), (200, 200), "every event exactly once");
    assert_eq!(got.len(), 203, "plus the three refused attempts");
    for r in &got {
        verify_signature(SECRET, r, TOLERANCE).unwrap();
    }

    // Stop replica A, then start a fresh replica C and stop B: whichever held the dispatch lease
    // is stopped at some point, and another takes over once the lease lapses.
    let (c_a, server_a) = replicas.remove(0);
    let (c_b, server_b) = replicas.remove(0);
    server_a.shutdown().await.unwrap();
    append_events(c_b.store(), &org.id, 200, 20).await;
    rx.wait_until("the events after A stopped", Duration::from_secs(15), |r| ok(r) >= 220).await;
    let store = nimbus_store::Store::connect(&url).await.unwrap();
    let c_c = Control::new(store, Arc::new(SystemClock), config.clone()).await.unwrap();
    let server_c = nimbus_api::server::start(c_c.clone(), tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    server_b.shutdown().await.unwrap();
    append_events(c_c.store(), &org.id, 220, 20).await;
    rx.wait_until("the events after B stopped", Duration::from_secs(15), |r| ok(r) >= 240).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> =
        rx.received().iter().filter(|r| r.status == 200).map(|r| r.json()["data"]["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!((names.len(), names.iter().collect::<HashSet<_>>().len()), (240, 240), "every event exactly once");
    server_c.shutdown().await.unwrap();
    for c in [c_a, c_b, c_c] {
        c.store().close().await;
    }
}
