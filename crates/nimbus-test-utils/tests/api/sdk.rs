//! The Rust SDK (`nimbus_client::NativeClient`) against a real server.

use std::time::Duration;

use nimbus_api_types::native as w;
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
