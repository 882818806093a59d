//! Instances: launch (validate, schedule, reserve, insert in one transaction), list, get, rename,
//! restart and terminate. Agents' reports move instances through the rest of the lifecycle
//! (see `agents`).

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::catalog::{InstanceType, Machine};
use nimbus_core::ids::*;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{FileSystemMount, Instance};
use nimbus_core::{validate, ConflictReason, Error};
use nimbus_store::{InstanceUpdate, NewInstance, Store};
use serde_json::json;

use crate::scheduler::{self, Request};
use crate::{emit, images, Control};

const MAX_CLAIM_ATTEMPTS: usize = 64;

/// How a launch names its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Id(String),
    Family(String),
}

/// A launch request in domain terms, whatever dialect it came from.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    pub region: String,
    pub instance_type: String,
    pub ssh_key_names: Vec<String>,
    /// SSH keys by id (the native dialect); combined with `ssh_key_names`.
    pub ssh_key_ids: Vec<String>,
    pub file_system_names: Vec<String>,
    /// `(file system id, mount point)`; mount point `None` means the file system's default.
    pub file_system_mounts: Vec<(String, Option<String>)>,
    pub hostname: Option<String>,
    pub name: Option<String>,
    pub image: Option<ImageRef>,
    pub user_data: Option<String>,
    pub tags: Vec<(String, String)>,
    pub firewall_ruleset_ids: Vec<String>,
    /// Volumes (by id) to attach to the new instance.
    pub volume_ids: Vec<String>,
    /// An instance-disk snapshot (id) the new disk starts from; pins the launch to its host.
    pub source_snapshot: Option<String>,
    pub quantity: i64,
    /// Public keys given inline (not stored as the org's keys), authorized like the named ones.
    pub extra_public_keys: Vec<String>,
    /// A password for the default user (plain text; only its crypt hash is kept). With one, no
    /// SSH key is required.
    pub password: Option<String>,
    /// Forward a host port (from `[port_forwards]`) to the instance's port 22.
    pub forward_ssh_port: bool,
    pub stop_billing: nimbus_core::metering::StopBilling,
    /// Take whole hosts (all their resources and GPUs), all `quantity` of them or none.
    pub whole_hosts: Option<WholeHosts>,
    /// The bare-metal rental the new instances are the nodes of, inserted with them.
    pub rental: Option<nimbus_core::model::Rental>,
    /// The cluster the new instances are the nodes of, inserted (or updated) with them.
    pub cluster: Option<nimbus_core::model::Cluster>,
    /// Place all `quantity` instances or none (clusters); whole-host launches always are.
    pub all_or_nothing: bool,
    /// Host names of the new instances, in order (`quantity` of them), instead of `hostname`.
    pub hostnames: Vec<String>,
}

/// The instance type name of whole-host instances (bare-metal nodes).
pub const WHOLE_HOST_TYPE: &str = "bare-metal";

/// What a whole-host launch wants of each host.
#[derive(Debug, Clone)]
pub struct WholeHosts {
    /// Hosts with exactly this many GPUs (0: hosts without GPUs).
    pub gpus_per_node: i64,
    /// Pattern their GPUs' model must match (see `gpu_model_matches`).
    pub gpu_model: String,
    pub price_micros_per_hour: i64,
}

/// The start of a long value, for error messages.
fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn check_mount_point(p: &str) -> Result<(), Error> {
    let ok = p.starts_with('/')
        && p.len() <= 255
        && !p.split('/').any(|s| s == ".." || s == ".")
        && !p.chars().any(|c| c.is_control())
        && p != "/";
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("file_system_mounts.mount_point", format!("{p:?} must be an absolute path below /")))
    }
}

/// Launches `spec.quantity` instances; returns the ids of those placed. Fewer than requested
/// when capacity runs out part-way (as Lambda does); none placed is `InsufficientCapacity`.
pub async fn launch(c: &Control, actor: &Actor, spec: LaunchSpec) -> Result<Vec<InstanceId>, Error> {
    let instance_type = crate::telemetry::type_label(c, &spec.instance_type).to_owned();
    let r = launch_unobserved(c, actor, spec).await;
    c.telemetry().launched(&instance_type, &r);
    r
}

async fn launch_unobserved(c: &Control, actor: &Actor, spec: LaunchSpec) -> Result<Vec<InstanceId>, Error> {
    actor.require(Permission::Create)?;
    let cfg = c.config();
    // A cluster's nodes are one launch per region, bounded by the cluster size limit instead.
    let max_quantity = if spec.cluster.is_some() { cfg.clusters.max_nodes } else { cfg.quotas.max_launch_quantity };
    if spec.quantity < 1 || spec.quantity > max_quantity {
        return Err(Error::invalid("quantity", format!("must be between 1 and {max_quantity}")));
    }
    if let Some(n) = &spec.name {
        validate::instance_name(n)?;
    }
    if let Some(h) = &spec.hostname {
        validate::hostname(h)?;
    }
    for h in &spec.hostnames {
        validate::hostname(h)?;
    }
    if let Some(u) = &spec.user_data {
        validate::user_data(u)?;
    }
    for k in &spec.extra_public_keys {
        validate::ssh_public_key(k).map_err(|_| Error::invalid("ssh_keys", format!("{:?} is not a valid OpenSSH public key", short(k))))?;
    }
    let user_data = match &spec.password {
        Some(p) => {
            Some(nimbus_core::cloudinit::with_default_password(spec.user_data.as_deref(), &nimbus_core::password::hash("password", p)?)?)
        }
        None => spec.user_data.clone(),
    };
    validate::tags(&spec.tags)?;
    c.require_region("region_name", &spec.region)?;
    // Whole-host launches (bare-metal nodes) take all of a host; they name no catalog type.
    let whole_host_type;
    let itype: &InstanceType = match &spec.whole_hosts {
        Some(w) => {
            whole_host_type = InstanceType {
                name: WHOLE_HOST_TYPE.to_owned(),
                description: "Whole host (bare metal)".to_owned(),
                gpu_description: w.gpu_model.clone(),
                price_cents_per_hour: w.price_micros_per_hour.div_euclid(10_000),
                vcpus: 0,
                memory_gib: 0,
                storage_gib: 0,
                gpus: w.gpus_per_node,
                gpu_model: w.gpu_model.clone(),
                gpu_memory_gib: 0,
                mig_profile: String::new(),
                privileged: false,
                machine: Machine::Container,
            };
            &whole_host_type
        }
        None => cfg.instance_type(&spec.instance_type).ok_or_else(|| Error::not_found("instance type", &spec.instance_type))?,
    };
    if spec.ssh_key_names.is_empty() && spec.ssh_key_ids.is_empty() && spec.extra_public_keys.is_empty() && spec.password.is_none() {
        return Err(Error::invalid("ssh_key_names", "at least one SSH key name is required"));
    }
    let image = images::resolve(c, spec.image.as_ref(), &spec.region).await?;
    // Read outside the launch transaction: concurrent launches may overshoot a limit by what
    // they launch together (the limit is a budget, not a reservation).
    crate::billing::check_launch(c, &actor.org_id, itype.price_cents_per_hour, spec.quantity).await?;

    let now = c.now();
    let mut tx = c.store().begin().await?;

    let mut public_keys = Vec::new();
    let mut key_names = Vec::new();
    for name in &spec.ssh_key_names {
        let k = Store::ssh_key_get_by_name_in(&mut tx, &actor.org_id, name).await?.ok_or_else(|| Error::not_found("SSH key", name))?;
        if !key_names.contains(&k.name) {
            key_names.push(k.name);
            public_keys.push(k.public_key);
        }
    }
    for id in &spec.ssh_key_ids {
        let kid = SshKeyId::parse(id).ok_or_else(|| Error::not_found("SSH key", id))?;
        let k = Store::ssh_key_get_in(&mut tx, &actor.org_id, &kid).await?.ok_or_else(|| Error::not_found("SSH key", id))?;
        if !key_names.contains(&k.name) {
            key_names.push(k.name);
            public_keys.push(k.public_key);
        }
    }

    for k in &spec.extra_public_keys {
        let k = k.trim().to_owned();
        if !public_keys.contains(&k) {
            public_keys.push(k);
        }
    }

    let mut mounts: Vec<FileSystemMount> = Vec::new();
    let mut add_mount = |fs: nimbus_core::model::FileSystem, mp: Option<String>| -> Result<(), Error> {
        if fs.region != spec.region {
            return Err(Error::conflict(
                ConflictReason::FileSystemWrongRegion,
                format!("file system {} is in {}, not in {}", fs.name, fs.region, spec.region),
            ));
        }
        let mount_point = mp.unwrap_or(fs.mount_point);
        check_mount_point(&mount_point)?;
        if mounts.iter().any(|m| m.file_system_id == fs.id) {
            return Err(Error::invalid("file_system_names", format!("file system {} is given twice", fs.name)));
        }
        if mounts.iter().any(|m| m.mount_point == mount_point) {
            return Err(Error::invalid("file_system_mounts", format!("mount point {mount_point} is used twice")));
        }
        mounts.push(FileSystemMount { file_system_id: fs.id, mount_point });
        Ok(())
    };
    for name in &spec.file_system_names {
        let fs =
            Store::file_system_get_by_name_in(&mut tx, &actor.org_id, name).await?.ok_or_else(|| Error::not_found("file system", name))?;
        add_mount(fs, None)?;
    }
    for (id, mp) in &spec.file_system_mounts {
        let fsid = FileSystemId::parse(id).ok_or_else(|| Error::not_found("file system", id))?;
        let fs = Store::file_system_get_in(&mut tx, &actor.org_id, &fsid).await?.ok_or_else(|| Error::not_found("file system", id))?;
        add_mount(fs, mp.clone())?;
    }

    let mut rulesets = Vec::new();
    for id in &spec.firewall_ruleset_ids {
        let rid = FirewallRulesetId::parse(id).ok_or_else(|| Error::not_found("firewall ruleset", id))?;
        let rs = Store::ruleset_get_in(&mut tx, &actor.org_id, &rid).await?.ok_or_else(|| Error::not_found("firewall ruleset", id))?;
        if rs.region != spec.region {
            return Err(Error::invalid("firewall_rulesets", format!("ruleset {} is in {}, not in {}", rs.name, rs.region, spec.region)));
        }
        if !rulesets.contains(&rs.id) {
            rulesets.push(rs.id);
        }
    }

    let live = Store::instance_count_live_by_org_in(&mut tx, &actor.org_id).await?;
    if live + spec.quantity > cfg.quotas.instances_per_org {
        return Err(Error::QuotaExceeded {
            message: format!("this organization may run at most {} instances", cfg.quotas.instances_per_org),
        });
    }

    // Volumes and snapshots are host-local: attaching one that already holds data, or
    // restoring a snapshot, pins the instance to that host.
    let mut pin: Option<HostId> = None;
    let mut pin_to = |h: &HostId, what: String| -> Result<(), Error> {
        match &pin {
            Some(p) if p != h => {
                Err(Error::conflict(ConflictReason::InvalidState, format!("{what} lives on another host than the rest of this launch")))
            }
            _ => {
                pin = Some(h.clone());
                Ok(())
            }
        }
    };
    if let Some(sid) = &spec.source_snapshot {
        let from = crate::volumes::snapshot_machine(c, &mut tx, actor, sid).await?;
        if from != itype.machine {
            return Err(Error::invalid(
                "instance_type",
                format!("snapshot {sid} is of a {} instance's disk; {} runs as a {}", from.as_str(), itype.name, itype.machine.as_str()),
            ));
        }
    }
    let restore = match &spec.source_snapshot {
        Some(sid) => {
            let r = crate::volumes::restore_target(&mut tx, actor, sid).await?;
            pin_to(&r.0, format!("snapshot {sid}"))?;
            Some(r)
        }
        None => None,
    };
    let mut volumes = Vec::new();
    if !spec.volume_ids.is_empty() && spec.quantity != 1 {
        return Err(Error::invalid("volumes", "volumes can only be attached when launching one instance"));
    }
    for id in &spec.volume_ids {
        let vid = VolumeId::parse(id).ok_or_else(|| Error::not_found("volume", id))?;
        let v = c.store().volume_get(&actor.org_id, &vid).await?.ok_or_else(|| Error::not_found("volume", id))?;
        if let Some(h) = &v.host_id {
            pin_to(h, format!("volume {}", v.name))?;
        }
        if !volumes.iter().any(|x: &nimbus_core::model::Volume| x.id == v.id) {
            volumes.push(v);
        }
    }
    let pinned = |hosts: Vec<nimbus_core::model::Host>| -> Vec<nimbus_core::model::Host> {
        match &pin {
            Some(p) => hosts.into_iter().filter(|h| &h.id == p).collect(),
            None => hosts,
        }
    };

    let req = Request::for_type(&spec.region, itype);
    let mut hosts = pinned(Store::host_list_in(&mut tx, Some(&spec.region), true).await?);
    let mut launched = Vec::new();
    let mut woken = Vec::new();
    // Hosts this launch placed on so far (a cluster's nodes spread over them).
    let mut used_hosts: Vec<HostId> = Vec::new();
    'each: for _ in 0..spec.quantity {
        // A claim only fails when a concurrent transaction (PostgreSQL) took the capacity
        // first, so every failure means another launch made progress: re-read the hosts and try
        // again, bounded so that a pathological storm still ends.
        for _attempt in 0..MAX_CLAIM_ATTEMPTS {
            let placed = match &spec.whole_hosts {
                Some(w) => scheduler::place_whole(&hosts, &spec.region, w.gpus_per_node, &w.gpu_model),
                None if spec.cluster.is_some() => scheduler::place_spread(&hosts, &req, &used_hosts).map(|p| (p, req.resources)),
                None => scheduler::place(&hosts, &req).map(|p| (p, req.resources)),
            };
            let Some((p, resources)) = placed else { break 'each };
            let id = InstanceId::generate();
            let host_id = hosts[p.host_index].id.clone();
            if !Store::host_claim_in_txn(&mut tx, &host_id, itype.machine, &resources, &p.gpu_indices, &p.mig_devices, &id).await? {
                hosts = pinned(Store::host_list_in(&mut tx, Some(&spec.region), true).await?);
                continue;
            }
            // After the claim, which holds the host's row: concurrent launches onto this host
            // wait for this transaction, so the port read here stays free until commit.
            let ssh_port = if spec.forward_ssh_port {
                let used = Store::network_used_ports_in(&mut tx, &host_id).await?;
                // The claim is already made: fail the whole transaction rather than keep it.
                Some(cfg.port_forwards.ports().find(|p| !used.contains(p)).ok_or_else(|| Error::InsufficientCapacity {
                    message: "No free port to forward SSH from on the chosen host.".to_owned(),
                })?)
            } else {
                None
            };
            // Where the region has a pool, every instance gets a public address (its `ip`).
            let pool = cfg.public_addresses(&spec.region);
            if !pool.is_empty() {
                let used = Store::network_public_used_in(&mut tx, &spec.region).await?;
                let addr = pool
                    .iter()
                    .map(ToString::to_string)
                    .find(|a| !used.contains(a))
                    .ok_or_else(|| Error::InsufficientCapacity { message: format!("No public address is left in {}.", spec.region) })?;
                Store::network_public_assign_in_txn(&mut tx, &spec.region, &addr, &id, now).await?;
            }
            used_hosts.push(host_id.clone());
            let h = &mut hosts[p.host_index];
            h.used.vcpus += resources.vcpus;
            h.used.memory_mib += resources.memory_mib;
            h.used.disk_gib += resources.disk_gib;
            for g in h.gpus.iter_mut().filter(|g| p.gpu_indices.contains(&g.index)) {
                g.instance_id = Some(id.clone());
            }
            for m in h.gpus.iter_mut().flat_map(|g| g.mig_devices.iter_mut()).filter(|m| p.mig_devices.contains(&m.uuid)) {
                m.instance_id = Some(id.clone());
            }
            let inst = Instance {
                hostname: spec
                    .hostnames
                    .get(launched.len())
                    .cloned()
                    .or_else(|| spec.hostname.clone())
                    .unwrap_or_else(|| format!("nimbus-{}", &id.as_str()[..12])),
                id,
                org_id: actor.org_id.clone(),
                name: spec.name.clone(),
                state: InstanceState::Booting,
                region: spec.region.clone(),
                instance_type: itype.name.clone(),
                host_id: Some(host_id.clone()),
                resources,
                gpu_indices: p.gpu_indices.clone(),
                image_id: image.clone(),
                ssh_key_names: key_names.clone(),
                ssh_public_keys: public_keys.clone(),
                user_data: user_data.clone(),
                tags: spec.tags.clone(),
                file_system_mounts: mounts.clone(),
                firewall_ruleset_ids: rulesets.clone(),
                ip: None,
                private_ip: None,
                restart_generation: 0,
                generation: 1,
                created_at: now,
                updated_at: now,
                terminated_at: None,
                source_snapshot_id: restore.as_ref().map(|r| r.1.clone()),
                ssh_port,
                stop_billing: spec.stop_billing,
                compute_released: false,
                rental_id: spec.rental.as_ref().map(|r| r.id.clone()),
                price_micros_per_hour: spec.whole_hosts.as_ref().map(|w| w.price_micros_per_hour),
                cluster_id: spec.cluster.as_ref().map(|c| c.id.clone()),
            };
            Store::instance_insert_in_txn(&mut tx, NewInstance { instance: &inst }).await?;
            emit(
                &mut tx,
                actor,
                "instance.created",
                "instance",
                inst.id.as_str(),
                json!({"name": inst.name, "instance_type": inst.instance_type, "region": inst.region, "host_id": host_id.as_str()}),
                now,
            )
            .await?;
            for v in &volumes {
                crate::volumes::attach_in_txn(&mut tx, actor, v, &inst, true, now).await?;
            }
            launched.push(inst.id);
            if !woken.contains(&host_id) {
                woken.push(host_id);
            }
            continue 'each;
        }
        break;
    }
    if (spec.whole_hosts.is_some() || spec.all_or_nothing) && launched.len() < usize::try_from(spec.quantity).unwrap_or(usize::MAX) {
        // All nodes or none: dropping the transaction releases every claim made above.
        return Err(Error::InsufficientCapacity {
            message: format!("Not enough whole hosts free: {} requested, {} available.", spec.quantity, launched.len()),
        });
    }
    if let Some(r) = &spec.rental {
        Store::rental_insert_in_txn(&mut tx, r).await?;
    }
    if let Some(cl) = &spec.cluster {
        Store::cluster_upsert_in_txn(&mut tx, cl).await?;
    }
    if launched.is_empty() {
        if pin.is_some() {
            return Err(Error::InsufficientCapacity {
                message: "Not enough capacity on the host that holds the requested volume or snapshot.".to_owned(),
            });
        }
        return Err(Error::InsufficientCapacity { message: "Not enough capacity to fulfill launch request.".to_owned() });
    }
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    for h in &woken {
        c.hosts().wake(h);
    }
    Ok(launched)
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<Instance>, Error> {
    actor.require(Permission::Read)?;
    c.store().instance_list_by_org(&actor.org_id).await
}

/// Generation of the org's instance set, for response caches.
pub async fn list_generation(c: &Control, actor: &Actor) -> Result<i64, Error> {
    actor.require(Permission::Read)?;
    c.store().org_instances_generation(&actor.org_id).await
}

fn parse_id(id: &str) -> Result<InstanceId, Error> {
    InstanceId::parse(id).ok_or_else(|| Error::not_found("instance", id))
}

pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<Instance, Error> {
    get_for(c, actor, id, Permission::Read).await
}

/// An instance of the caller's organization, looked up for an action that needs `p` (a dialect
/// that finds the instance before acting on it, or renders what it just created, asks with the
/// permission of the action, so that a key holding just that permission can do it).
pub async fn get_for(c: &Control, actor: &Actor, id: &str, p: Permission) -> Result<Instance, Error> {
    actor.require(p)?;
    find(c, actor, id).await
}

/// The instance, with no permission check: for functions that have checked theirs.
async fn find(c: &Control, actor: &Actor, id: &str) -> Result<Instance, Error> {
    let iid = parse_id(id)?;
    c.store().instance_get(&actor.org_id, &iid).await?.ok_or_else(|| Error::not_found("instance", id))
}

/// One GPU (or MIG device) an instance holds, with its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceGpu {
    /// The GPU's index on its host (inside the instance the GPUs are numbered from 0).
    pub host_index: i64,
    pub uuid: String,
    pub model: String,
    pub memory_mib: i64,
    /// The MIG profile, for a MIG device (then `uuid` and `memory_mib` are the device's).
    pub mig_profile: Option<String>,
    pub health: nimbus_core::gpu_health::Condition,
    pub reasons: Vec<String>,
}

/// The GPUs an instance of the caller's organization holds, with their health as its host's
/// agent last reported it. What is wrong with a GPU is the tenant's to know: it is their
/// instance that turns `unhealthy` over it.
pub async fn gpus(c: &Control, actor: &Actor, id: &str) -> Result<Vec<InstanceGpu>, Error> {
    let i = get(c, actor, id).await?;
    let Some(host) = i.host_id.as_ref() else { return Ok(Vec::new()) };
    let Some(h) = c.store().host_get(host).await? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for g in &h.gpus {
        let of_gpu = |uuid: &str, memory_mib: i64, mig_profile: Option<String>| InstanceGpu {
            host_index: g.index,
            uuid: uuid.to_owned(),
            model: g.model.clone(),
            memory_mib,
            mig_profile,
            health: g.health,
            reasons: g.health_reasons.clone(),
        };
        if g.instance_id.as_ref() == Some(&i.id) {
            out.push(of_gpu(&g.uuid, g.memory_mib, None));
        }
        for m in g.mig_devices.iter().filter(|m| m.instance_id.as_ref() == Some(&i.id)) {
            out.push(of_gpu(&m.uuid, m.memory_mib, Some(m.profile.clone())));
        }
    }
    Ok(out)
}

pub async fn rename(c: &Control, actor: &Actor, id: &str, name: Option<&str>) -> Result<Instance, Error> {
    update(c, actor, id, Some(name), None).await
}

/// Changes the name and/or the tags (replaced as a whole) of a live instance, in one transaction.
pub async fn update(
    c: &Control,
    actor: &Actor,
    id: &str,
    name: Option<Option<&str>>,
    tags: Option<Vec<(String, String)>>,
) -> Result<Instance, Error> {
    actor.require(Permission::Edit)?;
    if let Some(Some(n)) = name {
        validate::instance_name(n)?;
    }
    if let Some(t) = &tags {
        validate::tags(t)?;
    }
    let iid = parse_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if let Some(n) = name {
        if !Store::instance_set_name_in_txn(&mut tx, &actor.org_id, &iid, n, now).await? {
            return Err(Error::not_found("instance", id));
        }
    }
    if let Some(t) = &tags {
        if !Store::instance_set_tags_in_txn(&mut tx, &actor.org_id, &iid, t, now).await? {
            return Err(Error::not_found("instance", id));
        }
    }
    emit(&mut tx, actor, "instance.updated", "instance", iid.as_str(), json!({"name": name, "tags": tags.as_ref().map(Vec::len)}), now)
        .await?;
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    find(c, actor, id).await
}

/// Loads every id of the org or fails with the first unknown one, before changing anything.
async fn load_all(c: &Control, actor: &Actor, ids: &[String]) -> Result<Vec<Instance>, Error> {
    if ids.is_empty() {
        return Err(Error::invalid("instance_ids", "at least one instance id is required"));
    }
    let mut out: Vec<Instance> = Vec::with_capacity(ids.len());
    for id in ids {
        let iid = parse_id(id)?;
        if out.iter().any(|i| i.id == iid) {
            continue;
        }
        out.push(c.store().instance_get(&actor.org_id, &iid).await?.ok_or_else(|| Error::not_found("instance", id))?);
    }
    Ok(out)
}

/// How often a request that lost a race with an agent report is tried again.
const RACE_RETRIES: usize = 8;

/// Runs `op` again, from a fresh read, when it lost a race: agents move instances between
/// states on their own, and a customer's request should not fail because one just did.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    for _ in 1..RACE_RETRIES {
        match op().await {
            Err(Error::Conflict { reason: ConflictReason::Concurrent, .. }) => tokio::task::yield_now().await,
            r => return r,
        }
    }
    op().await
}

pub async fn restart(c: &Control, actor: &Actor, ids: &[String]) -> Result<Vec<Instance>, Error> {
    retrying(|| restart_once(c, actor, ids)).await
}

async fn restart_once(c: &Control, actor: &Actor, ids: &[String]) -> Result<Vec<Instance>, Error> {
    actor.require(Permission::Edit)?;
    let found = load_all(c, actor, ids).await?;
    for i in &found {
        if !i.state.can_transition_to(InstanceState::Restarting) && i.state != InstanceState::Restarting {
            return Err(Error::conflict(
                ConflictReason::InvalidState,
                format!("instance {} is {} and cannot be restarted", i.id, i.state.as_str()),
            ));
        }
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let todo: Vec<&Instance> = found.iter().filter(|i| i.state != InstanceState::Restarting).collect();
    let hosts = lock_hosts(&mut tx, &todo).await?;
    for i in todo {
        if !Store::instance_request_restart_in_txn(&mut tx, &i.id, i.state, now).await? {
            return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
        }
        emit(&mut tx, actor, "instance.restart_requested", "instance", i.id.as_str(), json!({}), now).await?;
    }
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    reload(c, actor, &found).await
}

pub async fn terminate(c: &Control, actor: &Actor, ids: &[String]) -> Result<Vec<Instance>, Error> {
    retrying(|| terminate_once(c, actor, ids)).await
}

async fn terminate_once(c: &Control, actor: &Actor, ids: &[String]) -> Result<Vec<Instance>, Error> {
    actor.require(Permission::Delete)?;
    let found = load_all(c, actor, ids).await?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let mut hosts = Vec::new();
    for i in &found {
        if matches!(i.state, InstanceState::Terminating | InstanceState::Terminated) {
            continue;
        }
        if !Store::instance_transition_in_txn(&mut tx, &i.id, i.state, InstanceState::Terminating, &InstanceUpdate::default(), now).await? {
            return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
        }
        crate::metering::instance_moved(c, &mut tx, i, i.state, InstanceState::Terminating, now).await?;
        emit(&mut tx, actor, "instance.terminate_requested", "instance", i.id.as_str(), json!({}), now).await?;
        match &i.host_id {
            Some(h) => {
                Store::host_bump_generation_in_txn(&mut tx, h).await?;
                hosts.push(h.clone());
            }
            None => {
                Store::instance_transition_in_txn(
                    &mut tx,
                    &i.id,
                    InstanceState::Terminating,
                    InstanceState::Terminated,
                    &InstanceUpdate::default(),
                    now,
                )
                .await?;
            }
        }
    }
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    // A terminating instance leaves its org's network now, not when its host reports it gone.
    if !hosts.is_empty() {
        crate::fabric::members_changed(c, std::slice::from_ref(&actor.org_id), &hosts).await?;
    }
    reload(c, actor, &found).await
}

/// Powers a running instance off, keeping its disk, GPUs and host reservation.
pub async fn stop(c: &Control, actor: &Actor, id: &str) -> Result<Instance, Error> {
    power(c, actor, id, InstanceState::Stopping, "instance.stop_requested").await
}

/// Powers a stopped instance back on, on the same host with the same disk.
pub async fn start(c: &Control, actor: &Actor, id: &str) -> Result<Instance, Error> {
    power(c, actor, id, InstanceState::Starting, "instance.start_requested").await
}

/// Powers an instance off and gives its processors, memory and GPUs back to its host (its disk
/// stays there): it is billed for its disk only, and a later start claims them again on that
/// host, or fails while the host is full. Also releases an instance that is already stopped.
pub async fn stop_releasing(c: &Control, actor: &Actor, id: &str) -> Result<Instance, Error> {
    retrying(|| stop_releasing_once(c, actor, id)).await
}

async fn stop_releasing_once(c: &Control, actor: &Actor, id: &str) -> Result<Instance, Error> {
    actor.require(Permission::Edit)?;
    let i = find(c, actor, id).await?;
    if i.compute_released {
        return Ok(i);
    }
    let to = match i.state {
        InstanceState::Stopping | InstanceState::Stopped => i.state,
        s if s.can_transition_to(InstanceState::Stopping) => InstanceState::Stopping,
        s => {
            return Err(Error::conflict(
                ConflictReason::InvalidState,
                format!("instance {} is {} and cannot be stopped", i.id, s.as_str()),
            ));
        }
    };
    let host_id = i.host_id.clone().ok_or_else(|| Error::internal("instance without a host"))?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hosts = lock_hosts(&mut tx, &[&i]).await?;
    if to != i.state && !Store::instance_transition_in_txn(&mut tx, &i.id, i.state, to, &InstanceUpdate::default(), now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
    }
    // The disk stays claimed: it still lies on this host.
    let compute = nimbus_core::catalog::Resources { disk_gib: 0, ..i.resources };
    Store::host_release_in_txn(&mut tx, &host_id, &compute, &i.id, false).await?;
    if !Store::instance_set_released_in_txn(&mut tx, &i.id, true, &[], now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
    }
    let after = Instance { state: to, compute_released: true, gpu_indices: vec![], ..i.clone() };
    crate::metering::instance_remetered(c, &mut tx, &i, &after, now).await?;
    emit(&mut tx, actor, "instance.stop_requested", "instance", i.id.as_str(), json!({"release_compute": true}), now).await?;
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    find(c, actor, id).await
}

/// What an instance of type `t` would get on `host` now: whole GPUs (those in `keep` first, so
/// that a grow adds GPUs rather than reshuffling them), or MIG devices for a MIG type; at most
/// `t.gpus`, possibly fewer.
fn gpus_for(host: &nimbus_core::model::Host, t: &InstanceType, keep: &[i64]) -> (Vec<i64>, Vec<String>) {
    let want = usize::try_from(t.gpus).unwrap_or(0);
    if want == 0 {
        return (Vec::new(), Vec::new());
    }
    if !t.mig_profile.is_empty() {
        return (Vec::new(), scheduler::free_mig_devices(host, t.gpu_want(), &t.mig_profile).into_iter().take(want).collect());
    }
    let mut free = scheduler::free_gpus(host, t.gpu_want());
    free.sort_by_key(|g| (!keep.contains(g), *g));
    (free.into_iter().take(want).collect(), Vec::new())
}

/// Claims back the processors, memory and GPUs of a released instance on its host, in `tx`.
async fn reclaim(c: &Control, tx: &mut nimbus_store::Conn, i: &Instance, now: i64) -> Result<Vec<i64>, Error> {
    let host_id = i.host_id.clone().ok_or_else(|| Error::internal("instance without a host"))?;
    let cfg = c.config();
    let itype = cfg.instance_type(&i.instance_type);
    let host = Store::host_list_in(tx, Some(&i.region), false)
        .await?
        .into_iter()
        .find(|h| h.id == host_id)
        .ok_or_else(|| Error::internal("instance host vanished"))?;
    let (gpus, migs) = match itype {
        Some(t) => gpus_for(&host, t, &[]),
        None => (Vec::new(), Vec::new()),
    };
    let compute = nimbus_core::catalog::Resources { vcpus: i.resources.vcpus, memory_mib: i.resources.memory_mib, disk_gib: 0 };
    let full = || Error::InsufficientCapacity {
        message: format!("the host of instance {} has no room to start it again (it must start where its disk is)", i.id),
    };
    let want = itype.map_or(0, |t| t.gpus);
    // One of the two is empty: a type has whole GPUs or MIG devices.
    if i64::try_from(gpus.len() + migs.len()).unwrap_or(0) < want
        || !Store::host_claim_in_txn(tx, &host_id, cfg.machine_of(&i.instance_type), &compute, &gpus, &migs, &i.id).await?
    {
        return Err(full());
    }
    if !Store::instance_set_released_in_txn(tx, &i.id, false, &gpus, now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
    }
    Ok(gpus)
}

async fn power(c: &Control, actor: &Actor, id: &str, to: InstanceState, kind: &str) -> Result<Instance, Error> {
    retrying(|| power_once(c, actor, id, to, kind)).await
}

async fn power_once(c: &Control, actor: &Actor, id: &str, to: InstanceState, kind: &str) -> Result<Instance, Error> {
    actor.require(Permission::Edit)?;
    let i = find(c, actor, id).await?;
    if i.state == to {
        return Ok(i);
    }
    if !i.state.can_transition_to(to) {
        let verb = if to == InstanceState::Stopping { "stopped" } else { "started" };
        return Err(Error::conflict(
            ConflictReason::InvalidState,
            format!("instance {} is {} and cannot be {verb}", i.id, i.state.as_str()),
        ));
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hosts = lock_hosts(&mut tx, &[&i]).await?;
    let gpus = if to == InstanceState::Starting && i.compute_released { Some(reclaim(c, &mut tx, &i, now).await?) } else { None };
    if !Store::instance_transition_in_txn(&mut tx, &i.id, i.state, to, &InstanceUpdate::default(), now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
    }
    match gpus {
        Some(g) => {
            let after = Instance { state: to, compute_released: false, gpu_indices: g, ..i.clone() };
            crate::metering::instance_remetered(c, &mut tx, &i, &after, now).await?;
        }
        None => crate::metering::instance_moved(c, &mut tx, &i, i.state, to, now).await?,
    }
    emit(&mut tx, actor, kind, "instance", i.id.as_str(), json!({}), now).await?;
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    find(c, actor, id).await
}

/// Changes the type of a stopped instance. It stays on its host (its disk is there): the host
/// must fit the new size once the old one is released, otherwise nothing changes.
pub async fn resize(c: &Control, actor: &Actor, id: &str, new_type: &str) -> Result<Instance, Error> {
    actor.require(Permission::Edit)?;
    let cfg = c.config();
    let itype =
        cfg.instance_type(new_type).ok_or_else(|| Error::invalid("instance_type", format!("unknown instance type {new_type:?}")))?;
    let i = find(c, actor, id).await?;
    if i.state != InstanceState::Stopped {
        return Err(Error::conflict(
            ConflictReason::InvalidState,
            format!("instance {} is {}; stop it before resizing", i.id, i.state.as_str()),
        ));
    }
    if i.instance_type == itype.name {
        return Ok(i);
    }
    // Its disk is a container's upper directory or a VM's image: it cannot become the other.
    let was = cfg.machine_of(&i.instance_type);
    if was != itype.machine {
        return Err(Error::invalid(
            "instance_type",
            format!(
                "{} is a {} type and instance {} is a {}; a resize keeps what an instance runs as",
                itype.name,
                itype.machine.as_str(),
                i.id,
                was.as_str()
            ),
        ));
    }
    let host_id = i.host_id.clone().ok_or_else(|| Error::internal("stopped instance without a host"))?;
    let req = Request::for_type(&i.region, itype);
    let now = c.now();
    let mut tx = c.store().begin().await?;
    Store::host_release_in_txn(&mut tx, &host_id, &i.held(), &i.id, true).await?;
    let host = Store::host_list_in(&mut tx, Some(&i.region), false)
        .await?
        .into_iter()
        .find(|h| h.id == host_id)
        .ok_or_else(|| Error::internal("instance host vanished"))?;
    let (gpus, migs) = gpus_for(&host, itype, &i.gpu_indices);
    // One of the two is empty: a type has whole GPUs or MIG devices.
    let fits_gpus = gpus.len() + migs.len() >= usize::try_from(req.gpus).unwrap_or(0);
    if !fits_gpus || !Store::host_claim_in_txn(&mut tx, &host_id, req.machine, &req.resources, &gpus, &migs, &i.id).await? {
        drop(tx);
        return Err(Error::InsufficientCapacity {
            message: format!("the host of instance {} cannot fit {} (it must stay on the host that holds its disk)", i.id, itype.name),
        });
    }
    // The GPUs a shrink gave up were this tenant's: checked before anyone else gets them.
    let dropped: Vec<i64> = i.gpu_indices.iter().copied().filter(|g| !gpus.contains(g)).collect();
    Store::host_gpus_mark_unchecked_in_txn(&mut tx, &host_id, &dropped).await?;
    if !Store::instance_set_type_in_txn(&mut tx, &i.id, &itype.name, &req.resources, &gpus, now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("instance {} changed meanwhile; retry", i.id)));
    }
    // It holds its new size now, whatever it had released before.
    if i.compute_released {
        Store::instance_set_released_in_txn(&mut tx, &i.id, false, &gpus, now).await?;
    }
    let resized = Instance {
        instance_type: itype.name.clone(),
        resources: req.resources,
        gpu_indices: gpus.clone(),
        compute_released: false,
        ..i.clone()
    };
    crate::metering::instance_resized(c, &mut tx, &resized, now).await?;
    emit(&mut tx, actor, "instance.resized", "instance", i.id.as_str(), json!({"from": i.instance_type, "to": itype.name}), now).await?;
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    Store::commit(tx).await?;
    c.hosts().wake(&host_id);
    find(c, actor, id).await
}

/// Bumps the desired generation of the hosts of `insts`, in id order. Every transaction that
/// touches hosts and instances takes the host rows first (launch claims, agent reports, liveness),
/// so PostgreSQL never sees two transactions lock them in opposite orders.
async fn lock_hosts(tx: &mut nimbus_store::Conn, insts: &[&Instance]) -> Result<Vec<HostId>, Error> {
    let mut hosts: Vec<HostId> = insts.iter().filter_map(|i| i.host_id.clone()).collect();
    hosts.sort();
    hosts.dedup();
    for h in &hosts {
        Store::host_bump_generation_in_txn(tx, h).await?;
    }
    Ok(hosts)
}

async fn reload(c: &Control, actor: &Actor, found: &[Instance]) -> Result<Vec<Instance>, Error> {
    let mut out = Vec::with_capacity(found.len());
    for i in found {
        out.push(c.store().instance_get(&actor.org_id, &i.id).await?.ok_or_else(|| Error::not_found("instance", i.id.as_str()))?);
    }
    Ok(out)
}
