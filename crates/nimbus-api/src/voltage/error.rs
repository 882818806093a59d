//! Domain errors in the Voltage Park (FastAPI) shape: validation failures are 422 with
//! `{"detail": [{"loc", "msg", "type"}]}`, everything else `{"detail": "<message>"}` with the
//! status the seed documents (400 for requests that cannot be done, 404 for unknown objects).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::voltage as w;
use nimbus_core::Error;

use crate::input::InputError;

/// The answers every keyed operation documents besides its own: no key, a missing permission, a
/// rate limit (`responses(..., KeyErrors)` in a handler's annotation).
#[allow(dead_code)] // only its derive is used: it documents, it is never built
#[derive(utoipa::IntoResponses)]
pub enum KeyErrors {
    #[response(status = 401, description = "Invalid or missing API token")]
    Unauthorized(w::ErrorBody),
    #[response(status = 403, description = "Missing permission")]
    Forbidden(w::ErrorBody),
    #[response(status = 429, description = "Rate limited")]
    RateLimited(w::ErrorBody),
}

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

/// An extractor's finding, at its `loc` (`body`, `query`, `path`).
impl From<InputError> for VpError {
    fn from(e: InputError) -> Self {
        VpError { error: e.to_error(), loc: e.loc }
    }
}

impl VpError {
    pub fn at(loc: &'static str, error: Error) -> Self {
        VpError { error, loc }
    }
}

/// A field path (`ssh_keys[1]`, `tags.team`) as FastAPI's `loc` items: names and list indexes.
fn loc_parts(label: &str) -> Vec<w::LocPart> {
    let mut out = Vec::new();
    for name in label.split('.') {
        let mut pieces = name.split('[');
        if let Some(first) = pieces.next().filter(|f| !f.is_empty()) {
            out.push(w::LocPart::Name(first.to_owned()));
        }
        for idx in pieces {
            let idx = idx.trim_end_matches(']');
            out.push(match idx.parse() {
                Ok(i) => w::LocPart::Index(i),
                Err(_) => w::LocPart::Name(idx.to_owned()),
            });
        }
    }
    if out.is_empty() {
        out.push(w::LocPart::Name(label.to_owned()));
    }
    out
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
        let issue = |loc: Vec<w::LocPart>, msg: &str| {
            Json(w::ValidationErrorBody { detail: vec![w::ValidationIssue { loc, msg: msg.to_owned(), kind: "value_error".into() }] })
                .into_response()
        };
        let detail = |d: String| Json(w::ErrorBody { detail: d }).into_response();
        let body = match &self.error {
            Error::InvalidValue { label, message } => {
                let mut loc = vec![w::LocPart::Name(self.loc.into())];
                loc.extend(loc_parts(label));
                issue(loc, message)
            }
            Error::InvalidRequest { message } => issue(vec![w::LocPart::Name(self.loc.into())], message),
            Error::Unauthenticated => detail("Invalid or missing API token".into()),
            Error::Internal { .. } => detail("Internal Server Error".into()),
            other => detail(other.external_message()),
        };
        crate::middleware::finish_error_response((st, body).into_response(), &self.error)
    }
}

/// A method the path does not serve: FastAPI's `405 {"detail": "Method Not Allowed"}`.
pub async fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, Json(w::ErrorBody { detail: "Method Not Allowed".into() })).into_response()
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

    #[test]
    fn field_paths_become_loc_items() {
        use w::LocPart::{Index, Name};
        assert_eq!(loc_parts("name"), vec![Name("name".into())]);
        assert_eq!(loc_parts("ssh_keys[1]"), vec![Name("ssh_keys".into()), Index(1)]);
        assert_eq!(loc_parts("a.b[0][2].c"), vec![Name("a".into()), Name("b".into()), Index(0), Index(2), Name("c".into())]);
        assert_eq!(loc_parts("pagination.limit"), vec![Name("pagination".into()), Name("limit".into())]);
    }
}
