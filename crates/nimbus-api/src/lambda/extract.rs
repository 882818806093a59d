//! Extractors of the Lambda dialect: the authenticated, rate-limited `Actor`, JSON bodies parsed
//! whatever the Content-Type says (Lambda's own curl recipes and SkyPilot send none), path
//! parameters and query strings, every rejection in Lambda's error shape.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use nimbus_core::auth::Actor;
use nimbus_core::Error;
use serde::de::DeserializeOwned;

use super::LambdaError;
use crate::input;
use crate::ratelimit::RouteClass;
use crate::ApiState;

pub struct LambdaActor(pub Actor);

impl FromRequestParts<ApiState> for LambdaActor {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let secret = crate::auth::presented_key(&parts.headers).ok_or(Error::Unauthenticated)?;
        let actor = nimbus_control::auth::authenticate(&s.control, &secret).await?;
        let class = if parts.uri.path().ends_with("/instance-operations/launch") { RouteClass::Launch } else { RouteClass::Default };
        let d = s.limiter.check_actor(&actor, class);
        if !d.allowed {
            return Err(Error::RateLimited { retry_after: d.retry_after }.into());
        }
        crate::auth::remember(parts, &actor);
        Ok(LambdaActor(actor))
    }
}

/// The permission a Lambda route needs, checked before its query or body is parsed.
pub type Needs<P> = crate::auth::Need<P, LambdaError>;

/// A JSON object body, whatever the Content-Type says; failures in Lambda's error shape.
pub struct LambdaJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for LambdaJson<T> {
    type Rejection = LambdaError;

    async fn from_request(req: Request, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(LambdaJson(input::json_object(req).await?))
    }
}

/// Path parameters; an id that is not UTF-8 once percent-decoded is `global/invalid-parameters`,
/// not axum's plain-text 400.
pub struct LambdaPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<ApiState> for LambdaPath<T> {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(LambdaPath(input::path_params(parts).await?))
    }
}

/// The query string as `T`, strictly decoded (text that is not UTF-8 is refused rather than
/// read as U+FFFD); failures in Lambda's error shape.
pub struct LambdaQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<ApiState> for LambdaQuery<T> {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(LambdaQuery(input::query(parts.uri.query())?))
    }
}
