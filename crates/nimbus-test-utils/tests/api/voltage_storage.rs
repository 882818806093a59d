//! Voltage Park storage (seed 004, `/storage/…`) over the native volumes domain: exact shapes,
//! create / list / get / patch / delete, shared attachment to several orders (instances), the
//! dialect's errors, tenant isolation, and used bytes as the host reports them. The real
//! measurement inside a running container is in containers.rs.

use nimbus_core::ids::HostId;
use nimbus_proto as proto;
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::{add_key, launch};

/// The fields of every storage object in the seed (GET by id adds `used_capacity_bytes`).
const FIELDS: [&str; 8] = ["id", "name", "order_ids", "rate_hourly", "size_in_gb", "status", "tenant_id", "vip"];

fn uuid(hex: &str) -> String {
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn hex(uuid: &str) -> String {
    uuid.replace('-', "")
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

/// `call` with the admin key, asserting the status.
async fn vp(s: &TestServer, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let (st, v) = s.call(&s.key, method, path, body).await;
    assert_eq!(st, status, "{method} {path} -> {st}: {v}");
    v
}

/// Asserts a FastAPI validation error at `loc`.
async fn expect_422(s: &TestServer, method: &str, path: &str, body: Option<Value>, loc: Value) {
    let e = vp(s, method, path, body.clone(), 422).await;
    assert_eq!(e["detail"][0]["loc"], loc, "{method} {path} {body:?}: {e}");
    assert!(e["detail"][0]["msg"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
}

/// Waits until the native view of the volume has `status` (`attached` once the host mounted it
/// in every order).
async fn wait_native(s: &TestServer, storage_id: &str, status: &str) -> Value {
    s.wait_native_status(&format!("/volumes/{}", hex(storage_id)), status).await
}

async fn two_instances(s: &TestServer) -> (String, String) {
    add_key(s, "k").await;
    let a = launch(s, &s.key, "cpu_1x_small", "k").await;
    let b = launch(s, &s.key, "cpu_1x_small", "k").await;
    s.wait_status(&s.key, &a, "active").await;
    s.wait_status(&s.key, &b, "active").await;
    (a, b)
}

#[tokio::test]
async fn storage_create_list_get_patch_delete_and_share_between_orders() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 0)).start().await;
    let (a, b) = two_instances(&s).await;

    // Create attached to one order: exactly the seed's fields; the rate is size × the GiB rate.
    let body = json!({"size_in_gb": 100, "name": "My Storage Volume", "order_ids": [uuid(&a)]});
    let v = vp(&s, "POST", "/storage/", Some(body), 201).await;
    assert_eq!(keys(&v), FIELDS, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "UUID-shaped: {id}");
    assert_eq!(
        (&v["name"], &v["size_in_gb"], &v["rate_hourly"], &v["order_ids"], &v["vip"]),
        (&json!("My Storage Volume"), &json!(100), &json!("0.013700"), &json!([uuid(&a)]), &json!("0.0.0.0"))
    );
    assert!(v["tenant_id"].is_i64(), "{v}");
    assert!(["creating", "active"].contains(&v["status"].as_str().unwrap()), "{v}");

    // It is a native volume with a safe internal name, mounted in the order by its host.
    let n = wait_native(&s, &id, "attached").await;
    let internal = n["name"].as_str().unwrap().to_owned();
    assert!(internal.starts_with("my-storage-volume-"), "{n}");
    assert_eq!((n["instance_id"].as_str(), n["size_gib"].as_i64()), (Some(a.as_str()), Some(100)));
    let g = vp(&s, "GET", &format!("/storage/{id}"), None, 200).await;
    let mut want: Vec<&str> = FIELDS.into_iter().chain(["used_capacity_bytes"]).collect();
    want.sort_unstable();
    assert_eq!(keys(&g), want, "{g}");
    assert_eq!((g["status"].as_str(), g["used_capacity_bytes"].as_i64()), (Some("active"), Some(0)), "sim hosts measure nothing");
    // Both id forms work, and the rate endpoint is still the rate (a static route beats {id}).
    vp(&s, "GET", &format!("/storage/{}", hex(&id)), None, 200).await;
    assert!(vp(&s, "GET", "/storage/hourly-rate", None, 200).await["hourly_rate_per_gb"].is_string());

    // A second one without orders (no trailing slash): nothing to create until it is attached.
    let w = vp(&s, "POST", "/storage", Some(json!({"size_in_gb": 1, "name": "scratch"})), 201).await;
    assert_eq!((w["status"].as_str(), &w["order_ids"], &w["tenant_id"]), (Some("active"), &json!([]), &v["tenant_id"]));
    let wid = w["id"].as_str().unwrap().to_owned();

    // Lists page with limit/offset (default 20, at most 100).
    let l = vp(&s, "GET", "/storage/", None, 200).await;
    assert_eq!(keys(&l), ["has_next", "has_previous", "results", "total_result_count"]);
    assert_eq!(
        (l["total_result_count"].as_i64(), l["has_previous"].as_bool(), l["has_next"].as_bool()),
        (Some(2), Some(false), Some(false))
    );
    assert_eq!(keys(&l["results"][0]), FIELDS, "list items have exactly the seed's fields");
    let p1 = vp(&s, "GET", "/storage?limit=1", None, 200).await;
    assert_eq!(
        (p1["results"][0]["id"].as_str(), p1["has_previous"].as_bool(), p1["has_next"].as_bool()),
        (Some(id.as_str()), Some(false), Some(true))
    );
    let p2 = vp(&s, "GET", "/storage/?limit=1&offset=1", None, 200).await;
    assert_eq!(
        (p2["results"][0]["id"].as_str(), p2["has_previous"].as_bool(), p2["has_next"].as_bool()),
        (Some(wid.as_str()), Some(true), Some(false))
    );
    for q in ["limit=0", "limit=101", "limit=x", "offset=-1"] {
        let field = q.split('=').next().unwrap();
        expect_422(&s, "GET", &format!("/storage/?{q}"), None, json!(["query", field])).await;
    }

    // Rename (the mount point keeps the internal name), grow, and shrinking is refused.
    let r = vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"name": "Renamed Volume"})), 200).await;
    assert_eq!((r["name"].as_str(), r["size_in_gb"].as_i64()), (Some("Renamed Volume"), Some(100)));
    assert_eq!(s.nexpect("GET", &format!("/volumes/{}", hex(&id)), None, 200).await["name"], internal.as_str());
    let r = vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"size_in_gb": 200, "name": null})), 200).await;
    assert_eq!(
        (r["size_in_gb"].as_i64(), r["rate_hourly"].as_str(), r["name"].as_str()),
        (Some(200), Some("0.027400"), Some("Renamed Volume"))
    );
    let e = vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"size_in_gb": 150})), 400).await;
    assert!(e["detail"].as_str().unwrap().contains("only grow"), "{e}");
    // A refused change changes nothing, not even its other parts (one transaction).
    let e = vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"size_in_gb": 150, "name": "Never"})), 400).await;
    assert!(e["detail"].is_string(), "{e}");
    assert_eq!(vp(&s, "GET", &format!("/storage/{id}"), None, 200).await["name"], "Renamed Volume");

    // Shared: attached to both orders at once; the host mounts it in each.
    let r = vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"order_ids": [uuid(&a), uuid(&b)]})), 200).await;
    assert_eq!(r["order_ids"], json!([uuid(&a), uuid(&b)]));
    wait_native(&s, &id, "attached").await;
    let e = vp(&s, "DELETE", &format!("/storage/{id}"), None, 400).await;
    assert!(e["detail"].as_str().unwrap().contains("attached"), "{e}");
    // Replacing the set detaches what is left out.
    let r = vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"order_ids": [uuid(&b)]})), 200).await;
    assert_eq!(r["order_ids"], json!([uuid(&b)]));
    // Terminating an order detaches it and keeps the storage.
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [b]})), 200).await;
    s.wait_status(&s.key, &b, "terminated").await;
    wait_native(&s, &id, "available").await;
    assert_eq!(vp(&s, "GET", &format!("/storage/{id}"), None, 200).await["order_ids"], json!([]));
    // A terminated order cannot be attached.
    vp(&s, "PATCH", &format!("/storage/{id}"), Some(json!({"order_ids": [uuid(&b)]})), 400).await;

    // Detached: delete is 204 and the storage is gone.
    for sid in [&id, &wid] {
        let r = s.http.delete(s.lambda(&format!("/storage/{sid}"))).bearer_auth(&s.key).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert!(r.bytes().await.unwrap().is_empty(), "no content");
        let e = vp(&s, "GET", &format!("/storage/{sid}"), None, 404).await;
        assert!(e["detail"].is_string(), "{e}");
    }
    assert_eq!(vp(&s, "GET", "/storage/", None, 200).await["total_result_count"], 0);
}

#[tokio::test]
async fn storage_bad_input_is_422_and_other_orgs_see_nothing() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 0)).start().await;
    add_key(&s, "k").await;
    let a = launch(&s, &s.key, "cpu_1x_small", "k").await;
    let body = |v: Value| Some(v);
    for (b, field) in [
        (json!({"size_in_gb": 0, "name": "x"}), "size_in_gb"),
        (json!({"size_in_gb": -5, "name": "x"}), "size_in_gb"),
        (json!({"size_in_gb": "ten", "name": "x"}), "size_in_gb"),
        (json!({"size_in_gb": 1.5, "name": "x"}), "size_in_gb"),
        (json!({"name": "x"}), "size_in_gb"),
        (json!({"size_in_gb": 1}), "name"),
        (json!({"size_in_gb": 1, "name": ""}), "name"),
        (json!({"size_in_gb": 1, "name": "   "}), "name"),
        (json!({"size_in_gb": 1, "name": 7}), "name"),
        (json!({"size_in_gb": 1, "name": "x\ny"}), "name"),
        (json!({"size_in_gb": 1, "name": "x".repeat(256)}), "name"),
        (json!({"size_in_gb": 1, "name": "x", "order_ids": ["not-a-uuid"]}), "order_ids"),
        (json!({"size_in_gb": 1, "name": "x", "order_ids": "nope"}), "order_ids"),
        (json!({"size_in_gb": 1_000_000, "name": "x"}), "size_in_gb"),
    ] {
        expect_422(&s, "POST", "/storage/", body(b), json!(["body", field])).await;
    }
    for raw in ["[1]", "not json", ""] {
        let r = s.http.post(s.lambda("/storage/")).bearer_auth(&s.key).body(raw).send().await.unwrap();
        assert_eq!(r.status(), 422, "{raw:?}");
        assert!(r.json::<Value>().await.unwrap()["detail"][0]["loc"].is_array());
    }
    // An order that does not exist: a request that cannot be done.
    let e = vp(&s, "POST", "/storage/", body(json!({"size_in_gb": 1, "name": "x", "order_ids": [uuid(&"0".repeat(32))]})), 400).await;
    assert!(e["detail"].as_str().unwrap().contains("does not exist"), "{e}");
    expect_422(&s, "GET", "/storage/nope", None, json!(["path", "storage_id"])).await;
    expect_422(&s, "DELETE", "/storage/nope", None, json!(["path", "storage_id"])).await;
    expect_422(&s, "PATCH", "/storage/nope", body(json!({})), json!(["path", "storage_id"])).await;
    let missing = uuid(&"ab".repeat(16));
    for m in ["GET", "DELETE"] {
        assert!(vp(&s, m, &format!("/storage/{missing}"), None, 404).await["detail"].is_string());
    }
    vp(&s, "PATCH", &format!("/storage/{missing}"), body(json!({"name": "y"})), 404).await;
    // Nothing was made by any of that.
    assert_eq!(vp(&s, "GET", "/storage/", None, 200).await["total_result_count"], 0);

    let v = vp(&s, "POST", "/storage/", body(json!({"size_in_gb": 2, "name": "Mine", "order_ids": [uuid(&a)]})), 201).await;
    let id = v["id"].as_str().unwrap().to_owned();
    for (b, field) in [(json!({"size_in_gb": 0}), "size_in_gb"), (json!({"name": ""}), "name"), (json!({"order_ids": [7]}), "order_ids")] {
        expect_422(&s, "PATCH", &format!("/storage/{id}"), body(b), json!(["body", field])).await;
    }
    // An empty patch changes nothing.
    let same = vp(&s, "PATCH", &format!("/storage/{id}"), body(json!({})), 200).await;
    assert_eq!((&same["name"], &same["size_in_gb"], &same["order_ids"]), (&v["name"], &v["size_in_gb"], &v["order_ids"]));

    // Another organization: the storage does not exist for it, nor its orders for us.
    let (_, other) = s.org_with_key("other-org", "admin").await;
    let path = s.lambda(&format!("/storage/{id}"));
    for (m, b) in [("GET", None), ("PATCH", Some(json!({"name": "stolen"}))), ("DELETE", None)] {
        let (st, e) = s.send(&other, m, path.clone(), b).await;
        assert_eq!((st, e["detail"].is_string()), (404, true), "{m}: {e}");
    }
    let (st, l) = s.call(&other, "GET", "/storage/", None).await;
    assert_eq!((st, &l["total_result_count"]), (200, &json!(0)));
    let (st, theirs) = s.call(&other, "POST", "/storage/", body(json!({"size_in_gb": 1, "name": "Theirs"}))).await;
    assert_eq!(st, 201, "{theirs}");
    assert_ne!(theirs["tenant_id"], v["tenant_id"], "tenant ids are per organization");
    let (st, e) =
        s.call(&other, "PATCH", &format!("/storage/{}", theirs["id"].as_str().unwrap()), body(json!({"order_ids": [uuid(&a)]}))).await;
    assert_eq!(st, 400, "another org's instance is no order of theirs: {e}");
    assert_eq!(vp(&s, "GET", &format!("/storage/{id}"), None, 200).await["name"], "Mine");
    let r = s.http.get(s.lambda("/storage/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// Used bytes and the error status come from the host's reports: a report that measured the
/// volume sets `used_capacity_bytes`, one that did not keeps it, one with an error makes the
/// storage `error` until a clean report.
#[tokio::test]
async fn storage_used_capacity_and_status_follow_host_reports() {
    let mut s = TestServer::builder().host("us-east-1", sim_host("h", 64, 0)).start().await;
    add_key(&s, "k").await;
    let a = launch(&s, &s.key, "cpu_1x_small", "k").await;
    s.wait_status(&s.key, &a, "active").await;
    let v = vp(&s, "POST", "/storage/", Some(json!({"size_in_gb": 3, "name": "Measured", "order_ids": [uuid(&a)]})), 201).await;
    let id = v["id"].as_str().unwrap().to_owned();
    wait_native(&s, &id, "attached").await;
    // From here on only this test reports for the host.
    s.stop_agent(0).await;
    let host: HostId = s.control.store().host_list(None, false).await.unwrap().remove(0).id;
    let report = |used: Option<i64>, message: Option<&str>| proto::ReportRequest {
        instances: vec![],
        applied_generation: 0,
        volumes: vec![proto::VolumeReport {
            id: hex(&id),
            size_gib: 3,
            mounted_in: Some(a.clone()),
            mounted_in_all: vec![a.clone()],
            used_bytes: used,
            message: message.map(str::to_owned),
        }],
        snapshots: vec![],
        vpns: vec![],
        gpus: None,
    };
    let get = || async { vp(&s, "GET", &format!("/storage/{id}"), None, 200).await };

    nimbus_control::agents::report(&s.control, &host, report(Some(123_456_789), None)).await.unwrap();
    let g = get().await;
    assert_eq!((g["used_capacity_bytes"].as_i64(), g["status"].as_str()), (Some(123_456_789), Some("active")), "{g}");
    nimbus_control::agents::report(&s.control, &host, report(None, Some("mkfs.ext4: no space left on the host"))).await.unwrap();
    let g = get().await;
    assert_eq!((g["used_capacity_bytes"].as_i64(), g["status"].as_str()), (Some(123_456_789), Some("error")), "{g}");
    nimbus_control::agents::report(&s.control, &host, report(Some(4096), None)).await.unwrap();
    let g = get().await;
    assert_eq!((g["used_capacity_bytes"].as_i64(), g["status"].as_str()), (Some(4096), Some("active")), "{g}");
}
