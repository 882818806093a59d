//! The native API at `/v1` (seed 001): the `{success, data, metadata}` envelope, its error
//! shape and status table, pagination, filtering and sorting. Same domain core as every other
//! dialect: an instance launched through the Lambda API is listed here too.

mod account;
mod billing;
mod error;
mod extract;
mod firewall;
mod handlers;
mod metrics;
pub mod page;
mod service_accounts;
mod storage;
mod vpn;
mod webhooks;

use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::NativeError;

use crate::ApiState;

/// The native router and its OpenAPI document, from one handler list.
pub fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use handlers::*;
    let doc =
        crate::openapi::base("Nimbus native API", "Nimbus's own API at /v1 (seed 001 conventions). Generated from code.", "/v1", vec![]);
    let (router, doc) = OpenApiRouter::with_openapi(doc)
        .routes(routes!(instances_list, instance_create))
        .routes(routes!(instance_get, instance_update, instance_delete))
        .routes(routes!(instance_restart))
        .routes(routes!(instance_stop))
        .routes(routes!(instance_start))
        .routes(routes!(instance_resize))
        .routes(routes!(instance_network))
        .routes(routes!(instance_gpus))
        .routes(routes!(storage::volumes_list, storage::volume_create))
        .routes(routes!(storage::volume_get, storage::volume_delete))
        .routes(routes!(storage::volume_attach))
        .routes(routes!(storage::volume_detach))
        .routes(routes!(storage::volume_resize))
        .routes(routes!(storage::snapshots_list, storage::snapshot_create))
        .routes(routes!(storage::snapshot_get, storage::snapshot_delete))
        .routes(routes!(storage::snapshot_restore))
        .routes(routes!(account::account_get, account::account_update))
        .routes(routes!(account::account_quota))
        .routes(routes!(account::api_keys_list, account::api_key_create))
        .routes(routes!(account::api_key_delete))
        .routes(routes!(service_accounts::service_accounts_list, service_accounts::service_account_create))
        .routes(routes!(
            service_accounts::service_account_get,
            service_accounts::service_account_update,
            service_accounts::service_account_delete
        ))
        .routes(routes!(service_accounts::service_account_api_keys_list, service_accounts::service_account_api_key_create))
        .routes(routes!(service_accounts::service_account_api_key_delete))
        .routes(routes!(firewall::firewall_rules_list, firewall::firewall_rule_create))
        .routes(routes!(firewall::firewall_rule_delete))
        .routes(routes!(metrics::instance_metrics_get))
        .routes(routes!(vpn::vpns_list, vpn::vpn_create))
        .routes(routes!(vpn::vpn_get, vpn::vpn_delete))
        .routes(routes!(billing::billing_usage_get))
        .routes(routes!(billing::billing_invoices_list))
        .routes(routes!(billing::billing_invoice_get))
        .routes(routes!(billing::billing_estimate_get))
        .routes(routes!(webhooks::webhooks_list, webhooks::webhook_create))
        .routes(routes!(webhooks::webhook_get, webhooks::webhook_delete))
        .routes(routes!(webhooks::webhook_deliveries_list))
        .routes(routes!(webhooks::webhook_delivery_redeliver))
        .split_for_parts();
    let mut doc = doc;
    document_common_responses(&mut doc);
    let router = router
        .route("/openapi.json", axum::routing::get(openapi_json))
        .route("/docs", axum::routing::get(docs_page))
        .route("/instances/{id}/metrics/stream", axum::routing::get(metrics::instance_metrics_stream))
        .method_not_allowed_fallback(error::method_not_allowed);
    (router.fallback(unknown_endpoint).layer(axum::middleware::from_fn(extract::rate_limit_headers)), doc)
}

/// Every native operation can answer with the error envelope for reasons that are not its own:
/// a malformed body or query (400), a missing or bad key (401), a key without the permission
/// (403), an unknown id (404), the rate limit (429), and, on mutating requests, an
/// Idempotency-Key in flight (409) or reused with another body (422). Documenting them once here
/// keeps every operation's contract complete.
fn document_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let err = |d: &str| {
        ResponseBuilder::new()
            .description(d)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorEnvelope"))).build())
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops =
            [(&mut item.get, false), (&mut item.post, true), (&mut item.patch, true), (&mut item.put, true), (&mut item.delete, true)];
        for (op, mutating) in ops {
            let Some(op) = op.as_mut() else { continue };
            let mut add = |code: &str, d: &str| {
                op.responses.responses.entry(code.to_owned()).or_insert_with(|| err(d).into());
            };
            add("400", "Invalid request");
            add("401", "Missing or invalid API key");
            add("403", "The API key lacks a permission");
            add("429", "Rate limited (see Retry-After and X-RateLimit-*)");
            if path.contains('{') {
                add("404", "Not found");
            }
            if mutating {
                add("409", "Conflict (state, or a request with this Idempotency-Key is in flight)");
                add("422", "Idempotency-Key reused with a different request");
            }
        }
    }
}

/// `GET /v1/openapi.json`: the document this router was built from (the checked-in
/// openapi/native.json is the same text; a test keeps them equal).
async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| crate::openapi::render(&api().1)).clone();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /v1/docs`: a self-contained page (no CDN) that renders the document.
async fn docs_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("assets/docs.html"))
}

pub fn router() -> Router<ApiState> {
    api().0
}
