//! The web console at `/console/`: a page, a script and a style sheet embedded in the binary
//! (no npm, no CDN), and the session endpoints that turn an API key into a cookie.
//!
//! The console is one more client of the public APIs: its script calls the Lambda dialect
//! (`/api/v1`) and the native one (`/v1`) with the session cookie instead of a key, so every
//! page's data comes through the same handlers, validation and domain calls as a key's, and a
//! key's permissions apply exactly (a READ session that forges a launch gets the API's 403).
//! [`layer`] does the exchange: a request with no key but a session cookie gets the session's
//! credential, once its CSRF token (the `X-CSRF-Token` header, which no cross-site form can
//! set) and its `Origin` (when sent) check out. Operators sign in with a one-use link from
//! `nimbus admin console-link`; their pages read hosts and organizations through
//! `nimbus_control::admin`, as `nimbus admin` does.

use axum::extract::{Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use nimbus_control::console::{self, Session};
use nimbus_core::clock::to_rfc3339;
use nimbus_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::native::NativeError;
use crate::ApiState;

/// The session cookie's name.
pub const COOKIE: &str = "nimbus_session";
/// The header a session's mutating requests carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Served with every console asset: nothing but this origin's own script and style runs, and
/// no other site may frame the console (clickjacking).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' blob:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", include_str!("assets/index.html")) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("assets/app.js")) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("assets/app.css")) }))
        .route("/console/session", get(session_get).post(session_create).delete(session_delete))
        .route("/console/login", get(link_login))
        .route("/console/api/hosts", get(operator_hosts))
        .route("/console/api/orgs", get(operator_orgs))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (axum::http::header::CONTENT_SECURITY_POLICY, CSP),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

fn set_cookie(value: &str, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("nimbus_session=; Path=/; Max-Age=0"))
}

/// The cookie that carries a new session, for as long as the session lasts.
fn session_cookie(s: &ApiState, new: &console::NewSession, over_tls: bool) -> HeaderValue {
    set_cookie(&new.secret, (new.expires_at - s.control.now()) / 1_000_000, over_tls)
}

/// Equal without telling by its timing where two tokens first differ.
fn same_token(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// True when `Origin` is absent (not every browser sends it on same-origin requests) or names
/// the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else { return true };
    let (Ok(origin), Some(host)) = (origin.to_str(), headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok())) else {
        return false;
    };
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

/// An error in the shape of the API the request was for.
fn dialect_error(path: &str, e: Error) -> Response {
    if path.starts_with("/api/v1") {
        crate::lambda::LambdaError(e).into_response()
    } else {
        NativeError::from(e).into_response()
    }
}

/// Turns a session cookie into the request's credential (see the module doc). Requests that
/// carry a key of their own are left alone: the cookie only ever stands in for a key.
pub async fn layer(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let applies = path.starts_with("/api/v1/") || path.starts_with("/v1/") || path.starts_with("/console/");
    if !applies || crate::auth::presented_key(req.headers()).is_some() {
        return next.run(req).await;
    }
    let Some(secret) = cookie(req.headers(), COOKIE) else { return next.run(req).await };
    let session = match console::session(&s.control, &secret).await {
        Ok(sess) => sess,
        // Signed out or expired: the request goes on without a credential (and gets its 401).
        Err(Error::Unauthenticated) => return next.run(req).await,
        Err(e) => return dialect_error(&path, e),
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let token = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !same_origin(req.headers()) || !same_token(token, &session.csrf) {
            return dialect_error(
                &path,
                Error::Forbidden {
                    message:
                        "cross-site request refused: a console request that changes something must come from the console (X-CSRF-Token)"
                            .into(),
                },
            );
        }
    }
    if session.actor.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {secret}")) {
            req.headers_mut().insert(axum::http::header::AUTHORIZATION, v);
        }
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

fn session_json(s: &Session) -> Value {
    match &s.actor {
        Some(a) => json!({
            "operator": false,
            "org_id": a.org_id.as_str(),
            "key_prefix": a.key_prefix,
            "permissions": a.permissions.names(),
            "csrf_token": s.csrf,
            "expires_at": to_rfc3339(s.expires_at),
        }),
        None => json!({"operator": true, "permissions": [], "csrf_token": s.csrf, "expires_at": to_rfc3339(s.expires_at)}),
    }
}

/// `GET /console/session`: who is signed in, and the CSRF token for the page's requests;
/// `data: null` when nobody is (the page then shows the sign-in form; not an error).
async fn session_get(session: Option<Extension<Session>>) -> Response {
    match session {
        Some(Extension(s)) => Json(json!({"data": session_json(&s)})).into_response(),
        None => Json(json!({"data": null})).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    api_key: String,
}

/// `POST /console/session {api_key}`: signs in; the answer sets the session cookie.
async fn session_create(State(s): State<ApiState>, req: Request) -> Response {
    let over_tls = req.extensions().get::<crate::server::OverTls>().is_some();
    if !same_origin(req.headers()) {
        return NativeError::from(Error::Forbidden { message: "cross-site sign-in refused".into() }).into_response();
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return NativeError::from(Error::InvalidRequest { message: "request body unreadable or too large".into() }).into_response();
    };
    let Ok(SignIn { api_key }) = serde_json::from_slice::<SignIn>(&body) else {
        return NativeError::from(Error::InvalidRequest { message: "expected {\"api_key\": \"…\"}".into() }).into_response();
    };
    match console::sign_in(&s.control, api_key.trim()).await {
        Ok((new, actor)) => {
            let session = Session { actor: Some(actor), csrf: new.csrf.clone(), expires_at: new.expires_at };
            let mut resp = Json(json!({"data": session_json(&session)})).into_response();
            resp.headers_mut().insert(SET_COOKIE, session_cookie(&s, &new, over_tls));
            resp
        }
        Err(e) => NativeError::from(e).into_response(),
    }
}

/// `DELETE /console/session`: signs out (the layer has checked the CSRF token).
async fn session_delete(State(s): State<ApiState>, headers: HeaderMap, session: Option<Extension<Session>>) -> Response {
    if session.is_none() {
        return NativeError::from(Error::Unauthenticated).into_response();
    }
    if let Some(secret) = cookie(&headers, COOKIE) {
        if let Err(e) = console::sign_out(&s.control, &secret).await {
            return NativeError::from(e).into_response();
        }
    }
    let mut resp = Json(json!({"data": {"signed_out": true}})).into_response();
    resp.headers_mut().insert(SET_COOKIE, set_cookie("", 0, false));
    resp
}

#[derive(Deserialize)]
struct Link {
    link: String,
}

/// `GET /console/login?link=…`: uses an operator's one-use link up and opens the hosts page.
async fn link_login(State(s): State<ApiState>, Query(q): Query<Link>, req: Request) -> Response {
    let over_tls = req.extensions().get::<crate::server::OverTls>().is_some();
    match console::operator_sign_in(&s.control, &q.link).await {
        Ok(new) => {
            let mut resp = Redirect::to("/console/#/hosts").into_response();
            resp.headers_mut().insert(SET_COOKIE, session_cookie(&s, &new, over_tls));
            resp
        }
        Err(e) => NativeError::from(e).into_response(),
    }
}

fn operator(session: Option<Extension<Session>>) -> Result<(), NativeError> {
    match session {
        Some(Extension(s)) if s.is_operator() => Ok(()),
        Some(_) => Err(Error::Forbidden { message: "operator pages need an operator session (nimbus admin console-link)".into() }.into()),
        None => Err(Error::Unauthenticated.into()),
    }
}

/// `GET /console/api/hosts` (operator): every host, its capacity, GPUs and heartbeat age.
async fn operator_hosts(State(s): State<ApiState>, session: Option<Extension<Session>>) -> Result<Json<Value>, NativeError> {
    operator(session)?;
    let now = s.control.now();
    let hosts = nimbus_control::admin::hosts(&s.control).await?;
    let res = |r: &nimbus_core::catalog::Resources| json!({"vcpus": r.vcpus, "memory_mib": r.memory_mib, "disk_gib": r.disk_gib});
    let data: Vec<Value> = hosts
        .iter()
        .map(|h| {
            json!({
                "id": h.id.as_str(), "name": h.name, "region": h.region, "driver": h.driver, "status": h.status.as_str(),
                "cpu_model": h.cpu_model, "total": res(&h.total), "used": res(&h.used), "free": res(&h.free()),
                "gpus": h.gpus.iter().map(|g| json!({"index": g.index, "model": g.model, "memory_mib": g.memory_mib, "uuid": g.uuid,
                    "instance_id": g.instance_id.as_ref().map(|i| i.as_str().to_owned()),
                    "health": g.health.as_str(), "reasons": g.health_reasons, "clean": g.clean,
                    "mig_devices": g.mig_devices.iter().map(|m| json!({"uuid": m.uuid, "profile": m.profile, "memory_mib": m.memory_mib,
                        "instance_id": m.instance_id.as_ref().map(|i| i.as_str().to_owned())})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
                "last_seen_at": to_rfc3339(h.last_seen_at),
                "heartbeat_age_s": (now - h.last_seen_at).max(0) / 1_000_000,
            })
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

/// `GET /console/api/orgs` (operator): organizations, their plans and instance quota use.
async fn operator_orgs(State(s): State<ApiState>, session: Option<Extension<Session>>) -> Result<Json<Value>, NativeError> {
    operator(session)?;
    let quota = s.control.config().quotas.instances_per_org;
    let orgs = nimbus_control::admin::orgs_with_usage(&s.control).await?;
    let data: Vec<Value> = orgs
        .iter()
        .map(|(o, live)| {
            json!({"id": o.id.as_str(), "name": o.name, "email": o.email, "plan": o.plan, "created_at": to_rfc3339(o.created_at),
                   "instances": live, "instances_quota": quota, "spend_limit_cents": o.spend_limit_cents})
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; nimbus_session=nbs_x ; b=2".parse().unwrap_or(HeaderValue::from_static("")));
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("nbs_x"));
        assert_eq!(cookie(&h, "c"), None);
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h), "no Origin: a same-origin request of a browser that omits it");
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:9999"));
        assert!(!same_origin(&h), "another port is another origin");
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd"));
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let v = set_cookie("nbs_s", 60, true);
        let v = v.to_str().unwrap_or_default();
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Strict") && v.contains("Secure") && v.contains("Max-Age=60"), "{v}");
        assert!(!set_cookie("nbs_s", 60, false).to_str().unwrap_or_default().contains("Secure"));
    }
}
