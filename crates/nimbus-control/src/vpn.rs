//! WireGuard VPNs into an organization's private network.
//!
//! A VPN is served by one host of its region (the one running most of the org's instances
//! there, at creation): the agent brings up a WireGuard interface (in-kernel, or wireguard-go
//! where the kernel lacks it) whose peer is the client, and forwards the client's traffic only
//! to the org's instances on that host. Keys are Curve25519: the gateway's are kept for its
//! agent; the client's private key is returned once and never stored.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::*;
use nimbus_core::model::Vpn;
use nimbus_core::{validate, wireguard, Error};
use nimbus_proto as proto;
use nimbus_store::{Conn, Store};
use serde_json::json;

use crate::{emit, Control};

const BASE_PORT: i64 = 51820;
/// Tunnel subnets are `10.201.<index>.0/24`, unique in a region.
const MAX_PER_REGION: i64 = 256;
const MAX_PER_ORG: i64 = 10;

/// A new VPN and, once, the client's private key.
pub struct Created {
    pub vpn: Vpn,
    pub client_private_key: String,
}

pub async fn create(c: &Control, actor: &Actor, name: &str, region: &str) -> Result<Created, Error> {
    actor.require(Permission::Create)?;
    validate::file_system_name(name)?;
    c.require_region("region", region)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if Store::vpn_count_in(&mut tx, &actor.org_id).await? >= MAX_PER_ORG {
        return Err(Error::QuotaExceeded { message: format!("an organization may have at most {MAX_PER_ORG} VPNs") });
    }
    let host = pick_host(&mut tx, actor, region).await?;
    Store::host_bump_generation_in_txn(&mut tx, &host).await?;
    // Unique in the region (not only on the host): the private network routes each tunnel's
    // subnet to its gateway's host. VPNs made before kept their per-host index.
    let mut used: Vec<i64> = Store::vpn_indices_in_region_in(&mut tx, region).await?;
    used.extend(Store::vpn_list_by_host_in(&mut tx, &host).await?.iter().map(|v| v.tunnel_index));
    let index = (0..MAX_PER_REGION)
        .find(|i| !used.contains(i))
        .ok_or_else(|| Error::InsufficientCapacity { message: format!("{region} serves as many VPNs as it can ({MAX_PER_REGION})") })?;
    let (gw_private, gw_public) = wireguard::keypair();
    let (client_private, client_public) = wireguard::keypair();
    let vpn = Vpn {
        id: VpnId::generate(),
        org_id: actor.org_id.clone(),
        name: name.to_owned(),
        region: region.to_owned(),
        host_id: host.clone(),
        tunnel_index: index,
        listen_port: BASE_PORT + index,
        gateway_private_key: gw_private,
        gateway_public_key: gw_public,
        client_public_key: client_public,
        status: "pending".into(),
        message: None,
        endpoint: None,
        network: None,
        networks: Vec::new(),
        created_at: now,
    };
    Store::vpn_insert_in_txn(&mut tx, &vpn).await?;
    emit(&mut tx, actor, "vpn.created", "vpn", vpn.id.as_str(), json!({"name": name, "region": region}), now).await?;
    Store::commit(tx).await?;
    c.hosts().wake(&host);
    // Every other host of the region routes the new tunnel to this one.
    crate::fabric::peers_changed(c, region, &host).await?;
    let vpn = with_networks(c, vpn).await?;
    Ok(Created { vpn, client_private_key: client_private })
}

/// The up host of `region` with most of the org's live instances (ties: the first by id).
async fn pick_host(tx: &mut Conn, actor: &Actor, region: &str) -> Result<HostId, Error> {
    let hosts = Store::host_list_in(tx, Some(region), true).await?;
    let mut best: Option<(usize, HostId)> = None;
    for h in hosts {
        let n = Store::instance_list_by_host_in(tx, &h.id)
            .await?
            .iter()
            .filter(|i| i.org_id == actor.org_id && i.state.holds_capacity())
            .count();
        if best.as_ref().is_none_or(|(m, _)| n > *m) {
            best = Some((n, h.id));
        }
    }
    best.map(|(_, h)| h).ok_or_else(|| Error::InsufficientCapacity { message: format!("no host is up in {region} to serve a VPN") })
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<Vpn>, Error> {
    actor.require(Permission::Read)?;
    let mut out = Vec::new();
    for v in c.store().vpn_list_by_org(&actor.org_id).await? {
        out.push(with_networks(c, v).await?);
    }
    Ok(out)
}

pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<Vpn, Error> {
    actor.require(Permission::Read)?;
    with_networks(c, find(c, actor, id).await?).await
}

/// Fills in the instance subnets of the VPN's region, which its tunnel reaches.
async fn with_networks(c: &Control, mut v: Vpn) -> Result<Vpn, Error> {
    v.networks = crate::fabric::instance_subnets(c, &v.region).await?;
    Ok(v)
}

/// The VPN, with no permission check: for functions that have checked theirs.
async fn find(c: &Control, actor: &Actor, id: &str) -> Result<Vpn, Error> {
    let vid = VpnId::parse(id).ok_or_else(|| Error::not_found("vpn", id))?;
    c.store().vpn_list_by_org(&actor.org_id).await?.into_iter().find(|v| v.id == vid).ok_or_else(|| Error::not_found("vpn", id))
}

pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<Vpn, Error> {
    actor.require(Permission::Delete)?;
    let v = find(c, actor, id).await?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    Store::host_bump_generation_in_txn(&mut tx, &v.host_id).await?;
    if !Store::vpn_delete_in_txn(&mut tx, &actor.org_id, &v.id).await? {
        return Err(Error::not_found("vpn", id));
    }
    emit(&mut tx, actor, "vpn.deleted", "vpn", v.id.as_str(), json!({"name": v.name}), now).await?;
    Store::commit(tx).await?;
    c.hosts().wake(&v.host_id);
    crate::fabric::peers_changed(c, &v.region, &v.host_id).await?;
    Ok(v)
}

/// The gateways `host` should serve, each with the addresses its org's instances have, on every
/// host of the region (the private network carries what is not on this one).
pub(crate) async fn desired_for_host(
    c: &Control,
    host: &HostId,
    instances: &[nimbus_core::model::Instance],
) -> Result<Vec<proto::VpnGateway>, Error> {
    let vpns = c.store().vpn_list_by_host(host).await?;
    let mut orgs: Vec<nimbus_core::ids::OrgId> = vpns.iter().map(|v| v.org_id.clone()).collect();
    orgs.sort();
    orgs.dedup();
    let region = vpns.first().map(|v| v.region.clone()).unwrap_or_default();
    let members = c.store().network_members(&region, &orgs).await?;
    Ok(vpns
        .iter()
        .map(|v| proto::VpnGateway {
            id: v.id.to_string(),
            interface: format!("nv{}", &v.id.as_str()[..12]),
            private_key: v.gateway_private_key.clone(),
            listen_port: u16::try_from(v.listen_port).unwrap_or(0),
            address: format!("{}/24", v.gateway_address()),
            peers: vec![proto::VpnPeer { public_key: v.client_public_key.clone(), allowed_ip: format!("{}/32", v.client_address()) }],
            reachable: instances
                .iter()
                .filter(|i| i.org_id == v.org_id && i.state.wants_running())
                .filter_map(|i| i.private_ip.clone())
                .chain(members.iter().filter(|(o, _)| *o == v.org_id).map(|(_, a)| a.clone()))
                .collect::<std::collections::BTreeSet<String>>()
                .into_iter()
                .collect(),
        })
        .collect())
}

/// Records the host's view of its gateways.
pub(crate) async fn apply_reports(tx: &mut Conn, host: &HostId, reports: &[proto::VpnReport]) -> Result<(), Error> {
    if reports.is_empty() {
        return Ok(());
    }
    for v in Store::vpn_list_by_host_in(tx, host).await? {
        let Some(r) = reports.iter().find(|r| r.id == v.id.as_str()) else { continue };
        let status = if r.up { "up" } else { "failed" };
        let msg = r.message.as_deref().map(|m| m.chars().take(500).collect::<String>());
        Store::vpn_set_status_in_txn(tx, &v.id, status, msg.as_deref(), r.endpoint.as_deref(), r.network.as_deref()).await?;
    }
    Ok(())
}

/// A wg-quick configuration for the client (with its private key when given).
pub fn client_config(v: &Vpn, client_private_key: Option<&str>) -> Option<String> {
    let endpoint = v.endpoint.as_deref()?;
    let network = if v.networks.is_empty() { v.network.clone()? } else { v.networks.join(", ") };
    Some(format!(
        "[Interface]\nPrivateKey = {}\nAddress = {}/32\n\n[Peer]\nPublicKey = {}\nEndpoint = {endpoint}\nAllowedIPs = {}/32, {network}\nPersistentKeepalive = 25\n",
        client_private_key.unwrap_or("<the private_key returned when this VPN was created>"),
        v.client_address(),
        v.gateway_public_key,
        v.gateway_address(),
    ))
}
