//! Domain errors in the Voltage Park (FastAPI) shape: validation failures are 422 with
//! `{"detail": [{"loc", "msg", "type"}]}`, everything else `{"detail": "<message>"}` with the
//! status the seed documents (400 for requests that cannot be done, 404 for unknown objects).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::Error;
use serde_json::json;

#[derive(Debug)]
pub struct VpError {
    pub error: Error,
    /// Where the invalid value was: `body`, `query` or `path`.
    pub loc: &'static str,
}

impl From<Error> for VpError {
    fn from(error: Error) -> Self {
        VpError { error, loc: "body" }
    }
}

impl VpError {
    pub fn at(loc: &'static str, error: Error) -> Self {
        VpError { error, loc }
    }
}

fn status(e: &Error) -> StatusCode {
    use StatusCode as S;
    match e {
        Error::NotFound { .. } => S::NOT_FOUND,
        Error::InvalidValue { .. } | Error::InvalidRequest { .. } => S::UNPROCESSABLE_ENTITY,
        Error::AlreadyExists { .. } | Error::Conflict { .. } | Error::InsufficientCapacity { .. } | Error::QuotaExceeded { .. } => {
            S::BAD_REQUEST
        }
        Error::Unauthenticated => S::UNAUTHORIZED,
        Error::Forbidden { .. } => S::FORBIDDEN,
        Error::RateLimited { .. } => S::TOO_MANY_REQUESTS,
        Error::Unavailable { .. } => S::SERVICE_UNAVAILABLE,
        Error::Internal { .. } => S::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for VpError {
    fn into_response(self) -> Response {
        let st = status(&self.error);
        let body = match &self.error {
            Error::InvalidValue { label, message } => {
                json!({"detail": [{"loc": [self.loc, label], "msg": message, "type": "value_error"}]})
            }
            Error::InvalidRequest { message } => json!({"detail": [{"loc": [self.loc], "msg": message, "type": "value_error"}]}),
            Error::Unauthenticated => json!({"detail": "Invalid or missing API token"}),
            Error::Internal { .. } => json!({"detail": "Internal Server Error"}),
            other => json!({"detail": other.external_message()}),
        };
        crate::middleware::finish_error_response((st, Json(body)).into_response(), &self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_seed() {
        assert_eq!(status(&Error::invalid("x", "y")), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(&Error::not_found("vm", "x")), StatusCode::NOT_FOUND);
        assert_eq!(status(&Error::QuotaExceeded { message: "x".into() }), StatusCode::BAD_REQUEST);
        assert_eq!(status(&Error::Unauthenticated), StatusCode::UNAUTHORIZED);
    }
}
