//! Extractors of the Lambda dialect: the authenticated, rate-limited `Actor`, and JSON bodies
//! parsed whatever the Content-Type says (Lambda's own curl recipes and SkyPilot send none).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use nimbus_core::auth::Actor;
use nimbus_core::Error;
use serde::de::DeserializeOwned;

use super::LambdaError;
use crate::ratelimit::RouteClass;
use crate::ApiState;

pub struct LambdaActor(pub Actor);

impl FromRequestParts<ApiState> for LambdaActor {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let secret = crate::auth::presented_key(&parts.headers).ok_or(Error::Unauthenticated)?;
        let actor = nimbus_control::auth::authenticate(&s.control, &secret).await?;
        let class = if parts.uri.path().ends_with("/instance-operations/launch") { RouteClass::Launch } else { RouteClass::Default };
        let d = s.limiter.check(&actor.key_id, class);
        if !d.allowed {
            return Err(Error::RateLimited { retry_after: d.retry_after }.into());
        }
        crate::auth::remember(parts, &actor);
        Ok(LambdaActor(actor))
    }
}

/// The permission a Lambda route needs, checked before its query or body is parsed.
pub type Needs<P> = crate::auth::Need<P, LambdaError>;

pub struct LambdaJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for LambdaJson<T> {
    type Rejection = LambdaError;

    async fn from_request(req: Request, _: &ApiState) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), crate::MAX_BODY_BYTES).await.map_err(|_| Error::InvalidRequest {
            message: format!("request body is unreadable or larger than {} bytes", crate::MAX_BODY_BYTES),
        })?;
        // Every Lambda request body is a JSON object; serde would also accept an array for a
        // struct, which no client means.
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err(Error::InvalidRequest { message: "a JSON request body is required".into() }.into()),
            Some(b'{') => {}
            Some(_) => return Err(Error::InvalidRequest { message: "the request body must be a JSON object".into() }.into()),
        }
        serde_json::from_slice(&bytes)
            .map(LambdaJson)
            .map_err(|e| Error::InvalidRequest { message: format!("malformed JSON body: {e}") }.into())
    }
}
