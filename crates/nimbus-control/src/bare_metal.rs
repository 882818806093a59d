//! Bare-metal rentals: whole hosts rented together. Each node is one instance that holds all of
//! its host (every vCPU, all memory, the disk, every GPU), placed in one transaction with the
//! rental record, all nodes or none. Nodes are billed at a price fixed at provisioning (GPUs at
//! the per-GPU price of their model; hosts without GPUs at the component prices), and a stop
//! keeps the hosts reserved and billed.
//!
//! A location's node shape is that of its oldest up host; only hosts of exactly that shape and
//! with nothing running are free nodes. Hosts report no InfiniBand fabric yet, so
//! `infiniband` rentals find no capacity.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::catalog::gpu_model_matches;
use nimbus_core::ids::random_hex_id;
use nimbus_core::instance::InstanceState;
use nimbus_core::metering::StopBilling;
use nimbus_core::model::{Host, HostStatus, Instance, Rental};
use nimbus_core::money::Micros;
use nimbus_core::{validate, ConflictReason, Error};
use nimbus_store::Store;
use serde_json::json;

use crate::config::Config;
use crate::instances::{self, LaunchSpec, WholeHosts};
use crate::{emit, Control};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The GPUs' model as the host reports it (empty without GPUs).
    pub gpu_model: String,
    pub gpu_count: i64,
    pub cpu_model: String,
    pub vcpus: i64,
    pub ram_gib: i64,
    pub disk_gib: i64,
}

impl NodeSpec {
    fn of(h: &Host) -> NodeSpec {
        NodeSpec {
            gpu_model: h.gpus.first().map(|g| g.model.clone()).unwrap_or_default(),
            gpu_count: i64::try_from(h.gpus.len()).unwrap_or(0),
            cpu_model: h.cpu_model.clone(),
            vcpus: h.total.vcpus,
            ram_gib: h.total.memory_mib / 1024,
            disk_gib: h.total.disk_gib,
        }
    }

    fn fits(&self, h: &Host) -> bool {
        i64::try_from(h.gpus.len()).is_ok_and(|n| n == self.gpu_count) && h.gpus.iter().all(|g| g.model == self.gpu_model)
    }
}

#[derive(Debug, Clone)]
pub struct Location {
    pub region: String,
    pub node: NodeSpec,
    /// Hosts of the node's shape with nothing on them.
    pub free_nodes: i64,
    /// Per GPU-hour (0 for hosts without GPUs).
    pub gpu_price_micros: i64,
    /// Per node-hour.
    pub node_price_micros: i64,
}

/// The hourly price of one GPU of host model `model`: that of the cheapest one-GPU instance
/// type of the model (`None` when no such type is configured).
pub fn gpu_hour_price_micros(cfg: &Config, model: &str) -> Option<i64> {
    cfg.instance_types
        .iter()
        .filter(|t| t.gpus == 1 && !t.gpu_model.is_empty() && gpu_model_matches(&t.gpu_model, model))
        .map(|t| Micros::from_cents(t.price_cents_per_hour).0)
        .min()
}

fn node_price(cfg: &Config, n: &NodeSpec) -> (i64, i64) {
    if n.gpu_count > 0 {
        let per_gpu = gpu_hour_price_micros(cfg, &n.gpu_model).unwrap_or(0);
        (per_gpu, per_gpu.saturating_mul(n.gpu_count))
    } else {
        let p = &cfg.pricing;
        let node = p
            .vcpu_hour_micros
            .saturating_mul(n.vcpus)
            .saturating_add(p.ram_gib_hour_micros.saturating_mul(n.ram_gib))
            .saturating_add(p.storage_gib_hour_micros.saturating_mul(n.disk_gib));
        (0, node)
    }
}

fn empty(h: &Host) -> bool {
    h.used == nimbus_core::catalog::Resources::default() && h.gpus.iter().all(|g| g.instance_id.is_none())
}

/// Every configured region that has an up host, with its node shape and free nodes now.
pub async fn locations(c: &Control) -> Result<Vec<Location>, Error> {
    let cfg = c.config();
    let hosts = c.store().host_list(None, true).await?;
    let mut out = Vec::new();
    for r in &cfg.regions {
        let here: Vec<&Host> = hosts.iter().filter(|h| h.region == r.name && h.status == HostStatus::Up).collect();
        let Some(first) = here.first() else { continue };
        let node = NodeSpec::of(first);
        let free_nodes = i64::try_from(here.iter().filter(|h| node.fits(h) && empty(h)).count()).unwrap_or(0);
        let (gpu_price_micros, node_price_micros) = node_price(cfg, &node);
        out.push(Location { region: r.name.clone(), node, free_nodes, gpu_price_micros, node_price_micros });
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct ProvisionRequest {
    pub region: String,
    /// A multiple of the location's GPUs per node (0 on hosts without GPUs: one node).
    pub gpu_count: i64,
    pub name: String,
    pub ssh_key_ids: Vec<String>,
    pub extra_public_keys: Vec<String>,
    pub network_type: String,
    pub sub_order: Option<String>,
    pub storage_id: Option<String>,
    pub tags: Vec<String>,
    pub user_data: Option<String>,
}

/// Provisions a rental: all its nodes or none. Returns it.
pub async fn provision(c: &Control, actor: &Actor, req: ProvisionRequest) -> Result<Rental, Error> {
    actor.require(Permission::Create)?;
    validate::instance_name(&req.name)?;
    if !matches!(req.network_type.as_str(), "ethernet" | "infiniband") {
        return Err(Error::invalid("network_type", "must be ethernet or infiniband"));
    }
    if let Some(s) = &req.sub_order {
        if s.is_empty() || s.len() > 64 || s.chars().any(char::is_control) {
            return Err(Error::invalid("sub_order", "must be 1 to 64 printable characters"));
        }
    }
    let loc = locations(c)
        .await?
        .into_iter()
        .find(|l| l.region == req.region)
        .ok_or_else(|| Error::InsufficientCapacity { message: format!("no bare-metal hosts in location {}", req.region) })?;
    let per = loc.node.gpu_count;
    let nodes = match (per, req.gpu_count) {
        (0, 0) => 1,
        (0, _) => return Err(Error::invalid("gpu_count", "hosts in this location have no GPUs: give 0 for one whole host")),
        (p, g) if g > 0 && g % p == 0 => g / p,
        (p, _) => return Err(Error::invalid("gpu_count", format!("must be a positive multiple of {p} (GPUs per node)"))),
    };
    if req.network_type == "infiniband" {
        return Err(Error::InsufficientCapacity { message: format!("no InfiniBand hosts in location {}", req.region) });
    }
    let now = c.now();
    let rental = Rental {
        id: random_hex_id(),
        org_id: actor.org_id.clone(),
        name: req.name.clone(),
        region: req.region.clone(),
        network_type: req.network_type.clone(),
        sub_order: req.sub_order.clone(),
        storage_id: req.storage_id.clone(),
        tags: req.tags.clone(),
        node_count: nodes,
        gpus_per_node: per,
        created_at: now,
        updated_at: now,
        terminated_at: None,
    };
    let spec = LaunchSpec {
        region: req.region.clone(),
        ssh_key_ids: req.ssh_key_ids,
        extra_public_keys: req.extra_public_keys,
        name: Some(req.name.clone()),
        user_data: req.user_data,
        tags: req.tags.iter().map(|t| (t.clone(), String::new())).collect(),
        volume_ids: req.storage_id.into_iter().collect(),
        quantity: nodes,
        forward_ssh_port: false,
        stop_billing: StopBilling::Reserved,
        whole_hosts: Some(WholeHosts { gpus_per_node: per, gpu_model: loc.node.gpu_model, price_micros_per_hour: loc.node_price_micros }),
        rental: Some(rental.clone()),
        ..LaunchSpec::default()
    };
    instances::launch(c, actor, spec).await?;
    Ok(rental)
}

pub fn is_node(i: &Instance) -> bool {
    i.rental_id.is_some()
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<(Rental, Vec<Instance>)>, Error> {
    list_for(c, actor, Permission::Read).await
}

/// [`list`] for an action that needs `p` (attaching storage to a rental's nodes needs CREATE or
/// EDIT, not READ), so that a key holding just that permission can do it.
pub async fn list_for(c: &Control, actor: &Actor, p: Permission) -> Result<Vec<(Rental, Vec<Instance>)>, Error> {
    actor.require(p)?;
    let rentals = c.store().rental_list(&actor.org_id).await?;
    let insts = c.store().instance_list_by_org(&actor.org_id).await?;
    Ok(rentals
        .into_iter()
        .map(|r| {
            let nodes = insts.iter().filter(|i| i.rental_id.as_deref() == Some(r.id.as_str())).cloned().collect();
            (r, nodes)
        })
        .collect())
}

pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<(Rental, Vec<Instance>), Error> {
    actor.require(Permission::Read)?;
    find(c, actor, id).await
}

/// The rental and its nodes, with no permission check: for functions that have checked theirs.
async fn find(c: &Control, actor: &Actor, id: &str) -> Result<(Rental, Vec<Instance>), Error> {
    let r = c.store().rental_get(&actor.org_id, id).await?.ok_or_else(|| Error::not_found("bare-metal rental", id))?;
    let nodes = c.store().instance_list_by_org(&actor.org_id).await?.into_iter().filter(|i| i.rental_id.as_deref() == Some(id)).collect();
    Ok((r, nodes))
}

pub async fn update(c: &Control, actor: &Actor, id: &str, name: Option<&str>, tags: Option<Vec<String>>) -> Result<Rental, Error> {
    actor.require(Permission::Edit)?;
    if let Some(n) = name {
        validate::instance_name(n)?;
    }
    if let Some(t) = &tags {
        validate::tags(&t.iter().map(|t| (t.clone(), String::new())).collect::<Vec<_>>())?;
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if !Store::rental_update_in_txn(&mut tx, &actor.org_id, id, name, tags.as_deref(), now).await? {
        return Err(Error::not_found("bare-metal rental", id));
    }
    emit(&mut tx, actor, "rental.updated", "rental", id, json!({"name": name}), now).await?;
    Store::commit(tx).await?;
    Ok(find(c, actor, id).await?.0)
}

/// Terminates every node, then ends the rental (a retry after a crash in between finishes it).
pub async fn terminate(c: &Control, actor: &Actor, id: &str) -> Result<(), Error> {
    actor.require(Permission::Delete)?;
    let (_, nodes) = find(c, actor, id).await?;
    let ids: Vec<String> = nodes.iter().map(|i| i.id.to_string()).collect();
    if !ids.is_empty() {
        instances::terminate(c, actor, &ids).await?;
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    Store::rental_terminate_in_txn(&mut tx, &actor.org_id, id, now).await?;
    emit(&mut tx, actor, "rental.terminated", "rental", id, json!({"nodes": ids.len()}), now).await?;
    Store::commit(tx).await
}

/// Starts or stops every node (a stop keeps the hosts reserved).
pub async fn power(c: &Control, actor: &Actor, id: &str, start: bool) -> Result<(), Error> {
    actor.require(Permission::Edit)?;
    let (_, nodes) = find(c, actor, id).await?;
    for n in &nodes {
        let done = if start { n.state.wants_running() } else { matches!(n.state, InstanceState::Stopping | InstanceState::Stopped) };
        if done {
            continue;
        }
        // A node that cannot move now (still stopping, say) makes the call fail with its reason.
        if start {
            instances::start(c, actor, n.id.as_str()).await?;
        } else {
            instances::stop(c, actor, n.id.as_str()).await?;
        }
    }
    Ok(())
}

/// The address a node answers SSH on (port 22): the whole host is the customer's, so no port
/// is forwarded; on a single machine this is the node's bridge address (docs/voltage-park.md
/// has the production layout).
pub fn public_ip(n: &Instance) -> Option<String> {
    n.ip.clone()
}

/// Restarts the nodes reached on `public_ips`; an address that is no node of the rental is
/// refused before anything restarts.
pub async fn reboot(c: &Control, actor: &Actor, id: &str, public_ips: &[String]) -> Result<(), Error> {
    actor.require(Permission::Edit)?;
    if public_ips.is_empty() {
        return Err(Error::invalid("public_ips", "at least one address is required"));
    }
    let (_, nodes) = find(c, actor, id).await?;
    let mut ids = Vec::new();
    for ip in public_ips {
        let n = nodes
            .iter()
            .find(|n| public_ip(n).as_deref() == Some(ip.as_str()))
            .ok_or_else(|| Error::conflict(ConflictReason::InvalidState, format!("{ip} is not the address of a node of this rental")))?;
        ids.push(n.id.to_string());
    }
    instances::restart(c, actor, &ids).await.map(|_| ())
}
