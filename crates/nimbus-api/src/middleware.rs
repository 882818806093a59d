//! Generic layers: request ids (echoed as `X-Request-Id`), the log line for internal errors, the
//! panic catcher and the top-level fallback; and [`input`], the parsing of path parameters, query
//! strings and JSON bodies that every dialect's extractors share, so that no malformed request is
//! ever answered with axum's plain-text rejection.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nimbus_core::ids::random_hex_id;

/// Attached by error renderers to responses for internal errors, so that the one log line that
/// explains them carries the request id.
#[derive(Clone, Debug)]
pub struct InternalErrorContext(pub String);

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// On a response that refused a request for a rate limit, for the request counter.
#[derive(Clone, Copy, Debug)]
struct RateLimitedMark;

/// The route template that answered, copied from the request to the response by
/// [`note_route`] so that [`observe`], outside the router, can label by it.
#[derive(Clone, Debug)]
struct Route(String);

/// A route layer: runs only for requests the router matched.
pub async fn note_route(path: Option<axum::extract::MatchedPath>, req: Request, next: Next) -> Response {
    let route = path.map(|p| p.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(Route(r));
    }
    resp
}

/// The dialect (or plane) a path belongs to, as a metric label.
pub fn dialect_label(path: &str) -> &'static str {
    match tenant_dialect(path) {
        Some(d) => d.label(),
        None if path.starts_with("/api/") => "lambda",
        None if path.starts_with("/internal/agent/") => "agent",
        None if path == "/metrics" || path == "/healthz" => "operator",
        None => "console",
    }
}

/// Counts and times every request (to its response head; a streamed body is not waited for).
/// Requests answered before routing (an unknown path, an idempotent replay, a failed-auth
/// lockout) have the route `none`, so that no client can mint label values.
pub async fn observe(axum::extract::State(state): axum::extract::State<crate::ApiState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let dialect = dialect_label(req.uri().path());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let resp = next.run(req).await;
    let route = resp.extensions().get::<Route>().map_or("none", |r| r.0.as_str());
    let t = state.control.telemetry();
    t.http_request(dialect, route, method, resp.status().as_u16(), started.elapsed().as_secs_f64());
    if resp.extensions().get::<RateLimitedMark>().is_some() {
        t.rate_limited(dialect);
    }
    resp
}

/// Whole seconds a client should wait, as `Retry-After` and `retry_after` report it (at least 1).
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// What every dialect's error response carries besides its body: `Retry-After` for a rate
/// limit, and the internal context the request-id layer logs for an internal error.
pub fn finish_error_response(mut resp: Response, e: &nimbus_core::Error) -> Response {
    match e {
        nimbus_core::Error::RateLimited { retry_after } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs(*retry_after).to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
            resp.extensions_mut().insert(RateLimitedMark);
        }
        nimbus_core::Error::Internal { internal } => {
            resp.extensions_mut().insert(InternalErrorContext(internal.clone()));
        }
        _ => {}
    }
    resp
}

tokio::task_local! {
    /// The request id, for error renderers that have no access to the request (the native
    /// dialect puts it in every body).
    pub static REQUEST_ID: String;
}

/// `f` with the current request id, for work the request hands to a task of its own (task
/// locals do not cross `tokio::spawn`).
pub fn carry_request_id<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    REQUEST_ID.scope(current_request_id(), f)
}

/// The current request's id, or a fresh one outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| random_hex_id())
}

pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(random_hex_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Some(ctx) = resp.extensions().get::<InternalErrorContext>() {
        tracing::error!(request_id = %id, %method, %path, error = %ctx.0, "internal error");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    let body = r#"{"error":{"code":"global/internal-error","message":"An internal error occurred.","suggestion":"Retry the request; if it persists, contact the operator."}}"#;
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The first segment of each path of a document (`/virtual-machines/{id}` → `virtual-machines`).
fn roots(doc: &utoipa::openapi::OpenApi) -> Vec<String> {
    doc.paths.paths.keys().filter_map(|p| p.trim_start_matches('/').split('/').next()).map(str::to_owned).collect()
}

/// The tenant dialects: native under `/v1`, the three that share `/api/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Native,
    Lambda,
    Voltage,
    Clusters,
}

impl Dialect {
    fn label(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Lambda => "lambda",
            Dialect::Voltage => "voltage",
            Dialect::Clusters => "clusters",
        }
    }
}

/// Which dialect owns `rest` (the path after `/api/v1/`): Voltage Park and clusters by the first
/// segments of their documents' paths (disjoint from Lambda's), Lambda otherwise.
fn api_v1_owner(rest: &str) -> Dialect {
    static VOLTAGE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    static CLUSTERS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let first = rest.split('/').next().unwrap_or_default();
    if CLUSTERS.get_or_init(|| roots(&crate::clusters::api().1)).iter().any(|r| r == first) {
        Dialect::Clusters
    } else if VOLTAGE.get_or_init(|| roots(&crate::voltage::api().1)).iter().any(|r| r == first) {
        Dialect::Voltage
    } else {
        Dialect::Lambda
    }
}

/// The tenant dialect `path` belongs to (native under `/v1`; Lambda, Voltage Park or clusters
/// under `/api/v1/`); `None` for a path outside them.
fn tenant_dialect(path: &str) -> Option<Dialect> {
    if path.starts_with("/v1/") || path == "/v1" {
        return Some(Dialect::Native);
    }
    path.strip_prefix("/api/v1/").map(api_v1_owner)
}

/// `e` in the error shape of the tenant dialect `path` belongs to, for answers given before any
/// dialect's handler runs; `None` for a path outside them.
pub fn dialect_error(path: &str, e: nimbus_core::Error) -> Option<Response> {
    Some(match tenant_dialect(path)? {
        Dialect::Native => crate::native::NativeError::from(e).into_response(),
        Dialect::Clusters => crate::clusters::ClError(e).into_response(),
        Dialect::Voltage => crate::voltage::VpError::from(e).into_response(),
        Dialect::Lambda => crate::lambda::LambdaError(e).into_response(),
    })
}

/// An unknown endpoint: 404 in the error shape of the dialect whose paths it is among.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    let e = nimbus_core::Error::NotFound { kind: "endpoint", id: uri.path().to_owned() };
    dialect_error(uri.path(), e).unwrap_or_else(|| {
        (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": {"code": "not_found", "message": "No such endpoint."}})))
            .into_response()
    })
}

/// Longest a tenant request may take. Some clients (SkyPilot) set no HTTP timeout at all, so a
/// stuck request must end on the server's side, with an error in the dialect's shape.
pub const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn lambda_deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => crate::lambda::LambdaError(nimbus_core::Error::Unavailable { message: "the request took too long; retry it".into() })
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `api_v1_owner` tells the dialects under `/api/v1` apart by their paths' first segments,
    /// which works only while no segment is in two documents.
    #[test]
    fn the_dialects_under_api_v1_have_disjoint_first_segments() {
        let docs = [("lambda", crate::lambda::api().1), ("voltage", crate::voltage::api().1), ("clusters", crate::clusters::api().1)];
        for (i, (a, da)) in docs.iter().enumerate() {
            for (b, db) in &docs[i + 1..] {
                let theirs = roots(db);
                for r in roots(da) {
                    assert!(!theirs.contains(&r), "/api/v1/{r} is in both the {a} and the {b} document");
                }
            }
        }
        assert!(matches!(api_v1_owner("virtual-machines/x"), Dialect::Voltage));
        assert!(matches!(api_v1_owner("clusters"), Dialect::Clusters));
        assert!(matches!(api_v1_owner("instances"), Dialect::Lambda));
    }
}
