//! Native handlers: extract, call one control function, render the envelope.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::native as w;
use nimbus_control::instances;
use nimbus_core::clock::{to_rfc3339, Clock, SystemClock};
use nimbus_core::instance::InstanceState;
use nimbus_core::model::Instance;
use nimbus_core::Error;
use serde::Serialize;

use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::{page, NativeError};
use crate::auth::perm::{Create, Edit, Read};
use crate::ApiState;

pub(super) type NResult = Result<Response, NativeError>;

pub fn metadata() -> w::Metadata {
    w::Metadata { request_id: crate::middleware::current_request_id(), timestamp: to_rfc3339(SystemClock.now_micros()) }
}

pub(super) fn ok<T: Serialize>(data: T, pagination: Option<w::Pagination>) -> Response {
    Json(w::Envelope { success: true, data, pagination, metadata: metadata() }).into_response()
}

/// Native status names: the canonical states, with `active` called `running` as seed 001 does.
fn status(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Active => "running",
        other => other.as_str(),
    }
}

/// An instance as the native API shows it; `cfg` says what its type runs as.
pub(super) fn render(cfg: &nimbus_control::config::Config, i: &Instance) -> w::Instance {
    let gpus = i.gpu_indices.len() as i64;
    w::Instance {
        id: i.id.to_string(),
        name: i.name.clone(),
        status: status(i.state).to_owned(),
        instance_type: i.instance_type.clone(),
        region: i.region.clone(),
        hostname: i.hostname.clone(),
        ip: i.ip.clone(),
        private_ip: i.private_ip.clone(),
        vcpus: i.resources.vcpus,
        memory_gib: i.resources.memory_mib / 1024,
        storage_gib: i.resources.disk_gib,
        gpus,
        machine: cfg.machine_of(&i.instance_type).as_str().to_owned(),
        ssh_key_names: i.ssh_key_names.clone(),
        tags: i.tags.iter().cloned().collect(),
        created_at: to_rfc3339(i.created_at),
        updated_at: to_rfc3339(i.updated_at),
    }
}

/// The query string's pairs, strictly percent-decoded; a malformed one names the parameter.
pub(super) fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, NativeError> {
    Ok(crate::input::query_pairs(raw.as_deref())?)
}

const SORTS: &[&str] = &["created_at", "updated_at", "name", "status", "region", "instance_type"];
const FILTERS: &[&str] = &["status", "region", "instance_type", "name"];

#[utoipa::path(
    get,
    path = "/instances",
    tag = "instances",
    operation_id = "instances_list",
    summary = "List instances (paginated, filterable by status, region, instance_type, name; sortable)",
    params(
        ("page" = Option<u32>, Query, description = "From 1"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20"),
        ("sort" = Option<String>, Query, description = "created_at, updated_at, name, status, region, instance_type"),
        ("order" = Option<String>, Query, description = "asc or desc"),
        ("status" = Option<String>, Query), ("region" = Option<String>, Query), ("instance_type" = Option<String>, Query), ("name" = Option<String>, Query)
    ),
    responses(
        (status = 200, description = "Success", body = w::Envelope<Vec<w::Instance>>),
        (status = 400, description = "Invalid query", body = w::ErrorEnvelope),
        (status = 401, description = "Invalid API key", body = w::ErrorEnvelope),
        (status = 429, description = "Rate limited", body = w::ErrorEnvelope)
    )
)]
pub async fn instances_list(State(s): State<ApiState>, NativeActor(a): NativeActor, _: Needs<Read>, RawQuery(raw): RawQuery) -> NResult {
    let q = page::parse(&query_pairs(raw)?, SORTS, FILTERS)?;
    let all = instances::list(&s.control, &a).await?;
    let field = |i: &Instance, f: &str| -> Option<String> {
        match f {
            "status" => Some(status(i.state).to_owned()),
            "region" => Some(i.region.clone()),
            "instance_type" => Some(i.instance_type.clone()),
            "name" => i.name.clone(),
            _ => None,
        }
    };
    let key = |i: &Instance, k: &str| -> String {
        match k {
            "updated_at" => format!("{:020}", i.updated_at),
            "name" => i.name.clone().unwrap_or_default(),
            "status" => status(i.state).to_owned(),
            "region" => i.region.clone(),
            "instance_type" => i.instance_type.clone(),
            _ => format!("{:020}", i.created_at),
        }
    };
    let (items, pg) = page::apply(all, &q, field, key, |i| i.id.to_string());
    Ok(ok(items.iter().map(|i| render(s.control.config(), i)).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/instances",
    tag = "instances",
    operation_id = "instance_create",
    summary = "Create an instance",
    request_body = w::InstanceCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create return the first response")),
    responses(
        (status = 201, description = "Created (booting)", body = w::Envelope<w::Instance>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 403, description = "Permission or quota", body = w::ErrorEnvelope),
        (status = 404, description = "SSH key, image or ruleset not found", body = w::ErrorEnvelope),
        (status = 409, description = "No capacity", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(body): NativeJson<w::InstanceCreate>,
) -> NResult {
    if body.ssh_keys.is_empty() {
        return Err(Error::invalid("ssh_keys", "at least one SSH key id is required").into());
    }
    if !s.control.config().instance_types.iter().any(|t| t.name == body.instance_type) {
        let allowed = s.control.config().instance_types.iter().map(|t| t.name.clone()).collect();
        return Err(NativeError::with_allowed(Error::invalid("instance_type", "unknown instance type"), &body.instance_type, allowed));
    }
    if !s.control.config().regions.iter().any(|r| r.name == body.region) {
        let allowed = s.control.config().regions.iter().map(|r| r.name.clone()).collect();
        return Err(NativeError::with_allowed(Error::invalid("region", "unknown region"), &body.region, allowed));
    }
    let spec = instances::LaunchSpec {
        region: body.region,
        instance_type: body.instance_type,
        ssh_key_ids: body.ssh_keys,
        hostname: body.hostname.filter(|h| !h.is_empty()),
        name: body.name,
        image: body.image.map(|i| match nimbus_core::ids::ImageId::parse(&i) {
            Some(_) => instances::ImageRef::Id(i),
            None => instances::ImageRef::Family(i),
        }),
        user_data: body.user_data,
        tags: body.tags.unwrap_or_default().into_iter().collect(),
        firewall_ruleset_ids: body.firewall.map(|f| f.ruleset_ids).unwrap_or_default(),
        volume_ids: body.volumes.unwrap_or_default(),
        quantity: 1,
        ..Default::default()
    };
    let ids = instances::launch(&s.control, &a, spec).await?;
    let id = ids.first().ok_or_else(|| Error::internal("launch placed nothing"))?;
    let i = instances::get_for(&s.control, &a, id.as_str(), nimbus_core::auth::Permission::Create).await?;
    Ok((axum::http::StatusCode::CREATED, ok(render(s.control.config(), &i), None)).into_response())
}

#[utoipa::path(
    get,
    path = "/instances/{id}",
    tag = "instances",
    operation_id = "instance_get",
    summary = "Get an instance",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::Instance>),
        (status = 401, description = "Invalid API key", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    let i = instances::get(&s.control, &a, &id).await?;
    Ok(ok(render(s.control.config(), &i), None))
}

#[utoipa::path(
    patch,
    path = "/instances/{id}",
    tag = "instances",
    operation_id = "instance_update",
    summary = "Rename an instance and/or replace its tags",
    params(("id" = String, Path, description = "Instance id")),
    request_body = w::InstanceUpdate,
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::Instance>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_update(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Edit>,
    NativePath(id): NativePath<String>,
    NativeJson(body): NativeJson<w::InstanceUpdate>,
) -> NResult {
    let tags = body.tags.map(|t| t.into_iter().collect::<Vec<_>>());
    let i = instances::update(&s.control, &a, &id, body.name.as_deref().map(Some), tags).await?;
    Ok(ok(render(s.control.config(), &i), None))
}

#[utoipa::path(
    delete,
    path = "/instances/{id}",
    tag = "instances",
    operation_id = "instance_delete",
    summary = "Terminate an instance (its disk is deleted; file systems are kept)",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Terminating", body = w::Envelope<w::Instance>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    let mut list = instances::terminate(&s.control, &a, std::slice::from_ref(&id)).await?;
    let i = list.pop().ok_or_else(|| Error::not_found("instance", &id))?;
    Ok(ok(render(s.control.config(), &i), None))
}

#[utoipa::path(
    post,
    path = "/instances/{id}/restart",
    tag = "instances",
    operation_id = "instance_restart",
    summary = "Restart an instance",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Restarting", body = w::Envelope<w::Instance>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Not in a state that can restart", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_restart(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    let mut list = instances::restart(&s.control, &a, std::slice::from_ref(&id)).await?;
    let i = list.pop().ok_or_else(|| Error::not_found("instance", &id))?;
    Ok(ok(render(s.control.config(), &i), None))
}

#[utoipa::path(
    post,
    path = "/instances/{id}/stop",
    tag = "instances",
    operation_id = "instance_stop",
    summary = "Stop a running instance (disk, GPUs and host are kept)",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Stopping", body = w::Envelope<w::Instance>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Not running", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_stop(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(s.control.config(), &instances::stop(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    post,
    path = "/instances/{id}/start",
    tag = "instances",
    operation_id = "instance_start",
    summary = "Start a stopped instance",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Starting", body = w::Envelope<w::Instance>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Not stopped", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_start(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(s.control.config(), &instances::start(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    post,
    path = "/instances/{id}/resize",
    tag = "instances",
    operation_id = "instance_resize",
    summary = "Change the type of a stopped instance (it keeps its disk and its host)",
    params(("id" = String, Path, description = "Instance id")),
    request_body = w::InstanceResize,
    responses(
        (status = 200, description = "Resized (still stopped)", body = w::Envelope<w::Instance>),
        (status = 400, description = "Unknown type", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Not stopped, or the host cannot fit the new type", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_resize(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Edit>,
    NativePath(id): NativePath<String>,
    NativeJson(body): NativeJson<w::InstanceResize>,
) -> NResult {
    if !s.control.config().instance_types.iter().any(|t| t.name == body.instance_type) {
        let allowed = s.control.config().instance_types.iter().map(|t| t.name.clone()).collect();
        return Err(NativeError::with_allowed(Error::invalid("instance_type", "unknown instance type"), &body.instance_type, allowed));
    }
    Ok(ok(render(s.control.config(), &instances::resize(&s.control, &a, &id, &body.instance_type).await?), None))
}

#[utoipa::path(
    get,
    path = "/instances/{id}/network",
    tag = "instances",
    operation_id = "instance_network_get",
    summary = "Addresses and firewall rulesets of an instance",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::InstanceNetwork>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_network(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    let i = instances::get(&s.control, &a, &id).await?;
    Ok(ok(
        w::InstanceNetwork {
            instance_id: i.id.to_string(),
            region: i.region.clone(),
            hostname: i.hostname.clone(),
            ip: i.ip.clone(),
            private_ip: i.private_ip.clone(),
            ssh_port: 22,
            firewall_ruleset_ids: i.firewall_ruleset_ids.iter().map(ToString::to_string).collect(),
        },
        None,
    ))
}

#[utoipa::path(
    get,
    path = "/instances/{id}/gpus",
    tag = "instances",
    operation_id = "instance_gpus_list",
    summary = "The GPUs (or MIG devices) of an instance, with their health",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Success", body = w::Envelope<Vec<w::InstanceGpu>>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_gpus(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    let gpus = instances::gpus(&s.control, &a, &id).await?;
    let data: Vec<w::InstanceGpu> = gpus
        .into_iter()
        .enumerate()
        .map(|(n, g)| w::InstanceGpu {
            index: n as i64,
            uuid: g.uuid,
            model: g.model,
            memory_mib: g.memory_mib,
            mig_profile: g.mig_profile,
            health: g.health.as_str().to_owned(),
            reasons: g.reasons,
        })
        .collect();
    Ok(ok(data, None))
}

pub async fn unknown_endpoint(uri: axum::http::Uri) -> NResult {
    Err(Error::NotFound { kind: "endpoint", id: uri.path().to_owned() }.into())
}
