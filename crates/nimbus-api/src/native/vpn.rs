//! Native handlers for WireGuard VPNs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use nimbus_api_types::native as w;
use nimbus_control::vpn;
use nimbus_core::clock::to_rfc3339;
use nimbus_core::model::Vpn;

use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::handlers::{ok, NResult};
use crate::auth::perm::Create;
use crate::ApiState;

fn render(v: &Vpn) -> w::Vpn {
    w::Vpn {
        id: v.id.to_string(),
        name: v.name.clone(),
        region: v.region.clone(),
        status: v.status.clone(),
        message: v.message.clone(),
        endpoint: v.endpoint.clone(),
        network: v.network.clone(),
        networks: v.networks.clone(),
        gateway_public_key: v.gateway_public_key.clone(),
        gateway_address: v.gateway_address(),
        client_address: v.client_address(),
        client_public_key: v.client_public_key.clone(),
        config: vpn::client_config(v, None),
        created_at: to_rfc3339(v.created_at),
    }
}

#[utoipa::path(
    post,
    path = "/vpn",
    tag = "networking",
    operation_id = "vpn_create",
    summary = "Create a WireGuard VPN into the organization's private network; the client private key is shown once",
    request_body = w::VpnCreate,
    responses(
        (status = 201, description = "Created (pending until the host brings it up)", body = w::Envelope<w::VpnCreated>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 409, description = "No host in the region, or a name taken", body = w::ErrorEnvelope)
    )
)]
pub async fn vpn_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(b): NativeJson<w::VpnCreate>,
) -> NResult {
    let c = vpn::create(&s.control, &a, &b.name, &b.region).await?;
    let out = w::VpnCreated { vpn: render(&c.vpn), client_private_key: c.client_private_key };
    Ok((StatusCode::CREATED, ok(out, None)).into_response())
}

#[utoipa::path(
    get,
    path = "/vpn",
    tag = "networking",
    operation_id = "vpns_list",
    summary = "List the organization's VPNs",
    responses((status = 200, description = "Success", body = w::Envelope<Vec<w::Vpn>>))
)]
pub async fn vpns_list(State(s): State<ApiState>, NativeActor(a): NativeActor) -> NResult {
    Ok(ok(vpn::list(&s.control, &a).await?.iter().map(render).collect::<Vec<_>>(), None))
}

#[utoipa::path(
    get,
    path = "/vpn/{id}",
    tag = "networking",
    operation_id = "vpn_get",
    summary = "Get a VPN (its client configuration once it is up)",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = w::Envelope<w::Vpn>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn vpn_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(&vpn::get(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    delete,
    path = "/vpn/{id}",
    tag = "networking",
    operation_id = "vpn_delete",
    summary = "Delete a VPN (the host takes the gateway down)",
    params(("id" = String, Path)),
    responses((status = 200, description = "Deleted", body = w::Envelope<w::Vpn>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn vpn_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(&vpn::delete(&s.control, &a, &id).await?), None))
}
