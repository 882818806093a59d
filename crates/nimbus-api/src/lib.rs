//! The HTTP surface: one axum router serving every dialect on one port, the agent protocol and
//! operator endpoints.
//!
//! Handlers are thin: extract (auth `Actor`, dialect JSON), call one `nimbus-control` function,
//! render. Tower layers do only generic work: request ids, panic catching, logging of internal
//! errors with the request id.

pub mod agent;
pub mod auth;
pub mod authfail;
pub mod clusters;
pub mod console;
pub mod idempotency;
pub mod input;
pub mod lambda;
pub mod metrics;
pub mod middleware;
pub mod native;
pub mod openapi;
pub mod ratelimit;
pub mod server;
pub mod tls;
pub mod voltage;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use nimbus_control::Control;

/// Largest request body accepted: `user_data` may be 1 MiB, and JSON escaping can double it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiState {
    pub control: Control,
    pub limiter: Arc<ratelimit::RateLimiter>,
    pub lambda_cache: Arc<lambda::ListCache>,
    /// The bearer token that opens `/metrics` on a tenant listener; none: it is not served there.
    pub metrics_token: Option<Arc<metrics::Token>>,
}

impl ApiState {
    pub fn new(control: Control) -> Self {
        let limits = control.config().rate_limits.clone();
        ApiState {
            control,
            limiter: Arc::new(ratelimit::RateLimiter::new(limits)),
            lambda_cache: Arc::new(lambda::ListCache::default()),
            metrics_token: None,
        }
    }
}

/// Which planes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    pub tenant: bool,
    pub agent: bool,
    /// `/metrics` without a token: the operator's own listener (`--metrics-listen`).
    pub metrics: bool,
}

impl Planes {
    pub const ALL: Planes = Planes { tenant: true, agent: true, metrics: false };
    pub const TENANT: Planes = Planes { tenant: true, agent: false, metrics: false };
    pub const AGENT: Planes = Planes { tenant: false, agent: true, metrics: false };
    pub const METRICS: Planes = Planes { tenant: false, agent: false, metrics: true };
}

/// The complete application router.
pub fn router(state: ApiState) -> Router {
    router_for(state, Planes::ALL)
}

/// The router of a listener serving `planes`; `/healthz` is on every one.
pub fn router_for(state: ApiState, planes: Planes) -> Router {
    let mut r = Router::new();
    if planes.tenant {
        r = r
            .nest(
                "/api/v1",
                lambda::router()
                    .layer(axum::middleware::from_fn(middleware::lambda_deadline))
                    .merge(voltage::router())
                    .merge(clusters::router()),
            )
            .nest("/v1", native::router())
            .merge(console::router());
    }
    if planes.agent {
        r = r.nest("/internal/agent/v1", agent::router());
    }
    if planes.metrics {
        r = r.route("/metrics", get(metrics::open));
    } else if planes.tenant && state.metrics_token.is_some() {
        r = r.route("/metrics", get(metrics::with_token));
    }
    r.route("/healthz", get(|| async { "ok\n" }))
        .route_layer(axum::middleware::from_fn(middleware::note_route))
        .fallback(middleware::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::layer))
        .layer(axum::middleware::from_fn_with_state(authfail::Guard::new(&state), authfail::layer))
        .layer(axum::middleware::from_fn_with_state(state.clone(), console::layer))
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(state, middleware::observe))
        .layer(axum::middleware::from_fn(middleware::request_id))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(middleware::panic_response))
}
