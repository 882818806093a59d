//! Domain errors in the native shape: `{success: false, error: {code, message, details},
//! metadata}` with seed 001's status table. One exhaustive match.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::native::{ErrorDetails, ErrorEnvelope, ErrorInfo};
use nimbus_core::Error;

use super::handlers::metadata;
use crate::input::InputError;

#[derive(Debug)]
pub struct NativeError {
    pub error: Error,
    /// Extra details a handler knows (allowed values of a query parameter).
    pub details: Option<ErrorDetails>,
}

impl NativeError {
    /// An invalid field with the value sent and the values that would have been accepted.
    pub fn with_allowed(error: Error, value: &str, allowed_values: Vec<String>) -> Self {
        let field = match &error {
            Error::InvalidValue { label, .. } => Some(label.clone()),
            _ => None,
        };
        NativeError { error, details: Some(ErrorDetails { field, value: Some(value.to_owned()), allowed_values: Some(allowed_values) }) }
    }
}

impl From<Error> for NativeError {
    fn from(error: Error) -> Self {
        NativeError { error, details: None }
    }
}

/// Seed 001's `details: {field, value, allowed_values}` from what the extractor found.
impl From<InputError> for NativeError {
    fn from(e: InputError) -> Self {
        let details = (e.field.is_some() || e.value.is_some() || e.allowed_values.is_some()).then(|| ErrorDetails {
            field: e.field.clone(),
            value: e.value.clone(),
            allowed_values: e.allowed_values.clone(),
        });
        NativeError { error: e.to_error(), details }
    }
}

fn classify(e: &Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        Error::NotFound { .. } => (S::NOT_FOUND, "not_found"),
        Error::AlreadyExists { .. } => (S::CONFLICT, "already_exists"),
        Error::InvalidValue { .. } | Error::InvalidRequest { .. } => (S::BAD_REQUEST, "invalid_request"),
        Error::Unauthenticated => (S::UNAUTHORIZED, "authentication_failed"),
        Error::Forbidden { .. } => (S::FORBIDDEN, "forbidden"),
        Error::Conflict { .. } => (S::CONFLICT, "conflict"),
        Error::InsufficientCapacity { .. } => (S::CONFLICT, "insufficient_capacity"),
        Error::QuotaExceeded { .. } => (S::FORBIDDEN, "quota_exceeded"),
        Error::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
        Error::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "service_unavailable"),
        Error::Internal { .. } => (S::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

impl IntoResponse for NativeError {
    fn into_response(self) -> Response {
        let (status, code) = classify(&self.error);
        let details = self.details.or_else(|| match &self.error {
            Error::InvalidValue { label, .. } => Some(ErrorDetails { field: Some(label.clone()), ..ErrorDetails::default() }),
            _ => None,
        });
        let retry_after = match &self.error {
            Error::RateLimited { retry_after } => Some(crate::middleware::retry_after_secs(*retry_after)),
            _ => None,
        };
        let message = match &self.error {
            Error::Unauthenticated => "Invalid or missing API key.".to_owned(),
            Error::RateLimited { .. } => format!("Rate limit exceeded. Retry after {} seconds.", retry_after.unwrap_or(1)),
            other => other.external_message(),
        };
        let body = ErrorEnvelope {
            success: false,
            error: ErrorInfo { code: code.to_owned(), message, details, retry_after },
            metadata: metadata(),
        };
        crate::middleware::finish_error_response((status, Json(body)).into_response(), &self.error)
    }
}

/// A method the path does not serve: 405 in the envelope (seed 001 has no code of its own for it,
/// so it is `invalid_request`, as Lambda answers `global/invalid-parameters`).
pub async fn method_not_allowed() -> Response {
    let body = ErrorEnvelope {
        success: false,
        error: ErrorInfo {
            code: "invalid_request".into(),
            message: "This endpoint does not support this HTTP method.".into(),
            details: None,
            retry_after: None,
        },
        metadata: metadata(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::ConflictReason;

    #[test]
    fn error_table() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::not_found("instance", "x"), 404, "not_found"),
            (Error::AlreadyExists { kind: "x", name: "y".into() }, 409, "already_exists"),
            (Error::invalid("page", "bad"), 400, "invalid_request"),
            (Error::InvalidRequest { message: "bad".into() }, 400, "invalid_request"),
            (Error::Unauthenticated, 401, "authentication_failed"),
            (Error::Forbidden { message: "no".into() }, 403, "forbidden"),
            (Error::conflict(ConflictReason::InvalidState, "x"), 409, "conflict"),
            (Error::InsufficientCapacity { message: "x".into() }, 409, "insufficient_capacity"),
            (Error::QuotaExceeded { message: "x".into() }, 403, "quota_exceeded"),
            (Error::RateLimited { retry_after: std::time::Duration::from_secs(2) }, 429, "rate_limit_exceeded"),
            (Error::Unavailable { message: "x".into() }, 503, "service_unavailable"),
            (Error::internal("db"), 500, "server_error"),
        ];
        for (e, st, code) in cases {
            let (s, c) = classify(&e);
            assert_eq!((s.as_u16(), c), (st, code), "{e:?}");
        }
    }
}
