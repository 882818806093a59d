//! The permission matrix: one row per route of every dialect with the permission it needs
//! (read → READ, create → CREATE, change → EDIT, delete → DELETE; POST actions: launch is
//! CREATE, restart/stop/start/reboot/power are EDIT, terminate is DELETE; managing the
//! organization and its service accounts is ADMIN), or PUBLIC.
//!
//! The routes a server serves are read from what defines them, not from this table: the
//! checked-in `openapi/lambda.json`, `openapi/native.json`, `openapi/voltage.json` and
//! `openapi/clusters.json`, plus the routes the dialects' `mod.rs` add by hand (Lambda's second
//! spellings, native's documents and metrics stream, Voltage Park's other spelling of the paths
//! the seed writes with or without a trailing slash). A served route missing from the table fails
//! the test, and so does a row that matches no served route. Every key of
//! `tests/fixtures/voltage-park-seed-examples.json` (one per Voltage Park endpoint of seed 004)
//! must be covered as well.
//!
//! For every served route, with made-up but well-formed ids and bodies that pass the dialect's
//! own parsing:
//! - a key with every non-ADMIN permission except the required one gets 403 in the dialect's
//!   error shape (for an ADMIN route: all four others);
//! - a key with only the required permission does not get 403 (404, 400, 409, 422 are fine);
//! - the ADMIN key does not get 403;
//! - a PUBLIC route answers without a key.
//!
//! The two restricted keys are keys of service accounts, so the matrix also proves that a
//! service-account key acts with its account's permissions on every route of every dialect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use nimbus_test_utils::TestServer;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dialect {
    Lambda,
    Native,
    Voltage,
    /// The CockroachDB-shaped clusters API (seed 003): Bearer keys, `{"code", "message"}` errors.
    Clusters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Public,
    Admin,
    Create,
    Read,
    Edit,
    Delete,
}

use Dialect::*;
use Need::*;

/// One route: dialect, method, path template (full path, `{…}` for parameters, no trailing
/// slash), what it needs, and a body (`@ID` and `@UUID` stand for made-up ids, `@LOCATION` for a
/// real Voltage Park location id, `@PUBKEY` for an SSH public key).
type Row = (Dialect, &'static str, &'static str, Need, Option<&'static str>);

const LAMBDA: &[Row] = &[
    (Lambda, "GET", "/api/v1/instance-types", Read, None),
    (Lambda, "GET", "/api/v1/instances", Read, None),
    (Lambda, "GET", "/api/v1/instances/{id}", Read, None),
    (Lambda, "POST", "/api/v1/instances/{id}", Edit, Some(r#"{"name": "renamed"}"#)),
    (
        Lambda,
        "POST",
        "/api/v1/instance-operations/launch",
        Create,
        Some(r#"{"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["no-such-key"]}"#),
    ),
    (Lambda, "POST", "/api/v1/instance-operations/restart", Edit, Some(r#"{"instance_ids": ["@ID"]}"#)),
    (Lambda, "POST", "/api/v1/instance-operations/terminate", Delete, Some(r#"{"instance_ids": ["@ID"]}"#)),
    (Lambda, "GET", "/api/v1/ssh-keys", Read, None),
    (Lambda, "POST", "/api/v1/ssh-keys", Create, Some(r#"{"name": "matrix-key", "public_key": "@PUBKEY"}"#)),
    (Lambda, "DELETE", "/api/v1/ssh-keys/{id}", Delete, None),
    (Lambda, "GET", "/api/v1/file-systems", Read, None),
    (Lambda, "GET", "/api/v1/filesystems", Read, None),
    (Lambda, "POST", "/api/v1/filesystems", Create, Some(r#"{"name": "matrixfs", "region": "us-east-1"}"#)),
    (Lambda, "POST", "/api/v1/file-systems", Create, Some(r#"{"name": "matrixfs", "region": "us-east-1"}"#)),
    (Lambda, "DELETE", "/api/v1/filesystems/{id}", Delete, None),
    (Lambda, "DELETE", "/api/v1/file-systems/{id}", Delete, None),
    (Lambda, "GET", "/api/v1/images", Read, None),
    (Lambda, "GET", "/api/v1/firewall-rules", Read, None),
    (
        Lambda,
        "PUT",
        "/api/v1/firewall-rules",
        Edit,
        Some(r#"{"data": [{"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "ssh"}]}"#),
    ),
    (Lambda, "GET", "/api/v1/firewall-rulesets", Read, None),
    (Lambda, "POST", "/api/v1/firewall-rulesets", Create, Some(r#"{"name": "matrix-rs", "region": "us-east-1", "rules": []}"#)),
    (Lambda, "GET", "/api/v1/firewall-rulesets/global", Read, None),
    (Lambda, "PATCH", "/api/v1/firewall-rulesets/global", Edit, Some("{}")),
    (Lambda, "GET", "/api/v1/firewall-rulesets/{id}", Read, None),
    (Lambda, "PATCH", "/api/v1/firewall-rulesets/{id}", Edit, Some(r#"{"name": "renamed"}"#)),
    (Lambda, "DELETE", "/api/v1/firewall-rulesets/{id}", Delete, None),
    (Lambda, "GET", "/api/v1/audit-events", Read, None),
];

const NATIVE: &[Row] = &[
    (Native, "GET", "/v1/openapi.json", Public, None),
    (Native, "GET", "/v1/docs", Public, None),
    (Native, "GET", "/v1/account", Read, None),
    (Native, "PATCH", "/v1/account", Admin, Some(r#"{"email": "a@example.com"}"#)),
    (Native, "GET", "/v1/account/quota", Read, None),
    (Native, "GET", "/v1/account/api-keys", Read, None),
    // A key may only mint keys it covers, so the body asks for CREATE alone.
    (Native, "POST", "/v1/account/api-keys", Create, Some(r#"{"name": "matrix", "permissions": ["CREATE"]}"#)),
    (Native, "DELETE", "/v1/account/api-keys/{id}", Delete, None),
    (Native, "GET", "/v1/service-accounts", Admin, None),
    (Native, "POST", "/v1/service-accounts", Admin, Some(r#"{"name": "matrix-sa", "permissions": ["READ"]}"#)),
    (Native, "GET", "/v1/service-accounts/{id}", Admin, None),
    (Native, "PATCH", "/v1/service-accounts/{id}", Admin, Some(r#"{"description": "changed"}"#)),
    (Native, "DELETE", "/v1/service-accounts/{id}", Admin, None),
    (Native, "GET", "/v1/service-accounts/{id}/api-keys", Admin, None),
    (Native, "POST", "/v1/service-accounts/{id}/api-keys", Admin, Some("{}")),
    (Native, "DELETE", "/v1/service-accounts/{id}/api-keys/{key_id}", Admin, None),
    (Native, "GET", "/v1/billing/usage", Read, None),
    (Native, "GET", "/v1/billing/invoices", Read, None),
    (Native, "GET", "/v1/billing/invoices/{id}", Read, None),
    (Native, "GET", "/v1/billing/estimate", Read, None),
    (Native, "GET", "/v1/firewall/rules", Read, None),
    (Native, "POST", "/v1/firewall/rules", Create, Some(r#"{"protocol": "tcp", "port_range": [8000, 8001], "source": "10.0.0.0/8"}"#)),
    (Native, "DELETE", "/v1/firewall/rules/{id}", Delete, None),
    (Native, "GET", "/v1/instances", Read, None),
    (Native, "POST", "/v1/instances", Create, Some(r#"{"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": ["@ID"]}"#)),
    (Native, "GET", "/v1/instances/{id}", Read, None),
    (Native, "PATCH", "/v1/instances/{id}", Edit, Some(r#"{"name": "renamed"}"#)),
    (Native, "DELETE", "/v1/instances/{id}", Delete, None),
    (Native, "GET", "/v1/instances/{id}/metrics", Read, None),
    (Native, "GET", "/v1/instances/{id}/metrics/stream", Read, None),
    (Native, "GET", "/v1/instances/{id}/network", Read, None),
    (Native, "GET", "/v1/instances/{id}/gpus", Read, None),
    (Native, "POST", "/v1/instances/{id}/restart", Edit, None),
    (Native, "POST", "/v1/instances/{id}/stop", Edit, None),
    (Native, "POST", "/v1/instances/{id}/start", Edit, None),
    (Native, "POST", "/v1/instances/{id}/resize", Edit, Some(r#"{"instance_type": "cpu_1x_small"}"#)),
    (Native, "GET", "/v1/volumes", Read, None),
    (Native, "POST", "/v1/volumes", Create, Some(r#"{"name": "matrix-vol", "region": "us-east-1", "size_gib": 1}"#)),
    (Native, "GET", "/v1/volumes/{id}", Read, None),
    (Native, "DELETE", "/v1/volumes/{id}", Delete, None),
    (Native, "POST", "/v1/volumes/{id}/attach", Edit, Some(r#"{"instance_id": "@ID"}"#)),
    (Native, "POST", "/v1/volumes/{id}/detach", Edit, None),
    (Native, "POST", "/v1/volumes/{id}/resize", Edit, Some(r#"{"size_gib": 2}"#)),
    (Native, "GET", "/v1/snapshots", Read, None),
    (Native, "POST", "/v1/snapshots", Create, Some(r#"{"name": "matrix-snap", "volume_id": "@ID"}"#)),
    (Native, "GET", "/v1/snapshots/{id}", Read, None),
    (Native, "DELETE", "/v1/snapshots/{id}", Delete, None),
    (Native, "POST", "/v1/snapshots/{id}/restore", Create, Some(r#"{"name": "restored"}"#)),
    (Native, "GET", "/v1/vpn", Read, None),
    (Native, "POST", "/v1/vpn", Create, Some(r#"{"name": "matrixvpn", "region": "us-east-1"}"#)),
    (Native, "GET", "/v1/vpn/{id}", Read, None),
    (Native, "DELETE", "/v1/vpn/{id}", Delete, None),
    (Native, "GET", "/v1/webhooks", Read, None),
    (
        Native,
        "POST",
        "/v1/webhooks",
        Create,
        Some(r#"{"url": "https://hooks.example.com/nimbus", "events": ["billing.spend_limit_reached"]}"#),
    ),
    (Native, "GET", "/v1/webhooks/{id}", Read, None),
    (Native, "DELETE", "/v1/webhooks/{id}", Delete, None),
    (Native, "GET", "/v1/webhooks/{id}/deliveries", Read, None),
    (Native, "POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", Edit, None),
];

const VOLTAGE: &[Row] = &[
    (Voltage, "GET", "/api/v1/locations", Read, None),
    (Voltage, "GET", "/api/v1/locations/{id}", Read, None),
    (Voltage, "GET", "/api/v1/hostnodes/{id}", Read, None),
    (Voltage, "GET", "/api/v1/instant-deploy-presets", Public, None),
    (Voltage, "GET", "/api/v1/instant-deploy-presets/{id}", Public, None),
    (Voltage, "GET", "/api/v1/virtual-machines", Read, None),
    (
        Voltage,
        "POST",
        "/api/v1/virtual-machines/instant",
        Create,
        Some(r#"{"config_id": "@UUID", "name": "matrix-vm", "password": "correct-horse"}"#),
    ),
    (Voltage, "GET", "/api/v1/virtual-machines/{id}", Read, None),
    (Voltage, "PATCH", "/api/v1/virtual-machines/{id}", Edit, Some(r#"{"name": "renamed"}"#)),
    (Voltage, "DELETE", "/api/v1/virtual-machines/{id}", Delete, None),
    (Voltage, "PUT", "/api/v1/virtual-machines/{id}/power-status", Edit, Some(r#"{"status": "stopped"}"#)),
    (Voltage, "POST", "/api/v1/virtual-machines/{id}/port-forwards", Edit, Some(r#"{"internal_port": 8080}"#)),
    (Voltage, "DELETE", "/api/v1/virtual-machines/{id}/port-forwards/{port}", Edit, None),
    (Voltage, "GET", "/api/v1/bare-metal/locations", Public, None),
    (Voltage, "GET", "/api/v1/bare-metal", Read, None),
    // An unknown network type: refused after the permission check, so nothing is rented.
    (
        Voltage,
        "POST",
        "/api/v1/bare-metal",
        Create,
        Some(r#"{"location_id": "@LOCATION", "gpu_count": 8, "name": "matrix-bm", "network_type": "token-ring", "ssh_keys": ["@PUBKEY"]}"#),
    ),
    (Voltage, "PATCH", "/api/v1/bare-metal/{id}", Edit, Some(r#"{"name": "renamed"}"#)),
    (Voltage, "DELETE", "/api/v1/bare-metal/{id}", Delete, None),
    (Voltage, "PUT", "/api/v1/bare-metal/{id}/power-status", Edit, Some(r#"{"status": "stopped"}"#)),
    (Voltage, "POST", "/api/v1/bare-metal/{id}/reboot", Edit, Some(r#"{"public_ips": ["192.0.2.1"]}"#)),
    (Voltage, "GET", "/api/v1/organization/ssh-keys", Read, None),
    (Voltage, "POST", "/api/v1/organization/ssh-keys", Create, Some(r#"{"name": "matrix key", "content": "@PUBKEY"}"#)),
    (Voltage, "DELETE", "/api/v1/organization/ssh-keys/{id}", Delete, None),
    (Voltage, "POST", "/api/v1/validate/cloudinit", Public, Some(r##"{"type": "instant-vm", "content": "#!/bin/sh\necho hi\n"}"##)),
    (Voltage, "GET", "/api/v1/storage/hourly-rate", Read, None),
    (Voltage, "GET", "/api/v1/storage", Read, None),
    (Voltage, "POST", "/api/v1/storage", Create, Some(r#"{"name": "matrix-storage", "size_in_gb": 1}"#)),
    (Voltage, "GET", "/api/v1/storage/{id}", Read, None),
    (Voltage, "PATCH", "/api/v1/storage/{id}", Edit, Some(r#"{"name": "renamed"}"#)),
    (Voltage, "DELETE", "/api/v1/storage/{id}", Delete, None),
    (Voltage, "GET", "/api/v1/billing/hourly-rate", Read, None),
    (Voltage, "GET", "/api/v1/billing/transactions", Read, None),
    (Voltage, "GET", "/api/v1/billing/reports/{year}/{month}/transactions", Read, None),
];

/// The clusters dialect (`/api/v1/clusters…`, Bearer keys, `{"code", "message"}` errors); its
/// routes are read from `openapi/clusters.json`.
const CLUSTERS: &[Row] = &[
    (Clusters, "GET", "/api/v1/clusters", Read, None),
    (
        Clusters,
        "POST",
        "/api/v1/clusters",
        Create,
        Some(r#"{"name":"perm-test","provider":"GCP","spec":{"serverless":{"regions":["us-east-1"],"spendLimit":0}}}"#),
    ),
    (Clusters, "GET", "/api/v1/clusters/available-regions", Read, None),
    (Clusters, "GET", "/api/v1/clusters/{id}", Read, None),
    (Clusters, "DELETE", "/api/v1/clusters/{id}", Delete, None),
    (Clusters, "GET", "/api/v1/clusters/{id}/nodes", Read, None),
    (Clusters, "PUT", "/api/v1/clusters/{id}/spend-limit", Edit, Some(r#"{"spendLimit":100}"#)),
];

fn table() -> Vec<Row> {
    [LAMBDA, NATIVE, VOLTAGE, CLUSTERS].concat()
}

const HEX_ID: &str = "0123456789abcdef0123456789abcdef";
const UUID_ID: &str = "01234567-89ab-cdef-0123-456789abcdef";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `/a/{x}/b/` → `/a/{}/b`: parameters unnamed, no trailing slash.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    if out.len() > 1 {
        out = out.trim_end_matches('/').to_owned();
    }
    out
}

/// `(method, full path)` of every operation of a checked-in OpenAPI document (paths prefixed
/// with its first server's URL).
fn document_routes(file: &str) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(root().join("openapi").join(file)).ok()?;
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("openapi/{file}: {e}"));
    let base = doc["servers"][0]["url"].as_str().unwrap_or("").trim_end_matches('/').to_owned();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.push((method.to_uppercase(), format!("{base}{path}")));
            }
        }
    }
    Some(out)
}

/// `(method, full path)` of every `.route("…", get(…).post(…))` in a router's source, under
/// `prefix` (where the router is nested).
fn hand_routes(file: &str, prefix: &str) -> Vec<(String, String)> {
    let src = std::fs::read_to_string(root().join("crates/nimbus-api/src").join(file)).unwrap();
    let mut out = Vec::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find(".route(\"") {
        rest = &rest[at + 8..];
        let end = rest.find('"').unwrap();
        let path = &rest[..end];
        // The handlers of this route: up to the next route (or the end of the router).
        let upto = rest.find(".route(").or_else(|| rest.find("\n}")).unwrap_or(rest.len());
        let methods_src = &rest[end..upto];
        let mut methods = BTreeSet::new();
        for m in ["get", "post", "put", "patch", "delete"] {
            let pat = format!("{m}(");
            for (i, _) in methods_src.match_indices(&pat) {
                let before = methods_src[..i].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    methods.insert(m.to_uppercase());
                }
            }
        }
        assert!(!methods.is_empty(), "{file}: no method found for route {path}");
        for m in methods {
            out.push((m, format!("{prefix}{path}")));
        }
    }
    out
}

/// Every route the server serves, by dialect, with the exact spelling to request.
fn served_routes() -> Vec<(Dialect, String, String)> {
    let mut out = Vec::new();
    let lambda = document_routes("lambda.json").expect("openapi/lambda.json");
    let native = document_routes("native.json").expect("openapi/native.json");
    for (m, p) in lambda.into_iter().chain(hand_routes("lambda/mod.rs", "/api/v1")) {
        out.push((Lambda, m, p));
    }
    for (m, p) in native.into_iter().chain(hand_routes("native/mod.rs", "/v1")) {
        out.push((Native, m, p));
    }
    let voltage = document_routes("voltage.json").expect("openapi/voltage.json");
    for (m, p) in voltage.into_iter().chain(hand_routes("voltage/mod.rs", "/api/v1")) {
        out.push((Voltage, m, p));
    }
    for (m, p) in document_routes("clusters.json").expect("openapi/clusters.json") {
        out.push((Clusters, m, p));
    }
    out.sort();
    out.dedup();
    out
}

fn row_for<'a>(table: &'a [Row], d: Dialect, method: &str, path: &str) -> Option<&'a Row> {
    let key = normalize(path);
    table.iter().find(|r| r.0 == d && r.1 == method && normalize(r.2) == key)
}

#[test]
fn the_table_covers_every_served_route_and_nothing_else() {
    let table = table();
    let served = served_routes();
    assert!(served.len() > 100, "found only {} routes; is the route parser broken?", served.len());
    let missing: Vec<String> =
        served.iter().filter(|(d, m, p)| row_for(&table, *d, m, p).is_none()).map(|(d, m, p)| format!("{d:?} {m} {p}")).collect();
    assert!(missing.is_empty(), "served routes without a row in the permission matrix:\n{}", missing.join("\n"));
    let stale: Vec<String> = table
        .iter()
        .filter(|r| !served.iter().any(|(d, m, p)| *d == r.0 && m == r.1 && normalize(p) == normalize(r.2)))
        .map(|r| format!("{:?} {} {}", r.0, r.1, r.2))
        .collect();
    assert!(stale.is_empty(), "matrix rows that match no served route:\n{}", stale.join("\n"));
    let mut seen = BTreeSet::new();
    for r in &table {
        assert!(seen.insert((r.0, r.1, normalize(r.2))), "duplicate row {:?} {} {}", r.0, r.1, r.2);
    }

    // Seed 004's endpoints, one key each (`METHOD /api/v1/path/`).
    let text = std::fs::read_to_string(root().join("tests/fixtures/voltage-park-seed-examples.json")).unwrap();
    let examples: BTreeMap<String, Value> = serde_json::from_str(&text).unwrap();
    assert!(examples.len() >= 20, "{} seed endpoints", examples.len());
    for key in examples.keys() {
        let (m, p) = key.split_once(' ').unwrap();
        assert!(row_for(&table, Voltage, m, p).is_some(), "seed 004 endpoint {key} has no row in the permission matrix");
    }
}

/// The keys: `only[p]` holds just `p`, `others[p]` every non-ADMIN permission but `p` (all four
/// for ADMIN). Each is a key of its own service account, made through the native API.
struct Keys {
    only: BTreeMap<&'static str, String>,
    others: BTreeMap<&'static str, String>,
}

const NON_ADMIN: [&str; 4] = ["CREATE", "READ", "EDIT", "DELETE"];

fn need_name(n: Need) -> &'static str {
    match n {
        Public => "PUBLIC",
        Admin => "ADMIN",
        Create => "CREATE",
        Read => "READ",
        Edit => "EDIT",
        Delete => "DELETE",
    }
}

async fn service_account_key(s: &TestServer, name: &str, perms: &[&str]) -> String {
    let sa = s.nexpect("POST", "/service-accounts", Some(json!({"name": name, "permissions": perms})), 201).await;
    let id = sa["id"].as_str().unwrap();
    let k = s.nexpect("POST", &format!("/service-accounts/{id}/api-keys"), Some(json!({"name": "matrix"})), 201).await;
    assert_eq!(k["service_account_id"], id, "{k}");
    k["secret"].as_str().unwrap().to_owned()
}

async fn keys(s: &TestServer) -> Keys {
    let mut only = BTreeMap::new();
    let mut others = BTreeMap::new();
    for p in ["ADMIN", "CREATE", "READ", "EDIT", "DELETE"] {
        only.insert(p, service_account_key(s, &format!("only-{p}"), &[p]).await);
        let rest: Vec<&str> = NON_ADMIN.into_iter().filter(|q| *q != p).collect();
        others.insert(p, service_account_key(s, &format!("all-but-{p}"), &rest).await);
    }
    Keys { only, others }
}

fn concrete(path: &str, d: Dialect) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(match (&rest[open + 1..close], d) {
            ("year", _) => "2025",
            ("month", _) => "01",
            ("port", _) => "20001",
            (_, Voltage) => UUID_ID,
            _ => HEX_ID,
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn body(template: Option<&str>, location: &str) -> Option<Value> {
    let t = template?.replace("@UUID", UUID_ID).replace("@ID", HEX_ID).replace("@LOCATION", location).replace("@PUBKEY", crate::PUBKEY);
    Some(serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad body template {t}: {e}")))
}

/// The dialect's error shape for a 403.
fn assert_forbidden_shape(d: Dialect, v: &Value, at: &str) {
    let ok = match d {
        Lambda => v["error"]["code"].is_string() && v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        Native => v["success"] == false && v["error"]["code"] == "forbidden" && v["error"]["message"].is_string(),
        Voltage => v["detail"].as_str().is_some_and(|m| !m.is_empty()),
        Clusters => (v["code"].is_number() || v["code"].is_string()) && v["message"].is_string(),
    };
    assert!(ok, "{at}: 403 body is not in the {d:?} error shape: {v}");
}

async fn request(s: &TestServer, key: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    request_raw(s, key, method, path, body.map(|b| serde_json::to_vec(&b).unwrap())).await
}

async fn request_raw(s: &TestServer, key: Option<&str>, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = s.http.request(m, format!("{}{path}", s.url));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn every_route_of_every_dialect_enforces_its_permission() {
    let s = TestServer::start().await;
    let keys = keys(&s).await;
    let location = nimbus_api::voltage::handlers::location_id("us-east-1");
    let table = table();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (d, method, path) in served_routes() {
        let row = row_for(&table, d, &method, &path).unwrap_or_else(|| panic!("{d:?} {method} {path} has no row"));
        let url = concrete(&path, d);
        let at = format!("{d:?} {method} {path} (needs {})", need_name(row.3));
        let b = || body(row.4, &location);
        let mut check = |cond: bool, what: String| {
            if !cond {
                failures.push(format!("{at}: {what}"));
            }
        };
        if row.3 == Public {
            let (st, v) = request(&s, None, &method, &url, b()).await;
            check(!matches!(st, 401 | 403) && st < 500, format!("without a key: {st} {v}"));
            let (st, v) = request(&s, Some(&keys.others["ADMIN"]), &method, &url, b()).await;
            check(st != 403 && st < 500, format!("with a CREATE,READ,EDIT,DELETE key: {st} {v}"));
        } else {
            let p = need_name(row.3);
            let (st, v) = request(&s, Some(&keys.others[p]), &method, &url, b()).await;
            check(st == 403, format!("a key with every permission but {p}: {st} {v}"));
            if st == 403 {
                assert_forbidden_shape(d, &v, &at);
            }
            if method == "GET" {
                // Likewise for a query that does not parse.
                let junk =
                    format!("{url}{}limit=-x&offset=-x&page=-x&pagination.page=-x&status=%FF", if url.contains('?') { '&' } else { '?' });
                let (st, v) = request(&s, Some(&keys.others[p]), &method, &junk, None).await;
                check(st == 403, format!("a malformed query from a key with every permission but {p}: {st} {v}"));
            }
            if matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
                // The permission is checked before the body is read: junk from a key without it
                // is 403, not a validation error that tells it about the request's shape.
                let (st, v) = request_raw(&s, Some(&keys.others[p]), &method, &url, Some(b"{\"junk\": [".to_vec())).await;
                check(st == 403, format!("a malformed body from a key with every permission but {p}: {st} {v}"));
            }
            let (st, v) = request(&s, Some(&keys.only[p]), &method, &url, b()).await;
            check(!matches!(st, 401 | 403) && st < 500, format!("a key with only {p}: {st} {v}"));
            let (st, v) = request(&s, None, &method, &url, b()).await;
            check(st == 401, format!("without a key: {st} {v}"));
        }
        let (st, v) = request(&s, Some(&s.key), &method, &url, b()).await;
        check(!matches!(st, 401 | 403) && st < 500, format!("the ADMIN key: {st} {v}"));
        checked += 1;
    }
    assert!(failures.is_empty(), "{} of {checked} routes break the permission matrix:\n{}", failures.len(), failures.join("\n"));
    s.shutdown().await;
}
