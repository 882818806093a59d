//! Bad input never yields a 500 or a panic: always a 4xx in Lambda's error shape.

use nimbus_test_utils::TestServer;
use serde_json::{json, Value};

use crate::{add_key, assert_error};

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
