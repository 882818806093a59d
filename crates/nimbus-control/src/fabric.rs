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
use nimbus_core::Error;
use nimbus_proto as proto;
use nimbus_store::{Conn, Store};

use crate::Control;

/// An IPv4 subnet `addr/len` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    /// An instance subnet: `/8` to `/30`.
    pub fn parse(s: &str) -> Option<Subnet> {
        Self::parse_any(s).filter(|s| (8..=30).contains(&s.len))
    }

    /// Any prefix `/0` to `/32` with no host bits set.
    pub fn parse_any(s: &str) -> Option<Subnet> {
        let (a, l) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let len: u8 = l.parse().ok().filter(|l| *l <= 32)?;
        if u32::from(addr) & !Self::mask(len) != 0 {
            return None;
        }
        Some(Subnet { addr, len })
    }

    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        let m = Self::mask(self.len.min(o.len));
        u32::from(self.addr) & m == u32::from(o.addr) & m
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask(self.len) == u32::from(self.addr)
    }
}

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
        routes: vpns.iter().filter(|v| v.host_id == h.id).map(tunnel_subnet).collect(),
    })
}

/// A VPN's tunnel subnet (its gateway and client addresses).
fn tunnel_subnet(v: &nimbus_core::model::Vpn) -> String {
    format!("10.201.{}.0/24", v.tunnel_index)
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
    private.extend(vpns.iter().map(tunnel_subnet));
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

/// The members of `orgs` changed (an address appeared, an instance is going): every host that
/// serves one of them re-reads its desired state, except those in `skip` (already bumped, or
/// the host whose report made the change, which knows its own instances). In a transaction of
/// its own, after the change's: hosts are bumped in id order only.
pub async fn members_changed(c: &Control, orgs: &[OrgId], skip: &[HostId]) -> Result<(), Error> {
    if orgs.is_empty() {
        return Ok(());
    }
    let mut tx = c.store().begin().await?;
    let mut hosts = Vec::new();
    for o in orgs {
        hosts.extend(Store::network_hosts_of_org_in(&mut tx, o).await?);
    }
    hosts.sort();
    hosts.dedup();
    hosts.retain(|h| !skip.contains(h));
    Store::network_bump_hosts_in_txn(&mut tx, &hosts).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    Ok(())
}

/// A host joined the region's network or changed its place in it: every other host of the
/// region re-reads its peers.
pub async fn peers_changed(c: &Control, region: &str, me: &HostId) -> Result<(), Error> {
    let mut hosts: Vec<HostId> = c.store().host_list(Some(region), false).await?.into_iter().map(|h| h.id).filter(|h| h != me).collect();
    hosts.sort();
    let mut tx = c.store().begin().await?;
    Store::network_bump_hosts_in_txn(&mut tx, &hosts).await?;
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
    fn subnets_parse_overlap_and_contain() {
        let a = Subnet::parse("10.210.1.0/24").expect("a");
        let b = Subnet::parse("10.210.0.0/16").expect("b");
        let c = Subnet::parse("10.210.2.0/24").expect("c");
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        assert!(a.contains(Ipv4Addr::new(10, 210, 1, 77)) && !a.contains(Ipv4Addr::new(10, 210, 2, 1)));
        for bad in ["10.210.1.1/24", "10.210.1.0", "10.210.1.0/31", "10.0.0.0/7", "fd00::/64", "x/24"] {
            assert!(Subnet::parse(bad).is_none(), "{bad}");
        }
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
