//! Lambda handlers: extract, call one control function, render `{"data": …}`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use nimbus_api_types::lambda as w;
use nimbus_control::instances::{ImageRef, LaunchSpec};
use nimbus_control::{audit, capacity, firewall, images, instances, ssh_keys, storage};
use nimbus_core::auth::{Actor, Permission};
use nimbus_core::clock::parse_rfc3339;
use nimbus_core::firewall::FirewallRule;
use nimbus_core::model::{Instance, Org};
use nimbus_core::Error;
use serde::Serialize;

use super::extract::{LambdaActor, LambdaJson, LambdaPath, LambdaQuery, Needs};
use super::render::{self, FsNames};
use super::LambdaError;
use crate::auth::perm::{Create, Delete, Edit, Read};
use crate::ApiState;

type LResult<T = Response> = Result<T, LambdaError>;

fn data<T: Serialize>(v: T) -> Response {
    Json(w::Data { data: v }).into_response()
}

fn json_bytes(body: Bytes) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The names of the file systems `insts` mount, looked up for the action (needing `p`) whose
/// result is being rendered.
async fn fs_names(s: &ApiState, actor: &Actor, insts: &[Instance], p: Permission) -> Result<FsNames, Error> {
    if insts.iter().all(|i| i.file_system_mounts.is_empty()) {
        return Ok(HashMap::new());
    }
    Ok(storage::list_for(&s.control, actor, p).await?.into_iter().map(|f| (f.id, f.name)).collect())
}

/// Renders instances that an action needing `p` returned.
async fn render_instances(s: &ApiState, actor: &Actor, insts: &[Instance], p: Permission) -> Result<Vec<w::Instance>, Error> {
    let fs = fs_names(s, actor, insts, p).await?;
    let cfg = s.control.config();
    Ok(insts.iter().map(|i| render::instance(i, cfg, &fs)).collect())
}

async fn org(s: &ApiState, actor: &Actor) -> Result<Org, Error> {
    s.control.store().org_get(&actor.org_id).await?.ok_or_else(|| Error::internal("authenticated org vanished"))
}

#[utoipa::path(
    get,
    path = "/instance-types",
    tag = "instance-types",
    operation_id = "instance_types_list",
    summary = "List instance types and the regions with capacity for each",
    responses((status = 200, description = "Success", body = w::Data<std::collections::BTreeMap<String, w::InstanceTypeEntry>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn instance_types(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let cfg = s.control.config();
    let out: serde_json::Map<String, serde_json::Value> = capacity::by_type(&s.control, &a)
        .await?
        .into_iter()
        .map(|(t, regions)| {
            let entry = w::InstanceTypeEntry {
                instance_type: render::instance_type(&t),
                regions_with_capacity_available: regions.iter().map(|r| render::region(cfg, &r.name)).collect(),
            };
            (t.name, serde_json::to_value(entry).unwrap_or_default())
        })
        .collect();
    Ok(data(out))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    cluster_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/instances",
    tag = "instances",
    operation_id = "instances_list",
    summary = "List running instances",
    params(("cluster_id" = Option<String>, Query, description = "Only instances of this 1-click cluster")),
    responses((status = 200, description = "Success", body = w::Data<Vec<w::Instance>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn instances_list(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Read>,
    LambdaQuery(q): LambdaQuery<ListQuery>,
) -> LResult {
    if q.cluster_id.is_some() {
        // No instance belongs to a 1-click cluster yet (clusters come with the clusters API).
        instances::list_generation(&s.control, &a).await?;
        return Ok(data(Vec::<w::Instance>::new()));
    }
    let generation = instances::list_generation(&s.control, &a).await?;
    if let Some(body) = s.lambda_cache.get(&a.org_id, generation) {
        return Ok(json_bytes(body));
    }
    let list = instances::list(&s.control, &a).await?;
    let rendered = render_instances(&s, &a, &list, Permission::Read).await?;
    let body = Bytes::from(serde_json::to_vec(&w::Data { data: rendered }).map_err(|e| Error::internal(e.to_string()))?);
    s.lambda_cache.put(&a.org_id, generation, body.clone());
    Ok(json_bytes(body))
}

#[utoipa::path(
    get,
    path = "/instances/{id}",
    tag = "instances",
    operation_id = "instance_get",
    summary = "Get one instance",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Success", body = w::Data<w::Instance>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn instance_get(State(s): State<ApiState>, LambdaActor(a): LambdaActor, LambdaPath(id): LambdaPath<String>) -> LResult {
    let i = instances::get(&s.control, &a, &id).await?;
    Ok(data(render_instances(&s, &a, std::slice::from_ref(&i), Permission::Read).await?.pop()))
}

#[utoipa::path(
    post,
    path = "/instances/{id}",
    tag = "instances",
    operation_id = "instance_update",
    summary = "Rename an instance",
    params(("id" = String, Path, description = "Instance id")), request_body = w::InstanceModifyRequest,
    responses((status = 200, description = "Success", body = w::Data<w::Instance>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn instance_modify(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Edit>,
    LambdaPath(id): LambdaPath<String>,
    LambdaJson(req): LambdaJson<w::InstanceModifyRequest>,
) -> LResult {
    let name = req.name.filter(|n| !n.is_empty());
    let i = instances::rename(&s.control, &a, &id, name.as_deref()).await?;
    Ok(data(render_instances(&s, &a, std::slice::from_ref(&i), Permission::Edit).await?.pop()))
}

fn launch_spec(req: w::LaunchRequest) -> LaunchSpec {
    LaunchSpec {
        region: req.region_name,
        instance_type: req.instance_type_name,
        ssh_key_names: req.ssh_key_names,
        ssh_key_ids: Vec::new(),
        volume_ids: Vec::new(),
        source_snapshot: None,
        file_system_names: req.file_system_names.unwrap_or_default(),
        file_system_mounts: req
            .file_system_mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.file_system_id, Some(m.mount_point)))
            .collect(),
        hostname: req.hostname.filter(|h| !h.is_empty()),
        name: req.name.filter(|n| !n.is_empty()),
        image: req.image.map(|i| match i {
            w::ImageSpec::Id { id } => ImageRef::Id(id),
            w::ImageSpec::Family { family } => ImageRef::Family(family),
        }),
        user_data: req.user_data,
        tags: req.tags.unwrap_or_default().into_iter().map(|t| (t.key, t.value)).collect(),
        firewall_ruleset_ids: req.firewall_rulesets.unwrap_or_default().into_iter().map(|r| r.id).collect(),
        quantity: req.quantity.unwrap_or(1),
        ..LaunchSpec::default()
    }
}

#[utoipa::path(
    post,
    path = "/instance-operations/launch",
    tag = "instances",
    operation_id = "instances_launch",
    summary = "Launch instances",
    request_body = w::LaunchRequest,
    responses((status = 200, description = "Success", body = w::Data<w::LaunchResponse>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn launch(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Create>,
    LambdaJson(req): LambdaJson<w::LaunchRequest>,
) -> LResult {
    // Lambda takes exactly one key per launch; more keys are added inside the instance.
    if req.ssh_key_names.len() != 1 {
        return Err(Error::invalid("ssh_key_names", "exactly one SSH key name is required").into());
    }
    let ids = instances::launch(&s.control, &a, launch_spec(req)).await?;
    Ok(data(w::LaunchResponse { instance_ids: ids.iter().map(ToString::to_string).collect() }))
}

#[utoipa::path(
    post,
    path = "/instance-operations/restart",
    tag = "instances",
    operation_id = "instances_restart",
    summary = "Restart instances",
    request_body = w::InstanceIdsRequest,
    responses((status = 200, description = "Success", body = w::Data<w::RestartResponse>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn restart(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Edit>,
    LambdaJson(req): LambdaJson<w::InstanceIdsRequest>,
) -> LResult {
    let list = instances::restart(&s.control, &a, &req.instance_ids).await?;
    Ok(data(w::RestartResponse { restarted_instances: render_instances(&s, &a, &list, Permission::Edit).await? }))
}

#[utoipa::path(
    post,
    path = "/instance-operations/terminate",
    tag = "instances",
    operation_id = "instances_terminate",
    summary = "Terminate instances",
    request_body = w::InstanceIdsRequest,
    responses((status = 200, description = "Success", body = w::Data<w::TerminateResponse>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn terminate(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Delete>,
    LambdaJson(req): LambdaJson<w::InstanceIdsRequest>,
) -> LResult {
    let list = instances::terminate(&s.control, &a, &req.instance_ids).await?;
    Ok(data(w::TerminateResponse { terminated_instances: render_instances(&s, &a, &list, Permission::Delete).await? }))
}

#[utoipa::path(
    get,
    path = "/ssh-keys",
    tag = "ssh-keys",
    operation_id = "ssh_keys_list",
    summary = "List SSH keys",
    responses((status = 200, description = "Success", body = w::Data<Vec<w::SshKey>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn ssh_keys_list(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let keys = ssh_keys::list(&s.control, &a).await?;
    Ok(data(keys.iter().map(|k| render::ssh_key(k, None)).collect::<Vec<_>>()))
}

#[utoipa::path(
    post,
    path = "/ssh-keys",
    tag = "ssh-keys",
    operation_id = "ssh_key_create",
    summary = "Add an SSH key, or generate a key pair",
    request_body = w::AddSshKeyRequest,
    responses((status = 200, description = "Success", body = w::Data<w::SshKey>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn ssh_key_add(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Create>,
    LambdaJson(req): LambdaJson<w::AddSshKeyRequest>,
) -> LResult {
    let (key, private) = ssh_keys::add(&s.control, &a, &req.name, req.public_key.as_deref()).await.map_err(|e| match e {
        // The only 400 Lambda's clients accept here is invalid-parameters.
        Error::QuotaExceeded { message } => Error::invalid("ssh_keys", message),
        other => other,
    })?;
    Ok(data(render::ssh_key(&key, private)))
}

#[utoipa::path(
    delete,
    path = "/ssh-keys/{id}",
    tag = "ssh-keys",
    operation_id = "ssh_key_delete",
    summary = "Delete an SSH key",
    params(("id" = String, Path, description = "SSH key id")),
    responses((status = 200, description = "Success", body = w::Data<w::Empty>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn ssh_key_delete(State(s): State<ApiState>, LambdaActor(a): LambdaActor, LambdaPath(id): LambdaPath<String>) -> LResult {
    ssh_keys::delete(&s.control, &a, &id).await.map_err(|e| match e {
        // Lambda's spec has no 404 here: an unknown key is a 400 invalid-parameters.
        Error::NotFound { kind, id } => Error::invalid("id", format!("{kind} {id:?} does not exist")),
        other => other,
    })?;
    Ok(data(w::Empty {}))
}

#[utoipa::path(
    get,
    path = "/file-systems",
    tag = "file-systems",
    operation_id = "file_systems_list",
    summary = "List file systems",
    responses((status = 200, description = "Success", body = w::Data<Vec<w::FileSystem>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn file_systems_list(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let list = storage::list(&s.control, &a).await?;
    let org = org(&s, &a).await?;
    let cfg = s.control.config();
    Ok(data(list.iter().map(|f| render::file_system(f, cfg, &org)).collect::<Vec<_>>()))
}

#[utoipa::path(
    post,
    path = "/filesystems",
    tag = "file-systems",
    operation_id = "file_system_create",
    summary = "Create a file system",
    request_body = w::CreateFileSystemRequest,
    responses((status = 200, description = "Success", body = w::Data<w::FileSystem>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn file_system_create(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Create>,
    LambdaJson(req): LambdaJson<w::CreateFileSystemRequest>,
) -> LResult {
    let f = storage::create(&s.control, &a, &req.name, &req.region).await?;
    let org = org(&s, &a).await?;
    Ok(data(render::file_system(&f, s.control.config(), &org)))
}

#[utoipa::path(
    delete,
    path = "/filesystems/{id}",
    tag = "file-systems",
    operation_id = "file_system_delete",
    summary = "Delete a file system",
    params(("id" = String, Path, description = "File system id")),
    responses((status = 200, description = "Success", body = w::Data<w::DeletedIds>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn file_system_delete(State(s): State<ApiState>, LambdaActor(a): LambdaActor, LambdaPath(id): LambdaPath<String>) -> LResult {
    let id = storage::delete(&s.control, &a, &id).await?;
    Ok(data(w::DeletedIds { deleted_ids: vec![id.to_string()] }))
}

#[utoipa::path(
    get,
    path = "/images",
    tag = "images",
    operation_id = "images_list",
    summary = "List images in every region with capacity",
    responses((status = 200, description = "Success", body = w::Data<Vec<w::Image>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn images_list(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let imgs = images::list(&s.control, &a).await?;
    let regions = capacity::live_regions(&s.control).await?;
    let cfg = s.control.config();
    let out: Vec<w::Image> = regions.iter().flat_map(|r| imgs.iter().map(move |i| render::image(i, cfg, &r.name))).collect();
    Ok(data(out))
}

fn rules_in(rules: Vec<w::FirewallRule>) -> Result<Vec<FirewallRule>, Error> {
    rules
        .iter()
        .enumerate()
        .map(|(n, r)| FirewallRule::new(&format!("rules[{n}]"), &r.protocol, r.port_range.as_deref(), &r.source_network, &r.description))
        .collect()
}

#[utoipa::path(
    get,
    path = "/firewall-rules",
    tag = "firewall",
    operation_id = "firewall_rules_list",
    summary = "List the global inbound firewall rules",
    responses((status = 200, description = "Success", body = w::Data<Vec<w::FirewallRule>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn firewall_rules_get(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let rules = firewall::global_get(&s.control, &a).await?;
    Ok(data(rules.iter().map(render::rule).collect::<Vec<_>>()))
}

#[utoipa::path(
    put,
    path = "/firewall-rules",
    tag = "firewall",
    operation_id = "firewall_rules_replace",
    summary = "Replace the global inbound firewall rules",
    request_body = w::FirewallRulesPut,
    responses((status = 200, description = "Success", body = w::Data<Vec<w::FirewallRule>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn firewall_rules_put(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Edit>,
    LambdaJson(req): LambdaJson<w::FirewallRulesPut>,
) -> LResult {
    let rules = firewall::global_set(&s.control, &a, rules_in(req.data)?).await?;
    Ok(data(rules.iter().map(render::rule).collect::<Vec<_>>()))
}

#[utoipa::path(
    get,
    path = "/firewall-rulesets/global",
    tag = "firewall",
    operation_id = "firewall_ruleset_global_get",
    summary = "Get the global firewall ruleset",
    responses((status = 200, description = "Success", body = w::Data<w::GlobalFirewallRuleset>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn global_ruleset_get(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let rules = firewall::global_get(&s.control, &a).await?;
    Ok(data(render::global_ruleset(&rules)))
}

#[utoipa::path(
    patch,
    path = "/firewall-rulesets/global",
    tag = "firewall",
    operation_id = "firewall_ruleset_global_update",
    summary = "Update the global firewall ruleset",
    request_body = w::PatchRulesetRequest,
    responses((status = 200, description = "Success", body = w::Data<w::GlobalFirewallRuleset>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn global_ruleset_patch(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Edit>,
    LambdaJson(req): LambdaJson<w::PatchRulesetRequest>,
) -> LResult {
    if req.name.is_some() {
        return Err(Error::invalid("name", "the global ruleset cannot be renamed").into());
    }
    let rules = firewall::global_update(&s.control, &a, req.rules.map(rules_in).transpose()?).await?;
    Ok(data(render::global_ruleset(&rules)))
}

#[utoipa::path(
    get,
    path = "/firewall-rulesets",
    tag = "firewall",
    operation_id = "firewall_rulesets_list",
    summary = "List firewall rulesets",
    responses((status = 200, description = "Success", body = w::Data<Vec<w::FirewallRuleset>>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn rulesets_list(State(s): State<ApiState>, LambdaActor(a): LambdaActor) -> LResult {
    let list = firewall::ruleset_list(&s.control, &a).await?;
    let cfg = s.control.config();
    Ok(data(list.iter().map(|r| render::ruleset(r, cfg)).collect::<Vec<_>>()))
}

#[utoipa::path(
    post,
    path = "/firewall-rulesets",
    tag = "firewall",
    operation_id = "firewall_ruleset_create",
    summary = "Create a firewall ruleset",
    request_body = w::CreateRulesetRequest,
    responses((status = 200, description = "Success", body = w::Data<w::FirewallRuleset>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn ruleset_create(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Create>,
    LambdaJson(req): LambdaJson<w::CreateRulesetRequest>,
) -> LResult {
    let rs = firewall::ruleset_create(&s.control, &a, &req.name, &req.region, rules_in(req.rules)?).await?;
    Ok(data(render::ruleset(&rs, s.control.config())))
}

#[utoipa::path(
    get,
    path = "/firewall-rulesets/{id}",
    tag = "firewall",
    operation_id = "firewall_ruleset_get",
    summary = "Get a firewall ruleset",
    params(("id" = String, Path, description = "Ruleset id (32 hex characters; the global ruleset has its own path, `/firewall-rulesets/global`)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "Success", body = w::Data<w::FirewallRuleset>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn ruleset_get(State(s): State<ApiState>, LambdaActor(a): LambdaActor, LambdaPath(id): LambdaPath<String>) -> LResult {
    let rs = firewall::ruleset_get(&s.control, &a, &id).await?;
    Ok(data(render::ruleset(&rs, s.control.config())))
}

#[utoipa::path(
    patch,
    path = "/firewall-rulesets/{id}",
    tag = "firewall",
    operation_id = "firewall_ruleset_update",
    summary = "Update a firewall ruleset",
    params(("id" = String, Path, description = "Ruleset id (32 hex characters; the global ruleset has its own path, `/firewall-rulesets/global`)", pattern = "^[0-9a-f]{32}$")), request_body = w::PatchRulesetRequest,
    responses((status = 200, description = "Success", body = w::Data<w::FirewallRuleset>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn ruleset_patch(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Edit>,
    LambdaPath(id): LambdaPath<String>,
    LambdaJson(req): LambdaJson<w::PatchRulesetRequest>,
) -> LResult {
    let rules = req.rules.map(rules_in).transpose()?;
    let rs = firewall::ruleset_update(&s.control, &a, &id, req.name.as_deref(), rules).await?;
    Ok(data(render::ruleset(&rs, s.control.config())))
}

#[utoipa::path(
    delete,
    path = "/firewall-rulesets/{id}",
    tag = "firewall",
    operation_id = "firewall_ruleset_delete",
    summary = "Delete a firewall ruleset",
    params(("id" = String, Path, description = "Ruleset id (32 hex characters; the global ruleset has its own path, `/firewall-rulesets/global`)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "Success", body = w::Data<w::Empty>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody), (status = 404, description = "Not found", body = w::ErrorBody))
)]
pub async fn ruleset_delete(State(s): State<ApiState>, LambdaActor(a): LambdaActor, LambdaPath(id): LambdaPath<String>) -> LResult {
    firewall::ruleset_delete(&s.control, &a, &id).await?;
    Ok(data(w::Empty {}))
}

#[derive(serde::Deserialize)]
pub struct AuditParams {
    start: Option<String>,
    end: Option<String>,
    page_token: Option<String>,
    resource_type: Option<String>,
}

#[utoipa::path(
    get,
    path = "/audit-events",
    tag = "audit",
    operation_id = "audit_events_list",
    summary = "List audit events",
    params(("start" = Option<String>, Query, description = "ISO 8601, inclusive"), ("end" = Option<String>, Query, description = "ISO 8601, inclusive"), ("page_token" = Option<String>, Query), ("resource_type" = Option<String>, Query, description = "e.g. cloud.ssh_key")),
    responses((status = 200, description = "Success", body = w::Data<w::AuditEventsPage>), (status = 400, description = "Invalid request", body = w::ErrorBody), (status = 401, description = "Invalid API key", body = w::ErrorBody), (status = 403, description = "Missing permission", body = w::ErrorBody), (status = 429, description = "Rate limited", body = w::ErrorBody))
)]
pub async fn audit_events(
    State(s): State<ApiState>,
    LambdaActor(a): LambdaActor,
    _: Needs<Read>,
    LambdaQuery(q): LambdaQuery<AuditParams>,
) -> LResult {
    let time = |label: &'static str, v: &Option<String>| -> Result<Option<i64>, Error> {
        v.as_deref().map(|t| parse_rfc3339(t).ok_or_else(|| Error::invalid(label, "must be an ISO 8601 date or time"))).transpose()
    };
    let query = audit::AuditQuery {
        start: time("start", &q.start)?,
        end: time("end", &q.end)?,
        page_token: q.page_token.as_deref().filter(|t| !t.is_empty()),
        resource_type: q.resource_type.as_deref().map(|r| r.strip_prefix("cloud.").unwrap_or(r)),
    };
    let (events, next) = audit::list(&s.control, &a, query).await?;
    Ok(data(w::AuditEventsPage { events: events.iter().map(render::audit_event).collect(), page_token: next }))
}

pub async fn method_not_allowed() -> Response {
    let body = w::ErrorBody {
        error: w::ErrorDetail {
            code: "global/invalid-parameters".into(),
            message: "This endpoint does not support this HTTP method.".into(),
            suggestion: Some("Check the API reference for the allowed methods.".into()),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
