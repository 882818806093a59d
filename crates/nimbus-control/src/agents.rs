//! The server side of the agent protocol: registration, reports (heartbeat + actual state) and
//! the desired state each host long-polls for.
//!
//! Registration binds a host to its identity. A host token (limited uses, an expiry) enrols a
//! machine id that no host has yet; a registered host re-registers with its current host
//! secret, which it keeps; nothing else takes a host over except a re-enrolment token an
//! operator minted for that very host (`admin::host_reenrol`), which revokes the old secret. A
//! leaked token therefore enrols at most its remaining uses of new hosts and never receives an
//! existing host's instances.
//!
//! Reports drive the instance lifecycle forward: a booting instance the host reports running
//! becomes active; a terminating instance the host no longer has becomes terminated and its
//! capacity returns to the host. Every change is a conditional update in one transaction with its
//! event, so a stale or repeated report changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use nimbus_core::auth::{hash_secret, new_secret};
use nimbus_core::catalog::{Machine, Resources};
use nimbus_core::ids::*;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Gpu, Instance, VolumeHostState};
use nimbus_core::Error;
use nimbus_proto as proto;
use nimbus_store::{Conn, HostRegistration, InstanceUpdate, NewEvent, Store};
use serde_json::json;

use crate::Control;

pub const HOST_SECRET_PREFIX: &str = "nmbs_";
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long a woken long-poll waits for the rest of a burst (a batch's instances arrive in one
/// transaction anyway; this catches separate calls made at once). It is on every launch's path.
const COALESCE: Duration = Duration::from_millis(5);

/// Who is registering, decided from the credential alone.
enum Registrant {
    /// A registered host proving its identity with its current secret.
    Host { id: HostId, machine_id: String, region: String },
    /// A usable host token; a re-enrolment token also names the host it may take over.
    Token { id: HostTokenId, region: String, host: Option<HostId> },
}

async fn registrant(conn: &mut Conn, credential: &str, now: i64) -> Result<Registrant, Error> {
    if credential.is_empty() {
        return Err(Error::Unauthenticated);
    }
    let hash = hash_secret(credential);
    if let Some((id, machine_id, region)) = Store::host_identity_by_secret_in(conn, &hash).await? {
        return Ok(Registrant::Host { id, machine_id, region });
    }
    // Unknown, revoked, expired and used-up tokens are one answer: nothing tells them apart.
    let (id, region, host) = Store::host_token_usable_in(conn, &hash, now).await?.ok_or(Error::Unauthenticated)?;
    Ok(Registrant::Token { id, region, host })
}

/// Checks a registration's credential (a usable host token, or a registered host's secret)
/// before its body is read, so unauthenticated registrations cost the server no body. The
/// registration itself checks again, and spends the token's use, in its transaction.
pub async fn check_registration_credential(c: &Control, credential: &str) -> Result<(), Error> {
    let mut conn = c.store().reader().await?;
    registrant(&mut conn, credential, c.now()).await.map(drop)
}

/// Registers a host. `req.token` is the credential (the HTTP layer fills it from the
/// `Authorization` header): a host token enrols a new machine id, or takes over the one host a
/// re-enrolment token names, with a new secret; a registered host's own secret refreshes its
/// inventory and keeps the secret (answered again in the response, so an agent that crashed
/// before saving the response loses nothing).
pub async fn register(c: &Control, req: proto::RegisterRequest) -> Result<proto::RegisterResponse, Error> {
    if !(proto::OLDEST_PROTOCOL_VERSION..=proto::PROTOCOL_VERSION).contains(&req.protocol_version) {
        return Err(Error::invalid(
            "protocol_version",
            format!(
                "server speaks agent protocol {} and accepts {} to {}; agent speaks {} (upgrade servers first, then agents)",
                proto::PROTOCOL_VERSION,
                proto::OLDEST_PROTOCOL_VERSION,
                proto::PROTOCOL_VERSION,
                req.protocol_version
            ),
        ));
    }
    let inv = &req.inventory;
    if req.machine_id.is_empty() || req.machine_id.len() > 128 {
        return Err(Error::invalid("machine_id", "must be 1 to 128 characters"));
    }
    if let Some(ip) = &inv.public_ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::invalid("public_ip", format!("{ip:?} is not an IP address")));
        }
    }
    let network = inv.network.as_ref().map(crate::fabric::validate).transpose()?;
    if inv.vcpus < 0 || inv.memory_mib < 0 || inv.disk_gib < 0 || inv.gpus.len() > 64 {
        return Err(Error::invalid("inventory", "sizes must be non-negative and at most 64 GPUs"));
    }
    let gpus = inventory_gpus(&inv.gpus)?;
    let machines = inventory_machines(&inv.machines);
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let fresh = new_secret(HOST_SECRET_PREFIX);
    // (host to update, token that enrols it, new secret, region, event)
    let (host, token_id, new_secret_hash, region, kind) = match registrant(&mut tx, &req.token, now).await? {
        Registrant::Host { id, machine_id, region } => {
            if machine_id != req.machine_id {
                return Err(Error::invalid("machine_id", "is not the machine id of the host this secret belongs to"));
            }
            (Some(id), None, None, region, "host.reregistered")
        }
        Registrant::Token { id, region, host } => {
            // The use is spent first: on PostgreSQL this takes the token's row lock, so of
            // concurrent registrations with a token's last use the others wait and then fail.
            if !Store::host_token_consume_in_txn(&mut tx, &id, now).await? {
                return Err(Error::Unauthenticated);
            }
            let holder = Store::host_id_by_machine_in(&mut tx, &req.machine_id).await?;
            match (&host, holder) {
                (Some(h), Some(other)) if *h != other => return Err(machine_taken()),
                (None, Some(_)) => return Err(machine_taken()),
                _ => {}
            }
            let kind = if host.is_some() { "host.reenrolled" } else { "host.registered" };
            (host, Some(id), Some(fresh.hash.clone()), region, kind)
        }
    };
    let before = match &host {
        Some(h) => Store::host_list_in(&mut tx, Some(&region), false).await?.into_iter().find(|x| &x.id == h),
        None => None,
    };
    if let Some((underlay, subnet)) = network {
        crate::fabric::check_free(&mut tx, &region, host.as_ref(), underlay, subnet).await?;
    }
    let host_id = Store::host_register_in_txn(
        &mut tx,
        &HostRegistration {
            host: host.as_ref(),
            token_id: token_id.as_ref(),
            region: &region,
            machine_id: &req.machine_id,
            name: &inv.hostname,
            driver: &inv.driver,
            cpu_model: &inv.cpu_model,
            total: Resources { vcpus: inv.vcpus, memory_mib: inv.memory_mib, disk_gib: inv.disk_gib },
            gpus: &gpus,
            secret_hash: new_secret_hash.as_deref(),
            public_ip: inv.public_ip.as_deref(),
            network: inv.network.as_ref().map(|n| (n.underlay.as_str(), n.instance_subnet.as_str())),
            machines: &machines,
            now,
        },
    )
    .await?;
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: None,
            kind,
            resource_type: "host",
            resource_id: host_id.as_str(),
            actor_key_id: None,
            payload: json!({
                "name": inv.hostname,
                "region": region,
                "gpus": inv.gpus.len(),
                "driver": inv.driver,
                "machines": machines.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            }),
            now,
        },
    )
    .await?;
    Store::commit(tx).await?;
    let was = before.as_ref().map(|h| (h.underlay.clone(), h.instance_subnet.clone()));
    let now_net = inv.network.as_ref().map(|n| (Some(n.underlay.clone()), Some(n.instance_subnet.clone())));
    if was.clone().unwrap_or((None, None)) != now_net.unwrap_or((None, None)) {
        crate::fabric::peers_changed(c, &region, &host_id).await?;
    }
    Ok(proto::RegisterResponse {
        host_id: host_id.to_string(),
        host_secret: if new_secret_hash.is_some() { fresh.plain } else { req.token },
        region,
        heartbeat_interval_ms: c.config().agents.heartbeat_interval_ms,
    })
}

/// What an inventory says its host runs, in the catalog's terms, sorted and without repeats.
/// Empty stays empty (an older agent: containers only, `Host::runs`).
fn inventory_machines(machines: &[proto::Machine]) -> Vec<Machine> {
    let mut out: Vec<Machine> = machines.iter().copied().map(machine_from_proto).collect();
    out.sort();
    out.dedup();
    out
}

fn machine_from_proto(m: proto::Machine) -> Machine {
    match m {
        proto::Machine::Container => Machine::Container,
        proto::Machine::Vm => Machine::Vm,
    }
}

fn machine_to_proto(m: Machine) -> proto::Machine {
    match m {
        Machine::Container => proto::Machine::Container,
        Machine::Vm => proto::Machine::Vm,
    }
}

/// The GPUs (and MIG devices) of an inventory, checked: an agent's word goes into placement
/// and into the device nodes an instance gets, so it must be well-formed.
fn inventory_gpus(gpus: &[proto::GpuInfo]) -> Result<Vec<Gpu>, Error> {
    let mut out: Vec<Gpu> = Vec::with_capacity(gpus.len());
    let mut uuids = std::collections::HashSet::new();
    for g in gpus {
        if g.index < 0 || out.iter().any(|o| o.index == g.index) || g.memory_mib < 0 || g.model.len() > 256 || g.uuid.len() > 128 {
            return Err(Error::invalid("inventory.gpus", format!("GPU {} is malformed or listed twice", g.index)));
        }
        if g.mig_devices.len() > 64 {
            return Err(Error::invalid("inventory.gpus", format!("GPU {} lists more than 64 MIG devices", g.index)));
        }
        let mut gpu = Gpu::new(g.index, &g.model, g.memory_mib, &g.uuid);
        for m in &g.mig_devices {
            let ok = !m.uuid.is_empty()
                && m.uuid.len() <= 128
                && uuids.insert(m.uuid.clone())
                && nimbus_core::catalog::valid_mig_profile(&m.profile)
                && m.memory_mib >= 0
                && (0..=1024).contains(&m.gpu_instance_id)
                && (0..=1024).contains(&m.compute_instance_id);
            if !ok {
                return Err(Error::invalid("inventory.gpus", format!("MIG device {:?} of GPU {} is malformed", m.uuid, g.index)));
            }
            gpu.mig_devices.push(nimbus_core::model::MigDevice {
                uuid: m.uuid.clone(),
                profile: m.profile.clone(),
                memory_mib: m.memory_mib,
                gpu_instance_id: m.gpu_instance_id,
                compute_instance_id: m.compute_instance_id,
                instance_id: None,
            });
        }
        out.push(gpu);
    }
    Ok(out)
}

fn machine_taken() -> Error {
    Error::conflict(
        nimbus_core::ConflictReason::InvalidState,
        "this machine id is already registered as a host: its agent re-registers with its host secret \
         (agent.json), or an operator re-enrols the host (`nimbus admin hosts re-enrol HOST`)",
    )
}

/// The host an agent credential belongs to.
pub async fn authenticate(c: &Control, secret: &str) -> Result<HostId, Error> {
    c.store().host_id_by_secret(&hash_secret(secret)).await?.ok_or(Error::Unauthenticated)
}

async fn system_event(tx: &mut Conn, inst: &Instance, kind: &str, payload: serde_json::Value, now: i64) -> Result<(), Error> {
    Store::event_append_in_txn(
        tx,
        NewEvent {
            org_id: Some(&inst.org_id),
            kind,
            resource_type: "instance",
            resource_id: inst.id.as_str(),
            actor_key_id: None,
            payload,
            now,
        },
    )
    .await
}

/// What one report changes, decided from a snapshot of the host's instances.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// `why` says what made it so when it was not the instance's own report (a failed GPU).
    Transition {
        index: usize,
        to: InstanceState,
        addrs: InstanceUpdate,
        why: Option<String>,
    },
    Addresses {
        index: usize,
        addrs: InstanceUpdate,
    },
}

/// Pure decision of a report's effects (no IO; unit-tested below). `failing` maps the id of
/// every instance whose GPU cannot be relied on now to why: such an instance is `unhealthy`
/// however its processes look, until its GPU is back.
pub(crate) fn plan(
    instances: &[Instance],
    req: &proto::ReportRequest,
    generation: i64,
    failing: &HashMap<InstanceId, String>,
) -> Vec<Change> {
    use proto::ActualState as A;
    use InstanceState as S;
    let reports: HashMap<&str, &proto::InstanceReport> = req.instances.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = Vec::new();
    for (index, inst) in instances.iter().enumerate() {
        let r = reports.get(inst.id.as_str()).copied();
        let addrs = InstanceUpdate { ip: r.and_then(|r| r.ip.clone()), private_ip: r.and_then(|r| r.private_ip.clone()) };
        let target = match (inst.state, r.map(|r| r.state)) {
            (S::Booting | S::Starting | S::Unhealthy, Some(A::Running)) => Some(S::Active),
            (S::Restarting, Some(A::Running)) if r.is_some_and(|r| r.restart_generation >= inst.restart_generation) => Some(S::Active),
            (S::Booting | S::Restarting | S::Starting | S::Active, Some(A::Failed)) => Some(S::Unhealthy),
            // Found stopped though it should run (its processes died, its host rebooted): not
            // reachable until the agent has started it again, which it does next.
            (S::Active, Some(A::Stopped)) => Some(S::Unhealthy),
            (S::Stopping, Some(A::Stopped)) => Some(S::Stopped),
            // Absent from a host that has applied the latest desired state: it is gone.
            (S::Terminating, None) if req.applied_generation >= generation => Some(S::Terminated),
            _ => None,
        };
        let gpu_failed = failing.get(&inst.id);
        let (target, why) = match (gpu_failed, target) {
            (Some(_), Some(S::Active)) if inst.state == S::Unhealthy => (None, None),
            (Some(w), Some(S::Active) | None) if matches!(inst.state, S::Booting | S::Starting | S::Restarting | S::Active) => {
                (Some(S::Unhealthy), Some(w.clone()))
            }
            (_, t) => (t, None),
        };
        match target {
            Some(to) => out.push(Change::Transition { index, to, addrs, why }),
            // Most reports repeat what the store already has; only a real change is written.
            None if addresses_changed(inst, &addrs) => out.push(Change::Addresses { index, addrs }),
            None => {}
        }
    }
    out
}

/// Applies a report: heartbeat plus the actual state of the host's instances.
///
/// The decision is made on a snapshot read outside the write transaction, so the (single, on
/// SQLite) writer is held only for the changes themselves. Every change is conditional on the
/// state the snapshot saw, so a change that raced with another writer simply does not apply and
/// the next report retries it.
pub async fn report(c: &Control, host: &HostId, req: proto::ReportRequest) -> Result<proto::ReportResponse, Error> {
    let now = c.now();
    let gen = c.store().host_desired_generation(host).await?;
    let instances = c.store().instance_list_by_host(host).await?;
    let gpus_before = c.store().host_get(host).await?.map(|h| h.gpus).unwrap_or_default();
    let failing = failing_instances(&gpus_before, req.gpus.as_deref());
    let changes = plan(&instances, &req, gen, &failing);
    let mut tx = c.store().begin().await?;
    Store::host_seen_in_txn(&mut tx, host, now).await?;
    let mut changed_orgs: Vec<OrgId> = Vec::new();
    // Orgs whose network gained or lost a member address: their other hosts re-read the members.
    let mut member_orgs: Vec<OrgId> = Vec::new();
    // Clusters whose nodes' addresses changed: every node's host must re-read its peers.
    let mut changed_clusters: Vec<String> = Vec::new();
    // Observed once the transaction commits, so that a rolled-back report counts nothing.
    let mut became_active: Vec<(&str, f64)> = Vec::new();
    for change in changes {
        let (inst, applied) = match change {
            Change::Transition { index, to, addrs, why } => {
                let inst = &instances[index];
                let ok = Store::instance_transition_in_txn(&mut tx, &inst.id, inst.state, to, &addrs, now).await?;
                if ok && private_changed(inst, &addrs) {
                    member_orgs.push(inst.org_id.clone());
                }
                if ok && (addrs != InstanceUpdate::default() || to == InstanceState::Terminated) {
                    changed_clusters.extend(inst.cluster_id.clone());
                }
                if ok && inst.state == InstanceState::Booting && to == InstanceState::Active {
                    became_active.push((crate::telemetry::type_label(c, &inst.instance_type), (now - inst.created_at) as f64 / 1e6));
                }
                if ok {
                    crate::metering::instance_moved(c, &mut tx, inst, inst.state, to, now).await?;
                    if to == InstanceState::Terminated {
                        Store::host_release_in_txn(&mut tx, host, &inst.held(), &inst.id, false).await?;
                        for v in Store::volume_detach_all_in_txn(&mut tx, &inst.id, now).await? {
                            let p = json!({"volume_id": v, "instance_id": inst.id, "reason": "instance terminated"});
                            org_event(&mut tx, &inst.org_id, "volume.detached", "volume", v.as_str(), p, now).await?;
                        }
                    }
                    let msg = why.or_else(|| req.instances.iter().find(|r| r.id == inst.id.as_str()).and_then(|r| r.message.clone()));
                    let payload = json!({"from": inst.state.as_str(), "message": msg});
                    system_event(&mut tx, inst, &format!("instance.{}", to.as_str()), payload, now).await?;
                }
                (inst, ok)
            }
            Change::Addresses { index, addrs } => {
                let inst = &instances[index];
                let ok = Store::instance_set_addresses_in_txn(&mut tx, &inst.id, &addrs, now).await?;
                if ok && private_changed(inst, &addrs) {
                    member_orgs.push(inst.org_id.clone());
                }
                if ok {
                    changed_clusters.extend(inst.cluster_id.clone());
                }
                (inst, ok)
            }
        };
        if applied && !changed_orgs.contains(&inst.org_id) {
            changed_orgs.push(inst.org_id.clone());
        }
    }
    for org in &changed_orgs {
        Store::org_bump_instances_generation_in_txn(&mut tx, org).await?;
    }
    apply_gpu_report(&mut tx, host, &gpus_before, &req, now).await?;
    apply_storage_report(&mut tx, host, &req, now).await?;
    crate::vpn::apply_reports(&mut tx, host, &req.vpns).await?;
    // A VPN gateway forwards only to its org's instance addresses, which arrive with reports:
    // when they change, the host must re-read its desired state.
    let vpn_changed =
        !changed_orgs.is_empty() && Store::vpn_list_by_host_in(&mut tx, host).await?.iter().any(|v| changed_orgs.contains(&v.org_id));
    if vpn_changed {
        Store::host_bump_generation_in_txn(&mut tx, host).await?;
    }
    Store::commit(tx).await?;
    for (instance_type, seconds) in became_active {
        c.telemetry().observe_active(instance_type, seconds);
    }
    if vpn_changed {
        c.hosts().wake(host);
    }
    // Who must re-read: every host of a cluster whose nodes' addresses changed (their peers),
    // and the other hosts of every org whose members changed. One transaction, after this one.
    changed_clusters.sort();
    changed_clusters.dedup();
    let mut hosts = Vec::new();
    for cl in &changed_clusters {
        hosts.extend(c.store().cluster_host_ids(cl).await?);
    }
    member_orgs.sort();
    member_orgs.dedup();
    hosts.extend(crate::fabric::hosts_of_orgs(c, &member_orgs).await?.into_iter().filter(|h| h != host));
    crate::fabric::wake_hosts(c, hosts).await?;
    Ok(proto::ReportResponse { desired_generation: gen })
}

/// The instances of a host whose GPUs (whole, or the parent of a MIG device) cannot be relied
/// on now, with why: by the report's health where it has one, else by what the store knows.
fn failing_instances(gpus: &[Gpu], reported: Option<&[proto::GpuHealthReport]>) -> HashMap<InstanceId, String> {
    let mut out = HashMap::new();
    for g in gpus {
        let (condition, reasons) = match reported.and_then(|r| r.iter().find(|h| h.index == g.index && h.uuid == g.uuid)) {
            Some(h) => (h.condition, h.reasons.as_slice()),
            None => (g.health, g.health_reasons.as_slice()),
        };
        if !condition.fails_instance() {
            continue;
        }
        let why =
            format!("GPU {} ({}) is {}: {}", g.index, g.uuid, condition.as_str(), reasons.first().map_or("no detail", String::as_str));
        for holder in g.instance_id.iter().chain(g.mig_devices.iter().filter_map(|m| m.instance_id.as_ref())) {
            out.entry(holder.clone()).or_insert_with(|| why.clone());
        }
    }
    out
}

/// Records the GPUs' health as reported, with an operator event per condition change. An
/// agent that reports no health (protocol 1) checks nothing between tenants, as before: its
/// free GPUs count as clean.
async fn apply_gpu_report(tx: &mut Conn, host: &HostId, before: &[Gpu], req: &proto::ReportRequest, now: i64) -> Result<(), Error> {
    let Some(reports) = &req.gpus else {
        return Store::host_gpus_mark_clean_in_txn(tx, host).await;
    };
    for r in reports.iter().take(64) {
        let reasons: Vec<String> = r.reasons.iter().take(16).map(|t| t.chars().take(300).collect()).collect();
        let update = nimbus_store::GpuHealthUpdate {
            index: r.index,
            uuid: &r.uuid,
            condition: r.condition,
            reasons: &reasons,
            clean: r.clean,
            applied_generation: req.applied_generation,
            now,
        };
        Store::host_gpu_health_in_txn(tx, host, &update).await?;
        let Some(was) = before.iter().find(|g| g.index == r.index && g.uuid == r.uuid) else { continue };
        if was.health != r.condition {
            let payload = json!({
                "gpu_index": r.index, "uuid": r.uuid, "from": was.health.as_str(), "to": r.condition.as_str(), "reasons": reasons,
            });
            Store::event_append_in_txn(
                tx,
                NewEvent {
                    org_id: None,
                    kind: "host.gpu_health_changed",
                    resource_type: "host",
                    resource_id: host.as_str(),
                    actor_key_id: None,
                    payload,
                    now,
                },
            )
            .await?;
        }
    }
    Ok(())
}

fn private_changed(inst: &Instance, u: &InstanceUpdate) -> bool {
    u.private_ip.is_some() && u.private_ip != inst.private_ip
}

async fn org_event(
    tx: &mut Conn,
    org: &OrgId,
    kind: &str,
    resource_type: &str,
    resource_id: &str,
    payload: serde_json::Value,
    now: i64,
) -> Result<(), Error> {
    Store::event_append_in_txn(tx, NewEvent { org_id: Some(org), kind, resource_type, resource_id, actor_key_id: None, payload, now }).await
}

/// Records which volumes are mounted where, their state and used bytes, and finishes snapshots
/// the host has made (or failed).
async fn apply_storage_report(tx: &mut Conn, host: &HostId, req: &proto::ReportRequest, now: i64) -> Result<(), Error> {
    if req.volumes.is_empty() && req.snapshots.is_empty() {
        return Ok(());
    }
    let volumes = Store::volume_list_by_host_in(tx, host).await?;
    for v in &volumes {
        let r = req.volumes.iter().find(|r| r.id == v.id.as_str());
        for a in &v.attachments {
            let mounted = r.is_some_and(|r| r.mounted_in_all.iter().chain(&r.mounted_in).any(|i| i == a.instance_id.as_str()));
            if mounted != a.mounted {
                Store::volume_set_mounted_in_txn(tx, &v.id, &a.instance_id, mounted).await?;
            }
        }
        let Some(r) = r else { continue };
        let state = match &r.message {
            Some(m) => VolumeHostState::Failed(m.chars().take(500).collect()),
            None => VolumeHostState::Ready,
        };
        let used = r.used_bytes.map(|b| b.max(0));
        if state != v.host_state || used.is_some_and(|b| b != v.used_bytes) {
            Store::volume_set_host_report_in_txn(tx, &v.id, &state, used).await?;
        }
    }
    let snapshots = Store::snapshot_list_by_host_in(tx, host).await?;
    for s in snapshots.iter().filter(|s| s.state == nimbus_core::model::SnapshotState::Creating) {
        let Some(r) = req.snapshots.iter().find(|r| r.id == s.id.as_str()) else { continue };
        let (state, kind) = match r.state {
            proto::SnapshotState::Ready => (nimbus_core::model::SnapshotState::Available, "snapshot.completed"),
            proto::SnapshotState::Failed => (nimbus_core::model::SnapshotState::Failed, "snapshot.failed"),
        };
        let msg = r.message.as_deref().map(|m| m.chars().take(500).collect::<String>());
        if Store::snapshot_finish_in_txn(tx, &s.id, state, r.size_bytes.max(0), msg.as_deref(), now).await? {
            let p = json!({"snapshot_id": s.id, "name": s.name, "size_bytes": r.size_bytes, "message": msg});
            org_event(tx, &s.org_id, kind, "snapshot", s.id.as_str(), p, now).await?;
        }
    }
    Ok(())
}

/// Each instance's inbound allow-list: its org's global rules plus its rulesets' rules.
async fn firewall_by_instance(c: &Control, instances: &[Instance]) -> Result<HashMap<InstanceId, Vec<proto::FirewallRule>>, Error> {
    let mut global: HashMap<OrgId, Vec<nimbus_core::firewall::FirewallRule>> = HashMap::new();
    let mut sets: HashMap<OrgId, HashMap<FirewallRulesetId, Vec<nimbus_core::firewall::FirewallRule>>> = HashMap::new();
    let mut out = HashMap::new();
    for i in instances {
        if !global.contains_key(&i.org_id) {
            global.insert(i.org_id.clone(), c.store().org_global_rules(&i.org_id).await?);
            let rs = c.store().ruleset_list_by_org(&i.org_id).await?;
            sets.insert(i.org_id.clone(), rs.into_iter().map(|r| (r.id, r.rules)).collect());
        }
        let mut rules: Vec<nimbus_core::firewall::FirewallRule> = global.get(&i.org_id).cloned().unwrap_or_default();
        for rid in &i.firewall_ruleset_ids {
            rules.extend(sets.get(&i.org_id).and_then(|m| m.get(rid)).cloned().unwrap_or_default());
        }
        let wire = rules
            .iter()
            .map(|r| proto::FirewallRule {
                protocol: serde_json::to_value(r.protocol).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                port_range: r.port_range,
                source: r.source_network.clone(),
            })
            .collect();
        out.insert(i.id.clone(), wire);
    }
    Ok(out)
}

fn addresses_changed(inst: &Instance, u: &InstanceUpdate) -> bool {
    (u.ip.is_some() && u.ip != inst.ip) || (u.private_ip.is_some() && u.private_ip != inst.private_ip)
}

/// The host's desired state, answered when its generation differs from `known_generation` or
/// after waiting up to `wait_ms` (capped at 30 s) for it to change.
///
/// An instance's `user_data` (up to 1 MiB, set at launch and never changed) is sent only while
/// the agent does not list the instance in `user_data_held`; otherwise it is left out and the
/// instance listed in `user_data_omitted`, so a generation bump costs the host's instances'
/// specs, not their scripts.
pub async fn desired(c: &Control, host: &HostId, req: proto::DesiredRequest) -> Result<proto::DesiredResponse, Error> {
    let notify = c.hosts().handle(host);
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let gen = c.store().host_desired_generation(host).await?;
    if gen == req.known_generation && req.wait_ms > 0 {
        let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        if tokio::time::timeout(wait, notified).await.is_ok() {
            // Let a burst of launches land before answering: the answer is the host's whole
            // desired set, so one answer per burst instead of one per launch.
            tokio::time::sleep(COALESCE).await;
        }
    }
    let gen = c.store().host_desired_generation(host).await?;
    let instances = c.store().instance_list_by_host(host).await?;
    let host_gpus = c.store().host_get(host).await?.map(|h| h.gpus).unwrap_or_default();
    let mig_of = |i: &Instance| -> Vec<proto::MigDeviceRef> {
        host_gpus
            .iter()
            .flat_map(|g| g.mig_devices.iter().map(move |m| (g.index, m)))
            .filter(|(_, m)| m.instance_id.as_ref() == Some(&i.id))
            .map(|(parent, m)| proto::MigDeviceRef {
                parent_index: parent,
                uuid: m.uuid.clone(),
                gpu_instance_id: m.gpu_instance_id,
                compute_instance_id: m.compute_instance_id,
            })
            .collect()
    };
    let images = c.store().image_list().await?;
    let firewall = firewall_by_instance(c, &instances).await?;
    let forwards = c.store().network_forwards_by_host(host).await?;
    let publics = c.store().network_public_by_host(host).await?;
    let volumes = c.store().volume_list_by_host(host).await?;
    let snapshots = c.store().snapshot_list_by_host(host).await?;
    let image_name = |id: &ImageId| images.iter().find(|i| &i.id == id).map(|i| i.name.clone()).unwrap_or_default();
    let mut clusters: HashMap<String, Vec<Instance>> = HashMap::new();
    for cl in instances.iter().filter_map(|i| i.cluster_id.clone()) {
        if let std::collections::hash_map::Entry::Vacant(e) = clusters.entry(cl) {
            let nodes = c.store().cluster_live_nodes(e.key()).await?;
            e.insert(nodes);
        }
    }
    // Bare-metal rentals of one sub_order share a network as a cluster's nodes do.
    let mut rentals: HashMap<String, Vec<Instance>> = HashMap::new();
    for r in instances.iter().filter_map(|i| i.rental_id.clone()) {
        if let std::collections::hash_map::Entry::Vacant(e) = rentals.entry(r) {
            let nodes = c.store().network_rental_peers(e.key()).await?;
            e.insert(nodes);
        }
    }
    let peers_of = |i: &Instance| -> Vec<proto::Peer> {
        let group = i.cluster_id.as_ref().and_then(|cl| clusters.get(cl)).or_else(|| i.rental_id.as_ref().and_then(|r| rentals.get(r)));
        let Some(nodes) = group else { return Vec::new() };
        nodes
            .iter()
            .filter(|n| n.id != i.id)
            .filter_map(|n| n.private_ip.clone().or_else(|| n.ip.clone()).map(|ip| proto::Peer { name: n.hostname.clone(), ip }))
            .collect()
    };
    let held: std::collections::HashSet<&str> = req.user_data_held.iter().map(String::as_str).collect();
    let mut user_data_omitted = Vec::new();
    let desired = instances
        .iter()
        .filter(|i| i.state.wants_running() || matches!(i.state, InstanceState::Stopping | InstanceState::Stopped))
        .map(|i| proto::DesiredInstance {
            id: i.id.to_string(),
            hostname: i.hostname.clone(),
            image: image_name(&i.image_id),
            vcpus: i.resources.vcpus,
            memory_mib: i.resources.memory_mib,
            disk_gib: i.resources.disk_gib,
            gpu_indices: i.gpu_indices.clone(),
            mig_devices: mig_of(i),
            ssh_public_keys: i.ssh_public_keys.clone(),
            user_data: match &i.user_data {
                Some(_) if held.contains(i.id.as_str()) => {
                    user_data_omitted.push(i.id.to_string());
                    None
                }
                u => u.clone(),
            },
            power: if i.state.wants_running() { proto::Power::Running } else { proto::Power::Stopped },
            restart_generation: i.restart_generation,
            file_system_mounts: i
                .file_system_mounts
                .iter()
                .map(|m| proto::MountSpec { file_system_id: m.file_system_id.to_string(), mount_point: m.mount_point.clone() })
                .collect(),
            firewall: firewall.get(&i.id).cloned().unwrap_or_default(),
            volumes: volumes
                .iter()
                .filter(|v| v.attachments.iter().any(|a| a.instance_id == i.id))
                .map(|v| proto::VolumeMount { volume_id: v.id.to_string(), name: v.name.clone() })
                .collect(),
            source_snapshot: i.source_snapshot_id.as_ref().map(ToString::to_string),
            ssh_port: i.ssh_port.and_then(|p| u16::try_from(p).ok()),
            port_forwards: forwards
                .iter()
                .filter(|(id, _, _)| *id == i.id)
                .filter_map(|(_, e, n)| Some((u16::try_from(*e).ok()?, u16::try_from(*n).ok()?)))
                .collect(),
            public_address: publics.iter().find(|(id, _)| *id == i.id).map(|(_, a)| a.clone()),
            peers: peers_of(i),
            tenant: i.org_id.to_string(),
            privileged: c.config().instance_type(&i.instance_type).is_some_and(|t| t.privileged),
            // The type's, as the scheduler placed it (only on a host that runs it). A type gone
            // from the catalog is run as a container, as every instance was before VMs.
            machine: machine_to_proto(c.config().machine_of(&i.instance_type)),
        })
        .collect();
    let host_volumes = volumes
        .iter()
        .map(|v| proto::HostVolume {
            id: v.id.to_string(),
            size_gib: v.size_gib,
            tenant: v.org_id.to_string(),
            source_snapshot: v.source_snapshot_id.as_ref().map(ToString::to_string),
        })
        .collect();
    // A failed snapshot is dropped from the host's set, so the agent removes any partial copy.
    let host_snapshots = snapshots
        .iter()
        .filter(|s| s.state != nimbus_core::model::SnapshotState::Failed)
        .map(|s| proto::HostSnapshot {
            id: s.id.to_string(),
            source: match s.source_type {
                nimbus_core::model::SnapshotSourceType::Instance => proto::SnapshotSource::Instance { id: s.source_id.clone() },
                nimbus_core::model::SnapshotSourceType::Volume => proto::SnapshotSource::Volume { id: s.source_id.clone() },
            },
        })
        .collect();
    let vpns = crate::vpn::desired_for_host(c, host, &instances).await?;
    let fabric = match c.store().host_get(host).await? {
        Some(me) => Some(crate::fabric::for_host(c, &me, &instances).await?),
        None => None,
    };
    Ok(proto::DesiredResponse {
        generation: gen,
        instances: desired,
        volumes: host_volumes,
        snapshots: host_snapshots,
        vpns,
        user_data_omitted,
        fabric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::catalog::Resources;

    fn inst(state: InstanceState, restart_generation: i64, ip: Option<&str>) -> Instance {
        Instance {
            id: InstanceId::generate(),
            org_id: OrgId::generate(),
            name: None,
            hostname: "h".into(),
            state,
            region: "us-east-1".into(),
            instance_type: "t".into(),
            host_id: Some(HostId::generate()),
            resources: Resources::default(),
            gpu_indices: vec![],
            image_id: ImageId::generate(),
            ssh_key_names: vec![],
            ssh_public_keys: vec![],
            user_data: None,
            tags: vec![],
            file_system_mounts: vec![],
            firewall_ruleset_ids: vec![],
            ip: ip.map(str::to_owned),
            private_ip: None,
            restart_generation,
            generation: 1,
            created_at: 0,
            updated_at: 0,
            terminated_at: None,
            source_snapshot_id: None,
            ssh_port: None,
            stop_billing: Default::default(),
            compute_released: false,
            rental_id: None,
            price_micros_per_hour: None,
            cluster_id: None,
        }
    }

    fn rep(i: &Instance, state: proto::ActualState, restart_generation: i64, ip: &str) -> proto::InstanceReport {
        proto::InstanceReport { id: i.id.to_string(), state, ip: Some(ip.into()), private_ip: None, restart_generation, message: None }
    }

    #[test]
    fn report_rules() {
        use proto::ActualState as A;
        use InstanceState as S;
        let booting = inst(S::Booting, 0, None);
        let restarting = inst(S::Restarting, 2, Some("1.1.1.1"));
        let active_same = inst(S::Active, 0, Some("1.1.1.1"));
        let terminating = inst(S::Terminating, 0, Some("1.1.1.1"));
        let insts = vec![booting.clone(), restarting.clone(), active_same.clone(), terminating];
        let req = |applied| proto::ReportRequest {
            instances: vec![
                rep(&booting, A::Running, 0, "2.2.2.2"),
                rep(&restarting, A::Running, 1, "1.1.1.1"),
                rep(&active_same, A::Running, 0, "1.1.1.1"),
            ],
            applied_generation: applied,
            volumes: vec![],
            snapshots: vec![],
            vpns: vec![],
            gpus: None,
        };
        let none = HashMap::new();
        let changes = plan(&insts, &req(7), 7, &none);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            matches!(&changes[0], Change::Transition { index: 0, to: S::Active, addrs, why: None } if addrs.ip.as_deref() == Some("2.2.2.2"))
        );
        // Restarting waits for the requested restart generation; an unchanged active instance
        // writes nothing.
        assert!(matches!(&changes[1], Change::Transition { index: 3, to: S::Terminated, .. }));
        // An agent behind the latest generation cannot prove a terminating instance gone.
        assert_eq!(plan(&insts, &req(6), 7, &none).len(), 1);
        // An active instance found stopped (it died) is unhealthy until it runs again.
        let died = proto::ReportRequest { instances: vec![rep(&active_same, A::Stopped, 0, "1.1.1.1")], ..req(7) };
        let changes = plan(std::slice::from_ref(&active_same), &died, 7, &none);
        assert!(matches!(&changes[..], [Change::Transition { index: 0, to: S::Unhealthy, .. }]), "{changes:?}");
    }

    #[test]
    fn a_failed_gpu_makes_its_instance_unhealthy_until_it_is_back() {
        use proto::ActualState as A;
        use InstanceState as S;
        let active = inst(S::Active, 0, Some("1.1.1.1"));
        let booting = inst(S::Booting, 0, None);
        let stopped = inst(S::Stopped, 0, Some("1.1.1.1"));
        let insts = vec![active.clone(), booting.clone(), stopped.clone()];
        let req = proto::ReportRequest {
            instances: vec![
                rep(&active, A::Running, 0, "1.1.1.1"),
                rep(&booting, A::Running, 0, "1.1.1.2"),
                rep(&stopped, A::Stopped, 0, "1.1.1.1"),
            ],
            applied_generation: 7,
            ..Default::default()
        };
        let why = "GPU 0 (GPU-x) is reset_required: Xid 48: double-bit ECC error".to_owned();
        let failing: HashMap<InstanceId, String> = insts.iter().map(|i| (i.id.clone(), why.clone())).collect();
        let changes = plan(&insts, &req, 7, &failing);
        assert_eq!(changes.len(), 2, "the stopped instance is left alone: {changes:?}");
        for (c, index) in changes.iter().zip([0, 1]) {
            assert!(
                matches!(c, Change::Transition { index: i, to: S::Unhealthy, why: Some(w), .. } if *i == index && w.contains("Xid 48")),
                "{c:?}"
            );
        }
        // Running processes do not make it active again while the GPU is out...
        let unhealthy = inst(S::Unhealthy, 0, Some("1.1.1.1"));
        let req = proto::ReportRequest { instances: vec![rep(&unhealthy, A::Running, 0, "1.1.1.1")], ..req };
        let failing: HashMap<InstanceId, String> = [(unhealthy.id.clone(), why)].into();
        assert!(plan(std::slice::from_ref(&unhealthy), &req, 7, &failing).is_empty());
        // ...and do once it is back.
        let changes = plan(std::slice::from_ref(&unhealthy), &req, 7, &HashMap::new());
        assert!(matches!(&changes[..], [Change::Transition { to: S::Active, why: None, .. }]), "{changes:?}");
    }
}
