//! Domain errors in Lambda's shape: `{"error": {"code", "message", "suggestion"}}` with the
//! status codes the real clients accept. One exhaustive match: a new domain error variant does not
//! compile until this dialect decides how to show it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::lambda::{ErrorBody, ErrorDetail};
use nimbus_core::{ConflictReason, Error};

use crate::input::InputError;

#[derive(Debug)]
pub struct LambdaError(pub Error);

impl From<Error> for LambdaError {
    fn from(e: Error) -> Self {
        LambdaError(e)
    }
}

impl From<InputError> for LambdaError {
    fn from(e: InputError) -> Self {
        LambdaError(e.to_error())
    }
}

/// `(status, code, suggestion)` for a domain error.
fn classify(e: &Error) -> (StatusCode, &'static str, &'static str) {
    use StatusCode as S;
    match e {
        Error::NotFound { .. } => (S::NOT_FOUND, "global/object-does-not-exist", "Check the id or name, then try again."),
        Error::AlreadyExists { kind: "file system", .. } => (S::BAD_REQUEST, "global/duplicate", "Choose a different name."),
        Error::AlreadyExists { .. } => (S::BAD_REQUEST, "global/invalid-parameters", "Choose a different name."),
        Error::InvalidValue { .. } | Error::InvalidRequest { .. } => {
            (S::BAD_REQUEST, "global/invalid-parameters", "Check the request parameters, then try again.")
        }
        Error::Unauthenticated => (S::UNAUTHORIZED, "global/invalid-api-key", "Check your API key or create a new one, then try again."),
        // Lambda keys have no permissions, so its clients parse exactly one 403 code; the message
        // names the missing permission.
        Error::Forbidden { .. } => (S::FORBIDDEN, "global/account-inactive", "Use an API key with the permission this operation needs."),
        Error::Conflict { reason, .. } => match reason {
            ConflictReason::FileSystemInUse => {
                (S::BAD_REQUEST, "filesystems/filesystem-in-use", "Terminate the instances using the file system first.")
            }
            ConflictReason::FileSystemWrongRegion => (
                S::BAD_REQUEST,
                "instance-operations/launch/file-system-in-wrong-region",
                "Launch in the file system's region, or use a file system in this region.",
            ),
            ConflictReason::FirewallRulesetInUse => {
                (S::BAD_REQUEST, "firewall-rulesets/firewall-ruleset-in-use", "Terminate the instances using the ruleset first.")
            }
            ConflictReason::InvalidState => {
                (S::BAD_REQUEST, "global/invalid-parameters", "Wait for the instance to change state, then try again.")
            }
            ConflictReason::Concurrent => (S::CONFLICT, "global/internal-error", "Retry the request."),
        },
        Error::InsufficientCapacity { .. } => {
            (S::BAD_REQUEST, "instance-operations/launch/insufficient-capacity", "Try another region or instance type, or try again later.")
        }
        Error::QuotaExceeded { .. } => {
            (S::BAD_REQUEST, "global/quota-exceeded", "Free some resources, or ask the operator for a higher quota.")
        }
        Error::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "global/too-many-requests", "Slow down and retry after the Retry-After delay."),
        Error::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "global/service-unavailable", "Try again later."),
        Error::Internal { .. } => {
            (S::INTERNAL_SERVER_ERROR, "global/internal-error", "Try again later; if it persists, contact the operator.")
        }
    }
}

fn message(e: &Error) -> String {
    match e {
        Error::Unauthenticated => "API key was invalid, expired, or deleted.".to_owned(),
        Error::InsufficientCapacity { .. } => "Not enough capacity to fulfill launch request.".to_owned(),
        Error::RateLimited { .. } => "Too many requests.".to_owned(),
        Error::NotFound { kind, id } => {
            let mut k = kind.to_string();
            if let Some(f) = k.get(0..1) {
                let up = f.to_uppercase();
                k.replace_range(0..1, &up);
            }
            format!("{k} {id:?} does not exist.")
        }
        other => other.external_message(),
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let (status, code, suggestion) = classify(&self.0);
        let body =
            ErrorBody { error: ErrorDetail { code: code.to_owned(), message: message(&self.0), suggestion: Some(suggestion.to_owned()) } };
        crate::middleware::finish_error_response((status, Json(body)).into_response(), &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden table: every variant's status and code in this dialect.
    #[test]
    fn error_table() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::not_found("instance", "x"), 404, "global/object-does-not-exist"),
            (Error::AlreadyExists { kind: "file system", name: "a".into() }, 400, "global/duplicate"),
            (Error::AlreadyExists { kind: "SSH key", name: "a".into() }, 400, "global/invalid-parameters"),
            (Error::invalid("name", "bad"), 400, "global/invalid-parameters"),
            (Error::InvalidRequest { message: "bad".into() }, 400, "global/invalid-parameters"),
            (Error::Unauthenticated, 401, "global/invalid-api-key"),
            (Error::Forbidden { message: "no".into() }, 403, "global/account-inactive"),
            (Error::conflict(ConflictReason::FileSystemInUse, "x"), 400, "filesystems/filesystem-in-use"),
            (Error::conflict(ConflictReason::FileSystemWrongRegion, "x"), 400, "instance-operations/launch/file-system-in-wrong-region"),
            (Error::conflict(ConflictReason::FirewallRulesetInUse, "x"), 400, "firewall-rulesets/firewall-ruleset-in-use"),
            (Error::conflict(ConflictReason::InvalidState, "x"), 400, "global/invalid-parameters"),
            (Error::conflict(ConflictReason::Concurrent, "x"), 409, "global/internal-error"),
            (Error::InsufficientCapacity { message: "x".into() }, 400, "instance-operations/launch/insufficient-capacity"),
            (Error::QuotaExceeded { message: "x".into() }, 400, "global/quota-exceeded"),
            (Error::RateLimited { retry_after: std::time::Duration::from_secs(3) }, 429, "global/too-many-requests"),
            (Error::Unavailable { message: "x".into() }, 503, "global/service-unavailable"),
            (Error::internal("db down"), 500, "global/internal-error"),
        ];
        for (e, status, code) in cases {
            let (s, c, sugg) = classify(&e);
            assert_eq!((s.as_u16(), c), (status, code), "{e:?}");
            assert!(!sugg.is_empty());
        }
        assert!(!message(&Error::internal("secret detail")).contains("secret"));
    }
}
