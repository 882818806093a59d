//! `/metrics`: the control plane's Prometheus metrics (`nimbus_control::telemetry`) for the
//! operator's scraper. Served without credentials only on the operator's own listener
//! (`--metrics-listen`); on a tenant listener only with the metrics token as a bearer token
//! (`--metrics-token`), and not at all without one. A tenant API key never opens it.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::ApiState;

/// The Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics token, kept only as its digest.
pub struct Token([u8; 32]);

impl Token {
    /// At least 16 characters: it guards operational detail (hosts, capacity, volumes).
    pub fn new(plain: &str) -> Result<Token, String> {
        if plain.len() < 16 || !plain.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the metrics token must be at least 16 printable ASCII characters without spaces".into());
        }
        Ok(Token(Sha256::digest(plain.as_bytes()).into()))
    }

    /// Digests are compared, so the time taken says nothing about the token's characters.
    fn matches(&self, offered: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(offered.as_bytes()).into();
        d.iter().zip(self.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

async fn answer(s: &ApiState) -> Response {
    let body = nimbus_control::telemetry::render(&s.control).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

pub async fn open(State(s): State<ApiState>) -> Response {
    answer(&s).await
}

pub async fn with_token(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let offered = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match (&s.metrics_token, offered) {
        (Some(t), Some(o)) if t.matches(o.trim()) => answer(&s).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"nimbus-metrics\"")],
            axum::Json(serde_json::json!({"error": {"code": "unauthenticated", "message": "/metrics takes the operator's metrics token as a bearer token."}})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself_and_short_tokens_are_refused() {
        let t = Token::new("a-long-enough-token").expect("valid");
        assert!(t.matches("a-long-enough-token"));
        assert!(!t.matches("a-long-enough-tokeN"));
        assert!(!t.matches(""));
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space in it, long").is_err());
    }
}
