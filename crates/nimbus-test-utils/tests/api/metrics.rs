//! Instance metrics: agents' samples reach the range query and the WebSocket stream; a host can
//! only write samples of its own instances; another org sees none of them.

use std::time::Duration;

use futures_util::StreamExt;
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::add_key;

#[tokio::test]
async fn samples_flow_to_the_query_and_the_stream() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let id = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/instances/{id}"), "running").await;

    // The stream: a text frame per new sample (the sim driver reports a fixed load).
    let url = format!("{}/v1/instances/{id}/metrics/stream", s.url.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", s.key).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a sample within 5 s").unwrap().unwrap();
    let Message::Text(text) = frame else { panic!("{frame:?}") };
    let p: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(p["cpu_millicores"], nimbus_driver::sim::SIM_CPU_MILLICORES);
    assert_eq!(p["memory_bytes"], nimbus_driver::sim::SIM_MEMORY_BYTES);
    let second = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("another sample a second later").unwrap().unwrap();
    let Message::Text(text2) = second else { panic!("{second:?}") };
    let p2: Value = serde_json::from_str(&text2).unwrap();
    assert!(p2["timestamp"].as_str().unwrap() > p["timestamp"].as_str().unwrap(), "{p} then {p2}");
    drop(ws);

    let m = s.nexpect("GET", &format!("/instances/{id}/metrics?step=1"), None, 200).await;
    let points = m["points"].as_array().unwrap();
    assert!(points.len() >= 2, "{m}");
    assert!(points.iter().all(|p| p["cpu_millicores"] == 250));
    assert_eq!(m["step_seconds"], 1);
    let m = s.nexpect("GET", &format!("/instances/{id}/metrics?step=3600"), None, 200).await;
    assert!(m["points"].as_array().unwrap().len() <= 2, "one hour in one-hour steps: {m}");

    for (q, field) in [("step=0", "step"), ("step=x", "step"), ("from=yesterday", "from"), ("colour=red", "colour")] {
        let e = s.nexpect("GET", &format!("/instances/{id}/metrics?{q}"), None, 400).await;
        assert_eq!(e["error"]["details"]["field"], field, "{q}: {e}");
    }
    let e = s.nexpect("GET", &format!("/instances/{id}/metrics?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z&step=1"), None, 400).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("larger step"), "{e}");
    // A plain GET on the stream gets the native error shape, not a bare 4xx.
    let e = s.nexpect("GET", &format!("/instances/{id}/metrics/stream"), None, 400).await;
    assert_eq!(e["error"]["code"], "invalid_request");

    let (_, other) = s.org_with_key("metrics-other", "ADMIN").await;
    let (st, _) = s.native(&other, "GET", &format!("/instances/{id}/metrics"), None).await;
    assert_eq!(st, 404);

    // A host can only write its own instances' samples.
    let stranger = nimbus_core::ids::HostId::generate();
    let sample = nimbus_proto::MetricSample {
        instance_id: id.clone(),
        at: s.control.now() + 10_000_000,
        cpu_millicores: 99_999,
        ..Default::default()
    };
    assert_eq!(nimbus_control::metrics::ingest(&s.control, &stranger, vec![sample]).await.unwrap(), 0);
}

/// A stream does not outlive its key: once the key is revoked the server closes the socket with
/// 1008 (policy violation) within seconds, and pushes nothing more.
#[tokio::test]
async fn the_stream_closes_when_its_key_is_revoked() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let id = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/instances/{id}"), "running").await;
    let k = s.nexpect("POST", "/account/api-keys", Some(json!({"name": "watcher", "permissions": ["READ"]})), 201).await;
    let (watcher, watcher_id) = (k["secret"].as_str().unwrap().to_owned(), k["id"].as_str().unwrap().to_owned());

    let url = format!("{}/v1/instances/{id}/metrics/stream", s.url.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {watcher}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a sample within 5 s").unwrap().unwrap();
    assert!(matches!(first, Message::Text(_)), "{first:?}");

    s.nexpect("DELETE", &format!("/account/api-keys/{watcher_id}"), None, 200).await;
    let revoked = std::time::Instant::now();
    let close = loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        match next.expect("closed within 5 s of the revocation") {
            Some(Ok(Message::Text(t))) => assert!(revoked.elapsed() < Duration::from_millis(500), "a sample pushed after revocation: {t}"),
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("the stream ended without a close frame: {other:?}"),
        }
    };
    assert!(revoked.elapsed() <= Duration::from_secs(5), "{:?}", revoked.elapsed());
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(frame.reason.contains("revoked"), "{frame:?}");
    s.shutdown().await;
}
