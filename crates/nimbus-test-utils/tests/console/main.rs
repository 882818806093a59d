//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! through WebDriver) against a real server with a sim host: sign in with an API key, launch
//! an instance with a generated key pair, watch it reach `active`, open its detail page and its
//! metrics, terminate it; every tenant page and the operator's pages render without console
//! errors; a READ key gets no launch button and the API's 403 when it forges the request; a
//! cross-site form POST is refused; sign-out ends the session. Screenshots of each page go to
//! `NIMBUS_CONSOLE_SCREENSHOTS` (docs/console uses them) or the target's temp dir.
//!
//! Skipped (saying so) where chromium or chromedriver is missing, except under CI, where that
//! fails; scripts/test installs both.

#![allow(clippy::unwrap_used)]

mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use nimbus_test_utils::TestServer;
use serde_json::{json, Value};
use webdriver::Browser;

fn shots() -> PathBuf {
    let dir = std::env::var_os("NIMBUS_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Console entries at level SEVERE (errors), as text.
async fn errors(b: &Browser) -> Vec<String> {
    b.console_log().await.iter().filter(|e| e["level"] == "SEVERE").map(|e| e["message"].as_str().unwrap_or_default().to_owned()).collect()
}

/// A page of another origin whose form posts a launch to the console's server as soon as it
/// loads (what a malicious site would do with a signed-in user's browser).
async fn evil_site(target: &str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/", l.local_addr().unwrap().port());
    let page = format!(
        r#"<!doctype html><html><body><form id="f" method="POST" enctype="text/plain" action="{target}/api/v1/instance-operations/launch"><input name='{{"region_name":"us-east-1","instance_type_name":"cpu_1x_small","ssh_key_names":["forged"],"x":"' value='"}}'></form><script>document.getElementById('f').submit();</script></body></html>"#
    );
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(page) }));
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// Instances that are not on their way out: one that is terminating leaves the list whenever
/// its host reports it gone, which must not look like (or hide) a launch.
async fn instance_count(s: &TestServer) -> usize {
    let list = s.call(&s.key, "GET", "/instances", None).await.1;
    list["data"].as_array().unwrap().iter().filter(|i| !matches!(i["status"].as_str(), Some("terminating" | "terminated"))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_and_an_operator_use_the_console_in_a_real_browser() {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        assert!(std::env::var_os("CI").is_none(), "CI must run the browser test: install chromium and chromium-driver");
        eprintln!("SKIPPED: needs chromium and chromedriver (scripts/test installs them)");
        return;
    };
    let s = TestServer::start().await;
    let dir = shots();
    let b = Browser::start(&chromium, &chromedriver, 1280, 800).await;

    // Sign in.
    b.goto(&format!("{}/console/", s.url)).await;
    let loaded = b.run("return document.readyState;", json!([])).await;
    let errs = errors(&b).await;
    assert!(errs.is_empty(), "console errors on loading the page ({loaded}): {errs:?}");
    b.wait("#signin:not([hidden]) #api-key").await;
    b.screenshot(&dir.join("signin.png")).await;
    b.type_into("#api-key", "nmb_not-a-key").await;
    b.click("#signin-form button").await;
    b.wait_text("#signin-error", 10, |t| t.contains("failed")).await;
    let _ = b.console_log().await; // the refused sign-in's 401 is logged by the browser; as it should be
    b.run("document.getElementById('api-key').value = ''; return true;", json!([])).await;
    // By keyboard: the key, then Enter.
    b.type_into("#api-key", &format!("{}\u{E007}", s.key)).await;
    b.wait("#nav-instances[aria-current=page]").await;
    let cookie = b.cookie("nimbus_session").await.expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    let secret = cookie["value"].as_str().unwrap().to_owned();

    // A file system made with the storage page's form, then chosen in the launch dialog.
    b.goto(&format!("{}/console/#/storage", s.url)).await;
    b.type_into("#fs-name", "shared-fs").await;
    b.click("#fs-form-submit").await;
    b.wait_text("#page table", 10, |t| t.contains("shared-fs")).await;
    b.goto(&format!("{}/console/#/instances", s.url)).await;

    // Launch with a generated key: the dialog offers only types with capacity, with prices.
    b.click("#launch").await;
    b.wait("#launch-dialog[open]").await;
    let types = s.call(&s.key, "GET", "/instance-types", None).await.1;
    let with_capacity = types["data"]
        .as_object()
        .unwrap()
        .values()
        .filter(|t| !t["regions_with_capacity_available"].as_array().unwrap().is_empty())
        .count();
    let offered = b.run("return document.querySelectorAll('#launch-type option').length;", json!([])).await;
    assert_eq!(offered, json!(with_capacity), "the dialog offers exactly the types with capacity");
    let first = b.text("#launch-type option").await;
    assert!(first.contains("/h") && first.contains('$'), "a type's hourly price is shown: {first}");
    b.run(
        "const s = document.getElementById('launch-type'); s.value = 'cpu_1x_small'; s.dispatchEvent(new Event('change')); return s.value;",
        json!([]),
    )
    .await;
    b.type_into("#launch-name", "from-the-console").await;
    b.click("#launch-fs input[value=shared-fs]").await;
    b.screenshot(&dir.join("launch.png")).await;
    b.click("#launch-submit").await;
    b.wait("#private-key-download").await;
    let href = b.run("return document.getElementById('private-key-download').href;", json!([])).await;
    assert!(href.as_str().unwrap().starts_with("blob:"), "the private key is offered as a download: {href}");
    let pem = b.run("const r = await fetch(document.getElementById('private-key-download').href); return await r.text();", json!([])).await;
    assert!(pem.as_str().unwrap().contains("PRIVATE KEY"), "the download is the private key: {pem}");
    b.wait("#launched a").await;
    b.screenshot(&dir.join("launched.png")).await;
    b.click("#launched a").await;

    // Its detail page: active, the ssh line, metrics.
    let status = b.wait_text("#instance-status", 30, |t| t == "active").await;
    assert_eq!(status, "active");
    let list = s.call(&s.key, "GET", "/instances", None).await.1;
    let inst = list["data"].as_array().unwrap().iter().find(|i| i["name"] == "from-the-console").unwrap().clone();
    let id = inst["id"].as_str().unwrap().to_owned();
    assert_eq!(inst["file_system_names"], json!(["shared-fs"]), "the file system chosen in the dialog: {inst}");
    assert_eq!(b.wait_text("#ssh-line", 10, |t| t.starts_with("ssh ")).await, format!("ssh ubuntu@{}", inst["ip"].as_str().unwrap()));
    b.wait_text("#metrics", 20, |t| t.contains("CPU") && t.contains("Memory") && t.contains("Network in") && t.contains("latest")).await;
    b.screenshot(&dir.join("instance.png")).await;

    // The list, live: it shows active without a reload; filtering narrows it.
    b.goto(&format!("{}/console/#/instances", s.url)).await;
    b.wait_text("#instances", 10, |t| t.contains("from-the-console") && t.contains("active")).await;
    b.screenshot(&dir.join("instances.png")).await;
    b.type_into("#filter", "no-such-instance").await;
    b.wait_text("#instances", 5, |t| !t.contains("from-the-console")).await;

    // A cluster, so that its page shows one and its nodes.
    let r = s
        .http
        .post(s.lambda("/clusters"))
        .bearer_auth(&s.key)
        .json(&json!({"name": "console-cluster", "provider": "GCP", "spec": {"serverless": {"regions": ["us-east-1"]}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // Every other tenant page renders, with no error on it.
    for page in ["ssh-keys", "storage", "firewall", "clusters", "billing", "keys", "audit"] {
        b.goto(&format!("{}/console/#/{page}", s.url)).await;
        b.wait(&format!("#nav-{page}[aria-current=page]")).await;
        b.wait("#page h1").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let text = b.text("#page").await;
        assert!(b.find("#page .error").await.is_none() && !text.contains("[object "), "{page}: {text}");
        b.screenshot(&dir.join(format!("{page}.png"))).await;
    }
    b.goto(&format!("{}/console/#/clusters", s.url)).await;
    b.wait_text("#page", 20, |t| t.contains("console-cluster") && t.contains("LIVE")).await;
    b.screenshot(&dir.join("clusters.png")).await;
    b.goto(&format!("{}/console/#/audit", s.url)).await;
    b.wait("#nav-audit[aria-current=page]").await;
    b.wait("#page table").await;
    let audit = b.text("#page").await;
    assert!(audit.contains("console.signed_in"), "the audit page lists the sign-in: {audit}");

    // The keys page makes a key whose secret is shown once and works; billing sets a limit.
    b.goto(&format!("{}/console/#/keys", s.url)).await;
    b.type_into("#new-key-name", "made-in-console").await;
    b.click("#key-form-submit").await;
    let new_secret = b.wait_text("#new-key-secret", 10, |t| t.starts_with("nmb_")).await;
    let (st, _) = s.call(&new_secret, "GET", "/instances", None).await;
    assert_eq!(st, 200, "the key the console made works");
    let (st, _) = s.call(&new_secret, "POST", "/instance-operations/launch", Some(json!({}))).await;
    assert_eq!(st, 403, "with exactly the permissions chosen (READ)");
    b.goto(&format!("{}/console/#/billing", s.url)).await;
    b.run("document.getElementById('limit-usd').value = ''; return true;", json!([])).await;
    b.type_into("#limit-usd", "50").await;
    b.click("#limit-form-submit").await;
    b.wait_text("#limit-form-status", 10, |t| t.contains("Saved")).await;
    let acct = s.native(&s.key, "GET", "/account", None).await.1;
    assert_eq!(acct["data"]["spend_limit_cents"], 5000, "{acct}");

    // Every form field has a label; the page fits a phone's width.
    let unlabelled = b
        .run("return [...document.querySelectorAll('input, select, textarea')].filter((e) => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label')).map((e) => e.id || e.name);", json!([]))
        .await;
    assert_eq!(unlabelled, json!([]), "fields without a label");
    b.resize(390, 844).await;
    b.goto(&format!("{}/console/#/instances", s.url)).await;
    b.wait_text("#instances", 10, |t| t.contains("from-the-console")).await;
    let overflow = b.run("return document.documentElement.scrollWidth - window.innerWidth;", json!([])).await;
    assert!(overflow.as_i64().unwrap() <= 1, "the page scrolls sideways on a phone: {overflow}");
    b.screenshot(&dir.join("phone.png")).await;
    b.resize(1280, 800).await;

    // Terminate, with confirmation.
    b.goto(&format!("{}/console/#/instances/{id}", s.url)).await;
    b.wait_text("#instance-status", 10, |t| t == "active").await;
    b.click("#terminate").await;
    b.click("#confirm-yes").await;
    b.wait_text("#instance-status", 30, |t| t == "terminating" || t == "terminated").await;
    let errs = errors(&b).await;
    assert!(errs.is_empty(), "console errors: {errs:?}");

    // A cross-site form POST carries the cookie (same site) but not the CSRF token: refused.
    let before = instance_count(&s).await;
    b.goto(&evil_site(&s.url).await).await;
    let refused = b.wait_text("body", 10, |t| t.contains("cross-site")).await;
    assert!(refused.contains("forbidden") || refused.contains("cross-site request refused"), "{refused}");
    assert_eq!(instance_count(&s).await, before, "the forged launch made nothing");
    // And straight from a client with the stolen cookie but no token: the same.
    let r = s
        .http
        .post(s.lambda("/instance-operations/launch"))
        .header("cookie", format!("nimbus_session={secret}"))
        .json(&json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Sign out: the cookie no longer opens anything.
    b.goto(&format!("{}/console/#/instances", s.url)).await;
    b.click("#logout").await;
    b.wait("#signin:not([hidden])").await;
    let r = s.http.get(s.lambda("/instances")).header("cookie", format!("nimbus_session={secret}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a signed-out session is dead");

    // A READ key: no launch button; a forged launch from the page gets the API's 403.
    let (_, read_key) = s.org_with_key(&s.org.name, "READ").await;
    b.type_into("#api-key", &read_key).await;
    b.click("#signin-form button").await;
    b.wait("#nav-instances[aria-current=page]").await;
    b.wait("#instances p, #instances table").await;
    assert!(b.find("#launch").await.is_none(), "a READ key sees no launch button");
    let forged = b
        .run(
            "const s = (await (await fetch('/console/session')).json()).data; \
             const r = await fetch('/api/v1/instance-operations/launch', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token}, \
               body: JSON.stringify({region_name: 'us-east-1', instance_type_name: 'cpu_1x_small', ssh_key_names: ['x']})}); \
             return [r.status, await r.text()];",
            json!([]),
        )
        .await;
    assert_eq!(forged[0], 403, "{forged}");
    assert_eq!(instance_count(&s).await, before);
    b.click("#logout").await;
    b.wait("#signin:not([hidden])").await;

    // The operator: a one-use link opens the hosts page; used twice, it opens nothing.
    let link = nimbus_control::console::operator_link_create(&s.control, 600 * 1_000_000).await.unwrap();
    let _ = b.console_log().await;
    b.goto(&format!("{}/console/login?link={link}", s.url)).await;
    b.wait_text("#hosts", 10, |t| t.contains("h1") && t.contains("up") && t.contains("NVIDIA H100")).await;
    b.screenshot(&dir.join("hosts.png")).await;
    b.goto(&format!("{}/console/#/orgs", s.url)).await;
    b.wait_text("#page", 10, |t| t.contains(&s.org.name)).await;
    b.screenshot(&dir.join("orgs.png")).await;
    let errs = errors(&b).await;
    assert!(errs.is_empty(), "console errors on the operator pages: {errs:?}");
    let again = s.http.get(format!("{}/console/login?link={link}", s.url)).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 401, "a login link works once");
    // A tenant key never reaches the operator's data.
    let r = s.http.get(format!("{}/console/api/hosts", s.url)).bearer_auth(&s.key).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    let v: Value = s.http.get(format!("{}/console/session", s.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"], Value::Null);
    eprintln!("screenshots in {}", dir.display());
    s.shutdown().await;
}
