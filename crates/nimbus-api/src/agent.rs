//! The agent protocol endpoints (`/internal/agent/v1/...`). Authenticated by host token or host
//! secret (register) or host secret (everything else), never by a tenant key. The credential is
//! always a header, checked by an extractor that runs before the body extractor, so an
//! unauthenticated request is answered 401 without its body being read.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use nimbus_control::agents;
use nimbus_core::ids::HostId;
use nimbus_core::Error;
use nimbus_proto as proto;

use crate::ApiState;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/register", post(register))
        .route("/report", post(report))
        .route("/desired", post(desired))
        .route("/metrics", post(metrics))
}

pub struct AgentError(Error);

impl From<Error> for AgentError {
    fn from(e: Error) -> Self {
        AgentError(e)
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::InvalidValue { .. } | Error::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Internal { .. } | Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        };
        let body = proto::AgentError { code: self.0.code().to_owned(), message: self.0.external_message() };
        crate::middleware::finish_error_response((status, Json(body)).into_response(), &self.0)
    }
}

/// JSON body for the agent endpoints, with errors in the agent error shape.
pub struct AgentJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<ApiState> for AgentJson<T> {
    type Rejection = AgentError;

    async fn from_request(req: axum::extract::Request, _: &ApiState) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), crate::MAX_BODY_BYTES)
            .await
            .map_err(|_| Error::InvalidRequest { message: "body unreadable or too large".into() })?;
        serde_json::from_slice(&bytes).map(AgentJson).map_err(|e| Error::InvalidRequest { message: e.to_string() }.into())
    }
}

/// The host whose secret authenticates this request.
pub struct AgentHost(pub HostId);

impl FromRequestParts<ApiState> for AgentHost {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let secret = crate::auth::presented_key(&parts.headers).ok_or(Error::Unauthenticated)?;
        Ok(AgentHost(agents::authenticate(&s.control, &secret).await?))
    }
}

/// A registration credential (host token or host secret) that was usable when the request
/// arrived; the registration re-checks it, and spends the token's use, in its transaction.
pub struct Registrant(pub String);

impl FromRequestParts<ApiState> for Registrant {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let credential = crate::auth::presented_key(&parts.headers).ok_or(Error::Unauthenticated)?;
        agents::check_registration_credential(&s.control, &credential).await?;
        Ok(Registrant(credential))
    }
}

async fn register(
    State(s): State<ApiState>,
    Registrant(credential): Registrant,
    AgentJson(mut req): AgentJson<proto::RegisterRequest>,
) -> Result<Json<proto::RegisterResponse>, AgentError> {
    req.token = credential;
    Ok(Json(agents::register(&s.control, req).await?))
}

async fn report(
    State(s): State<ApiState>,
    AgentHost(host): AgentHost,
    AgentJson(req): AgentJson<proto::ReportRequest>,
) -> Result<Json<proto::ReportResponse>, AgentError> {
    Ok(Json(agents::report(&s.control, &host, req).await?))
}

async fn desired(
    State(s): State<ApiState>,
    AgentHost(host): AgentHost,
    AgentJson(req): AgentJson<proto::DesiredRequest>,
) -> Result<Json<proto::DesiredResponse>, AgentError> {
    Ok(Json(agents::desired(&s.control, &host, req).await?))
}

async fn metrics(
    State(s): State<ApiState>,
    AgentHost(host): AgentHost,
    AgentJson(req): AgentJson<proto::MetricsRequest>,
) -> Result<Json<serde_json::Value>, AgentError> {
    let n = nimbus_control::metrics::ingest(&s.control, &host, req.samples).await?;
    Ok(Json(serde_json::json!({ "accepted": n })))
}
