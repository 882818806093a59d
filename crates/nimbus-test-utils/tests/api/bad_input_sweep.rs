//! Every operation of the four OpenAPI documents, sent malformed input with an ADMIN key:
//! (a) each path parameter replaced by text that is not UTF-8 once percent-decoded (and, beside
//! it, a NUL, non-ASCII text of an id's length and a very long id); (b) a broken query string,
//! and each documented query parameter alone not UTF-8; (c) broken bodies (invalid JSON,
//! truncated, not an object, trailing garbage, invalid UTF-8, wrong types and out-of-range
//! numbers for every documented field, deep nesting, a form body); (d) every method a documented
//! path does not document. Every answer must be a 4xx (never a 5xx, and never a 2xx for a bad
//! path or body), JSON, in the error shape of the operation's dialect. The operations are read
//! from `nimbus_api::openapi::documents()`, so a new route is swept as soon as it is documented.
//! Before the dialects' own path and query extractors, 348 of these requests got axum's
//! plain-text 400, a lossy U+FFFD reading of the query, or an empty 405.

use std::collections::BTreeSet;

use nimbus_api::openapi::{documents, render};
use nimbus_test_utils::TestServer;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Lambda,
    Native,
    Voltage,
    Clusters,
}

impl Dialect {
    fn of(document: &str) -> Dialect {
        match document {
            "lambda" => Dialect::Lambda,
            "native" => Dialect::Native,
            "voltage" => Dialect::Voltage,
            "clusters" => Dialect::Clusters,
            other => panic!("no dialect for document {other}"),
        }
    }

    /// A well-formed id that names nothing, for the cases where the path is not what is broken.
    fn made_up_id(self) -> &'static str {
        match self {
            Dialect::Lambda | Dialect::Native => "0123456789abcdef0123456789abcdef",
            Dialect::Voltage | Dialect::Clusters => "01234567-89ab-cdef-0123-456789abcdef",
        }
    }

    /// Why `body` is not an error in this dialect's shape, if it is not.
    fn shape_problem(self, body: &Value) -> Option<&'static str> {
        let text = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
        let ok = match self {
            // Seed 000 / the Lambda reference: {"error": {"code", "message", "suggestion"?}}.
            Dialect::Lambda => body["error"]["code"].is_string() && text(&body["error"]["message"]),
            // Seed 001: {"success": false, "error": {"code", "message", "details"?}, "metadata"}.
            Dialect::Native => {
                body["success"] == json!(false)
                    && body["error"]["code"].is_string()
                    && text(&body["error"]["message"])
                    && body["metadata"]["request_id"].is_string()
            }
            // Seed 004 (FastAPI): {"detail": "<message>"} or {"detail": [{"loc", "msg", "type"}]}.
            Dialect::Voltage => match &body["detail"] {
                Value::String(s) => !s.is_empty(),
                Value::Array(issues) => {
                    !issues.is_empty()
                        && issues.iter().all(|i| i["loc"].as_array().is_some_and(|l| !l.is_empty()) && text(&i["msg"]) && text(&i["type"]))
                }
                _ => false,
            },
            // Seed 003 (grpc-gateway): {"code": <gRPC code>, "message"}.
            Dialect::Clusters => body["code"].is_i64() && text(&body["message"]),
        };
        (!ok).then_some(match self {
            Dialect::Lambda => "not Lambda's {error: {code, message}}",
            Dialect::Native => "not the native {success: false, error: {code, message}, metadata}",
            Dialect::Voltage => "not Voltage Park's {detail}",
            Dialect::Clusters => "not the clusters {code, message}",
        })
    }
}

/// One documented operation.
struct Op {
    dialect: Dialect,
    method: String,
    /// Full path template (`/api/v1/instances/{id}`).
    path: String,
    path_params: Vec<String>,
    query_params: Vec<String>,
    /// Documented properties of the request body, with their JSON types (`None`: not typed).
    body: Option<Vec<(String, Option<String>)>>,
}

impl Op {
    fn at(&self) -> String {
        format!("{:?} {} {}", self.dialect, self.method.to_uppercase(), self.path)
    }

    /// The path with every parameter replaced by `value` (already percent-encoded).
    fn url(&self, s: &TestServer, value: &str) -> String {
        let mut p = self.path.clone();
        for name in &self.path_params {
            p = p.replace(&format!("{{{name}}}"), value);
        }
        format!("{}{p}", s.url)
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => resolve(doc, &doc["components"]["schemas"][name]),
        None => schema,
    }
}

/// The JSON type of a property schema (the first that is not `null`), if it has one.
fn json_type(doc: &Value, schema: &Value) -> Option<String> {
    let schema = resolve(doc, schema);
    match &schema["type"] {
        Value::String(t) if t != "null" => return Some(t.clone()),
        Value::Array(ts) => return ts.iter().filter_map(Value::as_str).find(|t| *t != "null").map(str::to_owned),
        _ => {}
    }
    if schema["enum"].is_array() {
        return Some("string".into());
    }
    for k in ["oneOf", "anyOf", "allOf"] {
        if let Some(t) = schema[k].as_array().and_then(|alts| alts.iter().find_map(|a| json_type(doc, a))) {
            return Some(t);
        }
    }
    schema["properties"].is_object().then(|| "object".into())
}

fn properties(doc: &Value, schema: &Value, out: &mut Vec<(String, Option<String>)>) {
    let schema = resolve(doc, schema);
    if let Some(props) = schema["properties"].as_object() {
        out.extend(props.iter().map(|(k, v)| (k.clone(), json_type(doc, v))));
    }
    for alt in schema["allOf"].as_array().into_iter().flatten() {
        properties(doc, alt, out);
    }
}

fn operations() -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, doc) in documents() {
        let doc: Value = serde_json::from_str(&render(&doc)).unwrap();
        let server = doc["servers"][0]["url"].as_str().unwrap().to_owned();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    continue;
                }
                let params = |kind: &str| -> Vec<String> {
                    op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["in"] == kind)
                        .map(|p| p["name"].as_str().unwrap().to_owned())
                        .collect()
                };
                let body = op["requestBody"]["content"].as_object().and_then(|c| c.values().next()).map(|c| {
                    let mut props = Vec::new();
                    properties(&doc, &c["schema"], &mut props);
                    props
                });
                ops.push(Op {
                    dialect: Dialect::of(name),
                    method: method.clone(),
                    path: format!("{server}{path}"),
                    path_params: params("path"),
                    query_params: params("query"),
                    body,
                });
            }
        }
    }
    ops
}

/// A value of the wrong JSON type for a property of type `ty`.
fn wrong_value(ty: Option<&str>) -> Value {
    match ty {
        Some("string") => json!(12345),
        Some("integer" | "number") => json!("not a number"),
        Some("boolean") => json!("not a boolean"),
        Some("array") => json!({"not": "a list"}),
        Some("object") => json!("not an object"),
        _ => json!([[[]]]),
    }
}

/// Broken bodies for `op`: (label, bytes, content type).
fn broken_bodies(op: &Op) -> Vec<(String, Vec<u8>, Option<&'static str>)> {
    const JSON: Option<&str> = Some("application/json");
    let mut out: Vec<(String, Vec<u8>, Option<&'static str>)> = vec![
        ("empty".into(), b"".to_vec(), JSON),
        ("whitespace only".into(), b" \n\t ".to_vec(), JSON),
        ("unterminated object".into(), b"{".to_vec(), JSON),
        ("truncated".into(), br#"{"name": "x", "region"#.to_vec(), None),
        ("a JSON array".into(), b"[]".to_vec(), JSON),
        ("JSON null".into(), b"null".to_vec(), JSON),
        ("a JSON string".into(), br#""str""#.to_vec(), JSON),
        ("a JSON number".into(), b"42".to_vec(), JSON),
        ("trailing garbage".into(), br#"{} trailing"#.to_vec(), JSON),
        ("two objects".into(), br#"{}{}"#.to_vec(), JSON),
        ("invalid UTF-8".into(), b"{\"name\": \"\xff\xfe\"}".to_vec(), JSON),
        ("a form body".into(), b"name=x&region=us-east-1".to_vec(), Some("application/x-www-form-urlencoded")),
        ("deep nesting".into(), format!("{{\"name\": {}}}", "[".repeat(100_000)).into_bytes(), JSON),
    ];
    let props = op.body.as_deref().unwrap_or_default();
    if !props.is_empty() {
        let wrong: serde_json::Map<String, Value> = props.iter().map(|(k, t)| (k.clone(), wrong_value(t.as_deref()))).collect();
        out.push(("every field of the wrong type".into(), serde_json::to_vec(&wrong).unwrap(), JSON));
        let fields: Vec<String> = props.iter().map(|(k, _)| format!("{}: 340282366920938463463374607431768211456", json!(k))).collect();
        out.push(("every field a number too large".into(), format!("{{{}}}", fields.join(", ")).into_bytes(), JSON));
        let fields: Vec<String> = props.iter().map(|(k, _)| format!("{}: 1e999", json!(k))).collect();
        out.push(("every field a number out of range".into(), format!("{{{}}}", fields.join(", ")).into_bytes(), JSON));
    }
    out
}

struct Sweep<'a> {
    s: &'a TestServer,
    failures: Vec<String>,
    failed_ops: BTreeSet<String>,
    requests: usize,
}

impl Sweep<'_> {
    /// Sends the request and checks the answer: a 4xx (a 2xx too when `may_succeed`), and for
    /// every 4xx a JSON body in the dialect's error shape.
    async fn check(&mut self, op: &Op, case: &str, url: String, body: Option<(Vec<u8>, Option<&str>)>, may_succeed: bool) {
        self.requests += 1;
        let mut rb = self.s.http.request(op.method.to_uppercase().parse().unwrap(), &url).bearer_auth(&self.s.key);
        if let Some((bytes, ct)) = body {
            if let Some(ct) = ct {
                rb = rb.header("content-type", ct);
            }
            rb = rb.body(bytes);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let text = resp.text().await.unwrap_or_default();
        let shown: String = url.chars().take(160).collect();
        let problem = if (200..300).contains(&status) {
            (!may_succeed).then(|| "succeeded".to_owned())
        } else if !(400..500).contains(&status) {
            Some(format!("status {status}"))
        } else if !ct.starts_with("application/json") {
            Some(format!("status {status} with content-type {ct:?}"))
        } else {
            match serde_json::from_str::<Value>(&text) {
                Err(_) => Some(format!("status {status}, body is not JSON")),
                Ok(v) => op.dialect.shape_problem(&v).map(|p| format!("status {status}, {p}")),
            }
        };
        if let Some(p) = problem {
            let body: String = text.chars().take(200).collect();
            self.failures.push(format!("{} [{case}] {shown}: {p}: {body}", op.at()));
            self.failed_ops.insert(op.at());
        }
    }
}

#[tokio::test]
async fn every_operation_answers_malformed_input_in_its_dialect() {
    let s = TestServer::builder().config(|c| c.rate_limits.enabled = false).start().await;
    let ops = operations();
    assert!(ops.len() > 100, "only {} operations documented", ops.len());
    let mut sweep = Sweep { s: &s, failures: Vec::new(), failed_ops: BTreeSet::new(), requests: 0 };
    let long_id = "a".repeat(8192);
    // 32 bytes, the length of an id, in two-byte characters: slicing it by bytes would panic.
    let non_ascii_id = "%C3%A9".repeat(16);
    let empty_object = Some((b"{}".to_vec(), Some("application/json")));
    for op in &ops {
        let needs_body = op.body.is_some();
        // (a) Bad path parameters; only the path is wrong (a body route gets `{}`).
        if !op.path_params.is_empty() {
            for (case, value) in [
                ("invalid UTF-8 in the path", "%ff%fe"),
                ("an overlong UTF-8 encoding in the path", "%c0%af"),
                ("a NUL in the path", "%00x"),
                ("non-ASCII text in the path", non_ascii_id.as_str()),
                ("non-ASCII letters in the path", "%E2%9C%93-%E6%97%A5%E6%9C%AC"),
                ("a very long path parameter", long_id.as_str()),
            ] {
                sweep.check(op, case, op.url(&s, value), needs_body.then(|| empty_object.clone()).flatten(), false).await;
            }
        }
        let url = op.url(&s, op.dialect.made_up_id());
        // (b) A broken query string: every documented parameter not UTF-8 and repeated, plus
        // parameters no route has. Routes with a query must refuse it; the others may ignore it.
        let query: String = op.query_params.iter().map(|p| format!("{p}=%ff%fe&{p}=-1&")).collect();
        let query = format!("?{query}limit=%ff&page_size=-1&x[=");
        let has_query = !op.query_params.is_empty();
        sweep.check(op, "broken query", format!("{url}{query}"), None, !has_query && !needs_body).await;
        // Each documented parameter alone, not UTF-8 once decoded (lossy decoding would read
        // it as U+FFFD and answer as if it were a real value).
        for p in &op.query_params {
            sweep.check(op, &format!("{p} not UTF-8"), format!("{url}?{p}=%ff%fe"), None, false).await;
        }
        // (c) Broken bodies.
        if needs_body {
            for (case, bytes, ct) in broken_bodies(op) {
                sweep.check(op, &case, url.clone(), Some((bytes, ct)), false).await;
            }
        }
    }
    // (d) Every method a documented path does not document: 405 (or, where an undocumented
    // alias serves it, that route's answer to a request without a body), in the dialect's shape.
    let mut paths: std::collections::BTreeMap<&str, (&Op, Vec<&str>)> = Default::default();
    for op in &ops {
        paths.entry(op.path.as_str()).or_insert((op, Vec::new())).1.push(op.method.as_str());
    }
    for (op, served) in paths.values() {
        for m in ["get", "post", "put", "patch", "delete"].into_iter().filter(|m| !served.contains(m)) {
            let other = Op {
                dialect: op.dialect,
                method: m.to_owned(),
                path: op.path.clone(),
                path_params: op.path_params.clone(),
                query_params: Vec::new(),
                body: None,
            };
            // (Lambda serves `GET /filesystems` beside the documented `GET /file-systems`.)
            sweep.check(&other, "undocumented method", other.url(&s, op.dialect.made_up_id()), None, m == "get").await;
        }
    }
    let n = sweep.failures.len();
    let report = sweep.failures.join("\n");
    let failed_ops = sweep.failed_ops.len();
    assert!(
        sweep.failures.is_empty(),
        "{n} of {} malformed requests got the wrong answer, on {failed_ops} method and path pairs ({} operations are \
         documented):\n{report}",
        sweep.requests,
        ops.len()
    );
    s.shutdown().await;
}
