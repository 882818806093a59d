//! Bare-metal rentals of the Voltage Park dialect over `nimbus_control::bare_metal`: whole hosts,
//! each node one instance holding its host. Kubernetes fields are null: Nimbus creates no
//! cluster unless an operator wires one (docs/voltage-park.md).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::voltage as w;
use nimbus_control::bare_metal::{self, Location, ProvisionRequest};
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Host, Instance, Rental};
use nimbus_core::Error;
use serde_json::Value;

use super::error::KeyErrors;
use super::extract::{Needs, Page, VpActor, VpJson, VpPath};
use super::handlers::{from_uuid, gpu_slug, location_id, usd, uuid};
use super::vms::{cloud_init_text, org_key_ids};
use super::VpError;
use crate::auth::perm::{Create, Edit, Read};
use crate::ApiState;

type VpResult = Result<Response, VpError>;

pub fn is_node(i: &Instance) -> bool {
    bare_metal::is_node(i)
}

fn dollars(micros: i64) -> f64 {
    // The seed shows these two prices as JSON numbers; six decimals are exact in an f64.
    micros as f64 / 1_000_000.0
}

fn location(l: &Location) -> w::BareMetalLocation {
    let n = &l.node;
    w::BareMetalLocation {
        id: location_id(&l.region),
        gpu_count_ethernet: l.free_nodes * n.gpu_count,
        gpu_price_ethernet: dollars(l.gpu_price_micros),
        // Hosts report no InfiniBand fabric yet (see nimbus_control::bare_metal).
        gpu_count_infiniband: 0,
        gpu_price_infiniband: dollars(l.gpu_price_micros),
        specs_per_node: w::NodeSpecs {
            gpu_model: gpu_slug(&n.gpu_model),
            gpu_count: n.gpu_count,
            cpu_model: n.cpu_model.clone(),
            cpu_count: n.vcpus,
            ram_gb: n.ram_gib,
            storage_gb: n.disk_gib,
        },
    }
}

/// Public in the seed (no key needed), like the presets.
#[utoipa::path(
    get,
    path = "/bare-metal/locations",
    tag = "bare-metal",
    operation_id = "bare_metal_locations_list",
    summary = "List locations with bare-metal nodes to rent",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 100)"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
    ),
    security(()),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::BareMetalLocation>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
    )
)]
pub async fn locations(State(s): State<ApiState>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 100, 100)?;
    let all: Vec<w::BareMetalLocation> = bare_metal::locations(&s.control).await?.iter().map(location).collect();
    Ok(Json(page.render(all)).into_response())
}

/// The rental's state from its nodes' (the most pressing wins).
fn status(nodes: &[Instance]) -> &'static str {
    use InstanceState as S;
    let any = |f: &dyn Fn(S) -> bool| nodes.iter().any(|n| f(n.state));
    if nodes.is_empty() || any(&|s| matches!(s, S::Terminating | S::Terminated)) {
        "Terminating"
    } else if any(&|s| s == S::Unhealthy) {
        "Error"
    } else if any(&|s| matches!(s, S::Pending | S::Booting | S::Restarting | S::Starting)) {
        "Pending"
    } else if any(&|s| s == S::Stopping) {
        "Stopping"
    } else if nodes.iter().all(|n| n.state == S::Stopped) {
        "Stopped"
    } else {
        "Running"
    }
}

fn power_status(nodes: &[Instance]) -> &'static str {
    if !nodes.is_empty() && nodes.iter().all(|n| matches!(n.state, InstanceState::Stopping | InstanceState::Stopped)) {
        "Stopped"
    } else {
        "Running"
    }
}

fn rental(r: &Rental, nodes: &[Instance], hosts: &[Host]) -> w::BareMetalRental {
    let first = nodes.first();
    let host = first.and_then(|n| n.host_id.as_ref()).and_then(|h| hosts.iter().find(|x| &x.id == h));
    let gpu_model = host.and_then(|h| h.gpus.first()).map(|g| gpu_slug(&g.model)).unwrap_or_default();
    let res = first.map(|n| n.resources).unwrap_or_default();
    w::BareMetalRental {
        id: uuid(&r.id),
        name: r.name.clone(),
        creation_timestamp: nimbus_core::clock::to_rfc3339(r.created_at),
        status: status(nodes).into(),
        power_status: power_status(nodes).into(),
        node_count: r.node_count,
        specs_per_node: w::NodeSpecs {
            gpu_model,
            gpu_count: r.gpus_per_node,
            cpu_model: host.map(|h| h.cpu_model.clone()).unwrap_or_default(),
            cpu_count: res.vcpus,
            ram_gb: res.memory_mib / 1024,
            storage_gb: res.disk_gib,
        },
        rate_hourly: usd(nodes.iter().filter_map(|n| n.price_micros_per_hour).sum()),
        network_type: r.network_type.clone(),
        username: "ubuntu".into(),
        node_networking: nodes
            .iter()
            .map(|n| w::NodeNetworking { public_ip: bare_metal::public_ip(n), private_ip: n.private_ip.clone().or_else(|| n.ip.clone()) })
            .collect(),
        sub_order: r.sub_order.clone(),
        storage_id: r.storage_id.as_deref().map(uuid),
        storage_pv: None,
        storage_pvc: None,
        k8s_cluster_id: None,
        kubeconfig: None,
        tags: r.tags.clone(),
    }
}

fn rental_id(id: &str) -> Result<String, VpError> {
    from_uuid(id).ok_or_else(|| VpError::at("path", Error::invalid("baremetal_rental_id", "Input should be a valid UUID")))
}

#[utoipa::path(
    get,
    path = "/bare-metal/",
    tag = "bare-metal",
    operation_id = "bare_metal_list",
    summary = "List the organization's unterminated bare-metal rentals",
    params(
        ("limit" = Option<String>, Query, description = "Page size, 1 to 100 (default 20), or `all`"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::BareMetalRental>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn list(State(s): State<ApiState>, VpActor(a): VpActor, _: Needs<Read>, RawQuery(q): RawQuery) -> VpResult {
    // `limit=all` is the seed's string form of "no limit".
    let raw = q.unwrap_or_default();
    let all_rows = raw.split('&').any(|p| p == "limit=all");
    let rest: Vec<&str> = raw.split('&').filter(|p| *p != "limit=all").collect();
    let mut page = Page::parse(Some(&rest.join("&")), 20, 100)?;
    if all_rows {
        page.limit = usize::MAX / 2;
    }
    let hosts = s.control.store().host_list(None, false).await?;
    let items: Vec<w::BareMetalRental> = bare_metal::list(&s.control, &a).await?.iter().map(|(r, n)| rental(r, n, &hosts)).collect();
    Ok(Json(page.render(items)).into_response())
}

#[utoipa::path(
    post,
    path = "/bare-metal/",
    tag = "bare-metal",
    operation_id = "bare_metal_create",
    summary = "Rent whole bare-metal hosts",
    request_body = w::BareMetalCreateRequest,
    responses(
        (status = 201, description = "Successful Response", body = w::BareMetalCreated),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn create(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Create>,
    VpJson(b): VpJson<w::BareMetalCreateRequest>,
) -> VpResult {
    let region = s
        .control
        .config()
        .regions
        .iter()
        .find(|r| location_id(&r.name).eq_ignore_ascii_case(&b.location_id))
        .map(|r| r.name.clone())
        .ok_or_else(|| Error::invalid("location_id", "no location has this id"))?;
    let key_ids = org_key_ids(&s, &a, &b.organization_ssh_keys).await?;
    if key_ids.is_empty() && b.ssh_keys.is_empty() {
        return Err(Error::invalid("organization_ssh_keys", "give at least one SSH key (organization keys or ssh_keys)").into());
    }
    let storage_id = match &b.storage_id {
        Some(raw) => Some(from_uuid(raw).ok_or_else(|| Error::invalid("storage_id", "Input should be a valid UUID"))?),
        None => None,
    };
    let req = ProvisionRequest {
        region,
        gpu_count: b.gpu_count,
        name: b.name,
        ssh_key_ids: key_ids,
        extra_public_keys: b.ssh_keys,
        network_type: b.network_type,
        sub_order: b.sub_order.map(|s| match s {
            w::SubOrder::Int(i) => i.to_string(),
            w::SubOrder::Text(t) => t,
        }),
        storage_id,
        tags: b.tags,
        user_data: cloud_init_text("cloudinit_script", &b.cloudinit_script)?,
    };
    let r = bare_metal::provision(&s.control, &a, req).await?;
    Ok((StatusCode::CREATED, Json(w::BareMetalCreated { rental_id: uuid(&r.id), warning: None })).into_response())
}

#[utoipa::path(
    patch,
    path = "/bare-metal/{baremetal_rental_id}",
    tag = "bare-metal",
    operation_id = "bare_metal_update",
    summary = "Rename a bare-metal rental or replace its tags",
    params(("baremetal_rental_id" = String, Path, description = "Rental id (UUID)")),
    request_body = w::NameTagsUpdate,
    responses(
        (status = 200, description = "Successful Response", body = w::NameTags),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn patch(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<w::NameTagsUpdate>,
) -> VpResult {
    let hex = rental_id(&id)?;
    let r = bare_metal::update(&s.control, &a, &hex, b.name.as_deref(), b.tags).await?;
    Ok(Json(w::NameTags { name: r.name, tags: r.tags }).into_response())
}

#[utoipa::path(
    delete,
    path = "/bare-metal/{baremetal_rental_id}",
    tag = "bare-metal",
    operation_id = "bare_metal_delete",
    summary = "Terminate a bare-metal rental",
    params(("baremetal_rental_id" = String, Path, description = "Rental id (UUID)")),
    responses(
        (status = 202, description = "Terminating; the body is `null`", body = serde_json::Value),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn delete(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    bare_metal::terminate(&s.control, &a, &rental_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(Value::Null)).into_response())
}

#[utoipa::path(
    put,
    path = "/bare-metal/{baremetal_rental_id}/power-status",
    tag = "bare-metal",
    operation_id = "bare_metal_power_update",
    summary = "Start or stop every node of a bare-metal rental",
    params(("baremetal_rental_id" = String, Path, description = "Rental id (UUID)")),
    request_body = w::PowerStatus,
    responses(
        (status = 200, description = "Successful Response; the body is `null`", body = serde_json::Value),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn power(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<w::PowerStatus>,
) -> VpResult {
    let hex = rental_id(&id)?;
    let start = match b.status.as_str() {
        "started" => true,
        "stopped" => false,
        _ => return Err(Error::invalid("status", "Input should be 'started' or 'stopped'").into()),
    };
    bare_metal::power(&s.control, &a, &hex, start).await?;
    Ok(Json(Value::Null).into_response())
}

#[utoipa::path(
    post,
    path = "/bare-metal/{baremetal_rental_id}/reboot",
    tag = "bare-metal",
    operation_id = "bare_metal_reboot",
    summary = "Reboot nodes of a bare-metal rental by public address",
    params(("baremetal_rental_id" = String, Path, description = "Rental id (UUID)")),
    request_body = w::RebootRequest,
    responses(
        (status = 201, description = "Successful Response; the body is `null`", body = serde_json::Value),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn reboot(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<w::RebootRequest>,
) -> VpResult {
    bare_metal::reboot(&s.control, &a, &rental_id(&id)?, &b.public_ips).await?;
    Ok((StatusCode::CREATED, Json(Value::Null)).into_response())
}
