//! Volumes and snapshots: create, attach/detach, grow, delete, snapshot and restore.
//!
//! Both are host-local. A volume is materialized on the host of the first instance it is
//! attached to and can only ever be attached to instances on that host; a snapshot lives on its
//! source's host, so a restore lands there too. Every change bumps the host's desired generation
//! in the same transaction, and the agent makes the host match (see `agents::desired`).
//!
//! Attachments: a volume may be attached to several instances on its host at once (shared
//! storage, as Voltage Park's `order_ids`; the host mounts it once and binds it into each). The
//! native API keeps its one-instance model: its attach is exclusive (refused while attached
//! anywhere) and its detach detaches from every instance.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::*;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Instance, Snapshot, SnapshotSourceType, SnapshotState, Volume, VolumeHostState};
use nimbus_core::{validate, ConflictReason, Error};
use nimbus_store::{AttachOutcome, Conn, Store};
use serde_json::json;

use crate::{emit, Control};

fn parse_volume_id(id: &str) -> Result<VolumeId, Error> {
    VolumeId::parse(id).ok_or_else(|| Error::not_found("volume", id))
}

fn parse_snapshot_id(id: &str) -> Result<SnapshotId, Error> {
    SnapshotId::parse(id).ok_or_else(|| Error::not_found("snapshot", id))
}

fn check_size(c: &Control, size_gib: i64) -> Result<(), Error> {
    let max = c.config().quotas.max_volume_gib;
    if !(1..=max).contains(&size_gib) {
        return Err(Error::invalid("size_gib", format!("must be between 1 and {max}")));
    }
    Ok(())
}

async fn check_volume_quota(c: &Control, tx: &mut Conn, org: &OrgId, add_count: i64, add_gib: i64) -> Result<(), Error> {
    let q = &c.config().quotas;
    let (n, gib) = Store::volume_usage_in(tx, org).await?;
    if n + add_count > q.volumes_per_org {
        return Err(Error::QuotaExceeded { message: format!("this organization may have at most {} volumes", q.volumes_per_org) });
    }
    if gib + add_gib > q.volume_gib_per_org {
        return Err(Error::QuotaExceeded {
            message: format!("this organization may have at most {} GiB of volumes ({gib} GiB in use)", q.volume_gib_per_org),
        });
    }
    Ok(())
}

pub async fn create(c: &Control, actor: &Actor, name: &str, region: &str, size_gib: i64) -> Result<Volume, Error> {
    actor.require(Permission::Create)?;
    validate::file_system_name(name)?;
    c.require_region("region", region)?;
    check_size(c, size_gib)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let v = new_volume(actor, VolumeId::generate(), name.to_owned(), None, region, size_gib, now);
    insert_in_txn(c, &mut tx, actor, &v, now).await?;
    Store::commit(tx).await?;
    Ok(v)
}

fn new_volume(actor: &Actor, id: VolumeId, name: String, display_name: Option<String>, region: &str, size_gib: i64, now: i64) -> Volume {
    Volume {
        id,
        org_id: actor.org_id.clone(),
        name,
        display_name,
        region: region.to_owned(),
        size_gib,
        host_id: None,
        attachments: Vec::new(),
        source_snapshot_id: None,
        host_state: VolumeHostState::Unreported,
        used_bytes: 0,
        created_at: now,
        updated_at: now,
    }
}

/// Quota, insert, metering and `volume.created` of a new volume, inside `tx`.
async fn insert_in_txn(c: &Control, tx: &mut Conn, actor: &Actor, v: &Volume, now: i64) -> Result<(), Error> {
    check_volume_quota(c, tx, &actor.org_id, 1, v.size_gib).await?;
    Store::volume_insert_in_txn(tx, v).await?;
    crate::metering::volume_changed(c, tx, v, Some(v.size_gib), now).await?;
    let mut payload = json!({"volume_id": v.id, "name": v.name, "size_gib": v.size_gib});
    if let Some(d) = &v.display_name {
        payload["display_name"] = json!(d);
    }
    emit(tx, actor, "volume.created", "volume", v.id.as_str(), payload, now).await
}

/// Free-form display names: 1 to 255 characters, not only spaces, no control characters.
pub fn check_display_name(name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if n == 0 || n > 255 || name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "must be 1 to 255 characters, not only spaces, without control characters"));
    }
    Ok(())
}

/// The internal name of a volume made with a display name: the display name's letters and
/// digits in lower case, '-' between words, and the first eight hex digits of its id, so it is
/// unique in practice and a valid (native) name. It names the mount point
/// (`/mnt/volumes/<name>`), so it stays when the display name changes.
pub fn internal_name(display_name: &str, id: &VolumeId) -> String {
    let mut slug = String::new();
    for ch in display_name.chars() {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_end_matches('-').chars().take(40).collect();
    slug = slug.trim_end_matches('-').to_owned();
    if !slug.starts_with(|c: char| c.is_ascii_alphabetic()) {
        slug = if slug.is_empty() { "volume".to_owned() } else { format!("v-{slug}") };
    }
    format!("{slug}-{}", &id.as_str()[..8])
}

/// A shared volume as Voltage Park makes one: a display name, a size, and the instances to
/// attach it to (all on one host). Its region is the first instance's, else the first
/// configured region.
#[derive(Debug, Clone)]
pub struct SharedVolumeSpec {
    pub display_name: String,
    pub size_gib: i64,
    pub instance_ids: Vec<String>,
}

/// Creates a volume and attaches it to `spec.instance_ids`, in one transaction.
pub async fn create_shared(c: &Control, actor: &Actor, spec: SharedVolumeSpec) -> Result<Volume, Error> {
    actor.require(Permission::Create)?;
    check_display_name(&spec.display_name)?;
    check_size(c, spec.size_gib)?;
    let id = VolumeId::generate();
    let name = internal_name(&spec.display_name, &id);
    validate::file_system_name(&name)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let insts = load_instances(&mut tx, actor, &spec.instance_ids).await?;
    let region = match insts.first() {
        Some(i) => i.region.clone(),
        None => c.config().regions.first().map(|r| r.name.clone()).ok_or_else(|| Error::internal("no region is configured"))?,
    };
    let hosts = bump_hosts(&mut tx, None, &insts).await?;
    let mut v = new_volume(actor, id, name, Some(spec.display_name.clone()), &region, spec.size_gib, now);
    insert_in_txn(c, &mut tx, actor, &v, now).await?;
    for inst in &insts {
        refuse_vm(c, inst)?;
        v.host_id = Some(attach_in_txn(&mut tx, actor, &v, inst, false, now).await?);
    }
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    find(c, actor, v.id.as_str()).await
}

/// Bumps the desired generation of the volume's host and of the instances' hosts (each once,
/// in a fixed order: host rows first, as every transaction that touches hosts does); returns
/// them, to be woken after commit.
async fn bump_hosts(tx: &mut Conn, volume_host: Option<&HostId>, insts: &[Instance]) -> Result<Vec<HostId>, Error> {
    let mut hosts: Vec<HostId> = volume_host.into_iter().cloned().chain(insts.iter().filter_map(|i| i.host_id.clone())).collect();
    hosts.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    hosts.dedup();
    for h in &hosts {
        Store::host_bump_generation_in_txn(tx, h).await?;
    }
    Ok(hosts)
}

/// The org's instances named by `ids`, each once, in the order given.
async fn load_instances(tx: &mut Conn, actor: &Actor, ids: &[String]) -> Result<Vec<Instance>, Error> {
    let mut out: Vec<Instance> = Vec::new();
    for id in ids {
        let i = load_instance(tx, actor, id).await?;
        if !out.iter().any(|x| x.id == i.id) {
            out.push(i);
        }
    }
    Ok(out)
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<Volume>, Error> {
    actor.require(Permission::Read)?;
    c.store().volume_list_by_org(&actor.org_id).await
}

pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<Volume, Error> {
    actor.require(Permission::Read)?;
    find(c, actor, id).await
}

/// The volume, with no permission check: for functions that have checked theirs.
async fn find(c: &Control, actor: &Actor, id: &str) -> Result<Volume, Error> {
    c.store().volume_get(&actor.org_id, &parse_volume_id(id)?).await?.ok_or_else(|| Error::not_found("volume", id))
}

/// Attaches `v` to `inst` inside `tx` (the caller commits and wakes the host); `exclusive`
/// refuses when it is attached to another instance (the native API's attach).
/// A VM gets its volumes when it starts (over virtiofs, from the host's mount): attaching to or
/// detaching from a VM that runs is refused until it is stopped, rather than accepted and
/// taking effect only at its next start (a "detached" volume would stay reachable meanwhile).
pub(crate) fn refuse_vm(c: &Control, inst: &Instance) -> Result<(), Error> {
    if c.config().machine_of(&inst.instance_type) == nimbus_core::catalog::Machine::Vm && inst.state != InstanceState::Stopped {
        return Err(Error::conflict(
            ConflictReason::InvalidState,
            format!(
                "instance {} is a VM ({}) and {}: volumes are attached to and detached from VMs while they are stopped",
                inst.id,
                inst.instance_type,
                inst.state.as_str()
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn attach_in_txn(
    tx: &mut Conn,
    actor: &Actor,
    v: &Volume,
    inst: &Instance,
    exclusive: bool,
    now: i64,
) -> Result<HostId, Error> {
    if v.region != inst.region {
        return Err(Error::conflict(
            ConflictReason::InvalidState,
            format!("volume {} is in {}, the instance in {}", v.shown_name(), v.region, inst.region),
        ));
    }
    if matches!(inst.state, InstanceState::Terminating | InstanceState::Terminated) {
        return Err(Error::conflict(ConflictReason::InvalidState, format!("instance {} is {}", inst.id, inst.state.as_str())));
    }
    let host = inst.host_id.clone().ok_or_else(|| Error::internal("live instance without a host"))?;
    let name = v.shown_name();
    match Store::volume_attach_in_txn(tx, &v.id, &inst.id, &host, exclusive, now).await? {
        AttachOutcome::Attached => {}
        AttachOutcome::AlreadyAttached => {
            return Err(Error::conflict(ConflictReason::InvalidState, format!("volume {name} is already attached to this instance")))
        }
        AttachOutcome::AttachedElsewhere(other) => {
            return Err(Error::conflict(ConflictReason::InvalidState, format!("volume {name} is attached to instance {other}")))
        }
        AttachOutcome::OtherHost => {
            return Err(Error::conflict(
                ConflictReason::InvalidState,
                format!("volume {name} holds its data on another host than instance {}; volumes are host-local", inst.id),
            ))
        }
        AttachOutcome::Gone => return Err(Error::not_found("volume", v.id.as_str())),
    }
    Store::host_bump_generation_in_txn(tx, &host).await?;
    emit(tx, actor, "volume.attached", "volume", v.id.as_str(), json!({"volume_id": v.id, "name": v.name, "instance_id": inst.id}), now)
        .await?;
    Ok(host)
}

async fn load_instance(tx: &mut Conn, actor: &Actor, id: &str) -> Result<Instance, Error> {
    let iid = InstanceId::parse(id).ok_or_else(|| Error::not_found("instance", id))?;
    let i = Store::instance_get_any_in(tx, &iid).await?.filter(|i| i.org_id == actor.org_id);
    i.ok_or_else(|| Error::not_found("instance", id))
}

pub async fn attach(c: &Control, actor: &Actor, id: &str, instance_id: &str) -> Result<Volume, Error> {
    actor.require(Permission::Edit)?;
    let vid = parse_volume_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let inst = load_instance(&mut tx, actor, instance_id).await?;
    if let Some(h) = &inst.host_id {
        // Host rows first, as every transaction that touches hosts and instances does.
        Store::host_bump_generation_in_txn(&mut tx, h).await?;
    }
    let v = Store::volume_get_in(&mut tx, &actor.org_id, &vid).await?.ok_or_else(|| Error::not_found("volume", id))?;
    refuse_vm(c, &inst)?;
    let host = attach_in_txn(&mut tx, actor, &v, &inst, true, now).await?;
    Store::commit(tx).await?;
    c.hosts().wake(&host);
    find(c, actor, id).await
}

/// Detaches a volume from every instance it is attached to.
pub async fn detach(c: &Control, actor: &Actor, id: &str) -> Result<Volume, Error> {
    actor.require(Permission::Edit)?;
    let vid = parse_volume_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let v = Store::volume_get_in(&mut tx, &actor.org_id, &vid).await?.ok_or_else(|| Error::not_found("volume", id))?;
    let (false, Some(host)) = (v.attachments.is_empty(), v.host_id.clone()) else {
        return Err(Error::conflict(ConflictReason::InvalidState, format!("volume {} is not attached", v.shown_name())));
    };
    Store::host_bump_generation_in_txn(&mut tx, &host).await?;
    for a in &v.attachments {
        if let Some(inst) = Store::instance_get_any_in(&mut tx, &a.instance_id).await? {
            refuse_vm(c, &inst)?;
        }
        detach_in_txn(&mut tx, actor, &v, &a.instance_id, now).await?;
    }
    Store::commit(tx).await?;
    c.hosts().wake(&host);
    find(c, actor, id).await
}

async fn detach_in_txn(tx: &mut Conn, actor: &Actor, v: &Volume, inst: &InstanceId, now: i64) -> Result<(), Error> {
    if !Store::volume_detach_in_txn(tx, &v.id, inst, now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("volume {} changed meanwhile; retry", v.shown_name())));
    }
    emit(tx, actor, "volume.detached", "volume", v.id.as_str(), json!({"volume_id": v.id, "name": v.name, "instance_id": inst}), now).await
}

/// Grows `v` to `size_gib` (larger than its size) inside `tx`: quota, metering, event.
async fn grow_in_txn(c: &Control, tx: &mut Conn, actor: &Actor, v: &Volume, size_gib: i64, now: i64) -> Result<(), Error> {
    check_volume_quota(c, tx, &actor.org_id, 0, size_gib - v.size_gib).await?;
    if !Store::volume_grow_in_txn(tx, &v.id, size_gib, now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("volume {} changed meanwhile; retry", v.shown_name())));
    }
    crate::metering::volume_changed(c, tx, v, Some(size_gib), now).await?;
    emit(
        tx,
        actor,
        "volume.resized",
        "volume",
        v.id.as_str(),
        json!({"volume_id": v.id, "name": v.name, "from_gib": v.size_gib, "size_gib": size_gib}),
        now,
    )
    .await
}

/// What `update` changes; `None` leaves a part as it is.
#[derive(Debug, Clone, Default)]
pub struct VolumeChange {
    /// Grow to this size (GiB); smaller than now is refused.
    pub size_gib: Option<i64>,
    pub display_name: Option<String>,
    /// The complete set of instances it should be attached to: others are detached, new ones
    /// attached (all on the volume's host).
    pub instance_ids: Option<Vec<String>>,
}

/// Grows, renames and re-attaches a volume in one transaction: all of it or nothing.
pub async fn update(c: &Control, actor: &Actor, id: &str, change: VolumeChange) -> Result<Volume, Error> {
    actor.require(Permission::Edit)?;
    if let Some(n) = &change.display_name {
        check_display_name(n)?;
    }
    if let Some(size) = change.size_gib {
        check_size(c, size)?;
    }
    let vid = parse_volume_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let v = Store::volume_get_in(&mut tx, &actor.org_id, &vid).await?.ok_or_else(|| Error::not_found("volume", id))?;
    let wanted = match &change.instance_ids {
        Some(ids) => Some(load_instances(&mut tx, actor, ids).await?),
        None => None,
    };
    let hosts = bump_hosts(&mut tx, v.host_id.as_ref(), wanted.as_deref().unwrap_or_default()).await?;
    if let Some(size) = change.size_gib {
        if size < v.size_gib {
            return Err(Error::conflict(
                ConflictReason::InvalidState,
                format!("volumes only grow: {size} GiB is less than the current {} GiB", v.size_gib),
            ));
        }
        if size > v.size_gib {
            grow_in_txn(c, &mut tx, actor, &v, size, now).await?;
        }
    }
    if let Some(n) = &change.display_name {
        Store::volume_rename_in_txn(&mut tx, &v.id, Some(n), now).await?;
        let p = json!({"volume_id": v.id, "name": v.name, "display_name": n, "from": v.display_name});
        emit(&mut tx, actor, "volume.renamed", "volume", v.id.as_str(), p, now).await?;
    }
    if let Some(wanted) = &wanted {
        for a in v.attachments.iter().filter(|a| !wanted.iter().any(|i| i.id == a.instance_id)) {
            if let Some(inst) = Store::instance_get_any_in(&mut tx, &a.instance_id).await? {
                refuse_vm(c, &inst)?;
            }
            detach_in_txn(&mut tx, actor, &v, &a.instance_id, now).await?;
        }
        let mut v = v.clone();
        for inst in wanted.iter().filter(|i| !v.attachments.iter().any(|a| a.instance_id == i.id)) {
            refuse_vm(c, inst)?;
            v.host_id = Some(attach_in_txn(&mut tx, actor, &v, inst, false, now).await?);
        }
    }
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    find(c, actor, id).await
}

/// Grows a volume (never shrinks); a mounted one grows online.
pub async fn resize(c: &Control, actor: &Actor, id: &str, size_gib: i64) -> Result<Volume, Error> {
    actor.require(Permission::Edit)?;
    check_size(c, size_gib)?;
    let vid = parse_volume_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let v = Store::volume_get_in(&mut tx, &actor.org_id, &vid).await?.ok_or_else(|| Error::not_found("volume", id))?;
    if size_gib < v.size_gib {
        return Err(Error::invalid("size_gib", format!("volumes only grow: {} GiB is less than the current {} GiB", size_gib, v.size_gib)));
    }
    if size_gib == v.size_gib {
        return Ok(v);
    }
    if let Some(h) = &v.host_id {
        Store::host_bump_generation_in_txn(&mut tx, h).await?;
    }
    grow_in_txn(c, &mut tx, actor, &v, size_gib, now).await?;
    Store::commit(tx).await?;
    if let Some(h) = &v.host_id {
        c.hosts().wake(h);
    }
    find(c, actor, id).await
}

pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<Volume, Error> {
    actor.require(Permission::Delete)?;
    let vid = parse_volume_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let v = Store::volume_get_in(&mut tx, &actor.org_id, &vid).await?.ok_or_else(|| Error::not_found("volume", id))?;
    if let Some(i) = v.instance_id() {
        let more = if v.attachments.len() > 1 { format!(" and {} more", v.attachments.len() - 1) } else { String::new() };
        return Err(Error::conflict(
            ConflictReason::InvalidState,
            format!("volume {} is attached to instance {i}{more}; detach it first", v.shown_name()),
        ));
    }
    if let Some(h) = &v.host_id {
        Store::host_bump_generation_in_txn(&mut tx, h).await?;
    }
    if !Store::volume_delete_in_txn(&mut tx, &actor.org_id, &v.id).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, format!("volume {} changed meanwhile; retry", v.shown_name())));
    }
    crate::metering::volume_changed(c, &mut tx, &v, None, now).await?;
    emit(&mut tx, actor, "volume.deleted", "volume", v.id.as_str(), json!({"volume_id": v.id, "name": v.name}), now).await?;
    Store::commit(tx).await?;
    if let Some(h) = &v.host_id {
        c.hosts().wake(h);
    }
    Ok(v)
}

/// What a snapshot copies, as the API names it.
#[derive(Debug, Clone)]
pub enum SnapshotSourceRef {
    Instance(String),
    Volume(String),
}

pub async fn snapshot_create(c: &Control, actor: &Actor, name: &str, source: SnapshotSourceRef) -> Result<Snapshot, Error> {
    actor.require(Permission::Create)?;
    validate::file_system_name(name)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let (source_type, source_id, host, region, size_gib) = match &source {
        SnapshotSourceRef::Instance(id) => {
            let i = load_instance(&mut tx, actor, id).await?;
            if !matches!(i.state, InstanceState::Active | InstanceState::Stopped) {
                return Err(Error::conflict(
                    ConflictReason::InvalidState,
                    format!("instance {} is {}; snapshots are taken of running or stopped instances", i.id, i.state.as_str()),
                ));
            }
            let host = i.host_id.clone().ok_or_else(|| Error::internal("live instance without a host"))?;
            (SnapshotSourceType::Instance, i.id.to_string(), host, i.region, i.resources.disk_gib)
        }
        SnapshotSourceRef::Volume(id) => {
            let v =
                Store::volume_get_in(&mut tx, &actor.org_id, &parse_volume_id(id)?).await?.ok_or_else(|| Error::not_found("volume", id))?;
            let Some(host) = v.host_id else {
                return Err(Error::conflict(
                    ConflictReason::InvalidState,
                    format!("volume {} has never been attached, so it holds no data to snapshot", v.name),
                ));
            };
            (SnapshotSourceType::Volume, v.id.to_string(), host, v.region, v.size_gib)
        }
    };
    Store::host_bump_generation_in_txn(&mut tx, &host).await?;
    let q = c.config().quotas.snapshots_per_org;
    if Store::snapshot_count_in(&mut tx, &actor.org_id).await? >= q {
        return Err(Error::QuotaExceeded { message: format!("this organization may have at most {q} snapshots") });
    }
    let s = Snapshot {
        id: SnapshotId::generate(),
        org_id: actor.org_id.clone(),
        name: name.to_owned(),
        region,
        host_id: host.clone(),
        source_type,
        source_id,
        size_gib,
        state: SnapshotState::Creating,
        size_bytes: 0,
        message: None,
        created_at: now,
        updated_at: now,
    };
    Store::snapshot_insert_in_txn(&mut tx, &s).await?;
    emit(
        &mut tx,
        actor,
        "snapshot.created",
        "snapshot",
        s.id.as_str(),
        json!({"snapshot_id": s.id, "name": s.name, "source_type": s.source_type.as_str(), "source_id": s.source_id}),
        now,
    )
    .await?;
    Store::commit(tx).await?;
    c.hosts().wake(&host);
    Ok(s)
}

pub async fn snapshot_list(c: &Control, actor: &Actor) -> Result<Vec<Snapshot>, Error> {
    actor.require(Permission::Read)?;
    c.store().snapshot_list_by_org(&actor.org_id).await
}

pub async fn snapshot_get(c: &Control, actor: &Actor, id: &str) -> Result<Snapshot, Error> {
    actor.require(Permission::Read)?;
    snapshot_find(c, actor, id).await
}

/// The snapshot, with no permission check: for functions that have checked theirs.
async fn snapshot_find(c: &Control, actor: &Actor, id: &str) -> Result<Snapshot, Error> {
    c.store().snapshot_get(&actor.org_id, &parse_snapshot_id(id)?).await?.ok_or_else(|| Error::not_found("snapshot", id))
}

/// What to restore a snapshot into: a new volume (`name`, optionally a larger `size_gib`) for a
/// volume snapshot, a new instance (`name`, `instance_type`, `ssh_key_ids`) for an instance
/// snapshot.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    pub name: String,
    pub size_gib: Option<i64>,
    pub instance_type: Option<String>,
    pub ssh_key_ids: Option<Vec<String>>,
}

/// What a restore made.
#[derive(Debug, Clone)]
pub enum Restored {
    Volume(Box<Volume>),
    Instance(Box<Instance>),
}

/// Restores a snapshot into a new volume or a new instance, whichever its source was (CREATE).
pub async fn snapshot_restore(c: &Control, actor: &Actor, id: &str, req: RestoreRequest) -> Result<Restored, Error> {
    actor.require(Permission::Create)?;
    let snap = snapshot_find(c, actor, id).await?;
    match snap.source_type {
        SnapshotSourceType::Volume => {
            if req.instance_type.is_some() || req.ssh_key_ids.is_some() {
                return Err(Error::InvalidRequest {
                    message: "a volume snapshot restores to a volume: give name and size_gib only".into(),
                });
            }
            Ok(Restored::Volume(Box::new(restore_to_volume(c, actor, id, &req.name, req.size_gib).await?)))
        }
        SnapshotSourceType::Instance => {
            if req.size_gib.is_some() {
                return Err(Error::invalid(
                    "size_gib",
                    "an instance snapshot restores to an instance; its disk size comes from instance_type",
                ));
            }
            let itype = req.instance_type.ok_or_else(|| Error::invalid("instance_type", "required to restore an instance snapshot"))?;
            let keys = req.ssh_key_ids.unwrap_or_default();
            if keys.is_empty() {
                return Err(Error::invalid("ssh_keys", "at least one SSH key id is required"));
            }
            let spec = crate::instances::LaunchSpec {
                region: snap.region.clone(),
                instance_type: itype,
                ssh_key_ids: keys,
                name: Some(req.name),
                source_snapshot: Some(id.to_owned()),
                quantity: 1,
                ..Default::default()
            };
            let ids = crate::instances::launch(c, actor, spec).await?;
            let iid = ids.first().ok_or_else(|| Error::internal("launch placed nothing"))?;
            Ok(Restored::Instance(Box::new(crate::instances::get_for(c, actor, iid.as_str(), Permission::Create).await?)))
        }
    }
}

pub async fn snapshot_delete(c: &Control, actor: &Actor, id: &str) -> Result<Snapshot, Error> {
    actor.require(Permission::Delete)?;
    let sid = parse_snapshot_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let s = Store::snapshot_get_in(&mut tx, &actor.org_id, &sid).await?.ok_or_else(|| Error::not_found("snapshot", id))?;
    Store::host_bump_generation_in_txn(&mut tx, &s.host_id).await?;
    if Store::snapshot_in_use_in(&mut tx, &s.id).await? {
        return Err(Error::conflict(
            ConflictReason::InvalidState,
            format!("snapshot {} is being restored; delete it once the restore is done", s.name),
        ));
    }
    if !Store::snapshot_delete_in_txn(&mut tx, &actor.org_id, &s.id).await? {
        return Err(Error::not_found("snapshot", id));
    }
    emit(&mut tx, actor, "snapshot.deleted", "snapshot", s.id.as_str(), json!({"snapshot_id": s.id, "name": s.name}), now).await?;
    Store::commit(tx).await?;
    c.hosts().wake(&s.host_id);
    Ok(s)
}

/// A snapshot ready to restore from, or why not.
pub(crate) async fn restorable_in(tx: &mut Conn, actor: &Actor, id: &str, want: SnapshotSourceType) -> Result<Snapshot, Error> {
    let s = Store::snapshot_get_in(tx, &actor.org_id, &parse_snapshot_id(id)?).await?.ok_or_else(|| Error::not_found("snapshot", id))?;
    if s.state != SnapshotState::Available {
        return Err(Error::conflict(ConflictReason::InvalidState, format!("snapshot {} is {}, not available", s.name, s.state.as_str())));
    }
    if s.source_type != want {
        return Err(Error::invalid(
            "type",
            format!("snapshot {} is of {} and restores to a new {}", s.name, s.source_type.as_str(), s.source_type.as_str()),
        ));
    }
    Ok(s)
}

/// Restores a volume snapshot into a new volume on the snapshot's host.
pub async fn restore_to_volume(c: &Control, actor: &Actor, snapshot: &str, name: &str, size_gib: Option<i64>) -> Result<Volume, Error> {
    actor.require(Permission::Create)?;
    validate::file_system_name(name)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let s = restorable_in(&mut tx, actor, snapshot, SnapshotSourceType::Volume).await?;
    let size = size_gib.unwrap_or(s.size_gib);
    check_size(c, size)?;
    if size < s.size_gib {
        return Err(Error::invalid("size_gib", format!("must be at least the snapshot's {} GiB", s.size_gib)));
    }
    Store::host_bump_generation_in_txn(&mut tx, &s.host_id).await?;
    let mut v = new_volume(actor, VolumeId::generate(), name.to_owned(), None, &s.region, size, now);
    v.host_id = Some(s.host_id.clone());
    v.source_snapshot_id = Some(s.id.clone());
    check_volume_quota(c, &mut tx, &actor.org_id, 1, size).await?;
    Store::volume_insert_in_txn(&mut tx, &v).await?;
    crate::metering::volume_changed(c, &mut tx, &v, Some(size), now).await?;
    emit(
        &mut tx,
        actor,
        "volume.created",
        "volume",
        v.id.as_str(),
        json!({"volume_id": v.id, "name": v.name, "size_gib": size, "snapshot_id": s.id}),
        now,
    )
    .await?;
    Store::commit(tx).await?;
    c.hosts().wake(&s.host_id);
    Ok(v)
}

/// The host and snapshot a restore-to-instance launch is pinned to.
pub(crate) async fn restore_target(tx: &mut Conn, actor: &Actor, snapshot: &str) -> Result<(HostId, SnapshotId, i64), Error> {
    let s = restorable_in(tx, actor, snapshot, SnapshotSourceType::Instance).await?;
    Ok((s.host_id, s.id, s.size_gib))
}

/// What the instance a snapshot was taken of ran as: a container's disk cannot boot a VM, nor
/// a VM's start a container.
pub(crate) async fn snapshot_machine(
    c: &Control,
    tx: &mut Conn,
    actor: &Actor,
    snapshot: &str,
) -> Result<nimbus_core::catalog::Machine, Error> {
    let s = restorable_in(tx, actor, snapshot, SnapshotSourceType::Instance).await?;
    let source = match InstanceId::parse(&s.source_id) {
        Some(id) => Store::instance_get_any_in(tx, &id).await?,
        None => None,
    };
    Ok(source.map_or(nimbus_core::catalog::Machine::Container, |i| c.config().machine_of(&i.instance_type)))
}
