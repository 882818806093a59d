//! Bad input never yields a 500 or a panic: always a 4xx in Lambda's error shape; bad SSH public
//! keys are refused, not taken as "generate one"; errors name the field at fault.

use nimbus_test_utils::TestServer;
use serde_json::{json, Value};

use crate::{add_key, assert_error, PUBKEY};

#[tokio::test]
async fn junk_bodies_get_lambda_errors() {
    let s = TestServer::start().await;
    add_key(&s, "k").await;
    let posts = [
        "/instance-operations/launch",
        "/instance-operations/restart",
        "/instance-operations/terminate",
        "/ssh-keys",
        "/filesystems",
        "/firewall-rulesets",
        "/instances/0123456789abcdef0123456789abcdef",
    ];
    let junk: Vec<&[u8]> = vec![
        b"",
        b"{",
        b"null",
        b"[]",
        b"42",
        b"\"str\"",
        b"{}",
        b"{\"name\": 5}",
        b"{\"region_name\": [], \"instance_type_name\": {}, \"ssh_key_names\": \"k\"}",
        b"{\"instance_ids\": \"abc\"}",
        b"{\"instance_ids\": [1, 2]}",
        b"\xff\xfe\x00garbage",
        b"{\"name\": \"\\u0000\"}",
    ];
    for p in posts {
        for body in &junk {
            let resp = s.http.post(s.lambda(p)).bearer_auth(&s.key).body(body.to_vec()).send().await.unwrap();
            let st = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            assert!((400..500).contains(&st), "{p} {:?} -> {st} {v}", String::from_utf8_lossy(body));
            assert!(v["error"]["code"].is_string(), "{p} {:?} -> {v}", String::from_utf8_lossy(body));
        }
    }
    for (m, p) in [("PUT", "/firewall-rules"), ("PATCH", "/firewall-rulesets/global")] {
        for body in &junk[..8] {
            let resp = s.http.request(m.parse().unwrap(), s.lambda(p)).bearer_auth(&s.key).body(body.to_vec()).send().await.unwrap();
            let st = resp.status().as_u16();
            assert!((400..500).contains(&st) || (st == 200 && body == b"{}"), "{m} {p} -> {st}");
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn invalid_values_and_unknown_ids() {
    let s = TestServer::start().await;
    add_key(&s, "k").await;
    let base = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let bad = vec![
        (with("name", json!("x".repeat(65))), 400, "global/invalid-parameters"),
        (with("hostname", json!("bad_host!")), 400, "global/invalid-parameters"),
        (with("region_name", json!("mars-1")), 400, "global/invalid-parameters"),
        (with("ssh_key_names", json!([])), 400, "global/invalid-parameters"),
        (with("ssh_key_names", json!(["k", "k2"])), 400, "global/invalid-parameters"),
        (with("quantity", json!(0)), 400, "global/invalid-parameters"),
        (with("quantity", json!(100_000)), 400, "global/invalid-parameters"),
        (with("user_data", json!("x".repeat(1024 * 1024 + 1))), 400, "global/invalid-parameters"),
        (with("tags", json!([{"key": "", "value": "x"}])), 400, "global/invalid-parameters"),
        (with("instance_type_name", json!("gpu_99x_unobtainium")), 404, "global/object-does-not-exist"),
        (with("ssh_key_names", json!(["nope"])), 404, "global/object-does-not-exist"),
        (with("file_system_names", json!(["nope"])), 404, "global/object-does-not-exist"),
        (with("file_system_mounts", json!([{"file_system_id": "../../etc", "mount_point": "/x"}])), 404, "global/object-does-not-exist"),
        (with("firewall_rulesets", json!([{"id": "nope"}])), 404, "global/object-does-not-exist"),
        (with("image", json!({"id": "nope"})), 404, "global/object-does-not-exist"),
    ];
    for (body, st, code) in bad {
        let (got, v) = s.call(&s.key, "POST", "/instance-operations/launch", Some(body.clone())).await;
        assert_error(got, &v, st, code);
    }
    // Nothing was launched by any of them.
    assert_eq!(s.expect("GET", "/instances", None, 200).await["data"], json!([]));

    for id in ["nope", "0123456789abcdef0123456789abcdef", "..%2F..%2Fetc%2Fpasswd", "%00", "../../etc/passwd"] {
        // (The HTTP client resolves a literal "../" itself, so the path form is percent-encoded.)
        let path_id = id.replace("../", "..%2F");
        let (st, v) = s.call(&s.key, "GET", &format!("/instances/{path_id}"), None).await;
        assert_error(st, &v, 404, "global/object-does-not-exist");
        let (st, v) = s.call(&s.key, "POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id]}))).await;
        assert_error(st, &v, 404, "global/object-does-not-exist");
    }
    let (st, v) = s.call(&s.key, "POST", "/instance-operations/terminate", Some(json!({"instance_ids": []}))).await;
    assert_error(st, &v, 400, "global/invalid-parameters");

    // Oversized bodies are refused cleanly.
    let big = vec![b' '; 4 * 1024 * 1024];
    let resp = s.http.post(s.lambda("/ssh-keys")).bearer_auth(&s.key).body(big).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Unknown endpoints and methods answer in Lambda's shape too.
    let (st, v) = s.call(&s.key, "GET", "/no-such-thing", None).await;
    assert_error(st, &v, 404, "global/object-does-not-exist");
    let (st, v) = s.call(&s.key, "DELETE", "/instances", None).await;
    assert_error(st, &v, 405, "global/invalid-parameters");
    s.shutdown().await;
}

/// Only an absent (or `null`) `public_key` asks Lambda to generate a pair; blank text or text
/// with control characters is `global/invalid-parameters` (the reference gives `public_key` a
/// length of 1 to 4096), and nothing is stored. Voltage Park's organization keys refuse the same.
#[tokio::test]
async fn ssh_public_keys_must_be_keys() {
    let s = TestServer::builder().start().await;
    let bad = ["", "\u{0}", "a\u{0}b", "\n", "   ", "\t", "\r\n"].into_iter().map(str::to_owned).chain([
        format!("{PUBKEY}\u{0}"),
        format!("{PUBKEY} \u{1b}[31mred"),
        format!("{PUBKEY}\u{7f}"),
        PUBKEY.replacen(' ', "\u{0}", 1),
    ]);
    for (i, pk) in bad.enumerate() {
        let (st, v) = s.call(&s.key, "POST", "/ssh-keys", Some(json!({"name": format!("k{i}"), "public_key": pk}))).await;
        assert_error(st, &v, 400, "global/invalid-parameters");
        assert!(v["data"].is_null(), "{pk:?}: {v}");
        let (st, v) = vp(&s, "POST", "/organization/ssh-keys", json!({"name": format!("key {i}"), "content": pk})).await;
        assert_eq!((st, &v["detail"][0]["loc"]), (422, &json!(["body", "content"])), "{pk:?}: {v}");
    }
    assert_eq!(s.expect("GET", "/ssh-keys", None, 200).await["data"], json!([]), "nothing was stored");
    // A key read from a .pub file ends in a newline; it is stored trimmed.
    let v = s.expect("POST", "/ssh-keys", Some(json!({"name": "from-file", "public_key": format!("{PUBKEY}\n")})), 200).await;
    assert_eq!((v["data"]["public_key"].as_str(), v["data"]["private_key"].as_str()), (Some(PUBKEY), None));
    for body in [json!({"name": "gen1"}), json!({"name": "gen2", "public_key": null})] {
        let v = s.expect("POST", "/ssh-keys", Some(body.clone()), 200).await;
        assert!(v["data"]["private_key"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")), "{body}: {v}");
    }
    s.shutdown().await;
}

/// A native body that does not deserialize names the field in `details` as seed 001 shows
/// (`{field, value, allowed_values}`); so do a bad path parameter and a bad query parameter.
#[tokio::test]
async fn native_errors_name_the_field() {
    let s = TestServer::builder().start().await;
    let cases = [
        ("POST", "/instances", json!({"region": "us-east-1", "ssh_keys": ["x"]}), "instance_type", None),
        ("POST", "/instances", json!({"instance_type": 5, "region": "us-east-1", "ssh_keys": ["x"]}), "instance_type", Some("5")),
        (
            "POST",
            "/instances",
            json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": ["x"], "firewall": {"ruleset_ids": ["a", 7]}}),
            "firewall.ruleset_ids[1]",
            Some("7"),
        ),
        ("POST", "/instances", json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": "x"}), "ssh_keys", Some("x")),
        ("POST", "/volumes", json!({"name": "v", "region": "us-east-1", "size_gib": "big"}), "size_gib", Some("big")),
        ("POST", "/volumes", json!({"name": "v", "region": "us-east-1", "size_gib": 1e30}), "size_gib", None),
        ("POST", "/volumes/0123456789abcdef0123456789abcdef/resize", json!({}), "size_gib", None),
        ("PATCH", "/account", json!({"name": ["x"]}), "name", Some("[\"x\"]")),
    ];
    for (method, path, body, field, value) in cases {
        let (st, v) = s.native(&s.key, method, path, Some(body.clone())).await;
        assert_eq!((st, v["success"].as_bool(), v["error"]["code"].as_str()), (400, Some(false), Some("invalid_request")), "{body}: {v}");
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
        if let Some(value) = value {
            assert_eq!(v["error"]["details"]["value"], value, "{body}: {v}");
        }
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(field)), "{body}: {v}");
    }
    // An unknown field: the fields that exist are the allowed values.
    let (st, v) =
        s.native(&s.key, "POST", "/volumes", Some(json!({"name": "v", "region": "us-east-1", "size_gib": 1, "colour": "red"}))).await;
    assert_eq!((st, &v["error"]["details"]["field"]), (400, &json!("colour")), "{v}");
    assert_eq!(v["error"]["details"]["allowed_values"], json!(["name", "region", "size_gib"]), "{v}");
    // Malformed JSON names no field.
    let resp = s.http.post(format!("{}/v1/volumes", s.url)).bearer_auth(&s.key).body("{\"name\": ").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!((v["error"]["code"].as_str(), v["error"]["details"].is_null()), (Some("invalid_request"), true), "{v}");
    // Path and query parameters.
    let (st, v) = s.native(&s.key, "GET", "/instances/%ff%fe", None).await;
    assert_eq!((st, &v["error"]["code"], &v["error"]["details"]["field"]), (400, &json!("invalid_request"), &json!("id")), "{v}");
    let (st, v) = s.native(&s.key, "GET", "/instances?status=%ff", None).await;
    assert_eq!((st, &v["error"]["details"]["field"], &v["error"]["details"]["value"]), (400, &json!("status"), &json!("%ff")), "{v}");
    s.shutdown().await;
}

/// Bad path parameters and bodies in the other dialects name what is wrong, in their shapes.
#[tokio::test]
async fn other_dialects_name_the_bad_parameter() {
    let s = TestServer::builder().start().await;
    let (st, v) = s.call(&s.key, "GET", "/instances/%ff%fe", None).await;
    assert_error(st, &v, 400, "global/invalid-parameters");
    assert!(v["error"]["message"].as_str().unwrap().contains("id"), "{v}");
    let (st, v) = s.call(&s.key, "POST", "/ssh-keys", Some(json!({"public_key": PUBKEY}))).await;
    assert_error(st, &v, 400, "global/invalid-parameters");
    assert!(v["error"]["message"].as_str().unwrap().contains("name"), "{v}");
    let (st, v) = s.call(&s.key, "GET", "/instances?cluster_id=%ff", None).await;
    assert_error(st, &v, 400, "global/invalid-parameters");

    let (st, v) = vp(&s, "GET", "/virtual-machines/%ff%fe", Value::Null).await;
    assert_eq!((st, &v["detail"][0]["loc"]), (422, &json!(["path", "virtual_machine_id"])), "{v}");
    let (st, v) = vp(&s, "POST", "/organization/ssh-keys", json!({"content": PUBKEY})).await;
    assert_eq!((st, &v["detail"][0]["loc"]), (422, &json!(["body", "name"])), "{v}");
    let (st, v) = vp(&s, "POST", "/bare-metal", json!({"ssh_keys": [PUBKEY, 5]})).await;
    assert_eq!((st, &v["detail"][0]["loc"]), (422, &json!(["body", "ssh_keys", 1])), "{v}");

    let (st, v) = s.call(&s.key, "GET", "/clusters/%ff%fe", None).await;
    assert_eq!((st, &v["code"]), (400, &json!(3)), "{v}");
    let (st, v) = s.call(&s.key, "GET", "/clusters?pagination%2Elimit=%ff", None).await;
    assert_eq!((st, &v["code"]), (400, &json!(3)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("pagination.limit"), "{v}");
    let (st, v) = s.call(&s.key, "POST", "/clusters", Some(json!([]))).await;
    assert_eq!((st, &v["code"]), (400, &json!(3)), "an array is not a cluster: {v}");
    s.shutdown().await;
}

/// An unknown endpoint is 404 and a method a path does not serve is 405, each in the shape of the
/// dialect whose paths it is among (Voltage Park and clusters share `/api/v1` with Lambda).
#[tokio::test]
async fn unknown_endpoints_and_methods_answer_in_their_dialect() {
    let s = TestServer::builder().start().await;
    let lambda: fn(&Value) -> bool = |v| v["error"]["code"].is_string();
    let native: fn(&Value) -> bool = |v| v["success"] == json!(false) && v["error"]["code"].is_string();
    let voltage: fn(&Value) -> bool = |v| v["detail"].is_string();
    let clusters: fn(&Value) -> bool = |v| v["code"].is_i64() && v["message"].is_string();
    let cases = [
        ("GET", "/api/v1/no-such-thing", 404, lambda),
        ("DELETE", "/api/v1/instances", 405, lambda),
        ("GET", "/v1/no-such-thing", 404, native),
        ("PUT", "/v1/instances", 405, native),
        ("GET", "/api/v1/virtual-machines/x/y/z", 404, voltage),
        ("PUT", "/api/v1/locations/", 405, voltage),
        ("DELETE", "/api/v1/organization/ssh-keys", 405, voltage),
        ("GET", "/api/v1/clusters/x/y/z", 404, clusters),
        ("DELETE", "/api/v1/clusters", 405, clusters),
        ("POST", "/api/v1/clusters/available-regions", 405, clusters),
    ];
    for (method, path, status, shape) in cases {
        let resp = s.http.request(method.parse().unwrap(), format!("{}{path}", s.url)).bearer_auth(&s.key).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert!(status != 405 || resp.headers().contains_key("allow"), "{method} {path}: a 405 names the allowed methods");
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(shape(&v), "{method} {path}: {v}");
    }
    s.shutdown().await;
}

/// A Voltage Park call (`/api/v1{path}`) with the admin key; `null` sends no body.
async fn vp(s: &TestServer, method: &str, path: &str, body: Value) -> (u16, Value) {
    s.send(&s.key, method, format!("{}/api/v1{path}", s.url), (!body.is_null()).then_some(body)).await
}
