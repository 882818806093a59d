//! A webhook receiver for tests: a real HTTP server on `127.0.0.1:0` that records every request,
//! answers 500 to the first N, redirects every request elsewhere, or never answers at all. Signature checking is written here from
//! the documented rule (HMAC-SHA256 over `"<timestamp>.<body>"`), independently of the server's
//! code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the receiver answered.
    pub status: u16,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    /// Requests still to answer with 500.
    fail_remaining: AtomicUsize,
    hang: bool,
    /// Answer every request with `302 Found` to this location.
    redirect_to: Option<String>,
    in_flight: AtomicUsize,
}

pub struct WebhookReceiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    pub addr: std::net::SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Answers 500 to the first `fail_first` requests, 200 afterwards.
    pub async fn start(fail_first: usize) -> Self {
        Self::serve(Inner { fail_remaining: AtomicUsize::new(fail_first), ..Inner::default() }).await
    }

    /// Answers every request `302 Found` with `Location: location`.
    pub async fn redirecting(location: &str) -> Self {
        Self::serve(Inner { redirect_to: Some(location.to_owned()), ..Inner::default() }).await
    }

    /// Accepts requests and never answers them.
    pub async fn hanging() -> Self {
        Self::serve(Inner { hang: true, ..Inner::default() }).await
    }

    async fn serve(inner: Inner) -> Self {
        let inner = Arc::new(inner);
        let state = inner.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                if state.hang {
                    state.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let fail = state.fail_remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                let status = match (&state.redirect_to, fail) {
                    (Some(_), _) => StatusCode::FOUND,
                    (None, true) => StatusCode::INTERNAL_SERVER_ERROR,
                    (None, false) => StatusCode::OK,
                };
                state.received.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
                    headers,
                    body,
                    status: status.as_u16(),
                    at: Instant::now(),
                });
                let mut answer = HeaderMap::new();
                if let Some(to) = state.redirect_to.as_deref().and_then(|l| l.parse().ok()) {
                    answer.insert(axum::http::header::LOCATION, to);
                }
                (status, answer, if fail { "not now" } else { "ok" })
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver { url: format!("http://{addr}/hook"), addr, inner, task }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests accepted and not answered (hanging receiver).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until `cond` holds for the requests received, for up to `within`.
    pub async fn wait_until(&self, what: &str, within: Duration, cond: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let t = Instant::now();
        loop {
            let got = self.received();
            if cond(&got) {
                return got;
            }
            assert!(t.elapsed() < within, "receiver: timed out waiting for {what}; got {} requests", got.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks a delivery as a receiver should: the timestamp is within `tolerance` of now and the
/// signature is `sha256=` + hex HMAC-SHA256(secret, `"<timestamp>.<raw body>"`), compared in
/// constant time.
pub fn verify_signature(secret: &str, r: &Received, tolerance: Duration) -> Result<(), String> {
    let ts = r.header("x-nimbus-timestamp");
    let ts_num: i64 = ts.parse().map_err(|_| format!("bad timestamp {ts:?}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;
    if (now - ts_num).unsigned_abs() > tolerance.as_secs() {
        return Err(format!("timestamp {ts_num} is more than {tolerance:?} from now ({now})"));
    }
    let sig = r.header("x-nimbus-signature");
    let hex_sig = sig.strip_prefix("sha256=").ok_or_else(|| format!("signature {sig:?} lacks sha256="))?;
    let want = hex::decode(hex_sig).map_err(|_| format!("signature {sig:?} is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&want).map_err(|_| "signature mismatch".to_owned())
}
