//! Failed authentications per client address, one layer over every route.
//!
//! Each answer 401 to a request that carried
//! credentials (`Authorization`, `X-API-Key` or `X-API-Token`) counts against the client's
//! address (from the `ConnectInfo<SocketAddr>` extension the serve loop inserts; IPv6 per /64,
//! since one host commonly holds a whole /64) in a GCRA bucket: `rate_limits.auth_failures`
//! allows `burst` failures at once and `per_minute` after that. Beyond it, the address's
//! requests that carry credentials are answered 429 with `Retry-After`, in the dialect's error
//! shape, before any handler runs, so a key-guessing client costs no more key lookups. Requests
//! without credentials, and answers other than 401, never count; agent paths
//! (`/internal/agent/v1`, host secrets) count like tenant ones. The table is capped
//! (`max_tracked_ips`); when full, fully recovered entries go first, then those nearest to
//! recovery. State is per process, like the rate limiter's. Behind a proxy every client has the
//! proxy's address: this layer does not read `X-Forwarded-For` (a client could forge it).
//!
//! Without a `ConnectInfo` extension (a router driven without the serve loop) the failure limit
//! does nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_control::config::AuthFailureLimit;
use nimbus_core::Error;

use crate::ApiState;

/// The layer's state: the failure table.
#[derive(Clone)]
pub struct Guard {
    failures: Arc<Failures>,
}

impl Guard {
    pub fn new(state: &ApiState) -> Guard {
        let limits = &state.control.config().rate_limits;
        Guard::failures_only(if limits.enabled { limits.auth_failures } else { off() })
    }

    pub fn failures_only(limit: AuthFailureLimit) -> Guard {
        Guard { failures: Arc::new(Failures::new(limit)) }
    }
}

fn off() -> AuthFailureLimit {
    AuthFailureLimit { per_minute: 0, ..AuthFailureLimit::default() }
}

/// The middleware (`axum::middleware::from_fn_with_state(Guard::new(&state), authfail::layer)`).
pub async fn layer(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let creds = has_credentials(req.headers());
    let ip = if creds { req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| client_key(c.0.ip())) } else { None };
    if let Some(ip) = ip {
        if let Some(wait) = g.failures.blocked(ip) {
            tracing::debug!(%ip, "too many failed authentications; refused before lookup");
            return rate_limited(req.uri().path(), wait);
        }
    }
    let resp = next.run(req).await;
    if let Some(ip) = ip {
        if resp.status() == StatusCode::UNAUTHORIZED {
            g.failures.record(ip);
        }
    }
    resp
}

fn has_credentials(h: &HeaderMap) -> bool {
    ["authorization", "x-api-key", "x-api-token"].iter().any(|n| h.contains_key(*n))
}

/// The address failures are counted against: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// 429 with `Retry-After` in the error shape of the dialect the path belongs to.
fn rate_limited(path: &str, wait: Duration) -> Response {
    let e = || Error::RateLimited { retry_after: wait };
    if path.starts_with("/internal/agent/") {
        // The agent dialect's body, with the status a rate limit has everywhere (its own error
        // mapping has no rate-limit case: nothing else limits agents).
        let body = nimbus_proto::AgentError { code: e().code().to_owned(), message: e().external_message() };
        return crate::middleware::finish_error_response((StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response(), &e());
    }
    crate::middleware::dialect_error(path, e()).unwrap_or_else(|| {
        let body = serde_json::json!({"error": {"code": "too_many_requests", "message": "Too many failed authentications."}});
        crate::middleware::finish_error_response((StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response(), &e())
    })
}

/// Failure buckets by client address, GCRA: one timestamp per address.
struct Failures {
    /// Seconds per failure regained; `None` when the limit is off.
    period: Option<f64>,
    /// How far ahead of now the theoretical arrival time may be before requests are refused.
    tau: f64,
    cap: usize,
    start: Instant,
    tat: Mutex<HashMap<IpAddr, f64>>,
}

impl Failures {
    fn new(l: AuthFailureLimit) -> Failures {
        let period = (l.per_minute > 0).then(|| 60.0 / f64::from(l.per_minute));
        let tau = period.unwrap_or(0.0) * f64::from(l.burst.max(1));
        Failures { period, tau, cap: l.max_tracked_ips.max(1), start: Instant::now(), tat: Mutex::new(HashMap::new()) }
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// How long the address must wait, when it has failed too often.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.blocked_at(ip, self.now())
    }

    fn blocked_at(&self, ip: IpAddr, now: f64) -> Option<Duration> {
        let period = self.period?;
        let m = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let ahead = *m.get(&ip)? - now;
        // Open while at least one failure of the burst is unspent (`ahead` ≤ tau − period), so
        // exactly `burst` failures run before the address is refused.
        let over = ahead - (self.tau - period);
        (over > 1e-9).then(|| Duration::from_secs_f64(over))
    }

    fn record(&self, ip: IpAddr) {
        self.record_at(ip, self.now());
    }

    fn record_at(&self, ip: IpAddr, now: f64) {
        let Some(period) = self.period else { return };
        let mut m = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&ip) && m.len() >= self.cap {
            evict(&mut m, self.cap, now);
        }
        let tat = m.get(&ip).copied().unwrap_or(now).max(now);
        // Failures of requests already in flight when the address was refused still count; the
        // bound keeps a flood of them from blocking an address for more than an hour.
        m.insert(ip, (tat + period).min(now + self.tau + 3600.0));
    }
}

/// Makes room in a full table: first entries that have fully recovered (the same as none),
/// then the eighth nearest to recovery, so that eviction is amortized over many inserts.
fn evict(m: &mut HashMap<IpAddr, f64>, cap: usize, now: f64) {
    m.retain(|_, tat| *tat > now);
    if m.len() < cap {
        return;
    }
    let mut tats: Vec<f64> = m.values().copied().collect();
    let n = (tats.len() / 8).max(1).min(tats.len() - 1);
    let (_, cut, _) = tats.select_nth_unstable_by(n, f64::total_cmp);
    let cut = *cut;
    m.retain(|_, tat| *tat >= cut);
    while m.len() >= cap {
        // Ties at the cut: drop arbitrary ones.
        let Some(k) = m.keys().next().copied() else { break };
        m.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    fn limit(per_minute: u32, burst: u32) -> AuthFailureLimit {
        AuthFailureLimit { per_minute, burst, max_tracked_ips: 10_000 }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn burst_failures_then_blocked_until_one_is_regained() {
        let f = Failures::new(limit(20, 5)); // one failure regained every 3 s
        for i in 0..5 {
            assert_eq!(f.blocked_at(ip(1), 0.0), None, "failure {i} is within the burst");
            f.record_at(ip(1), 0.0);
        }
        let wait = f.blocked_at(ip(1), 0.0).expect("blocked after the burst");
        assert!((wait.as_secs_f64() - 3.0).abs() < 1e-6, "{wait:?}");
        assert!(f.blocked_at(ip(1), 2.9).is_some());
        assert_eq!(f.blocked_at(ip(1), 3.0), None, "one failure regained after 3 s");
        f.record_at(ip(1), 3.0);
        assert!(f.blocked_at(ip(1), 3.0).is_some());
        assert_eq!(f.blocked_at(ip(2), 0.0), None, "another address is unaffected");
        // Off: never blocks.
        let off = Failures::new(limit(0, 5));
        for _ in 0..100 {
            off.record_at(ip(1), 0.0);
        }
        assert_eq!(off.blocked_at(ip(1), 0.0), None);
    }

    #[test]
    fn the_table_is_capped() {
        let f = Failures { cap: 64, ..Failures::new(limit(1, 3)) };
        for i in 0..10_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            f.record_at(a, f64::from(i) * 1e-3);
            assert!(f.tat.lock().unwrap().len() <= 64);
        }
        // The most recent offender is still tracked.
        assert!(f.tat.lock().unwrap().contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 9_999))));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        assert_eq!(client_key("::ffff:192.0.2.7".parse().unwrap()), ip(7));
    }

    /// A router whose handler answers 401 unless the key is `good`, behind the guard, with the
    /// client address taken from a test header as the serve loop would insert it.
    fn app(g: Guard) -> Router {
        async fn handler(h: HeaderMap) -> StatusCode {
            match crate::auth::presented_key(&h).as_deref() {
                Some("good") | None => StatusCode::OK,
                Some(_) => StatusCode::UNAUTHORIZED,
            }
        }
        async fn peer(mut req: Request, next: Next) -> Response {
            let ip: IpAddr = req.headers().get("x-test-peer").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(ip(99));
            req.extensions_mut().insert(ConnectInfo(SocketAddr::new(ip, 40_000)));
            next.run(req).await
        }
        Router::new()
            .route("/v1/account", get(handler))
            .route("/api/v1/instances", get(handler))
            .route("/api/v1/virtual-machines/", get(handler))
            .route("/api/v1/clusters", get(handler))
            .route("/internal/agent/v1/desired", get(handler))
            .layer(axum::middleware::from_fn_with_state(g, layer))
            .layer(axum::middleware::from_fn(peer))
    }

    async fn send(app: &Router, path: &str, peer: &str, key: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
        let mut b = axum::http::Request::builder().uri(path).header("x-test-peer", peer);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let resp = app.clone().oneshot(b.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn bad_keys_from_one_address_block_it_in_each_dialects_shape() {
        let app = app(Guard::failures_only(limit(20, 20)));
        let bad = "192.0.2.1";
        for i in 0..20 {
            assert_eq!(send(&app, "/v1/account", bad, Some(&format!("wrong-{i}"))).await.0, 401, "failure {i}");
        }
        // Now even a good key from that address is refused, before the handler runs.
        let (st, retry, body) = send(&app, "/v1/account", bad, Some("good")).await;
        assert_eq!(st, 429);
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=6).contains(&retry), "{retry}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert_eq!(body["error"]["retry_after"], retry, "{body}");
        let (st, _, body) = send(&app, "/api/v1/instances", bad, Some("good")).await;
        assert_eq!((st, body["error"]["code"].as_str()), (429, Some("global/too-many-requests")), "{body}");
        let (st, _, body) = send(&app, "/api/v1/virtual-machines/", bad, Some("good")).await;
        assert!(st == 429 && body["detail"].is_string(), "{st} {body}");
        let (st, _, body) = send(&app, "/api/v1/clusters", bad, Some("good")).await;
        assert_eq!((st, body["code"].as_i64()), (429, Some(8)), "{body}");
        let (st, _, body) = send(&app, "/internal/agent/v1/desired", bad, Some("host-secret")).await;
        assert_eq!((st, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
        // Without credentials the request runs (nothing to guess with).
        assert_eq!(send(&app, "/v1/account", bad, None).await.0, 200);
        // Another address is unaffected, and so is an IPv6 client.
        assert_eq!(send(&app, "/v1/account", "192.0.2.2", Some("good")).await.0, 200);
        assert_eq!(send(&app, "/v1/account", "2001:db8::1", Some("good")).await.0, 200);
    }

    #[tokio::test]
    async fn successes_and_requests_without_credentials_do_not_count() {
        let app = app(Guard::failures_only(limit(20, 3)));
        for _ in 0..50 {
            assert_eq!(send(&app, "/v1/account", "192.0.2.3", Some("good")).await.0, 200);
            assert_eq!(send(&app, "/v1/account", "192.0.2.3", None).await.0, 200);
        }
        // Agent paths count too.
        for _ in 0..3 {
            assert_eq!(send(&app, "/internal/agent/v1/desired", "192.0.2.3", Some("stolen")).await.0, 401);
        }
        assert_eq!(send(&app, "/v1/account", "192.0.2.3", Some("good")).await.0, 429);
    }
}
