//! Instant-deploy presets and virtual machines of the Voltage Park dialect. A VM is a Nimbus
//! instance like any other (the container driver runs it; a VM driver can later, without API
//! change): launched from a preset in the first location that fits it, with a password for the
//! default user, the org's SSH keys (all, none or selected) plus inline keys, cloud-init, tags,
//! and a host port forwarded to its port 22. Stop keeps the reservation and bills like running;
//! the disassociated stop gives the processors, memory and GPUs back and bills the disk only.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::voltage::{self as w, OrgKeys};
use nimbus_control::instances::LaunchSpec;
use nimbus_control::port_forwards::PortForward;
use nimbus_control::presets::Preset;
use nimbus_core::auth::Permission;
use nimbus_core::instance::InstanceState;
use nimbus_core::metering::StopBilling;
use nimbus_core::model::{Host, Instance};
use nimbus_core::money::Micros;
use nimbus_core::{ConflictReason, Error};
use serde_json::Value;

use super::error::KeyErrors;
use super::extract::{query_pairs, Needs, Page, VpActor, VpJson, VpPath};
use super::handlers::{from_uuid, gpu_slug, hostnode_id, location_id, usd, uuid};
use super::VpError;
use crate::auth::perm::{Create, Edit, Read};
use crate::ApiState;

type VpResult = Result<Response, VpError>;

fn path_id(label: &'static str, id: &str) -> Result<String, VpError> {
    from_uuid(id).ok_or_else(|| VpError::at("path", Error::invalid(label, "Input should be a valid UUID")))
}

/// `{"h100-80gb-hbm3": {"count": n}}` for `count` GPUs of the type's model, named by the model a
/// host (the first of `hosts` that has one) really has, as hostnodes name them.
fn gpus(count: i64, type_model: &str, hosts: &[Host]) -> std::collections::BTreeMap<String, w::GpuCount> {
    if count == 0 {
        return Default::default();
    }
    let model = hosts
        .iter()
        .find_map(|h| h.gpus.iter().find(|g| nimbus_core::catalog::gpu_model_matches(type_model, &g.model)))
        .map(|g| gpu_slug(&g.model))
        .unwrap_or_else(|| gpu_slug(type_model));
    [(model, w::GpuCount { count })].into_iter().collect()
}

fn resources(s: &ApiState, type_name: &str, hosts: &[Host]) -> w::Resources {
    let t = s.control.config().instance_type(type_name).cloned();
    let (gpu_count, model, vcpus, ram, disk) = t.map(|t| (t.gpus, t.gpu_model, t.vcpus, t.memory_gib, t.storage_gib)).unwrap_or_default();
    w::Resources { gpus: gpus(gpu_count, &model, hosts), vcpu_count: vcpus, ram_gb: ram, storage_gb: disk }
}

/// Hourly prices of an instance type split into the seed's parts; the parts add up to the
/// type's price (GPUs take what the vCPU, RAM and disk rates leave).
struct Rates {
    gpus: i64,
    vcpus: i64,
    ram: i64,
    storage: i64,
    total: i64,
}

fn rates(s: &ApiState, type_name: &str) -> Rates {
    let cfg = s.control.config();
    let Some(t) = cfg.instance_type(type_name) else { return Rates { gpus: 0, vcpus: 0, ram: 0, storage: 0, total: 0 } };
    let total = Micros::from_cents(t.price_cents_per_hour).0;
    let vcpus = cfg.pricing.vcpu_hour_micros.saturating_mul(t.vcpus);
    let ram = cfg.pricing.ram_gib_hour_micros.saturating_mul(t.memory_gib);
    let storage = cfg.pricing.storage_gib_hour_micros.saturating_mul(t.storage_gib);
    let gpus = (total - vcpus - ram - storage).max(0);
    Rates { gpus, vcpus, ram, storage, total: total.max(vcpus + ram + storage) }
}

fn preset(s: &ApiState, p: &Preset, hosts: &[Host]) -> w::Preset {
    let r = rates(s, &p.instance_type.name);
    w::Preset {
        id: uuid(&p.id),
        resources: resources(s, &p.instance_type.name, hosts),
        operating_system: p.image.description.clone(),
        compute_rate_hourly: usd(r.total),
        storage_rate_hourly: usd(r.storage),
        location_ids_with_availability: p.available_in.iter().map(|r| location_id(r)).collect(),
    }
}

/// Presets are a public catalog in the seed (no key needed).
#[utoipa::path(
    get,
    path = "/instant-deploy-presets/",
    tag = "instant-deploy-presets",
    operation_id = "presets_list",
    summary = "List instant-deploy presets",
    params(("available" = Option<bool>, Query, description = "true: only presets that fit somewhere now; false: only those that do not")),
    security(()),
    responses(
        (status = 200, description = "Successful Response", body = Vec<w::Preset>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
    )
)]
pub async fn presets_list(State(s): State<ApiState>, RawQuery(q): RawQuery) -> VpResult {
    let mut available: Option<bool> = None;
    for (k, v) in query_pairs(q.as_deref())? {
        if k == "available" {
            available = match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                "" | "null" => None,
                _ => return Err(VpError::at("query", Error::invalid("available", "Input should be a valid boolean"))),
            };
        }
    }
    let all = nimbus_control::presets::list(&s.control).await?;
    let hosts = s.control.store().host_list(None, false).await?;
    let out: Vec<w::Preset> =
        all.iter().filter(|p| available.is_none_or(|want| want != p.available_in.is_empty())).map(|p| preset(&s, p, &hosts)).collect();
    Ok(Json(out).into_response())
}

#[utoipa::path(
    get,
    path = "/instant-deploy-presets/{instant_deploy_preset_id}",
    tag = "instant-deploy-presets",
    operation_id = "preset_get",
    summary = "Get one instant-deploy preset",
    params(("instant_deploy_preset_id" = String, Path, description = "Preset id (UUID)")),
    security(()),
    responses(
        (status = 200, description = "Successful Response", body = w::Preset),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
    )
)]
pub async fn preset_get(State(s): State<ApiState>, VpPath(id): VpPath<String>) -> VpResult {
    let hex = path_id("instant_deploy_preset_id", &id)?;
    let p = nimbus_control::presets::get(&s.control, &hex).await.map_err(|_| Error::not_found("instant deploy preset", id))?;
    let hosts = s.control.store().host_list(None, false).await?;
    Ok(Json(preset(&s, &p, &hosts)).into_response())
}

/// The seed's status words.
fn status(i: &Instance) -> &'static str {
    use InstanceState as S;
    match i.state {
        S::Pending | S::Booting => "Provisioning",
        S::Active => "Running",
        S::Restarting => "Restarting",
        S::Stopping => "Stopping",
        S::Stopped if i.compute_released => "Disassociated",
        S::Stopped => "Stopped",
        S::Starting => "Starting",
        S::Unhealthy => "Error",
        S::Terminating => "Terminating",
        S::Terminated => "Terminated",
    }
}

fn vm_wire(
    s: &ApiState,
    i: &Instance,
    hosts: &[Host],
    images: &[nimbus_core::model::Image],
    forwards: &[PortForward],
) -> w::VirtualMachine {
    let host = i.host_id.as_ref().and_then(|h| hosts.iter().find(|x| &x.id == h));
    let r = rates(s, &i.instance_type);
    let os = images.iter().find(|m| m.id == i.image_id).map(|m| m.description.clone()).unwrap_or_default();
    let public_ip = host.and_then(|h| h.public_ip.clone()).or_else(|| i.ip.clone());
    w::VirtualMachine {
        id: uuid(i.id.as_str()),
        hostnode_id: i.host_id.as_ref().map(|h| hostnode_id(&i.org_id, h.as_str())),
        kind: "ondem".into(),
        status: status(i).into(),
        name: i.name.clone().unwrap_or_default(),
        resources: resources(s, &i.instance_type, host.map(std::slice::from_ref).unwrap_or_default()),
        operating_system: os,
        pricing: w::VmPricing {
            gpus_per_hr: usd(r.gpus),
            vcpus_per_hr: usd(r.vcpus),
            ram_per_hr: usd(r.ram),
            storage_per_hr: usd(r.storage),
            total_associated_per_hr: usd(r.total),
            total_disassociated_per_hr: usd(r.storage),
        },
        public_ip,
        port_forwards: forwards
            .iter()
            .map(|f| w::PortForward { internal_port: i64::from(f.internal_port), external_port: i64::from(f.external_port) })
            .collect(),
        timestamp_creation: nimbus_core::clock::to_rfc3339(i.created_at),
        tags: i.tags.iter().map(|(k, _)| k.clone()).collect(),
    }
}

async fn render_all(s: &ApiState, insts: &[Instance]) -> Result<Vec<w::VirtualMachine>, VpError> {
    let hosts = s.control.store().host_list(None, false).await?;
    let images = s.control.store().image_list().await?;
    let forwards = nimbus_control::port_forwards::of(&s.control, insts).await?;
    Ok(insts
        .iter()
        .map(|i| {
            let f = forwards.iter().find(|(id, _)| *id == i.id).map(|(_, f)| f.as_slice()).unwrap_or_default();
            vm_wire(s, i, &hosts, &images, f)
        })
        .collect())
}

/// The org's live instances that are VMs (not nodes of a bare-metal rental).
async fn vms(s: &ApiState, a: &nimbus_core::auth::Actor) -> Result<Vec<Instance>, VpError> {
    let all = nimbus_control::instances::list(&s.control, a).await?;
    Ok(all.into_iter().filter(|i| !super::bare_metal::is_node(i)).collect())
}

/// The VM `id`, looked up for an action that needs `p` (so that a key lacking `p` is refused
/// before anything is looked up, and a key holding just `p` can act).
async fn vm(s: &ApiState, a: &nimbus_core::auth::Actor, id: &str, p: Permission) -> Result<Instance, VpError> {
    let hex = path_id("virtual_machine_id", id)?;
    let i = nimbus_control::instances::get_for(&s.control, a, &hex, p).await.map_err(|e| match e {
        Error::NotFound { .. } => Error::not_found("virtual machine", id),
        other => other,
    })?;
    if i.state == InstanceState::Terminated || super::bare_metal::is_node(&i) {
        return Err(Error::not_found("virtual machine", id).into());
    }
    Ok(i)
}

#[utoipa::path(
    get,
    path = "/virtual-machines/",
    tag = "virtual-machines",
    operation_id = "vms_list",
    summary = "List the organization's unterminated virtual machines",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 10)"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::VirtualMachine>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vms_list(State(s): State<ApiState>, VpActor(a): VpActor, _: Needs<Read>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 10, 100)?;
    let all = vms(&s, &a).await?;
    Ok(Json(page.render(render_all(&s, &all).await?)).into_response())
}

#[utoipa::path(
    get,
    path = "/virtual-machines/{virtual_machine_id}",
    tag = "virtual-machines",
    operation_id = "vm_get",
    summary = "Get one unterminated virtual machine",
    params(("virtual_machine_id" = String, Path, description = "Virtual machine id (UUID)")),
    responses(
        (status = 200, description = "Successful Response", body = w::VirtualMachine),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_get(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    let i = vm(&s, &a, &id, Permission::Read).await?;
    Ok(Json(render_all(&s, std::slice::from_ref(&i)).await?.remove(0)).into_response())
}

#[utoipa::path(
    post,
    path = "/virtual-machines/{virtual_machine_id}/port-forwards",
    tag = "virtual-machines",
    operation_id = "vm_port_forward_create",
    summary = "Open a port of the VM's public address to one of its ports (Nimbus extension); the external port is chosen",
    params(("virtual_machine_id" = String, Path, description = "Virtual machine id (UUID)")),
    request_body = w::PortForwardCreate,
    responses(
        (status = 201, description = "Opened", body = w::PortForward),
        (status = 400, description = "Bad Request (already forwarded, no free port, too many)", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_port_forward_create(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<w::PortForwardCreate>,
) -> VpResult {
    let i = vm(&s, &a, &id, Permission::Edit).await?;
    let f = nimbus_control::port_forwards::open(&s.control, &a, &i, b.internal_port).await?;
    let out = w::PortForward { internal_port: i64::from(f.internal_port), external_port: i64::from(f.external_port) };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(
    delete,
    path = "/virtual-machines/{virtual_machine_id}/port-forwards/{external_port}",
    tag = "virtual-machines",
    operation_id = "vm_port_forward_delete",
    summary = "Close a port forward of the VM (Nimbus extension); the SSH forward goes only with the VM",
    params(
        ("virtual_machine_id" = String, Path, description = "Virtual machine id (UUID)"),
        ("external_port" = i64, Path, description = "The forward's external port")
    ),
    responses(
        (status = 202, description = "Closed"),
        (status = 400, description = "Bad Request (the SSH forward)", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_port_forward_delete(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath((id, port)): VpPath<(String, i64)>,
) -> VpResult {
    let i = vm(&s, &a, &id, Permission::Edit).await?;
    nimbus_control::port_forwards::close(&s.control, &a, &i, port).await?;
    Ok((StatusCode::ACCEPTED, Json(Value::Null)).into_response())
}

/// The org key ids `mode` selects for a new VM or rental (so CREATE, not READ, is what the
/// lookup needs); unknown ids are a 400 naming them.
pub(crate) async fn org_key_ids(s: &ApiState, a: &nimbus_core::auth::Actor, mode: &OrgKeys) -> Result<Vec<String>, VpError> {
    let keys = nimbus_control::ssh_keys::list_for(&s.control, a, Permission::Create).await?;
    Ok(match mode {
        OrgKeys::None => Vec::new(),
        OrgKeys::All => keys.iter().map(|k| k.id.to_string()).collect(),
        OrgKeys::Selective { ssh_key_ids } => {
            let mut out = Vec::new();
            for raw in ssh_key_ids {
                let hex = from_uuid(raw).ok_or_else(|| {
                    VpError::at("body", Error::invalid("organization_ssh_keys.ssh_key_ids", "Input should be a valid UUID"))
                })?;
                if !keys.iter().any(|k| k.id.as_str() == hex) {
                    return Err(
                        Error::conflict(ConflictReason::InvalidState, format!("SSH key {raw} is not a key of this organization")).into()
                    );
                }
                out.push(hex);
            }
            out
        }
    })
}

/// `cloud_init` as user data: an object is a cloud-config document, a string is used as it is.
pub(crate) fn cloud_init_text(field: &'static str, v: &Option<Value>) -> Result<Option<String>, VpError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.trim().is_empty() => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        // YAML is a superset of JSON: the object is a cloud-config document as it stands.
        Some(o @ Value::Object(_)) => Ok(Some(format!("#cloud-config\n{o}\n"))),
        Some(_) => Err(Error::invalid(field, "Input should be a valid dictionary or string").into()),
    }
}

/// A hostname from a display name (`My VM 1` → `my-vm-1`), when one can be made.
pub(crate) fn hostname_from(name: &str) -> Option<String> {
    let mut h = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            h.push(c.to_ascii_lowercase());
        } else if !h.ends_with('-') && !h.is_empty() {
            h.push('-');
        }
    }
    let h: String = h.trim_matches('-').chars().take(63).collect();
    let h = h.trim_end_matches('-').to_owned();
    nimbus_core::validate::hostname(&h).is_ok().then_some(h)
}

fn tag_pairs(tags: Vec<String>) -> Vec<(String, String)> {
    tags.into_iter().map(|t| (t, String::new())).collect()
}

#[utoipa::path(
    post,
    path = "/virtual-machines/instant",
    tag = "virtual-machines",
    operation_id = "vm_create",
    summary = "Launch a virtual machine from an instant-deploy preset",
    request_body = w::VmCreateRequest,
    responses(
        (status = 201, description = "Successful Response", body = w::VmCreated),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_create(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Create>,
    VpJson(b): VpJson<w::VmCreateRequest>,
) -> VpResult {
    let preset = from_uuid(&b.config_id).ok_or_else(|| Error::invalid("config_id", "Input should be a valid UUID"))?;
    nimbus_core::validate::instance_name(&b.name)?;
    if let Some(p) = &b.password {
        if p.chars().count() < nimbus_core::password::MIN_LEN {
            return Err(Error::invalid("password", "String should have at least 8 characters").into());
        }
    }
    let key_ids = org_key_ids(&s, &a, &b.organization_ssh_keys).await?;
    if key_ids.is_empty() && b.ssh_keys.is_empty() && b.password.is_none() {
        return Err(
            Error::invalid("organization_ssh_keys", "give at least one way in: organization SSH keys, ssh_keys or a password").into()
        );
    }
    let spec = LaunchSpec {
        ssh_key_ids: key_ids,
        extra_public_keys: b.ssh_keys,
        password: b.password,
        name: Some(b.name.clone()),
        hostname: hostname_from(&b.name),
        user_data: cloud_init_text("cloud_init", &b.cloud_init)?,
        tags: tag_pairs(b.tags),
        forward_ssh_port: true,
        stop_billing: StopBilling::Reserved,
        ..LaunchSpec::default()
    };
    let id = nimbus_control::presets::deploy(&s.control, &a, &preset, spec).await.map_err(|e| match e {
        Error::NotFound { kind: "instant deploy preset", .. } => Error::invalid("config_id", "no instant deploy preset has this id"),
        other => other,
    })?;
    Ok((StatusCode::CREATED, Json(w::VmCreated { vm_id: uuid(id.as_str()) })).into_response())
}

#[utoipa::path(
    patch,
    path = "/virtual-machines/{virtual_machine_id}",
    tag = "virtual-machines",
    operation_id = "vm_update",
    summary = "Rename a virtual machine or replace its tags",
    params(("virtual_machine_id" = String, Path, description = "Virtual machine id (UUID)")),
    request_body = w::NameTagsUpdate,
    responses(
        (status = 200, description = "Successful Response", body = w::NameTags),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_patch(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<w::NameTagsUpdate>,
) -> VpResult {
    let i = vm(&s, &a, &id, Permission::Edit).await?;
    let name = b.name.as_deref().map(Some);
    let tags = b.tags.map(tag_pairs);
    let u = nimbus_control::instances::update(&s.control, &a, i.id.as_str(), name, tags).await?;
    Ok(Json(w::NameTags { name: u.name.unwrap_or_default(), tags: u.tags.into_iter().map(|(k, _)| k).collect() }).into_response())
}

#[utoipa::path(
    delete,
    path = "/virtual-machines/{virtual_machine_id}",
    tag = "virtual-machines",
    operation_id = "vm_delete",
    summary = "Terminate a virtual machine",
    params(("virtual_machine_id" = String, Path, description = "Virtual machine id (UUID)")),
    responses(
        (status = 202, description = "Terminating; the body is `null`", body = serde_json::Value),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_delete(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    let i = vm(&s, &a, &id, Permission::Delete).await?;
    nimbus_control::instances::terminate(&s.control, &a, &[i.id.to_string()]).await?;
    Ok((StatusCode::ACCEPTED, Json(Value::Null)).into_response())
}

#[utoipa::path(
    put,
    path = "/virtual-machines/{virtual_machine_id}/power-status",
    tag = "virtual-machines",
    operation_id = "vm_power_update",
    summary = "Start or stop a virtual machine (stopped_disassociated bills the disk only)",
    params(("virtual_machine_id" = String, Path, description = "Virtual machine id (UUID)")),
    request_body = w::PowerStatus,
    responses(
        (status = 200, description = "Successful Response", body = w::PowerStatus),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn vm_power(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<w::PowerStatus>,
) -> VpResult {
    let i = vm(&s, &a, &id, Permission::Edit).await?;
    let c = &s.control;
    let stopped = matches!(i.state, InstanceState::Stopping | InstanceState::Stopped);
    // Asking for the power state a VM is already in (or on its way to) is a success here.
    match b.status.as_str() {
        "started" if i.state.wants_running() => i,
        "stopped" if stopped => i,
        "started" => nimbus_control::instances::start(c, &a, i.id.as_str()).await?,
        "stopped" => nimbus_control::instances::stop(c, &a, i.id.as_str()).await?,
        "stopped_disassociated" | "disassociated" => nimbus_control::instances::stop_releasing(c, &a, i.id.as_str()).await?,
        _ => return Err(Error::invalid("status", "Input should be 'started', 'stopped' or 'stopped_disassociated'").into()),
    };
    Ok(Json(b).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_from_display_names() {
        assert_eq!(hostname_from("My Instant Virtual Machine").as_deref(), Some("my-instant-virtual-machine"));
        assert_eq!(hostname_from("  --  ").as_deref(), None);
        assert_eq!(hostname_from("GPU box #2").as_deref(), Some("gpu-box-2"));
    }

    #[test]
    fn org_key_modes_parse_as_the_seed_writes_them() {
        let m: OrgKeys = serde_json::from_value(serde_json::json!({"mode": "selective", "ssh_key_ids": ["x"]})).expect("parses");
        assert!(matches!(m, OrgKeys::Selective { ssh_key_ids } if ssh_key_ids == ["x"]));
        assert!(matches!(serde_json::from_value::<OrgKeys>(serde_json::json!({"mode": "all"})), Ok(OrgKeys::All)));
        assert!(serde_json::from_value::<OrgKeys>(serde_json::json!({"mode": "some"})).is_err());
    }
}
