//! The HTTP layer every dialect's client shares: the dialect's auth header, a timeout on every
//! request, retries of 429 and 503 (and of connections that could not be made) with exponential
//! backoff and full jitter that honour `Retry-After`, and an `Idempotency-Key` on every mutating
//! request, the same across its retries, so a retried create is never done twice by a server
//! that keeps idempotency keys (the native API does).

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::Method;

use crate::{ClientError, Result};

/// How a dialect presents the key.
#[derive(Clone, Debug)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (Lambda, native, clusters, Voltage Park).
    Bearer(String),
    /// `Authorization: Basic base64(<key>:)` (Lambda's curl recipes).
    Basic(String),
    /// `X-API-Key: <key>`.
    XApiKey(String),
    /// `x-api-token: <key>` (Voltage Park).
    XApiToken(String),
}

/// When and how often a request is tried again.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Tries in all (1: no retry).
    pub max_attempts: u32,
    /// The first backoff's upper bound; it doubles per retry, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform delay in `[0, min(max, base·2^retry)]`.
    fn backoff(&self, retry: u32) -> Duration {
        let cap = self.base_delay.saturating_mul(1u32 << retry.min(20)).min(self.max_delay);
        let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at `max`.
pub fn retry_after(v: &str, now: chrono::DateTime<chrono::Utc>, max: Duration) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&chrono::Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(max))
}

/// A request's answer: status, its headers, body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// The environment variable naming extra trusted CA certificates (PEM), for a server with a
/// self-signed or private-CA certificate (`nimbus server` makes a self-signed one; its
/// `<data-dir>/tls/server.crt` is what to point this at).
pub const CA_CERT_ENV: &str = "NIMBUS_CA_CERT";

fn http_client(mut b: reqwest::ClientBuilder) -> reqwest::Client {
    if let Some(path) = std::env::var_os(CA_CERT_ENV).filter(|p| !p.is_empty()) {
        // A file that does not load adds no trust: requests then fail the certificate check,
        // which says what is wrong, rather than trusting more than was asked.
        if let Ok(pem) = std::fs::read(&path) {
            for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                b = b.add_root_certificate(c);
            }
        }
    }
    b.build().unwrap_or_default()
}

#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    auth: Auth,
    retry: RetryPolicy,
}

impl Transport {
    /// What every client starts with: a 60 s timeout and the default retry policy.
    pub fn with_defaults(auth: Auth) -> Self {
        Self::new(auth, Duration::from_secs(60), RetryPolicy::default())
    }

    pub fn new(auth: Auth, timeout: Duration, retry: RetryPolicy) -> Self {
        let http = http_client(reqwest::Client::builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(10))));
        Transport { http, auth, retry }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = http_client(reqwest::Client::builder().timeout(timeout));
        self
    }

    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::Bearer(k) => rb.bearer_auth(k),
            Auth::Basic(k) => rb.basic_auth(k, Some("")),
            Auth::XApiKey(k) => rb.header("x-api-key", k),
            Auth::XApiToken(k) => rb.header("x-api-token", k),
        }
    }

    /// Sends `method url` (with `query` and a JSON `body`), retrying as the policy says. A
    /// mutating request carries `idempotency_key`, or one made here, on every try.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        query: &[(String, String)],
        body: Option<&serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer> {
        let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
        let key = match idempotency_key {
            Some(k) => Some(k.to_owned()),
            None if mutating => Some(hex::encode(rand::thread_rng().gen::<[u8; 16]>())),
            None => None,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut rb = self.authorize(self.http.request(method.clone(), url));
            if !query.is_empty() {
                rb = rb.query(query);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(k) = &key {
                rb = rb.header("idempotency-key", k);
            }
            let last = attempt >= self.retry.max_attempts.max(1);
            let resp = match rb.send().await {
                Ok(r) => r,
                // Nothing reached the server: safe to try again.
                Err(e) if e.is_connect() && !last => {
                    tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
                    continue;
                }
                Err(e) => return Err(ClientError::Transport(e)),
            };
            let status = resp.status().as_u16();
            if (status == 429 || status == 503) && !last {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, chrono::Utc::now(), self.retry.max_delay))
                    .unwrap_or_else(|| self.retry.backoff(attempt - 1));
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = resp.bytes().await.map_err(ClientError::Transport)?;
            return Ok(Answer { status, body });
        }
    }
}

/// Reads `read()` every 250 ms until its status (`status_of`) is `wanted`; an error once it is
/// one of `hopeless` or `timeout` has passed (the `wait_until_ready` of every dialect).
pub(crate) async fn poll_until<T, F, Fut>(
    id: &str,
    wanted: &str,
    hopeless: &[&str],
    timeout: Duration,
    read: F,
    status_of: impl Fn(&T) -> String,
) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = std::time::Instant::now();
    loop {
        let v = read().await?;
        let status = status_of(&v);
        if status == wanted {
            return Ok(v);
        }
        if start.elapsed() > timeout || hopeless.contains(&status.as_str()) {
            return Err(ClientError::Wait { id: id.to_owned(), wanted: wanted.to_owned(), last: status });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where a dialect's paths start under a server root (`http://h:8080/` and `/v1`).
pub(crate) fn dialect_base(root: &str, prefix: &str) -> String {
    format!("{}{prefix}", root.trim_end_matches('/'))
}

/// A request body as JSON; a type that cannot be encoded is `ClientError::Unexpected`.
pub(crate) fn json_body<B: serde::Serialize>(b: &B) -> Result<serde_json::Value> {
    serde_json::to_value(b).map_err(|e| ClientError::Unexpected { status: 0, body: format!("request body: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_seconds_or_a_date_and_backoff_within_bounds() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z").map(|d| d.with_timezone(&chrono::Utc)).expect("date");
        let max = Duration::from_secs(30);
        assert_eq!(retry_after("1", now, max), Some(Duration::from_secs(1)));
        assert_eq!(retry_after("120", now, max), Some(max), "capped");
        assert_eq!(retry_after("Mon, 30 Nov 2026 10:00:05 +0000", now, max), Some(Duration::from_secs(5)));
        assert_eq!(retry_after("soon", now, max), None);
        let p = RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_millis(300) };
        for retry in 0..6 {
            let cap = Duration::from_millis(100 * (1 << retry)).min(Duration::from_millis(300));
            assert!(p.backoff(retry) <= cap);
        }
    }
}
