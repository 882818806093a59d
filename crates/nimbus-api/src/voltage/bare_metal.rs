//! Bare-metal rentals of the Voltage Park dialect over `nimbus_control::bare_metal`: whole hosts,
//! each node one instance holding its host. Kubernetes fields are null: Nimbus creates no
//! cluster unless an operator wires one (docs/voltage-park.md).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_control::bare_metal::{self, Location, ProvisionRequest};
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Host, Instance, Rental};
use nimbus_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Page, VpActor, VpJson};
use super::handlers::{from_uuid, gpu_slug, location_id, usd, uuid};
use super::vms::{cloud_init_text, org_key_ids, OrgKeys};
use super::VpError;
use crate::ApiState;

type VpResult = Result<Response, VpError>;

pub fn is_node(i: &Instance) -> bool {
    bare_metal::is_node(i)
}

fn dollars(micros: i64) -> f64 {
    // The seed shows these two prices as JSON numbers; six decimals are exact in an f64.
    micros as f64 / 1_000_000.0
}

fn location_json(l: &Location) -> Value {
    let n = &l.node;
    json!({
        "id": location_id(&l.region),
        "gpu_count_ethernet": l.free_nodes * n.gpu_count,
        "gpu_price_ethernet": dollars(l.gpu_price_micros),
        // Hosts report no InfiniBand fabric yet (see nimbus_control::bare_metal).
        "gpu_count_infiniband": 0,
        "gpu_price_infiniband": dollars(l.gpu_price_micros),
        "specs_per_node": {
            "gpu_model": gpu_slug(&n.gpu_model),
            "gpu_count": n.gpu_count,
            "cpu_model": n.cpu_model,
            "cpu_count": n.vcpus,
            "ram_gb": n.ram_gib,
            "storage_gb": n.disk_gib,
        },
    })
}

/// Public in the seed (no key needed), like the presets.
pub async fn locations(State(s): State<ApiState>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 100, 100)?;
    let all: Vec<Value> = bare_metal::locations(&s.control).await?.iter().map(location_json).collect();
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

fn rental_json(r: &Rental, nodes: &[Instance], hosts: &[Host]) -> Value {
    let first = nodes.first();
    let host = first.and_then(|n| n.host_id.as_ref()).and_then(|h| hosts.iter().find(|x| &x.id == h));
    let gpu_model = host.and_then(|h| h.gpus.first()).map(|g| gpu_slug(&g.model)).unwrap_or_default();
    let res = first.map(|n| n.resources).unwrap_or_default();
    json!({
        "id": uuid(&r.id),
        "name": r.name,
        "creation_timestamp": nimbus_core::clock::to_rfc3339(r.created_at),
        "status": status(nodes),
        "power_status": power_status(nodes),
        "node_count": r.node_count,
        "specs_per_node": {
            "gpu_model": gpu_model,
            "gpu_count": r.gpus_per_node,
            "cpu_model": host.map(|h| h.cpu_model.clone()).unwrap_or_default(),
            "cpu_count": res.vcpus,
            "ram_gb": res.memory_mib / 1024,
            "storage_gb": res.disk_gib,
        },
        "rate_hourly": usd(nodes.iter().filter_map(|n| n.price_micros_per_hour).sum()),
        "network_type": r.network_type,
        "username": "ubuntu",
        "node_networking": nodes
            .iter()
            .map(|n| json!({"public_ip": bare_metal::public_ip(n), "private_ip": n.private_ip.clone().or_else(|| n.ip.clone())}))
            .collect::<Vec<_>>(),
        "sub_order": r.sub_order,
        "storage_id": r.storage_id.as_deref().map(uuid),
        "storage_pv": null,
        "storage_pvc": null,
        "k8s_cluster_id": null,
        "kubeconfig": null,
        "tags": r.tags,
    })
}

fn rental_id(id: &str) -> Result<String, VpError> {
    from_uuid(id).ok_or_else(|| VpError::at("path", Error::invalid("baremetal_rental_id", "Input should be a valid UUID")))
}

pub async fn list(State(s): State<ApiState>, VpActor(a): VpActor, RawQuery(q): RawQuery) -> VpResult {
    // `limit=all` is the seed's string form of "no limit".
    let raw = q.unwrap_or_default();
    let all_rows = raw.split('&').any(|p| p == "limit=all");
    let rest: Vec<&str> = raw.split('&').filter(|p| *p != "limit=all").collect();
    let mut page = Page::parse(Some(&rest.join("&")), 20, 100)?;
    if all_rows {
        page.limit = usize::MAX / 2;
    }
    let hosts = s.control.store().host_list(None, false).await?;
    let items: Vec<Value> = bare_metal::list(&s.control, &a).await?.iter().map(|(r, n)| rental_json(r, n, &hosts)).collect();
    Ok(Json(page.render(items)).into_response())
}

/// The seed's `sub_order` is an integer or a string (`12345`, `"12345"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum SubOrder {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
pub struct Provision {
    location_id: String,
    gpu_count: i64,
    name: String,
    #[serde(default)]
    organization_ssh_keys: OrgKeys,
    #[serde(default)]
    ssh_keys: Vec<String>,
    network_type: String,
    #[serde(default)]
    sub_order: Option<SubOrder>,
    #[serde(default)]
    storage_id: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    cloudinit_script: Option<Value>,
}

pub async fn create(State(s): State<ApiState>, VpActor(a): VpActor, VpJson(b): VpJson<Provision>) -> VpResult {
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
            SubOrder::Int(i) => i.to_string(),
            SubOrder::Text(t) => t,
        }),
        storage_id,
        tags: b.tags,
        user_data: cloud_init_text("cloudinit_script", &b.cloudinit_script)?,
    };
    let r = bare_metal::provision(&s.control, &a, req).await?;
    Ok((StatusCode::CREATED, Json(json!({"rental_id": uuid(&r.id), "warning": null}))).into_response())
}

#[derive(Deserialize)]
pub struct Patch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

pub async fn patch(State(s): State<ApiState>, VpActor(a): VpActor, Path(id): Path<String>, VpJson(b): VpJson<Patch>) -> VpResult {
    let hex = rental_id(&id)?;
    let r = bare_metal::update(&s.control, &a, &hex, b.name.as_deref(), b.tags).await?;
    Ok(Json(json!({"name": r.name, "tags": r.tags})).into_response())
}

pub async fn delete(State(s): State<ApiState>, VpActor(a): VpActor, Path(id): Path<String>) -> VpResult {
    bare_metal::terminate(&s.control, &a, &rental_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(Value::Null)).into_response())
}

#[derive(Deserialize)]
pub struct Power {
    status: String,
}

pub async fn power(State(s): State<ApiState>, VpActor(a): VpActor, Path(id): Path<String>, VpJson(b): VpJson<Power>) -> VpResult {
    let hex = rental_id(&id)?;
    let start = match b.status.as_str() {
        "started" => true,
        "stopped" => false,
        _ => return Err(Error::invalid("status", "Input should be 'started' or 'stopped'").into()),
    };
    bare_metal::power(&s.control, &a, &hex, start).await?;
    Ok(Json(Value::Null).into_response())
}

#[derive(Deserialize)]
pub struct Reboot {
    public_ips: Vec<String>,
}

pub async fn reboot(State(s): State<ApiState>, VpActor(a): VpActor, Path(id): Path<String>, VpJson(b): VpJson<Reboot>) -> VpResult {
    bare_metal::reboot(&s.control, &a, &rental_id(&id)?, &b.public_ips).await?;
    Ok((StatusCode::CREATED, Json(Value::Null)).into_response())
}
