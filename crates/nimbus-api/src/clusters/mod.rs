//! The clusters dialect under `/api/v1/clusters` (seed 003: CockroachDB Cloud's cluster API),
//! over `nimbus_control::clusters`: Bearer keys (whose service account is the `creator_id`),
//! errors as `{"code": <gRPC code>, "message"}` with the matching HTTP status, and the seed's
//! `pagination` object on lists.

mod handlers;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use nimbus_core::auth::Actor;
use nimbus_core::Error;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::input::{self, InputError};
use crate::ApiState;

/// The clusters router and its OpenAPI document, from the same handler list.
pub fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use handlers::*;
    let (router, doc) = OpenApiRouter::with_openapi(doc_base())
        .routes(routes!(list, create))
        .routes(routes!(available_regions))
        .routes(routes!(get_one, delete))
        .routes(routes!(nodes))
        .routes(routes!(spend_limit))
        .split_for_parts();
    (router.method_not_allowed_fallback(method_not_allowed), doc)
}

/// A method the path does not serve: 405 with gRPC's UNIMPLEMENTED (12), as grpc-gateway answers.
async fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({"code": 12, "message": "Method Not Allowed"}))).into_response()
}

pub fn router() -> Router<ApiState> {
    api().0
}

fn doc_base() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
    crate::openapi::base(
        "Nimbus: clusters dialect (CockroachDB Cloud shaped)",
        "Multi-node GPU clusters in the shape of CockroachDB Cloud's cluster API, served by Nimbus at /api/v1/clusters. \
         Errors are {\"code\": <gRPC code>, \"message\"}. Generated from code; see docs/clusters.md.",
        "/api/v1",
        vec![("bearerAuth", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))],
    )
}

/// A domain error in this dialect's shape.
#[derive(Debug)]
pub struct ClError(pub Error);

impl From<Error> for ClError {
    fn from(e: Error) -> Self {
        ClError(e)
    }
}

/// HTTP status and gRPC code (as grpc-gateway maps them) of an error.
pub fn status_and_code(e: &Error) -> (StatusCode, i64) {
    use StatusCode as S;
    match e {
        Error::InvalidValue { .. } | Error::InvalidRequest { .. } => (S::BAD_REQUEST, 3),
        Error::NotFound { .. } => (S::NOT_FOUND, 5),
        Error::AlreadyExists { .. } => (S::CONFLICT, 6),
        Error::Forbidden { .. } => (S::FORBIDDEN, 7),
        Error::QuotaExceeded { .. } | Error::RateLimited { .. } => (S::TOO_MANY_REQUESTS, 8),
        Error::Conflict { .. } | Error::InsufficientCapacity { .. } => (S::BAD_REQUEST, 9),
        Error::Internal { .. } => (S::INTERNAL_SERVER_ERROR, 13),
        Error::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, 14),
        Error::Unauthenticated => (S::UNAUTHORIZED, 16),
    }
}

impl IntoResponse for ClError {
    fn into_response(self) -> Response {
        let (st, code) = status_and_code(&self.0);
        let message = match &self.0 {
            Error::Unauthenticated => "missing or invalid secret key".to_owned(),
            Error::Internal { .. } => "internal error".to_owned(),
            e => e.external_message(),
        };
        crate::middleware::finish_error_response((st, Json(json!({"code": code, "message": message}))).into_response(), &self.0)
    }
}

/// The caller, from `Authorization: Bearer <secret key>`.
pub struct ClActor(pub Actor);

impl FromRequestParts<ApiState> for ClActor {
    type Rejection = ClError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let actor = crate::auth::plan_limited_actor(&parts.headers, s).await?;
        crate::auth::remember(parts, &actor);
        Ok(ClActor(actor))
    }
}

/// The permission a clusters route needs, checked before its query or body is parsed.
pub type Needs<P> = crate::auth::Need<P, ClError>;

/// An extractor's finding: INVALID_ARGUMENT naming the problem.
impl From<InputError> for ClError {
    fn from(e: InputError) -> Self {
        ClError(e.to_error())
    }
}

/// A JSON object body, whatever the Content-Type; anything else is INVALID_ARGUMENT naming the
/// problem (and the field, when one is at fault).
pub struct ClJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<ApiState> for ClJson<T> {
    type Rejection = ClError;

    async fn from_request(req: Request, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(ClJson(input::json_object(req).await?))
    }
}

/// Path parameters; one that is not UTF-8 once percent-decoded is INVALID_ARGUMENT.
pub struct ClPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<ApiState> for ClPath<T> {
    type Rejection = ClError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(ClPath(input::path_params(parts).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_grpc_codes() {
        assert_eq!(status_and_code(&Error::not_found("cluster", "x")), (StatusCode::NOT_FOUND, 5));
        assert_eq!(status_and_code(&Error::invalid("name", "bad")), (StatusCode::BAD_REQUEST, 3));
        assert_eq!(status_and_code(&Error::Unauthenticated), (StatusCode::UNAUTHORIZED, 16));
        assert_eq!(status_and_code(&Error::Forbidden { message: "x".into() }), (StatusCode::FORBIDDEN, 7));
    }
}
