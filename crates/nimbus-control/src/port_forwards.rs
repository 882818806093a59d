//! Port forwards: a port of an instance's host (its public address) opened to a port of the
//! instance, from the host's forward range (`[port_forwards]`, shared with the SSH forwards of
//! launches). The agent DNATs the host port to the instance's private address; a forward is an
//! explicit exposure, so the instance's firewall rules do not apply to it (as for SSH).

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::InstanceId;
use nimbus_core::model::Instance;
use nimbus_core::{ConflictReason, Error};
use nimbus_store::Store;
use serde_json::json;

use crate::Control;

/// Forwards one instance may open besides its SSH forward.
pub const MAX_PER_INSTANCE: usize = 16;

/// One forward: host port → instance port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub external_port: u16,
    pub internal_port: u16,
}

/// The forwards of `instances` (SSH first where the launch asked for one), by instance.
pub async fn of(c: &Control, instances: &[Instance]) -> Result<Vec<(InstanceId, Vec<PortForward>)>, Error> {
    let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
    let rows = c.store().network_forwards_of(&ids).await?;
    Ok(instances
        .iter()
        .map(|i| {
            let ssh = i.ssh_port.and_then(|p| u16::try_from(p).ok()).map(|p| PortForward { external_port: p, internal_port: 22 });
            let more = rows.iter().filter(|(id, _, _)| *id == i.id).filter_map(|(_, e, n)| {
                Some(PortForward { external_port: u16::try_from(*e).ok()?, internal_port: u16::try_from(*n).ok()? })
            });
            (i.id.clone(), ssh.into_iter().chain(more).collect())
        })
        .collect())
}

/// Opens a host port to `internal_port` of the caller's instance `i` (EDIT).
pub async fn open(c: &Control, actor: &Actor, i: &Instance, internal_port: i64) -> Result<PortForward, Error> {
    actor.require(Permission::Edit)?;
    let internal = u16::try_from(internal_port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::invalid("internal_port", "must be a port number, 1 to 65535"))?;
    if internal == 22 && i.ssh_port.is_some() {
        return Err(Error::conflict(ConflictReason::InvalidState, "port 22 is forwarded already (the SSH forward)"));
    }
    if !i.state.wants_running() && !matches!(i.state, nimbus_core::instance::InstanceState::Stopped) {
        return Err(Error::conflict(ConflictReason::InvalidState, format!("instance {} is {}", i.id, i.state.as_str())));
    }
    let host = i.host_id.clone().ok_or_else(|| Error::conflict(ConflictReason::InvalidState, "the instance has no host yet"))?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    // The host's row first: concurrent forwards and launches on this host serialize on it.
    Store::host_bump_generation_in_txn(&mut tx, &host).await?;
    let mine = c.store().network_forwards_of(std::slice::from_ref(&i.id)).await?;
    if mine.iter().any(|(_, _, n)| *n == i64::from(internal)) {
        return Err(Error::conflict(ConflictReason::InvalidState, format!("port {internal} is forwarded already")));
    }
    if mine.len() >= MAX_PER_INSTANCE {
        return Err(Error::QuotaExceeded { message: format!("an instance may open at most {MAX_PER_INSTANCE} port forwards") });
    }
    let used = Store::network_used_ports_in(&mut tx, &host).await?;
    let external = c
        .config()
        .port_forwards
        .ports()
        .find(|p| !used.contains(p))
        .ok_or_else(|| Error::InsufficientCapacity { message: "No free port to forward from on the instance's host.".to_owned() })?;
    if !Store::network_forward_insert_in_txn(&mut tx, &host, &i.id, external, i64::from(internal), now).await? {
        return Err(Error::conflict(ConflictReason::Concurrent, "the forward changed meanwhile; retry"));
    }
    let payload = json!({"external_port": external, "internal_port": internal});
    crate::emit(&mut tx, actor, "instance.port_forward_opened", "instance", i.id.as_str(), payload, now).await?;
    Store::commit(tx).await?;
    c.hosts().wake(&host);
    let external = u16::try_from(external).map_err(|_| Error::internal("a forward port outside 1..65535"))?;
    Ok(PortForward { external_port: external, internal_port: internal })
}

/// Closes the forward from host port `external_port` of the caller's instance `i` (EDIT).
pub async fn close(c: &Control, actor: &Actor, i: &Instance, external_port: i64) -> Result<(), Error> {
    actor.require(Permission::Edit)?;
    if i.ssh_port == Some(external_port) {
        return Err(Error::conflict(ConflictReason::InvalidState, "the SSH forward goes with the instance"));
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if !Store::network_forward_delete_in_txn(&mut tx, &i.id, external_port).await? {
        return Err(Error::not_found("port forward", external_port.to_string()));
    }
    if let Some(h) = &i.host_id {
        Store::host_bump_generation_in_txn(&mut tx, h).await?;
    }
    crate::emit(&mut tx, actor, "instance.port_forward_closed", "instance", i.id.as_str(), json!({"external_port": external_port}), now)
        .await?;
    Store::commit(tx).await?;
    if let Some(h) = &i.host_id {
        c.hosts().wake(h);
    }
    Ok(())
}
