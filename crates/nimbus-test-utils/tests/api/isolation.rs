//! Tenant isolation: org B's key gets 404 for every org A object on every endpoint, and never
//! sees A's objects in a list. Permissions: a read-only key cannot change anything.

use nimbus_test_utils::TestServer;
use serde_json::json;

use crate::{add_key, assert_error, launch};

#[tokio::test]
async fn other_org_sees_nothing_and_touches_nothing() {
    let s = TestServer::start().await;
    // Org A's objects.
    let key = add_key(&s, "a-key").await;
    let kid = key["id"].as_str().unwrap().to_owned();
    let iid = launch(&s, &s.key, "cpu_1x_small", "a-key").await;
    s.wait_status(&s.key, &iid, "active").await;
    let fs = s.expect("POST", "/filesystems", Some(json!({"name": "a-fs", "region": "us-east-1"})), 200).await;
    let fid = fs["data"]["id"].as_str().unwrap().to_owned();
    let rs = s.expect("POST", "/firewall-rulesets", Some(json!({"name": "a-rs", "region": "us-east-1", "rules": []})), 200).await;
    let rid = rs["data"]["id"].as_str().unwrap().to_owned();
    s.expect("PUT", "/firewall-rules", Some(json!({"data": []})), 200).await;

    let (_, b) = s.org_with_key("org-b", "ADMIN").await;
    // Lists are empty for B.
    for path in ["/instances", "/ssh-keys", "/file-systems", "/filesystems", "/firewall-rulesets"] {
        let (st, v) = s.call(&b, "GET", path, None).await;
        assert_eq!(st, 200, "{path}: {v}");
        assert_eq!(v["data"], json!([]), "{path} leaks org A objects to org B: {v}");
    }
    let (_, v) = s.call(&b, "GET", "/firewall-rules", None).await;
    assert_eq!(v["data"][0]["port_range"], json!([22, 22]), "B has its own global rules, not A's empty set");
    let (_, v) = s.call(&b, "GET", "/audit-events", None).await;
    for e in v["data"]["events"].as_array().unwrap() {
        let r = e["resource_lrns"][0].as_str().unwrap();
        assert!(![&iid, &kid, &fid, &rid].iter().any(|id| r.contains(id.as_str())), "audit leak: {e}");
    }

    // Every per-object endpoint answers 404 for A's ids.
    let cases = vec![
        ("GET", format!("/instances/{iid}"), None),
        ("POST", format!("/instances/{iid}"), Some(json!({"name": "stolen"}))),
        ("POST", "/instance-operations/restart".into(), Some(json!({"instance_ids": [iid]}))),
        ("POST", "/instance-operations/terminate".into(), Some(json!({"instance_ids": [iid]}))),
        ("DELETE", format!("/filesystems/{fid}"), None),
        ("DELETE", format!("/file-systems/{fid}"), None),
        ("GET", format!("/firewall-rulesets/{rid}"), None),
        ("PATCH", format!("/firewall-rulesets/{rid}"), Some(json!({"name": "stolen"}))),
        ("DELETE", format!("/firewall-rulesets/{rid}"), None),
    ];
    for (m, p, body) in cases {
        let (st, v) = s.call(&b, m, &p, body).await;
        assert_error(st, &v, 404, "global/object-does-not-exist");
    }
    // Lambda's spec has no 404 for deleting an SSH key: unknown (or foreign) ids are a 400.
    let (st, v) = s.call(&b, "DELETE", &format!("/ssh-keys/{kid}"), None).await;
    assert_error(st, &v, 400, "global/invalid-parameters");
    // Launch referencing A's key name, file system or ruleset: not found for B.
    add_key(&s, "zzz").await;
    let launches = vec![
        json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["a-key"]}),
        json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["zzz"]}),
    ];
    for l in launches {
        let (st, v) = s.call(&b, "POST", "/instance-operations/launch", Some(l)).await;
        assert_error(st, &v, 404, "global/object-does-not-exist");
    }
    let (_, bk) = (0, s.call(&b, "POST", "/ssh-keys", Some(json!({"name": "b-key", "public_key": crate::PUBKEY}))).await);
    assert_eq!(bk.0, 200);
    for l in [
        json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["b-key"], "file_system_names": ["a-fs"]}),
        json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["b-key"], "file_system_mounts": [{"file_system_id": fid, "mount_point": "/x"}]}),
        json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["b-key"], "firewall_rulesets": [{"id": rid}]}),
    ] {
        let (st, v) = s.call(&b, "POST", "/instance-operations/launch", Some(l)).await;
        assert_error(st, &v, 404, "global/object-does-not-exist");
    }

    // A's objects are untouched.
    let inst = s.expect("GET", &format!("/instances/{iid}"), None, 200).await;
    assert_eq!(inst["data"]["status"], "active");
    assert!(inst["data"].get("name").is_none());
    assert_eq!(s.expect("GET", "/ssh-keys", None, 200).await["data"].as_array().unwrap().len(), 2);
    assert_eq!(s.expect("GET", "/file-systems", None, 200).await["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.expect("GET", "/firewall-rulesets", None, 200).await["data"].as_array().unwrap().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn permissions_are_enforced() {
    let s = TestServer::start().await;
    add_key(&s, "k").await;
    let iid = launch(&s, &s.key, "cpu_1x_small", "k").await;
    let (_, read) = s.org_with_key("org-a", "READ").await;
    let (st, _) = s.call(&read, "GET", "/instances", None).await;
    assert_eq!(st, 200);
    let denied = vec![
        (
            "POST",
            "/instance-operations/launch".to_owned(),
            json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]}),
        ),
        ("POST", "/instance-operations/terminate".to_owned(), json!({"instance_ids": [iid]})),
        ("POST", "/instance-operations/restart".to_owned(), json!({"instance_ids": [iid]})),
        ("POST", format!("/instances/{iid}"), json!({"name": "x"})),
        ("POST", "/ssh-keys".to_owned(), json!({"name": "x"})),
        ("POST", "/filesystems".to_owned(), json!({"name": "x", "region": "us-east-1"})),
        ("PUT", "/firewall-rules".to_owned(), json!({"data": []})),
    ];
    for (m, p, b) in denied {
        let (st, v) = s.call(&read, m, &p, Some(b)).await;
        assert_error(st, &v, 403, "global/account-inactive");
    }
    let (_, create) = s.org_with_key("org-a", "CREATE,READ").await;
    let (st, v) = s.call(&create, "POST", "/instance-operations/terminate", Some(json!({"instance_ids": [iid]}))).await;
    assert_error(st, &v, 403, "global/account-inactive");
    let (st, _) = s.call(&create, "POST", "/ssh-keys", Some(json!({"name": "ok"}))).await;
    assert_eq!(st, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_keys_are_rejected_everywhere() {
    let s = TestServer::start().await;
    for path in
        ["/instances", "/instance-types", "/ssh-keys", "/file-systems", "/images", "/firewall-rules", "/firewall-rulesets", "/audit-events"]
    {
        let (st, v) = s.call("nmb_not-a-real-key", "GET", path, None).await;
        assert_error(st, &v, 401, "global/invalid-api-key");
        let resp = s.http.get(s.lambda(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path} without a key");
    }
    // A revoked key stops working.
    let (org, k) = s.org_with_key("org-c", "ADMIN").await;
    let keys = s.control.store().api_key_list_by_org(&org.id).await.unwrap();
    nimbus_control::admin::api_key_revoke(&s.control, &org, keys[0].id.as_str()).await.unwrap();
    let (st, v) = s.call(&k, "GET", "/instances", None).await;
    assert_error(st, &v, 401, "global/invalid-api-key");
    s.shutdown().await;
}
