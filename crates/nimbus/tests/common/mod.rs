//! What the process tests of several hosts share.

use std::path::PathBuf;

/// The image cache when this machine can run container hosts (root and the debian-12 image,
/// which scripts/test builds); otherwise says why the test skips.
pub fn container_images() -> Option<PathBuf> {
    if !nimbus_driver::container::inventory::is_root() {
        eprintln!("SKIPPED: the container driver needs root");
        return None;
    }
    let images = std::env::var("NIMBUS_TEST_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/var/tmp/nimbus-images"));
    if !images.join("debian-12").exists() {
        eprintln!("SKIPPED: no debian-12 image in {} (scripts/test builds it)", images.display());
        return None;
    }
    Some(images)
}

/// One API call with a bearer key: `(status, JSON body or null)`. The request is built before
/// the future, which borrows nothing.
pub fn call(
    http: &reqwest::Client,
    key: &str,
    m: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> impl std::future::Future<Output = (u16, serde_json::Value)> {
    let mut rb = http.request(m, url).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    async move {
        let r = rb.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null))
    }
}
