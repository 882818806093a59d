//! Extractors of the native dialect: the authenticated, rate-limited actor (Bearer or
//! `X-API-Key`, as seed 001 documents; Basic works too).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use nimbus_core::auth::Actor;
use nimbus_core::Error;

use super::NativeError;
use crate::ratelimit::RouteClass;
use crate::ApiState;

pub struct NativeActor(pub Actor);

impl FromRequestParts<ApiState> for NativeActor {
    type Rejection = NativeError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let secret = crate::auth::presented_key(&parts.headers).ok_or(Error::Unauthenticated)?;
        let actor = nimbus_control::auth::authenticate(&s.control, &secret).await?;
        let d = s.limiter.check(&actor.key_id, RouteClass::Default);
        if !d.allowed {
            return Err(Error::RateLimited { retry_after: d.retry_after }.into());
        }
        Ok(NativeActor(actor))
    }
}
