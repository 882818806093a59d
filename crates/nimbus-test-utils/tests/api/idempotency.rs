//! Idempotency keys in every dialect: replay byte for byte, refuse a reused key with another
//! body, and make exactly one instance out of ten concurrent identical launches.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::add_key;

async fn post(s: &TestServer, key: &str, path: &str, idem: &str, body: &serde_json::Value) -> (u16, bool, Vec<u8>) {
    let r = s
        .http
        .post(s.lambda(path))
        .bearer_auth(key)
        .header("idempotency-key", idem)
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (st, replayed, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_mismatch_and_concurrent_creates() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 0)).start().await;
    add_key(&s, "k").await;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});

    let (st1, rep1, body1) = post(&s, &s.key, "/instance-operations/launch", "launch-1", &launch).await;
    let (st2, rep2, body2) = post(&s, &s.key, "/instance-operations/launch", "launch-1", &launch).await;
    assert_eq!((st1, rep1, st2, rep2), (200, false, 200, true));
    assert_eq!(body1, body2, "the replay is byte for byte");
    let list = s.expect("GET", "/instances", None, 200).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "one launch, not two");

    let mut other = launch.clone();
    other["name"] = json!("different");
    let (st, _, body) = post(&s, &s.key, "/instance-operations/launch", "launch-1", &other).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((st, v["error"]["code"].as_str()), (422, Some("global/idempotency-key-reused")));

    // Ten concurrent identical creates with one key make one instance.
    let futs: Vec<_> = (0..10).map(|_| post(&s, &s.key, "/instance-operations/launch", "launch-2", &launch)).collect();
    let results = futures_util::future::join_all(futs).await;
    for (st, _, body) in &results {
        assert!(*st == 200 || *st == 409, "{st} {}", String::from_utf8_lossy(body));
    }
    let ok_bodies: Vec<&Vec<u8>> = results.iter().filter(|r| r.0 == 200).map(|r| &r.2).collect();
    assert!(!ok_bodies.is_empty());
    assert!(ok_bodies.windows(2).all(|w| w[0] == w[1]), "every success carries the same instance id");
    let list = s.expect("GET", "/instances", None, 200).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "exactly one more instance");

    // Keys are scoped per API key: another key may use the same string.
    let (_, other_key) = s.org_with_key("org-a", "ADMIN").await;
    let (st, rep, _) = post(&s, &other_key, "/instance-operations/launch", "launch-1", &launch).await;
    assert_eq!((st, rep), (200, false));

    // The native dialect: a replayed PATCH, and the native error shape for a reused key.
    let id = s.expect("GET", "/instances", None, 200).await["data"][0]["id"].as_str().unwrap().to_owned();
    let patch = |name: &str| {
        s.http
            .patch(format!("{}/v1/instances/{id}", s.url))
            .bearer_auth(&s.key)
            .header("idempotency-key", "patch-1")
            .body(serde_json::to_vec(&json!({"name": name})).unwrap())
            .send()
    };
    let r1 = patch("a").await.unwrap();
    assert_eq!(r1.status().as_u16(), 200);
    let r2 = patch("a").await.unwrap();
    assert_eq!(r2.headers()["idempotent-replayed"], "true");
    let r3 = patch("b").await.unwrap();
    assert_eq!(r3.status().as_u16(), 422);
    let v: serde_json::Value = r3.json().await.unwrap();
    assert_eq!((v["success"].as_bool(), v["error"]["code"].as_str()), (Some(false), Some("idempotency_key_reused")));

    let bad =
        s.http.post(s.lambda("/ssh-keys")).bearer_auth(&s.key).header("idempotency-key", "x".repeat(300)).body("{}").send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    s.shutdown().await;
}
