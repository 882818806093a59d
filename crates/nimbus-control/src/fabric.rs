//! The region's private network, as the control plane keeps it: which hosts take part (each with
//! an underlay address and an instance subnet, checked at registration so that no two hosts of a
//! region overlap), what each host must program (its peers and the members of every org it
//! serves), and who must hear when membership changes.
//!
//! The data path is the agents' (VXLAN between hosts, filters per instance; see
//! `nimbus_driver::container::fabric` and docs/architecture.md). An org's network has as members
//! the private addresses of its instances from launch until terminate is asked; a host's answer
//! to `desired` lists them for every org it runs an instance of, and every change of that list
//! bumps and wakes the org's other hosts, so they re-read it within one long-poll round trip.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nimbus_core::ids::{HostId, OrgId};
use nimbus_core::model::{Host, Instance};
use nimbus_core::net::Subnet;
use nimbus_core::Error;
use nimbus_proto as proto;
use nimbus_store::{Conn, Store};

use crate::Control;

/// The region's VXLAN network identifier: a stable 24-bit value from its name (FNV-1a), never 0.
pub fn vni(region: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in region.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h & 0x00ff_ffff).max(1)
}

/// Checks an agent's network: an IPv4 underlay address outside its own subnet, and a subnet.
pub fn validate(n: &proto::HostNetwork) -> Result<(Ipv4Addr, Subnet), Error> {
    let underlay: Ipv4Addr =
        n.underlay.parse().map_err(|_| Error::invalid("network.underlay", format!("{:?} is not an IPv4 address", n.underlay)))?;
    if underlay.is_unspecified() || underlay.is_loopback() || underlay.is_multicast() || underlay.is_broadcast() {
        return Err(Error::invalid("network.underlay", format!("{underlay} cannot be a host's address between hosts")));
    }
    let subnet = Subnet::parse(&n.instance_subnet)
        .ok_or_else(|| Error::invalid("network.instance_subnet", format!("{:?} is not an IPv4 subnet A.B.C.D/8..30", n.instance_subnet)))?;
    if subnet.contains(underlay) {
        return Err(Error::invalid("network.underlay", "the underlay address lies inside the host's instance subnet"));
    }
    Ok((underlay, subnet))
}

/// Refuses a network that another host of `region` already uses (same underlay address, or an
/// overlapping subnet): private addresses must be unique in the region.
pub async fn check_free(tx: &mut Conn, region: &str, me: Option<&HostId>, underlay: Ipv4Addr, subnet: Subnet) -> Result<(), Error> {
    for h in Store::host_list_in(tx, Some(region), false).await? {
        if Some(&h.id) == me {
            continue;
        }
        if h.underlay.as_deref().and_then(|u| u.parse::<Ipv4Addr>().ok()) == Some(underlay) {
            return Err(taken(format!("host {} already has underlay address {underlay}", h.name)));
        }
        if let Some(s) = h.instance_subnet.as_deref().and_then(Subnet::parse) {
            if s.overlaps(&subnet) || s.contains(underlay) {
                return Err(taken(format!("host {}'s instance subnet {}/{} overlaps this host's network", h.name, s.addr, s.len)));
            }
        }
    }
    Ok(())
}

fn taken(message: String) -> Error {
    Error::conflict(nimbus_core::ConflictReason::InvalidState, message)
}

fn network_of(h: &Host, vpns: &[nimbus_core::model::Vpn]) -> Option<proto::HostNetwork> {
    Some(proto::HostNetwork {
        underlay: h.underlay.clone()?,
        instance_subnet: h.instance_subnet.clone()?,
        routes: vpns.iter().filter(|v| v.host_id == h.id).map(nimbus_core::model::Vpn::tunnel_subnet).collect(),
    })
}

/// The instance subnets of `region`'s hosts that take part in its private network.
pub async fn instance_subnets(c: &Control, region: &str) -> Result<Vec<String>, Error> {
    let hosts = c.store().host_list(Some(region), false).await?;
    Ok(hosts.iter().filter(|h| h.underlay.is_some()).filter_map(|h| h.instance_subnet.clone()).collect())
}

/// What host `me` must program: its region's other hosts, and the members of the orgs of
/// `instances` (the host's own instances). Hosts that are down stay peers: their instances may
/// well run on (only the control plane lost them), and a peer costs a route.
pub async fn for_host(c: &Control, me: &Host, instances: &[Instance]) -> Result<proto::Fabric, Error> {
    let hosts = c.store().host_list(Some(&me.region), false).await?;
    let vpns = c.store().vpn_list_by_region(&me.region).await?;
    let peers = hosts.iter().filter(|h| h.id != me.id).filter_map(|h| network_of(h, &vpns)).collect();
    // Private sources: every instance subnet and every VPN tunnel of the region.
    let mut private: Vec<String> = hosts.iter().filter_map(|h| h.instance_subnet.clone()).collect();
    private.extend(vpns.iter().map(nimbus_core::model::Vpn::tunnel_subnet));
    private.sort();
    private.dedup();
    let mut orgs: Vec<OrgId> = instances.iter().map(|i| i.org_id.clone()).collect();
    orgs.sort();
    orgs.dedup();
    let mut members: BTreeMap<String, Vec<String>> = orgs.iter().map(|o| (o.to_string(), Vec::new())).collect();
    for (org, addr) in c.store().network_members(&me.region, &orgs).await? {
        members.entry(org.to_string()).or_default().push(addr);
    }
    // A VPN's client is a member of its org's network (WireGuard lets it send only from its
    // own tunnel address).
    for v in vpns.iter().filter(|v| orgs.contains(&v.org_id)) {
        members.entry(v.org_id.to_string()).or_default().push(v.client_address());
    }
    Ok(proto::Fabric {
        vni: vni(&me.region),
        peers,
        private,
        orgs: members.into_iter().map(|(tenant, addrs)| proto::OrgMembers { tenant, addrs }).collect(),
    })
}

/// The hosts that must hear when the members of `orgs` change (an address appeared, an
/// instance is going): every host that serves one of them.
pub async fn hosts_of_orgs(c: &Control, orgs: &[OrgId]) -> Result<Vec<HostId>, Error> {
    let mut conn = c.store().reader().await?;
    let mut hosts = Vec::new();
    for o in orgs {
        hosts.extend(Store::network_hosts_of_org_in(&mut conn, o).await?);
    }
    Ok(hosts)
}

/// The members of `orgs` changed: their hosts re-read their desired state, except those in
/// `skip` (already bumped, or the host whose report made the change, which knows its own
/// instances).
pub async fn members_changed(c: &Control, orgs: &[OrgId], skip: &[HostId]) -> Result<(), Error> {
    let mut hosts = hosts_of_orgs(c, orgs).await?;
    hosts.retain(|h| !skip.contains(h));
    wake_hosts(c, hosts).await
}

/// A host joined the region's network or changed its place in it: every other host of the
/// region re-reads its peers.
pub async fn peers_changed(c: &Control, region: &str, me: &HostId) -> Result<(), Error> {
    let hosts = c.store().host_list(Some(region), false).await?.into_iter().map(|h| h.id).filter(|h| h != me).collect();
    wake_hosts(c, hosts).await
}

/// Bumps the desired generation of `hosts` and wakes their long-polls: in a transaction of its
/// own, after the change's, and in id order (hosts are locked in id order only, so concurrent
/// bumps cannot deadlock).
pub async fn wake_hosts(c: &Control, mut hosts: Vec<HostId>) -> Result<(), Error> {
    if hosts.is_empty() {
        return Ok(());
    }
    hosts.sort();
    hosts.dedup();
    let mut tx = c.store().begin().await?;
    for h in &hosts {
        Store::host_bump_generation_in_txn(&mut tx, h).await?;
    }
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(u: &str, s: &str) -> proto::HostNetwork {
        proto::HostNetwork { underlay: u.into(), instance_subnet: s.into(), routes: vec![] }
    }

    #[test]
    fn host_networks_are_checked() {
        assert!(validate(&net("198.51.100.1", "10.210.1.0/24")).is_ok());
        for (u, s) in [
            ("198.51.100.1", "10.210.1.1/24"),
            ("10.210.1.9", "10.210.1.0/24"),
            ("127.0.0.1", "10.210.1.0/24"),
            ("0.0.0.0", "10.210.1.0/24"),
            ("fd00::1", "10.210.1.0/24"),
            ("host", "10.210.1.0/24"),
        ] {
            assert!(validate(&net(u, s)).is_err(), "{u} {s}");
        }
    }

    #[test]
    fn vnis_are_stable_24_bit_and_differ_by_region() {
        assert_eq!(vni("us-east-1"), vni("us-east-1"));
        assert_ne!(vni("us-east-1"), vni("us-west-1"));
        assert!((1..1 << 24).contains(&vni("us-east-1")) && vni("") >= 1);
    }
}
