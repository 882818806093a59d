//! Extractors of the native dialect: the authenticated, rate-limited actor (Bearer or
//! `X-API-Key`, as seed 001 documents; Basic works too), JSON bodies and path parameters, every
//! rejection in the native error envelope.

use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use nimbus_core::auth::Actor;
use nimbus_core::clock::{Clock, SystemClock};
use nimbus_core::Error;

use super::NativeError;
use crate::ratelimit::{Decision, RouteClass};
use crate::ApiState;

pub struct NativeActor(pub Actor);

impl FromRequestParts<ApiState> for NativeActor {
    type Rejection = NativeError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let secret = crate::auth::presented_key(&parts.headers).ok_or(Error::Unauthenticated)?;
        let actor = nimbus_control::auth::authenticate(&s.control, &secret).await?;
        let d = s.limiter.check_actor(&actor, RouteClass::Native);
        if let Some(slot) = parts.extensions.get::<LimitSlot>() {
            *slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        }
        if !d.allowed {
            return Err(Error::RateLimited { retry_after: d.retry_after }.into());
        }
        crate::auth::remember(parts, &actor);
        Ok(NativeActor(actor))
    }
}

/// The permission a native route needs, checked before its query or body is parsed.
pub type Needs<P> = crate::auth::Need<P, NativeError>;

/// Where the actor extractor leaves its rate-limit decision for `rate_limit_headers`.
#[derive(Clone, Default)]
pub struct LimitSlot(Arc<Mutex<Option<Decision>>>);

/// Adds `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds when the bucket is full
/// again) to every native response of an identified key, errors and 429s included.
pub async fn rate_limit_headers(mut req: Request, next: Next) -> Response {
    let slot = LimitSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    let decision = *slot.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = decision.filter(|d| d.limit != u32::MAX) {
        let reset = SystemClock.now_micros() / 1_000_000 + d.reset_after.as_secs_f64().ceil() as i64;
        for (name, value) in [
            ("x-ratelimit-limit", d.limit.to_string()),
            ("x-ratelimit-remaining", d.remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
    }
    resp
}

/// A JSON object body, parsed whatever the Content-Type says; errors in the native shape, with
/// `details.field` (and the value sent, and the allowed values of an enum) when a field is wrong.
pub struct NativeJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<ApiState> for NativeJson<T> {
    type Rejection = NativeError;

    async fn from_request(req: Request, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(NativeJson(crate::input::json_object(req).await?))
    }
}

/// Path parameters; an id that is not UTF-8 once percent-decoded is `invalid_request` naming the
/// parameter, not axum's plain-text 400.
pub struct NativePath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<ApiState> for NativePath<T> {
    type Rejection = NativeError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(NativePath(crate::input::path_params(parts).await?))
    }
}
