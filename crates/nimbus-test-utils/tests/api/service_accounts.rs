//! `/v1/service-accounts`: named principals whose keys act with the account's permissions (read
//! when a key authenticates, so changes apply to existing keys), ADMIN-only management, deletion
//! that revokes every key in the same transaction, tenant isolation, names and validation.

use nimbus_test_utils::TestServer;
use serde_json::json;

#[tokio::test]
async fn keys_act_with_the_accounts_permissions_as_they_change() {
    let s = TestServer::start().await;
    let sa = s
        .nexpect("POST", "/service-accounts", Some(json!({"name": "ci deployer", "description": "nightly", "permissions": ["READ"]})), 201)
        .await;
    let id = sa["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{sa}");
    assert_eq!((sa["name"].as_str(), sa["description"].as_str()), (Some("ci deployer"), Some("nightly")));
    assert_eq!(sa["permissions"], json!(["READ"]));
    assert!(sa.get("deleted_at").is_none(), "{sa}");

    let k = s.nexpect("POST", &format!("/service-accounts/{id}/api-keys"), Some(json!({"name": "ci"})), 201).await;
    let secret = k["secret"].as_str().unwrap().to_owned();
    let kid = k["id"].as_str().unwrap().to_owned();
    assert_eq!((k["service_account_id"].as_str(), k["permissions"].clone()), (Some(id.as_str()), json!(["READ"])));
    // The secret is shown once: listings never carry it.
    let keys = s.nexpect("GET", &format!("/service-accounts/{id}/api-keys"), None, 200).await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert!(keys[0].get("secret").is_none() && keys[0]["id"] == kid.as_str(), "{keys}");
    let all = s.nexpect("GET", "/account/api-keys", None, 200).await;
    assert!(all.as_array().unwrap().iter().any(|k| k["id"] == kid.as_str() && k["service_account_id"] == id.as_str()), "{all}");

    // One key, every dialect: READ works, CREATE does not.
    assert_eq!(s.native(&secret, "GET", "/instances", None).await.0, 200);
    assert_eq!(s.call(&secret, "GET", "/instances", None).await.0, 200);
    assert_eq!(s.send(&secret, "GET", format!("{}/api/v1/virtual-machines", s.url), None).await.0, 200);
    let (st, v) = s.call(&secret, "POST", "/ssh-keys", Some(json!({"name": "nope", "public_key": crate::PUBKEY}))).await;
    crate::assert_error(st, &v, 403, "global/account-inactive");
    // Not an ADMIN key: it cannot manage service accounts, not even its own.
    let (st, v) = s.native(&secret, "GET", &format!("/service-accounts/{id}"), None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");

    // New permissions apply to the existing key (this replica clears its auth cache at once).
    let up = s.nexpect("PATCH", &format!("/service-accounts/{id}"), Some(json!({"permissions": ["READ", "CREATE"]})), 200).await;
    assert_eq!(up["permissions"], json!(["CREATE", "READ"]));
    assert_eq!(up["description"], "nightly", "untouched fields stay");
    let (st, v) = s.call(&secret, "POST", "/ssh-keys", Some(json!({"name": "now-allowed", "public_key": crate::PUBKEY}))).await;
    assert_eq!(st, 200, "{v}");
    let listed = s.nexpect("GET", &format!("/service-accounts/{id}/api-keys"), None, 200).await;
    assert_eq!(listed[0]["permissions"], json!(["CREATE", "READ"]), "the key shows the account's permissions");
    s.nexpect("PATCH", &format!("/service-accounts/{id}"), Some(json!({"permissions": ["EDIT"]})), 200).await;
    let (st, _) = s.native(&secret, "GET", "/instances", None).await;
    assert_eq!(st, 403, "READ taken away");

    // An ADMIN service account's key manages service accounts.
    let admin_sa = s.nexpect("POST", "/service-accounts", Some(json!({"name": "root", "permissions": ["ADMIN"]})), 201).await;
    let admin_id = admin_sa["id"].as_str().unwrap();
    let ak = s.nexpect("POST", &format!("/service-accounts/{admin_id}/api-keys"), Some(json!({})), 201).await;
    assert_eq!(ak["name"], "default");
    let admin_secret = ak["secret"].as_str().unwrap().to_owned();
    let (st, v) = s.native(&admin_secret, "GET", "/service-accounts", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["pagination"]["total_items"], 2, "{v}");

    // Revoking one key leaves the account; deleting the account revokes every key at once.
    let k2 =
        s.nexpect("POST", &format!("/service-accounts/{id}/api-keys"), Some(json!({"name": "second", "expires_in_days": 7})), 201).await;
    let secret2 = k2["secret"].as_str().unwrap().to_owned();
    let revoked = s.nexpect("DELETE", &format!("/service-accounts/{id}/api-keys/{kid}"), None, 200).await;
    assert_eq!(revoked["id"], kid.as_str());
    assert_eq!(s.native(&secret, "GET", "/account", None).await.0, 401, "revoked key");
    assert_eq!(s.native(&secret2, "POST", "/instances/0123456789abcdef0123456789abcdef/stop", None).await.0, 404, "EDIT key works");
    s.nexpect("DELETE", &format!("/service-accounts/{id}/api-keys/{kid}"), None, 404).await;
    let gone = s.nexpect("DELETE", &format!("/service-accounts/{id}"), None, 200).await;
    assert!(gone["deleted_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{gone}");
    assert_eq!(s.native(&secret2, "GET", "/account", None).await.0, 401, "keys of a deleted account stop working");
    s.nexpect("GET", &format!("/service-accounts/{id}"), None, 404).await;
    s.nexpect("DELETE", &format!("/service-accounts/{id}"), None, 404).await;
    s.nexpect("POST", &format!("/service-accounts/{id}/api-keys"), Some(json!({})), 404).await;
    let keys = s.control.store().api_key_list_by_org(&s.org.id).await.unwrap();
    assert!(keys.iter().filter(|k| k.service_account_id.as_ref().is_some_and(|x| x.as_str() == id)).all(|k| k.revoked_at.is_some()));

    // Every change is an audit event.
    let (_, v) = s.call(&s.key, "GET", "/audit-events?resource_type=cloud.service_account", None).await;
    let actions: Vec<&str> = v["data"]["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["service_account.created", "service_account.updated", "service_account.deleted"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn names_validation_and_tenant_isolation() {
    let s = TestServer::start().await;
    let a = s.nexpect("POST", "/service-accounts", Some(json!({"name": "deployer", "permissions": ["READ"]})), 201).await;
    let aid = a["id"].as_str().unwrap().to_owned();
    let e = s.nexpect("POST", "/service-accounts", Some(json!({"name": "deployer", "permissions": ["EDIT"]})), 409).await;
    assert_eq!(e["error"]["code"], "already_exists");
    for bad in [
        json!({"name": "", "permissions": ["READ"]}),
        json!({"name": "   ", "permissions": ["READ"]}),
        json!({"name": "x".repeat(65), "permissions": ["READ"]}),
        json!({"name": "tab\there", "permissions": ["READ"]}),
        json!({"name": "ok", "permissions": []}),
        json!({"name": "ok", "permissions": ["ROOT"]}),
        json!({"name": "ok", "permissions": ["READ"], "description": "d".repeat(501)}),
        json!({"name": "ok", "permissions": ["READ"], "extra": 1}),
    ] {
        let e = s.nexpect("POST", "/service-accounts", Some(bad.clone()), 400).await;
        assert_eq!(e["error"]["code"], "invalid_request", "{bad}: {e}");
    }
    let b = s.nexpect("POST", "/service-accounts", Some(json!({"name": "other", "permissions": ["READ"]})), 201).await;
    let bid = b["id"].as_str().unwrap();
    s.nexpect("PATCH", &format!("/service-accounts/{bid}"), Some(json!({"name": "deployer"})), 409).await;
    s.nexpect("PATCH", &format!("/service-accounts/{bid}"), Some(json!({"permissions": []})), 400).await;
    // A deleted account's name is free again.
    s.nexpect("DELETE", &format!("/service-accounts/{aid}"), None, 200).await;
    s.nexpect("PATCH", &format!("/service-accounts/{bid}"), Some(json!({"name": "deployer"})), 200).await;
    let page = s.nexpect("GET", "/service-accounts?name=deployer", None, 200).await;
    assert_eq!(page.as_array().unwrap().len(), 1);

    // Another organization's ADMIN sees none of them and touches none (404, never 403).
    let (_, other) = s.org_with_key("org-b", "ADMIN").await;
    let (st, v) = s.native(&other, "GET", "/service-accounts", None).await;
    assert_eq!((st, v["data"].clone()), (200, json!([])));
    for (m, p, body) in [
        ("GET", format!("/service-accounts/{bid}"), None),
        ("PATCH", format!("/service-accounts/{bid}"), Some(json!({"name": "stolen"}))),
        ("DELETE", format!("/service-accounts/{bid}"), None),
        ("GET", format!("/service-accounts/{bid}/api-keys"), None),
        ("POST", format!("/service-accounts/{bid}/api-keys"), Some(json!({}))),
        ("DELETE", format!("/service-accounts/{bid}/api-keys/0123456789abcdef0123456789abcdef"), None),
    ] {
        let (st, v) = s.native(&other, m, &p, body).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{m} {p}: {v}");
    }
    assert_eq!(s.nexpect("GET", &format!("/service-accounts/{bid}"), None, 200).await["name"], "deployer");
    s.shutdown().await;
}

#[tokio::test]
async fn sdk_manages_service_accounts() {
    use nimbus_api_types::native as w;
    let s = TestServer::start().await;
    let c = nimbus_client::NativeClient::new(&s.url, &s.key);
    let sa = c
        .service_account_create(&w::ServiceAccountCreate { name: "sdk".into(), description: None, permissions: vec!["READ".into()] })
        .await
        .unwrap();
    let k = c.service_account_api_key_create(&sa.id, &w::ServiceAccountKeyCreate::default()).await.unwrap();
    assert_eq!(k.key.service_account_id.as_deref(), Some(sa.id.as_str()));
    let as_sa = nimbus_client::NativeClient::new(&s.url, &k.secret);
    assert!(as_sa.instances(&Default::default()).await.is_ok());
    let up = c
        .service_account_update(&sa.id, &w::ServiceAccountUpdate { permissions: Some(vec!["EDIT".into()]), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(up.permissions, vec!["EDIT"]);
    assert!(as_sa.instances(&Default::default()).await.is_err());
    assert_eq!(c.service_accounts(&Default::default()).await.unwrap().items.len(), 1);
    assert_eq!(c.service_account(&sa.id).await.unwrap().name, "sdk");
    assert_eq!(c.service_account_api_keys(&sa.id, &Default::default()).await.unwrap().items.len(), 1);
    c.service_account_api_key_delete(&sa.id, &k.key.id).await.unwrap();
    assert!(c.service_account_api_keys(&sa.id, &Default::default()).await.unwrap().items.is_empty());
    assert!(c.service_account_delete(&sa.id).await.unwrap().deleted_at.is_some());
    s.shutdown().await;
}
