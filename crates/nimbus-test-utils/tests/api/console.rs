//! The console's session layer without a browser (the browser test is tests/console): a key
//! becomes a cookie that acts as the key; mutating requests need the CSRF token; sessions end
//! at sign-out, at 12 hours, and with their key; a session's secret is no API key.

use nimbus_control::admin;
use nimbus_core::auth::Permissions;
use nimbus_test_utils::TestServer;
use serde_json::{json, Value};

/// `name=value` of the cookie a response sets, if it sets one.
fn cookie_set_by(r: &reqwest::Response) -> Option<String> {
    r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).map(str::to_owned)
}

async fn sign_in(s: &TestServer, key: &str) -> (u16, Option<String>, Value) {
    let r = s.http.post(format!("{}/console/session", s.url)).json(&json!({"api_key": key})).send().await.unwrap();
    let (status, cookie) = (r.status().as_u16(), cookie_set_by(&r));
    (status, cookie, r.json().await.unwrap_or_default())
}

async fn with_cookie(s: &TestServer, cookie: &str, method: &str, path: &str, csrf: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = s.http.request(m, format!("{}{path}", s.url)).header("cookie", cookie);
    if let Some(t) = csrf {
        rb = rb.header("x-csrf-token", t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_session_acts_as_its_key_until_it_ends() {
    let (s, clock) = crate::one_small_host_at("2026-05-01T08:00:00Z").await;
    let (st, cookie, v) = sign_in(&s, "nmb_wrong").await;
    assert_eq!((st, cookie.is_none()), (401, true), "{v}");

    let (st, cookie, v) = sign_in(&s, &s.key).await;
    assert_eq!(st, 200, "{v}");
    let cookie = cookie.expect("a session cookie");
    let csrf = v["data"]["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(v["data"]["permissions"], json!(["ADMIN"]));

    // Reads need no token; the session sees its org's objects through every dialect.
    assert_eq!(with_cookie(&s, &cookie, "GET", "/api/v1/instances", None, None).await.0, 200);
    assert_eq!(with_cookie(&s, &cookie, "GET", "/v1/account", None, None).await.0, 200);
    // A mutation without the token, or with another, is refused in the dialect's shape.
    let key = json!({"name": "from-session", "public_key": crate::PUBKEY});
    let (st, v) = with_cookie(&s, &cookie, "POST", "/api/v1/ssh-keys", None, Some(key.clone())).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["error"]["code"].as_str().is_some_and(|c| c.starts_with("global/")), "Lambda's error shape: {v}");
    let (st, v) = with_cookie(&s, &cookie, "POST", "/v1/instances", Some("0000"), Some(json!({}))).await;
    assert_eq!((st, v["success"].clone()), (403, json!(false)), "native shape: {v}");
    let (st, v) = with_cookie(&s, &cookie, "POST", "/api/v1/ssh-keys", Some(&csrf), Some(key)).await;
    assert_eq!(st, 200, "{v}");

    // The session's secret is a cookie, never a key to sign in with.
    let secret = cookie.split_once('=').unwrap().1.to_owned();
    assert_eq!(sign_in(&s, &secret).await.0, 401);

    // Sign-out (itself CSRF-checked) ends it.
    assert_eq!(with_cookie(&s, &cookie, "DELETE", "/console/session", None, None).await.0, 403);
    assert_eq!(with_cookie(&s, &cookie, "DELETE", "/console/session", Some(&csrf), None).await.0, 200);
    assert_eq!(with_cookie(&s, &cookie, "GET", "/api/v1/instances", None, None).await.0, 401);

    // Twelve hours is the most a session lasts.
    let (_, cookie, _) = sign_in(&s, &s.key).await;
    let cookie = cookie.unwrap();
    clock.advance_secs(12 * 3600 - 60);
    assert_eq!(with_cookie(&s, &cookie, "GET", "/api/v1/instances", None, None).await.0, 200);
    clock.advance_secs(120);
    assert_eq!(with_cookie(&s, &cookie, "GET", "/api/v1/instances", None, None).await.0, 401);

    // A session ends with its key, and carries the key's permissions only.
    let (key, secret) = admin::api_key_create(&s.control, &s.org, "reader", Permissions::parse_list("READ").unwrap(), None).await.unwrap();
    let (_, cookie, v) = sign_in(&s, &secret).await;
    let (cookie, csrf) = (cookie.unwrap(), v["data"]["csrf_token"].as_str().unwrap().to_owned());
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["from-session"]});
    let (st, v) = with_cookie(&s, &cookie, "POST", "/api/v1/instance-operations/launch", Some(&csrf), Some(launch)).await;
    assert_eq!(st, 403, "a READ key's session cannot launch: {v}");
    admin::api_key_revoke(&s.control, &s.org, key.id.as_str()).await.unwrap();
    assert_eq!(with_cookie(&s, &cookie, "GET", "/api/v1/instances", None, None).await.0, 401, "revoking the key ends its sessions");

    // Operator data needs an operator session; the organizations page counts live instances.
    assert_eq!(s.http.get(format!("{}/console/api/hosts", s.url)).bearer_auth(&s.key).send().await.unwrap().status().as_u16(), 401);
    crate::launch(&s, &s.key, "cpu_1x_small", "from-session").await;
    let gone = crate::launch(&s, &s.key, "cpu_1x_small", "from-session").await;
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [gone]})), 200).await;
    // Until its host confirms, a terminating instance still counts (it holds capacity).
    s.wait_native_status(&format!("/instances/{gone}"), "terminated").await;
    let other = admin::org_create(&s.control, "no-instances", None).await.unwrap();
    let link = nimbus_control::console::operator_link_create(&s.control, 60_000_000).await.unwrap();
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(format!("{}/console/login?link={link}", s.url)).send().await.unwrap();
    let cookie = cookie_set_by(&r).expect("the link sets a session cookie");
    let (st, orgs) = with_cookie(&s, &cookie, "GET", "/console/api/orgs", None, None).await;
    assert_eq!(st, 200, "{orgs}");
    let count = |id: &str| orgs["data"].as_array().unwrap().iter().find(|o| o["id"] == id).map(|o| o["instances"].clone());
    assert_eq!(count(s.org.id.as_str()), Some(json!(1)), "one live, one terminated: {orgs}");
    assert_eq!(count(other.id.as_str()), Some(json!(0)), "{orgs}");
    s.shutdown().await;
}
