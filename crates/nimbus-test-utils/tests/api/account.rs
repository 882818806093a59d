//! `/v1/account`: profile, quota usage (and its enforcement), API keys bounded by their creator,
//! with expiry.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::add_key;

#[tokio::test]
async fn profile_and_quota_usage() {
    let s = TestServer::builder()
        .config(|c| {
            c.quotas.instances_per_org = 2;
        })
        .host("us-east-1", sim_host("h", 8, 0))
        .start()
        .await;
    let a = s.nexpect("GET", "/account", None, 200).await;
    assert_eq!((a["id"].as_str(), a["plan"].as_str()), (Some(s.org.id.as_str()), Some("professional")));
    assert_eq!(a["rate_limit"], json!({"requests_per_hour": 10000, "burst": 200}));

    let e = s.nexpect("PATCH", "/account", Some(json!({"email": "not-an-email"})), 400).await;
    assert_eq!(e["error"]["details"]["field"], "email");
    let a = s.nexpect("PATCH", "/account", Some(json!({"name": "Renamed Org", "email": "ops@example.com"})), 200).await;
    assert_eq!((a["name"].as_str(), a["email"].as_str()), (Some("Renamed Org"), Some("ops@example.com")));
    let (_, reader) = s.org_with_key("Renamed Org", "READ").await;
    let (st, v) = s.native(&reader, "PATCH", "/account", Some(json!({"name": "x"}))).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));

    let kid = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    s.nexpect("POST", "/volumes", Some(json!({"name": "v", "region": "us-east-1", "size_gib": 7})), 201).await;
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [kid]});
    s.nexpect("POST", "/instances", Some(body.clone()), 201).await;
    let q = s.nexpect("GET", "/account/quota", None, 200).await;
    let find = |r: &str| q.as_array().unwrap().iter().find(|x| x["resource"] == r).cloned().unwrap();
    assert_eq!((find("instances")["used"].as_i64(), find("instances")["limit"].as_i64()), (Some(1), Some(2)));
    assert_eq!(find("ssh_keys")["used"], 1);
    assert_eq!((find("volumes")["used"].as_i64(), find("volume_storage")["used"].as_i64()), (Some(1), Some(7)));
    assert_eq!(find("volume_storage")["unit"], "GiB");

    // The limit it reports is the one create enforces.
    s.nexpect("POST", "/instances", Some(body.clone()), 201).await;
    let e = s.nexpect("POST", "/instances", Some(body), 403).await;
    assert_eq!(e["error"]["code"], "quota_exceeded");
    let q = s.nexpect("GET", "/account/quota", None, 200).await;
    assert_eq!(q.as_array().unwrap().iter().find(|x| x["resource"] == "instances").unwrap()["used"], 2);
}

#[tokio::test]
async fn api_keys_never_exceed_their_creator_and_expire() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let mk = |key: String, body: serde_json::Value| {
        let s = &s;
        async move { s.native(&key, "POST", "/account/api-keys", Some(body)).await }
    };

    let (st, v) = mk(s.key.clone(), json!({"name": "ops", "permissions": ["CREATE", "READ"]})).await;
    assert_eq!(st, 201, "{v}");
    let ops = v["data"]["secret"].as_str().unwrap().to_owned();
    let ops_id = v["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["data"]["permissions"], json!(["CREATE", "READ"]));

    for perms in [json!(["ADMIN"]), json!(["READ", "EDIT"]), json!(["DELETE"])] {
        let (st, v) = mk(ops.clone(), json!({"name": "up", "permissions": perms})).await;
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "{perms}: {v}");
    }
    let (st, v) = mk(ops.clone(), json!({"name": "ro", "permissions": ["READ"], "expires_in_days": 30})).await;
    assert_eq!(st, 201, "{v}");
    let ro = v["data"]["secret"].as_str().unwrap().to_owned();
    let ro_id = v["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["data"]["created_by"], ops_id.as_str());
    assert!(v["data"]["expires_at"].as_str().unwrap().ends_with('Z'));

    // What each key may do.
    assert_eq!(s.native(&ro, "GET", "/instances", None).await.0, 200);
    let (st, v) = mk(ro.clone(), json!({"name": "x", "permissions": ["READ"]})).await;
    assert_eq!(st, 403, "a READ key cannot create keys: {v}");
    let (st, _) = s.native(&ops, "DELETE", &format!("/account/api-keys/{ro_id}"), None).await;
    assert_eq!(st, 403, "ops lacks DELETE");
    let (_, deleter) = {
        let (st, v) = mk(s.key.clone(), json!({"name": "del", "permissions": ["DELETE"]})).await;
        assert_eq!(st, 201);
        (st, v["data"]["secret"].as_str().unwrap().to_owned())
    };
    let (st, _) = s.native(&deleter, "DELETE", &format!("/account/api-keys/{ops_id}"), None).await;
    assert_eq!(st, 403, "DELETE alone does not cover CREATE,READ");

    // Listing shows prefixes, never secrets.
    let list = s.nexpect("GET", "/account/api-keys?limit=100", None, 200).await;
    let text = list.to_string();
    assert!(!text.contains(&ro) && !text.contains(&ops));
    assert!(list.as_array().unwrap().iter().any(|k| k["id"] == ro_id.as_str()));

    s.nexpect("DELETE", &format!("/account/api-keys/{ro_id}"), None, 200).await;
    assert_eq!(s.native(&ro, "GET", "/instances", None).await.0, 401);
    s.nexpect("DELETE", &format!("/account/api-keys/{ro_id}"), None, 404).await;

    // Bad requests.
    for (body, field) in [
        (json!({"name": "x", "permissions": ["ROOT"]}), Some("permissions")),
        (json!({"name": "x", "permissions": []}), Some("permissions")),
        (json!({"name": "x", "permissions": ["READ"], "expires_at": "yesterday"}), Some("expires_at")),
        (json!({"name": "x", "permissions": ["READ"], "expires_at": "2001-01-01T00:00:00Z"}), Some("expires_at")),
        (json!({"name": "x", "permissions": ["READ"], "expires_in_days": 0}), Some("expires_in_days")),
        (json!({"name": "", "permissions": ["READ"]}), Some("name")),
    ] {
        let (st, v) = mk(s.key.clone(), body.clone()).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["details"]["field"].as_str(), field, "{body}: {v}");
    }

    // Expiry is enforced, also for a key the auth cache has seen.
    let soon = nimbus_core::clock::to_rfc3339(s.control.now() + 1_500_000);
    let (st, v) = mk(s.key.clone(), json!({"name": "short", "permissions": ["READ"], "expires_at": soon})).await;
    assert_eq!(st, 201, "{v}");
    let short = v["data"]["secret"].as_str().unwrap().to_owned();
    assert_eq!(s.native(&short, "GET", "/account", None).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let (st, v) = s.native(&short, "GET", "/account", None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("authentication_failed")));
}

/// An org holds at most `quotas.api_keys_per_org` live keys, service accounts' included: the
/// next creation is `quota_exceeded` in either path, revoking one frees a slot, and concurrent
/// creations cannot overshoot (counted in the creating transaction).
#[tokio::test]
async fn api_key_count_is_capped_per_org() {
    let s = TestServer::builder().config(|c| c.quotas.api_keys_per_org = 4).start().await;
    // The server's own key is the first of four.
    let mut ids = Vec::new();
    for i in 0..2 {
        let k = s.nexpect("POST", "/account/api-keys", Some(json!({"name": format!("k{i}"), "permissions": ["READ"]})), 201).await;
        ids.push(k["id"].as_str().unwrap().to_owned());
    }
    let sa = s.nexpect("POST", "/service-accounts", Some(json!({"name": "ci", "permissions": ["READ"]})), 201).await;
    let sa_id = sa["id"].as_str().unwrap().to_owned();
    s.nexpect("POST", &format!("/service-accounts/{sa_id}/api-keys"), Some(json!({})), 201).await;

    let e = s.nexpect("POST", "/account/api-keys", Some(json!({"name": "one-too-many", "permissions": ["READ"]})), 403).await;
    assert_eq!(e["error"]["code"], "quota_exceeded", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("at most 4"), "{e}");
    let e = s.nexpect("POST", &format!("/service-accounts/{sa_id}/api-keys"), Some(json!({})), 403).await;
    assert_eq!(e["error"]["code"], "quota_exceeded", "{e}");
    let q = s.nexpect("GET", "/account/quota", None, 200).await;
    let keys = q.as_array().unwrap().iter().find(|x| x["resource"] == "api_keys").cloned().unwrap();
    assert_eq!((keys["used"].as_i64(), keys["limit"].as_i64()), (Some(4), Some(4)), "{q}");
    // Another org has its own quota.
    let (_, other) = s.org_with_key("keys-other", "ADMIN").await;
    let (st, v) = s.native(&other, "POST", "/account/api-keys", Some(json!({"name": "x", "permissions": ["READ"]}))).await;
    assert_eq!(st, 201, "{v}");

    // Revoking one frees exactly one slot, even for creations racing for it.
    s.nexpect("DELETE", &format!("/account/api-keys/{}", ids[0]), None, 200).await;
    let racers =
        (0..6).map(|i| {
            let s = &s;
            async move {
                s.native(&s.key, "POST", "/account/api-keys", Some(json!({"name": format!("race{i}"), "permissions": ["READ"]}))).await
            }
        });
    let results = futures_util::future::join_all(racers).await;
    let created = results.iter().filter(|(st, _)| *st == 201).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(results.iter().all(|(st, v)| *st == 201 || v["error"]["code"] == "quota_exceeded"), "{results:?}");
    let live = s.nexpect("GET", "/account/api-keys?limit=100", None, 200).await;
    assert_eq!(live.as_array().unwrap().len(), 4, "{live}");
    s.shutdown().await;
}
