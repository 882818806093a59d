//! The `Idempotency-Key` layer, for every mutating request of every tenant dialect: the first
//! request with a key runs and its response is stored; the same key with the same request replays
//! that response byte for byte (with `Idempotent-Replayed: true`); the same key with another
//! request is refused (422); a repeat while the first still runs gets 409. A response that had no
//! lasting effect (429, 5xx) is not stored, so the client may retry.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use nimbus_control::idempotency;
use nimbus_store::{Claim, StoredResponse};
use sha2::{Digest, Sha256};

use crate::ApiState;

/// Largest response kept for replay.
const MAX_STORED: usize = 16 * 1024 * 1024;

fn dialect_error(path: &str, status: StatusCode, native_code: &str, lambda_code: &str, message: &str) -> Response {
    let body = if path.starts_with("/api/v1") {
        serde_json::json!({"error": {"code": lambda_code, "message": message, "suggestion": "Use a new Idempotency-Key for a new request."}})
    } else {
        serde_json::json!({"success": false, "error": {"code": native_code, "message": message},
            "metadata": {"request_id": crate::middleware::current_request_id(),
                         "timestamp": nimbus_core::clock::to_rfc3339(nimbus_core::clock::Clock::now_micros(&nimbus_core::clock::SystemClock))}})
    };
    (status, axum::Json(body)).into_response()
}

pub async fn layer(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let tenant = path.starts_with("/api/v1/") || path.starts_with("/v1/");
    let mutating = matches!(*req.method(), Method::POST | Method::PATCH | Method::PUT | Method::DELETE);
    let Some(key) = req.headers().get("idempotency-key").map(|v| v.to_str().map(str::to_owned)) else { return next.run(req).await };
    if !tenant || !mutating {
        return next.run(req).await;
    }
    let key = match key {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => k,
        _ => {
            return dialect_error(
                &path,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "global/invalid-parameters",
                "Idempotency-Key must be 1 to 255 printable characters.",
            )
        }
    };
    // Scope by API key; an unauthenticated request just runs (and gets its 401).
    let Some(secret) = crate::auth::presented_key(req.headers()) else { return next.run(req).await };
    let Ok(actor) = nimbus_control::auth::authenticate(&s.control, &secret).await else { return next.run(req).await };

    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await else {
        return dialect_error(
            &path,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "global/invalid-parameters",
            "Request body unreadable or too large.",
        );
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b" ");
    h.update(parts.uri.to_string().as_bytes());
    h.update(b"\n");
    h.update(&bytes);
    let hash = hex::encode(h.finalize());

    let claim = match idempotency::claim(&s.control, &actor, &key, &hash).await {
        Ok(Claim::Owned(claim)) => claim,
        Ok(Claim::Replay(r)) => {
            let body = base64::engine::general_purpose::STANDARD.decode(r.body_b64).unwrap_or_default();
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            if let Some(ct) = r.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert("content-type", ct);
            }
            resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
        Ok(Claim::InFlight) => {
            return dialect_error(
                &path,
                StatusCode::CONFLICT,
                "conflict",
                "global/internal-error",
                "A request with this Idempotency-Key is still in progress; retry shortly.",
            )
        }
        Ok(Claim::Unknown) => {
            return dialect_error(
                &path,
                StatusCode::CONFLICT,
                "idempotency_outcome_unknown",
                "global/idempotency-outcome-unknown",
                "The request with this Idempotency-Key made its change, but its server failed before answering; read the resource to see the result instead of retrying.",
            )
        }
        Ok(Claim::Mismatch) => {
            return dialect_error(
                &path,
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "global/idempotency-key-reused",
                "This Idempotency-Key was used with a different request.",
            )
        }
        Err(e) => return crate::lambda::LambdaError(e).into_response(),
    };

    // The request runs to its end in a task of its own: a client that disconnects (or times
    // out) drops this future, and the claim must still be completed or released, or every
    // retry would be told "in flight" until the claim expires.
    let control = s.control.clone();
    let run = async move {
        let resp = nimbus_store::IDEMPOTENCY.scope(claim.clone(), next.run(Request::from_parts(parts, Body::from(bytes)))).await;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let _ = idempotency::release(&control, &claim).await;
            return resp;
        }
        let (rparts, rbody) = resp.into_parts();
        let Ok(out) = axum::body::to_bytes(rbody, MAX_STORED).await else {
            let _ = idempotency::release(&control, &claim).await;
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let stored = StoredResponse {
            status: status.as_u16(),
            content_type: rparts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned),
            body_b64: base64::engine::general_purpose::STANDARD.encode(&out),
        };
        if let Err(e) = idempotency::complete(&control, &claim, &stored).await {
            tracing::warn!(error = %e, "storing an idempotent response failed");
        }
        Response::from_parts(rparts, Body::from(out))
    };
    match tokio::spawn(crate::middleware::carry_request_id(run)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "an idempotent request's task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
