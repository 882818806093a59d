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

use axum::routing::{delete, get, post, put};
use axum::Router;

pub use error::VpError;

use crate::ApiState;

pub fn router() -> Router<ApiState> {
    use handlers::*;
    Router::new()
        .route("/locations", get(locations_list))
        .route("/locations/", get(locations_list))
        .route("/locations/{id}", get(location_get))
        .route("/hostnodes/{id}", get(hostnode_get))
        .route("/instant-deploy-presets", get(vms::presets_list))
        .route("/instant-deploy-presets/", get(vms::presets_list))
        .route("/instant-deploy-presets/{id}", get(vms::preset_get))
        .route("/virtual-machines", get(vms::vms_list))
        .route("/virtual-machines/", get(vms::vms_list))
        .route("/virtual-machines/instant", post(vms::vm_create))
        .route("/virtual-machines/instant/", post(vms::vm_create))
        .route("/virtual-machines/{id}", get(vms::vm_get).patch(vms::vm_patch).delete(vms::vm_delete))
        .route("/virtual-machines/{id}/power-status", put(vms::vm_power))
        .route("/bare-metal/locations", get(bare_metal::locations))
        .route("/bare-metal/locations/", get(bare_metal::locations))
        .route("/bare-metal", get(bare_metal::list).post(bare_metal::create))
        .route("/bare-metal/", get(bare_metal::list).post(bare_metal::create))
        .route("/bare-metal/{id}", axum::routing::patch(bare_metal::patch).delete(bare_metal::delete))
        .route("/bare-metal/{id}/power-status", put(bare_metal::power))
        .route("/bare-metal/{id}/reboot", post(bare_metal::reboot))
        .route("/organization/ssh-keys", get(ssh_keys_list).post(ssh_key_add))
        .route("/organization/ssh-keys/", get(ssh_keys_list).post(ssh_key_add))
        .route("/organization/ssh-keys/{id}", delete(ssh_key_delete))
        .route("/validate/cloudinit", post(validate_cloudinit))
        .route("/storage/hourly-rate", get(storage_hourly_rate))
        .route("/storage", get(storage::storage_list).post(storage::storage_create))
        .route("/storage/", get(storage::storage_list).post(storage::storage_create))
        // A static segment wins over a parameter in axum, so `/storage/hourly-rate` stays the rate.
        .route("/storage/{id}", get(storage::storage_get).patch(storage::storage_update).delete(storage::storage_delete))
        .route("/billing/hourly-rate", get(billing_hourly_rate))
        .route("/billing/transactions", get(billing_transactions))
        .route("/billing/reports/{year}/{month}/transactions", get(billing_month_report))
}
