//! The Voltage Park On-Demand dialect (seed 004) under `/api/v1`, beside the Lambda dialect on
//! disjoint paths (DESIGN.md §6b). Same domain core; its own auth headers (Bearer or
//! `x-api-token`), FastAPI-style errors, `limit`/`offset` pages, UUID-shaped ids. Most paths are
//! served with and without the trailing slash the seed writes.
//!
//! Served: locations, hostnodes, instant-deploy presets, virtual machines, bare metal,
//! organization SSH keys, cloud-init validation, billing and the storage hourly rate.

mod bare_metal;
mod error;
mod extract;
pub mod handlers;
mod storage;
mod vms;

use axum::routing::{get, post};
use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::VpError;

use crate::ApiState;

/// The Voltage Park router and its OpenAPI document, built from the same handler list so that
/// the document cannot miss a route. Paths are documented as seed 004 writes them (with its
/// trailing slash on `/locations/`, `/virtual-machines/`, `/bare-metal/`, `/storage/`, …); the
/// other spelling of each list and create path is served as an undocumented alias.
pub fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use handlers::*;
    let (router, doc) = OpenApiRouter::with_openapi(doc_base())
        .routes(routes!(locations_list))
        .routes(routes!(location_get))
        .routes(routes!(hostnode_get))
        .routes(routes!(vms::presets_list))
        .routes(routes!(vms::preset_get))
        .routes(routes!(vms::vms_list))
        .routes(routes!(vms::vm_create))
        .routes(routes!(vms::vm_get, vms::vm_patch, vms::vm_delete))
        .routes(routes!(vms::vm_power))
        .routes(routes!(vms::vm_port_forward_create))
        .routes(routes!(vms::vm_port_forward_delete))
        .routes(routes!(bare_metal::locations))
        .routes(routes!(bare_metal::list, bare_metal::create))
        .routes(routes!(bare_metal::patch, bare_metal::delete))
        .routes(routes!(bare_metal::power))
        .routes(routes!(bare_metal::reboot))
        .routes(routes!(ssh_keys_list, ssh_key_add))
        .routes(routes!(ssh_key_delete))
        .routes(routes!(validate_cloudinit))
        // A static segment wins over a parameter in axum, so `/storage/hourly-rate` stays the rate.
        .routes(routes!(storage_hourly_rate))
        .routes(routes!(storage::storage_list, storage::storage_create))
        .routes(routes!(storage::storage_get, storage::storage_update, storage::storage_delete))
        .routes(routes!(billing_hourly_rate))
        .routes(routes!(billing_transactions))
        .routes(routes!(billing_month_report))
        .split_for_parts();
    let router = router
        .route("/locations", get(locations_list))
        .route("/instant-deploy-presets", get(vms::presets_list))
        .route("/virtual-machines", get(vms::vms_list))
        .route("/virtual-machines/instant/", post(vms::vm_create))
        .route("/bare-metal/locations/", get(bare_metal::locations))
        .route("/bare-metal", get(bare_metal::list).post(bare_metal::create))
        .route("/organization/ssh-keys/", get(ssh_keys_list).post(ssh_key_add))
        .route("/storage", get(storage::storage_list).post(storage::storage_create))
        .method_not_allowed_fallback(error::method_not_allowed);
    (router, doc)
}

pub fn router() -> Router<ApiState> {
    api().0
}

fn doc_base() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
    crate::openapi::base(
        "Nimbus: Voltage Park On-Demand dialect",
        "Voltage Park On-Demand API (seed 004) as served by Nimbus at /api/v1. Generated from code; see docs/voltage-park.md.",
        "/api/v1",
        vec![
            ("bearerAuth", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer))),
            ("apiTokenAuth", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-token")))),
        ],
    )
}
