//! Clusters: N instances of one machine type, placed together (all nodes or none), on one
//! private network where they know each other by name, managed as one.
//!
//! - **Dedicated**: `region_nodes` nodes per region of `machine_type`. A cluster in one region
//!   is placed in one transaction with its record; across regions, region by region, and a
//!   region that does not fit terminates what the earlier ones placed (the cluster `FAILED`).
//! - **Serverless**: one node per region of `[clusters] serverless_machine_type`, under a monthly
//!   spend limit (US cents): when its nodes' charges this month reach it, they are stopped (the
//!   metering core's figures, as the org's own spend limit). 0 means no limit of its own.
//! - Without capacity for every node the cluster is `FAILED` with nothing held, or, when the
//!   request asked to wait, stays `CREATING` and the reconciler tries again.
//! - `CREATING` turns `CREATED` once every node is active. A node whose host is lost or whose
//!   sshd died is `NOT_READY`; the reconciler restarts nodes that stay unhealthy on an up host,
//!   and they come back `LIVE` (as they do by themselves when their host returns).

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::random_hex_id;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Cluster, Instance};
use nimbus_core::{ConflictReason, Error};
use nimbus_store::Store;
use serde_json::json;

use crate::instances::{self, LaunchSpec};
use crate::{emit, Control};

pub const SERVERLESS: &str = "SERVERLESS";
pub const DEDICATED: &str = "DEDICATED";

#[derive(Debug, Clone)]
pub enum Spec {
    Serverless { regions: Vec<String>, spend_limit_cents: i64 },
    Dedicated { region_nodes: Vec<(String, i64)>, machine_type: String },
}

#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub provider: String,
    pub spec: Spec,
    /// Org SSH keys (by name) on every node; empty: all of the org's keys.
    pub ssh_key_names: Vec<String>,
    pub wait_for_capacity: bool,
}

/// Who created it, as the cluster API reports it: the key's service account, else the key.
pub fn creator_of(actor: &Actor) -> String {
    actor.service_account_id.clone().unwrap_or_else(|| actor.key_id.to_string())
}

/// `provider` as a configured backend: its name or one of its aliases (`GCP`, `AWS`).
pub fn check_provider(c: &Control, provider: &str) -> Result<String, Error> {
    let p = provider.trim().to_ascii_uppercase();
    let cfg = &c.config().clusters;
    if p == cfg.provider.to_ascii_uppercase() || cfg.provider_aliases.iter().any(|a| a.eq_ignore_ascii_case(&p)) {
        Ok(p)
    } else {
        let mut known = vec![cfg.provider.clone()];
        known.extend(cfg.provider_aliases.iter().cloned());
        Err(Error::invalid("provider", format!("unknown provider {provider:?}; this cloud offers {}", known.join(", "))))
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=40).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("name", "must be 1 to 40 lower-case letters, digits and '-', no whitespace, not starting or ending with '-'"))
    }
}

/// Node host names: `<cluster>-<n>` (also their names on the private network).
pub fn node_name(cluster: &str, n: usize) -> String {
    format!("{cluster}-{}", n + 1)
}

/// Creates a cluster; returns it with its nodes (none when it failed or waits).
pub async fn create(c: &Control, actor: &Actor, req: CreateRequest) -> Result<(Cluster, Vec<Instance>), Error> {
    actor.require(Permission::Create)?;
    check_name(&req.name)?;
    let provider = check_provider(c, &req.provider)?;
    let cfg = c.config();
    let (plan, region_nodes, machine_type, spend_limit) = match req.spec {
        Spec::Serverless { regions, spend_limit_cents } => {
            if regions.is_empty() {
                return Err(Error::invalid("spec.serverless.regions", "at least one region is required"));
            }
            if spend_limit_cents < 0 {
                return Err(Error::invalid("spec.serverless.spendLimit", "must be a non-negative number of US cents"));
            }
            (
                SERVERLESS,
                regions.into_iter().map(|r| (r, 1)).collect::<Vec<_>>(),
                cfg.clusters.serverless_machine_type.clone(),
                Some(spend_limit_cents),
            )
        }
        Spec::Dedicated { region_nodes, machine_type } => {
            if region_nodes.is_empty() {
                return Err(Error::invalid("spec.dedicated.region_nodes", "at least one region is required"));
            }
            (DEDICATED, region_nodes, machine_type, None)
        }
    };
    if cfg.instance_type(&machine_type).is_none() {
        return Err(Error::invalid("spec.dedicated.machine_type", format!("unknown machine type {machine_type:?}")));
    }
    let mut total = 0;
    for (i, (r, n)) in region_nodes.iter().enumerate() {
        c.require_region("spec.regions", r)?;
        if region_nodes[..i].iter().any(|(x, _)| x == r) {
            return Err(Error::invalid("spec.regions", format!("region {r} is given twice")));
        }
        if *n < 1 {
            return Err(Error::invalid("spec.dedicated.region_nodes", format!("{r}: at least one node")));
        }
        total += n;
    }
    if total > cfg.clusters.max_nodes {
        return Err(Error::invalid("spec", format!("at most {} nodes per cluster", cfg.clusters.max_nodes)));
    }
    let keys = if req.ssh_key_names.is_empty() {
        crate::ssh_keys::list_for(c, actor, Permission::Create).await?.into_iter().map(|k| k.name).collect()
    } else {
        req.ssh_key_names.clone()
    };
    if keys.is_empty() {
        return Err(Error::invalid("ssh_key_names", "the organization has no SSH key to put on the nodes; add one first"));
    }
    {
        let mut r = c.store().reader().await?;
        if Store::cluster_name_taken_in(&mut r, &actor.org_id, &req.name).await? {
            return Err(Error::AlreadyExists { kind: "cluster", name: req.name.clone() });
        }
    }
    let now = c.now();
    let cluster = Cluster {
        id: random_hex_id(),
        org_id: actor.org_id.clone(),
        name: req.name.clone(),
        provider,
        plan: plan.to_owned(),
        state: "CREATING".into(),
        operation_status: "CLUSTER_STATUS_UNSPECIFIED".into(),
        region_nodes,
        machine_type,
        spend_limit_cents: spend_limit,
        spend_limit_reached: None,
        wait_for_capacity: req.wait_for_capacity,
        ssh_key_names: keys.clone(),
        creator_id: creator_of(actor),
        message: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    place(c, actor, &cluster, &keys).await?;
    Ok((load(c, actor, &cluster.id).await?, load_nodes(c, actor, &cluster.id).await?))
}

/// Places every node of `cl` (which may exist already, waiting), or records why it could not.
async fn place(c: &Control, actor: &Actor, cl: &Cluster, keys: &[String]) -> Result<(), Error> {
    // What the record says once its nodes are placed (a waiting cluster waits no more).
    let placed_row = Cluster { operation_status: "CLUSTER_STATUS_UNSPECIFIED".into(), message: None, updated_at: c.now(), ..cl.clone() };
    let mut placed: Vec<String> = Vec::new();
    let mut index = 0;
    for (region, n) in &cl.region_nodes {
        let names: Vec<String> = (index..index + usize::try_from(*n).unwrap_or(0)).map(|i| node_name(&cl.name, i)).collect();
        index += names.len();
        let spec = LaunchSpec {
            region: region.clone(),
            instance_type: cl.machine_type.clone(),
            ssh_key_names: keys.to_vec(),
            quantity: *n,
            hostnames: names.clone(),
            name: Some(cl.name.clone()),
            tags: vec![("cluster".to_owned(), cl.name.clone())],
            all_or_nothing: true,
            cluster: Some(placed_row.clone()),
            ..LaunchSpec::default()
        };
        match instances::launch(c, actor, spec).await {
            Ok(ids) => placed.extend(ids.into_iter().map(|i| i.to_string())),
            Err(Error::InsufficientCapacity { message }) => {
                // All nodes or none: what earlier regions placed goes again (the system undoes it,
                // whatever the caller may otherwise do).
                if !placed.is_empty() {
                    instances::terminate(c, &system_actor(cl), &placed).await?;
                }
                let now = c.now();
                let (state, status) =
                    if cl.wait_for_capacity { ("CREATING", "WAITING_FOR_CAPACITY") } else { ("FAILED", "CLUSTER_STATUS_UNSPECIFIED") };
                let why = format!("{region}: {message}");
                let mut tx = c.store().begin().await?;
                let row = Cluster {
                    state: state.into(),
                    operation_status: status.into(),
                    message: Some(why.clone()),
                    updated_at: now,
                    ..cl.clone()
                };
                Store::cluster_upsert_in_txn(&mut tx, &row).await?;
                Store::cluster_set_state_in_txn(&mut tx, &cl.id, &["CREATING", "CREATED"], state, status, Some(&why), now).await?;
                emit(&mut tx, actor, &format!("cluster.{}", state.to_ascii_lowercase()), "cluster", &cl.id, json!({"reason": why}), now)
                    .await?;
                return Store::commit(tx).await;
            }
            Err(e) => {
                if !placed.is_empty() {
                    instances::terminate(c, &system_actor(cl), &placed).await?;
                }
                return Err(e);
            }
        }
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    emit(&mut tx, actor, "cluster.created", "cluster", &cl.id, json!({"nodes": placed.len()}), now).await?;
    Store::commit(tx).await
}

pub async fn list(c: &Control, actor: &Actor, show_inactive: bool) -> Result<Vec<Cluster>, Error> {
    actor.require(Permission::Read)?;
    c.store().cluster_list(&actor.org_id, show_inactive).await
}

pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<Cluster, Error> {
    actor.require(Permission::Read)?;
    load(c, actor, id).await
}

/// The org's cluster `id`, for an action whose own permission was checked.
async fn load(c: &Control, actor: &Actor, id: &str) -> Result<Cluster, Error> {
    c.store().cluster_get(&actor.org_id, id).await?.ok_or_else(|| Error::not_found("cluster", id))
}

/// The cluster's live nodes, in name order.
pub async fn nodes(c: &Control, actor: &Actor, id: &str) -> Result<Vec<Instance>, Error> {
    actor.require(Permission::Read)?;
    load_nodes(c, actor, id).await
}

async fn load_nodes(c: &Control, actor: &Actor, id: &str) -> Result<Vec<Instance>, Error> {
    let cl = load(c, actor, id).await?;
    let mut out: Vec<Instance> = c
        .store()
        .instance_list_by_org(&actor.org_id)
        .await?
        .into_iter()
        .filter(|i| i.cluster_id.as_deref() == Some(cl.id.as_str()))
        .collect();
    out.sort_by(|a, b| a.hostname.len().cmp(&b.hostname.len()).then_with(|| a.hostname.cmp(&b.hostname)));
    Ok(out)
}

pub async fn set_spend_limit(c: &Control, actor: &Actor, id: &str, cents: i64) -> Result<(), Error> {
    actor.require(Permission::Edit)?;
    let cl = load(c, actor, id).await?;
    if cl.plan != SERVERLESS {
        return Err(Error::conflict(ConflictReason::InvalidState, "a spend limit applies to serverless clusters only"));
    }
    if cents < 0 {
        return Err(Error::invalid("spendLimit", "must be a non-negative number of US cents"));
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if !Store::cluster_set_spend_limit_in_txn(&mut tx, &actor.org_id, id, cents, now).await? {
        return Err(Error::conflict(ConflictReason::InvalidState, format!("cluster {id} is {}", cl.state)));
    }
    emit(&mut tx, actor, "cluster.spend_limit_set", "cluster", id, json!({"spend_limit_cents": cents}), now).await?;
    Store::commit(tx).await
}

/// Terminates every node and marks the cluster deleted (a retry finishes a half-done delete).
pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<(), Error> {
    actor.require(Permission::Delete)?;
    let cl = load(c, actor, id).await?;
    if cl.state == "DELETED" {
        return Ok(());
    }
    let ids: Vec<String> = load_nodes(c, actor, id).await?.iter().map(|i| i.id.to_string()).collect();
    if !ids.is_empty() {
        instances::terminate(c, actor, &ids).await?;
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    Store::cluster_set_state_in_txn(&mut tx, id, &["CREATING", "CREATED", "FAILED"], "DELETED", "CLUSTER_STATUS_UNSPECIFIED", None, now)
        .await?;
    emit(&mut tx, actor, "cluster.deleted", "cluster", id, json!({"nodes": ids.len()}), now).await?;
    Store::commit(tx).await
}

/// Regions where one more node of `[clusters] serverless_machine_type` (or of any CPU-only
/// type, when that is missing) fits now.
pub async fn available_regions(c: &Control, actor: &Actor, provider: Option<&str>) -> Result<Vec<String>, Error> {
    actor.require(Permission::Read)?;
    check_provider(c, provider.ok_or_else(|| Error::invalid("provider", "is required"))?)?;
    let cfg = c.config();
    let hosts = c.store().host_list(None, true).await?;
    let t = cfg.instance_type(&cfg.clusters.serverless_machine_type).or_else(|| cfg.instance_types.iter().find(|t| t.gpus == 0));
    Ok(cfg
        .regions
        .iter()
        .filter(|r| t.is_some_and(|t| crate::scheduler::place(&hosts, &crate::scheduler::Request::for_type(&r.name, t)).is_some()))
        .map(|r| r.name.clone())
        .collect())
}

/// One reconciler pass over every live cluster: `CREATING` → `CREATED` once all nodes are
/// active; waiting clusters try to place again; serverless spend limits; unhealthy nodes on up
/// hosts are restarted. Idempotent.
pub async fn reconcile_once(c: &Control) -> Result<(), Error> {
    for cl in c.store().cluster_list_live().await? {
        // One cluster's trouble must not hold up the others.
        if let Err(e) = reconcile_cluster(c, &cl).await {
            tracing::warn!(cluster = %cl.id, error = %e, "cluster reconcile failed");
        }
    }
    Ok(())
}

async fn reconcile_cluster(c: &Control, cl: &Cluster) -> Result<(), Error> {
    let now = c.now();
    {
        let cl = cl.clone();
        let actor = system_actor(&cl);
        let nodes: Vec<Instance> = c
            .store()
            .instance_list_by_org(&cl.org_id)
            .await?
            .into_iter()
            .filter(|i| i.cluster_id.as_deref() == Some(cl.id.as_str()))
            .collect();
        let want: i64 = cl.region_nodes.iter().map(|(_, n)| n).sum();
        if cl.state == "CREATING" && nodes.is_empty() && cl.operation_status == "WAITING_FOR_CAPACITY" {
            // The keys the request chose (a key deleted meanwhile fails the placement, clearly).
            let keys = cl.ssh_key_names.clone();
            if let Err(e) = place(c, &actor, &cl, &keys).await {
                // Not a capacity problem (that keeps it waiting): it cannot be placed as asked.
                let why = e.external_message();
                let mut tx = c.store().begin().await?;
                Store::cluster_set_state_in_txn(&mut tx, &cl.id, &["CREATING"], "FAILED", "CLUSTER_STATUS_UNSPECIFIED", Some(&why), now)
                    .await?;
                emit(&mut tx, &actor, "cluster.failed", "cluster", &cl.id, json!({"reason": why}), now).await?;
                Store::commit(tx).await?;
            }
            return Ok(());
        }
        if cl.state == "CREATING"
            && i64::try_from(nodes.len()).unwrap_or(0) == want
            && nodes.iter().all(|n| n.state == InstanceState::Active)
        {
            let mut tx = c.store().begin().await?;
            if Store::cluster_set_state_in_txn(&mut tx, &cl.id, &["CREATING"], "CREATED", "CLUSTER_STATUS_UNSPECIFIED", None, now).await? {
                emit(&mut tx, &actor, "cluster.ready", "cluster", &cl.id, json!({"nodes": nodes.len()}), now).await?;
            }
            Store::commit(tx).await?;
        }
        enforce_spend_limit(c, &actor, &cl, &nodes).await?;
        revive(c, &actor, &nodes).await?;
    }
    Ok(())
}

/// The system acting for a cluster's org (reconciler actions are recorded without a key).
fn system_actor(cl: &Cluster) -> Actor {
    Actor {
        org_id: cl.org_id.clone(),
        key_id: nimbus_core::ids::ApiKeyId::from_trusted("system".to_owned()),
        key_prefix: "system".into(),
        permissions: nimbus_core::auth::Permissions::admin(),
        plan: String::new(),
        service_account_id: None,
    }
}

async fn enforce_spend_limit(c: &Control, actor: &Actor, cl: &Cluster, nodes: &[Instance]) -> Result<(), Error> {
    let Some(limit) = cl.spend_limit_cents.filter(|l| *l > 0) else { return Ok(()) };
    let period = crate::billing::current_period(c.now());
    if cl.spend_limit_reached.as_deref() == Some(period.as_str()) {
        return Ok(());
    }
    let ids: Vec<String> = c.store().cluster_node_ids(&cl.id).await?.iter().map(ToString::to_string).collect();
    let spent = crate::billing::month_spend_of(c, &cl.org_id, &ids).await?;
    if spent < nimbus_core::money::Micros::from_cents(limit) {
        return Ok(());
    }
    let mut tx = c.store().begin().await?;
    let first = Store::cluster_mark_spend_limit_reached_in_txn(&mut tx, &cl.id, &period).await?;
    if first {
        emit(
            &mut tx,
            actor,
            "cluster.spend_limit_reached",
            "cluster",
            &cl.id,
            json!({"spent_micros": spent.0, "limit_cents": limit}),
            c.now(),
        )
        .await?;
    }
    Store::commit(tx).await?;
    if first {
        for n in nodes.iter().filter(|n| n.state == InstanceState::Active) {
            instances::stop(c, actor, n.id.as_str()).await?;
        }
    }
    Ok(())
}

/// Restarts nodes that are unhealthy although their host is up (their sshd or their container
/// died): the cluster's node is brought back rather than left `NOT_READY`.
async fn revive(c: &Control, actor: &Actor, nodes: &[Instance]) -> Result<(), Error> {
    let sick: Vec<&Instance> = nodes.iter().filter(|n| n.state == InstanceState::Unhealthy).collect();
    if sick.is_empty() {
        return Ok(());
    }
    let hosts = c.store().host_list(None, true).await?;
    let now = c.now();
    let grace = i64::try_from(c.config().clusters.revive_after_ms).unwrap_or(i64::MAX / 1000) * 1000;
    let ids: Vec<String> = sick
        .iter()
        .filter(|n| n.host_id.as_ref().is_some_and(|h| hosts.iter().any(|x| &x.id == h)) && now - n.updated_at >= grace)
        .map(|n| n.id.to_string())
        .collect();
    if !ids.is_empty() {
        instances::restart(c, actor, &ids).await?;
    }
    Ok(())
}
