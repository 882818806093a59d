//! The Rust SDK (`nimbus_client::NativeClient`) against a real server.

use std::time::Duration;

use nimbus_api_types::native as w;
use nimbus_api_types::voltage as vw;
use nimbus_client::{ClientError, ListParams, NativeClient};
use nimbus_test_utils::{sim_host, TestServer};

use crate::add_key;

#[tokio::test]
async fn native_client_covers_the_instance_lifecycle_and_storage() {
    let s = TestServer::builder().config(|c| c.webhooks.allow_private_targets = true).host("us-east-1", sim_host("h", 8, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let c = NativeClient::new(&s.url, &s.key);

    let req = w::InstanceCreate {
        name: Some("sdk".into()),
        instance_type: "cpu_1x_small".into(),
        region: "us-east-1".into(),
        ssh_keys: vec![key_id.clone()],
        ..Default::default()
    };
    let a = c.instance_create(&req, Some("sdk-create-1")).await.unwrap();
    let again = c.instance_create(&req, Some("sdk-create-1")).await.unwrap();
    assert_eq!(a.id, again.id, "same idempotency key, same instance");
    let ready = c.wait_until_ready(&a.id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(ready.status, "running");

    c.instance_stop(&a.id).await.unwrap();
    c.wait_for_status(&a.id, "stopped", Duration::from_secs(15)).await.unwrap();
    assert_eq!(c.instance_resize(&a.id, "cpu_2x_medium").await.unwrap().vcpus, 2);
    c.instance_start(&a.id).await.unwrap();
    c.wait_until_ready(&a.id, Duration::from_secs(15)).await.unwrap();

    let v = c.volume_create(&w::VolumeCreate { name: "sdkvol".into(), region: "us-east-1".into(), size_gib: 2 }).await.unwrap();
    assert_eq!(c.volume_attach(&v.id, &a.id).await.unwrap().instance_id.as_deref(), Some(a.id.as_str()));
    let page =
        c.volumes(&ListParams { limit: Some(1), filters: vec![("name".into(), "sdkvol".into())], ..Default::default() }).await.unwrap();
    assert_eq!((page.items.len(), page.pagination.map(|p| p.total_items)), (1, Some(1)));

    // Errors carry the native code; waits give up early on a terminated instance.
    match c.instance_resize(&a.id, "cpu_4x_large").await {
        Err(ClientError::Api { status: 409, code, .. }) => assert_eq!(code, "conflict"),
        other => panic!("resize of a running instance: {other:?}"),
    }
    c.volume_detach(&v.id).await.unwrap();
    c.instance_delete(&a.id).await.unwrap();
    match c.wait_until_ready(&a.id, Duration::from_secs(15)).await {
        Err(ClientError::Wait { last, .. }) => assert!(last.starts_with("terminat"), "{last}"),
        other => panic!("waiting on a terminated instance: {other:?}"),
    }
    let hook = c
        .webhook_create(&nimbus_api_types::webhooks::WebhookCreate {
            // Loopback, refused: this test never sends traffic off the machine.
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["instance.*".into()],
            secret: None,
        })
        .await
        .unwrap();
    assert!(hook.secret.is_some(), "a generated secret is shown once");
    assert_eq!(c.webhooks(&ListParams::default()).await.unwrap().items.len(), 1);
    c.webhook_delete(&hook.id).await.unwrap();
    let vpn = c.vpn_create(&w::VpnCreate { name: "sdk".into(), region: "us-east-1".into() }).await.unwrap();
    assert_eq!(nimbus_core::wireguard::public_key(&vpn.client_private_key).as_deref(), Some(vpn.vpn.client_public_key.as_str()));
    c.vpn_delete(&vpn.vpn.id).await.unwrap();
    let m = c.instance_metrics(&a.id, 60).await.unwrap();
    assert_eq!(m.step_seconds, 60);
    let q = c.quota().await.unwrap();
    assert!(q.iter().any(|x| x.resource == "volumes" && x.used == 1));
    assert_eq!(c.account().await.unwrap().id, s.org.id.to_string());
}

/// A proxy in front of a real server that answers the first `refusals` launches with
/// `429 Retry-After: 1` (as a rate limiter would) and forwards everything else; it counts the
/// launches it forwarded.
async fn refusing_proxy(
    upstream: String,
    refusals: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let seen = Arc::new(AtomicUsize::new(0));
    let forwarded = Arc::new(AtomicUsize::new(0));
    let (s2, f2) = (seen.clone(), forwarded.clone());
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (seen, forwarded, http, upstream) = (s2.clone(), f2.clone(), http.clone(), upstream.clone());
        async move {
            use axum::response::IntoResponse;
            let launch = req.method() == axum::http::Method::POST && req.uri().path().ends_with("/instance-operations/launch");
            if launch && seen.fetch_add(1, Ordering::SeqCst) < refusals {
                return (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    r#"{"error":{"code":"global/quota-exceeded","message":"slow down"}}"#,
                )
                    .into_response();
            }
            if launch {
                forwarded.fetch_add(1, Ordering::SeqCst);
            }
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            let mut rb = http.request(parts.method.clone(), format!("{upstream}{}", parts.uri)).body(bytes);
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    rb = rb.header(k, v);
                }
            }
            let resp = rb.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            (axum::http::StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen, forwarded)
}

#[tokio::test]
async fn clients_retry_429_honouring_retry_after_without_launching_twice() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    add_key(&s, "k").await;
    let (proxy, seen, forwarded) = refusing_proxy(s.url.clone(), 2).await;
    let c = nimbus_client::LambdaClient::new(&proxy, &s.key);
    let req: nimbus_api_types::lambda::LaunchRequest = serde_json::from_value(serde_json::json!({
        "region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]
    }))
    .unwrap();
    let t = std::time::Instant::now();
    let ids = c.launch(&req).await.unwrap();
    let waited = t.elapsed();
    use std::sync::atomic::Ordering;
    assert_eq!((seen.load(Ordering::SeqCst), forwarded.load(Ordering::SeqCst)), (3, 1), "two refusals, then the third try went through");
    assert!(waited >= Duration::from_secs(2), "Retry-After: 1 was honoured twice ({waited:?})");
    assert_eq!(ids.len(), 1);
    let all = c.instances().await.unwrap();
    assert_eq!(all.len(), 1, "exactly one instance launched");

    // With retries off, the 429 comes back as the API's error.
    let (proxy, _, _) = refusing_proxy(s.url.clone(), 1).await;
    let once =
        nimbus_client::LambdaClient::new(&proxy, &s.key).with_retry(nimbus_client::RetryPolicy { max_attempts: 1, ..Default::default() });
    match once.launch(&req).await {
        Err(ClientError::Api { status: 429, code, .. }) => assert_eq!(code, "global/quota-exceeded"),
        other => panic!("expected the 429: {other:?}"),
    }
}

#[tokio::test]
async fn voltage_client_deploys_powers_and_deletes_a_vm() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 8)).start().await;
    let c = nimbus_client::VoltageClient::new(&s.url, &s.key);
    let presets = c.presets(Some(true)).await.unwrap();
    let preset = presets.iter().find(|p| p.compute_rate_hourly == "3.290000").unwrap().id.clone();
    let key = c.ssh_key_add("laptop", crate::PUBKEY).await.unwrap();
    let req = vw::VmCreateRequest {
        config_id: preset,
        name: "sdk vm".into(),
        organization_ssh_keys: vw::OrgKeys::Selective { ssh_key_ids: vec![key.id] },
        ..Default::default()
    };
    let vm = c.vm_create(&req).await.unwrap().vm_id;
    let ready = c.wait_until_ready(&vm, Duration::from_secs(15)).await.unwrap();
    assert_eq!(ready.port_forwards[0].internal_port, 22);
    assert_eq!(c.all::<vw::VirtualMachine>("/virtual-machines/", 1).await.unwrap().len(), 1);
    assert_eq!(c.vm_power(&vm, "stopped").await.unwrap().status, "stopped");
    c.vm_delete(&vm).await.unwrap();
    // A 422 keeps the field it is about; an unknown id is a plain 404.
    match c.storage_create(&vw::StorageCreateRequest { size_in_gb: 0, name: "x".into(), order_ids: vec![] }).await {
        Err(ClientError::Api { status: 422, code, message }) => {
            assert!(code == "validation_error" && message.contains("size_in_gb"), "{message}")
        }
        other => panic!("expected a validation error: {other:?}"),
    }
    match c.vm("0123456789abcdef0123456789abcdef").await {
        Err(ClientError::Api { status: 404, code, .. }) => assert_eq!(code, "http_404"),
        other => panic!("expected 404: {other:?}"),
    }
}

#[tokio::test]
async fn clusters_client_creates_waits_and_deletes() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    add_key(&s, "k").await;
    let c = nimbus_client::clusters::ClustersClient::new(&s.url, &s.key);
    // The seed's own shape, as JSON, decodes into the client's request type.
    let req: nimbus_api_types::clusters::CreateCluster = serde_json::from_value(serde_json::json!(
        {"name": "sdk", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": 2}, "machine_type": "cpu_1x_small"}}}
    ))
    .unwrap();
    let made = c.create(&req).await.unwrap();
    assert_eq!((made.plan.as_str(), made.regions[0].node_count), ("DEDICATED", Some(2)));
    let ready = c.wait_until_ready(&made.id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(ready.state, "CREATED");
    let nodes = c.nodes(&made.id).await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.status.as_str()).collect::<Vec<_>>(), ["LIVE", "LIVE"]);
    assert_eq!(c.list(false).await.unwrap().iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![made.id.clone()]);
    assert_eq!(c.available_regions("AWS").await.unwrap(), vec!["us-east-1".to_owned()]);
    c.delete(&made.id).await.unwrap();
    assert!(c.list(false).await.unwrap().is_empty());
    match c.get("0123456789abcdef0123456789abcdef").await {
        Err(ClientError::Api { status: 404, code, .. }) => assert_eq!(code, "5", "the gRPC code"),
        other => panic!("expected NOT_FOUND: {other:?}"),
    }
}

/// `NativeClient::pages` walks a list a page at a time in the server's order; `list_all` is the
/// same walk collected.
#[tokio::test]
async fn native_pages_are_walked_one_at_a_time() {
    let s = TestServer::start().await;
    let c = NativeClient::new(&s.url, &s.key);
    for n in ["page-a", "page-b", "page-c", "page-d"] {
        c.api_key_create(&w::ApiKeyCreate { name: n.into(), permissions: vec!["READ".into()], expires_at: None, expires_in_days: None })
            .await
            .unwrap();
    }
    let by_name = ListParams { limit: Some(2), sort: Some("name".into()), ..Default::default() };
    let mut pages = c.pages::<w::ApiKey>("/account/api-keys", &by_name);
    let mut sizes = Vec::new();
    let mut names = Vec::new();
    while let Some(items) = pages.next().await.unwrap() {
        sizes.push(items.len());
        names.extend(items.into_iter().map(|k| k.name));
    }
    assert!(pages.next().await.unwrap().is_none(), "a finished cursor stays finished");
    // The four keys and the server's own admin key: pages of 2, 2 and 1, in name order.
    assert_eq!(sizes, [2, 2, 1]);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(["page-a", "page-b", "page-c", "page-d"].iter().all(|n| names.iter().any(|x| x == n)), "{names:?}");
    let all: Vec<w::ApiKey> = c.list_all("/account/api-keys", &by_name).await.unwrap();
    assert_eq!(all.into_iter().map(|k| k.name).collect::<Vec<_>>(), names);
}
