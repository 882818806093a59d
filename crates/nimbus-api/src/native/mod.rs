//! The native API at `/v1` (seed 001): the `{success, data, metadata}` envelope, its error
//! shape and status table, pagination, filtering and sorting. Same domain core as every other
//! dialect: an instance launched through the Lambda API is listed here too.

mod error;
mod extract;
mod handlers;
pub mod page;
mod webhooks;

use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::NativeError;

use crate::ApiState;

/// The native router and its OpenAPI document, from one handler list.
pub fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use handlers::*;
    let doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Nimbus native API")
                .version("1.0.0")
                .description(Some("Nimbus's own API at /v1 (seed 001 conventions). Generated from code."))
                .build(),
        )
        .servers(Some(vec![utoipa::openapi::ServerBuilder::new().url("/v1").build()]))
        .build();
    let (router, doc) = OpenApiRouter::with_openapi(doc)
        .routes(routes!(instances_list, instance_create))
        .routes(routes!(instance_get, instance_update, instance_delete))
        .routes(routes!(instance_restart))
        .routes(routes!(instance_stop))
        .routes(routes!(instance_start))
        .routes(routes!(instance_resize))
        .routes(routes!(instance_network))
        .routes(routes!(webhooks::webhooks_list, webhooks::webhook_create))
        .routes(routes!(webhooks::webhook_get, webhooks::webhook_delete))
        .routes(routes!(webhooks::webhook_deliveries_list))
        .routes(routes!(webhooks::webhook_delivery_redeliver))
        .split_for_parts();
    (router.fallback(unknown_endpoint).layer(axum::middleware::from_fn(extract::rate_limit_headers)), doc)
}

pub fn router() -> Router<ApiState> {
    api().0
}
