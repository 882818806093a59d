//! The host's end of the region's private network: one VXLAN device (`vx-<bridge>`, the
//! region's VNI, this host's underlay address as its endpoint, no learning) and, for every other
//! host of the region, a static forwarding entry to its underlay address, a permanent neighbour
//! entry for its gateway and a route to its instance subnet through it. No flooding, no
//! multicast, no learning: the server's peer list is the whole truth, so a forged frame can
//! teach the kernel nothing.
//!
//! Each host's tunnel endpoint has a MAC that follows from its bridge gateway (`0a:59:` and the
//! four address bytes), so every host can name every other's without asking. Which instance may
//! reach which across the tunnel is the firewall's business (`firewall`, the org member sets).
//!
//! Programmed with iproute2 in batches (`ip -batch`, `bridge -batch`), and reconciled against
//! what the kernel holds (`-j` listings), so a restarted agent converges without tearing down
//! what its instances are using.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nimbus_core::net::Subnet;
use nimbus_proto::HostNetwork;

/// UDP port of the tunnel (IANA's VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

/// This host's tunnel device for `bridge` (at most 15 bytes).
pub fn device(bridge: &str) -> String {
    let mut d = format!("vx-{bridge}");
    d.truncate(15);
    d
}

/// The tunnel endpoint MAC of the host whose bridge gateway is `gateway`.
pub fn vtep_mac(gateway: Ipv4Addr) -> String {
    let o = gateway.octets();
    format!("0a:59:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// A peer as routes need it: its subnet, its gateway (the first address) and its underlay.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub underlay: Ipv4Addr,
    /// More subnets behind it (its VPN gateways' tunnels).
    pub routes: Vec<Subnet>,
}

impl Peer {
    /// `None` for a peer the server should never have sent (unparsable), which is skipped.
    pub fn from_proto(n: &HostNetwork) -> Option<Peer> {
        let underlay: Ipv4Addr = n.underlay.parse().ok()?;
        let subnet = Subnet::parse(&n.instance_subnet)?;
        let routes = n.routes.iter().filter_map(|r| Subnet::parse_any(r)).collect();
        Some(Peer { subnet, gateway: Ipv4Addr::from(u32::from(subnet.addr) + 1), underlay, routes })
    }
}

/// The host's tunnel: its device, VNI and endpoint address.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub dev: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub mac: String,
}

use super::tool as run;

fn json(prog: &str, args: &[&str]) -> Vec<serde_json::Value> {
    run(prog, args, None).ok().and_then(|s| serde_json::from_str::<Vec<serde_json::Value>>(&s).ok()).unwrap_or_default()
}

impl Tunnel {
    pub fn new(bridge: &str, gateway: Ipv4Addr, vni: u32, local: Ipv4Addr) -> Tunnel {
        Tunnel { dev: device(bridge), vni, local, mac: vtep_mac(gateway) }
    }

    /// Whether the device exists with this VNI and endpoint.
    fn matches(&self) -> Option<bool> {
        let link = json("ip", &["-j", "-d", "link", "show", "dev", &self.dev]).into_iter().next()?;
        let data = &link["linkinfo"]["info_data"];
        Some(
            data["id"].as_u64() == Some(u64::from(self.vni))
                && data["local"].as_str() == Some(self.local.to_string().as_str())
                && link["address"].as_str() == Some(self.mac.as_str()),
        )
    }

    /// Makes the device exist as specified (re-made if its VNI or endpoint changed), up.
    pub fn ensure(&self) -> Result<(), String> {
        match self.matches() {
            Some(true) => {}
            Some(false) => {
                run("ip", &["link", "del", &self.dev], None)?;
                self.create()?;
            }
            None => self.create()?,
        }
        run("ip", &["link", "set", &self.dev, "up"], None)?;
        Ok(())
    }

    fn create(&self) -> Result<(), String> {
        // The tunnel's header costs 50 bytes of the underlay's MTU; with an underlay of 1550 or
        // more (jumbo frames, as VXLAN deployments run) instances keep a full 1500.
        let mtu = super::net::link_holding(self.local.into()).map_or(1450, |(_, m)| m.saturating_sub(50).min(1500)).to_string();
        let (vni, local, port) = (self.vni.to_string(), self.local.to_string(), VXLAN_PORT.to_string());
        run(
            "ip",
            &[
                "link",
                "add",
                &self.dev,
                "address",
                &self.mac,
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dstport",
                &port,
                "nolearning",
            ],
            None,
        )?;
        // No IPv6 on the tunnel: instances have none, and nothing should autoconfigure here.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.dev), "1");
        Ok(())
    }

    /// Makes the forwarding entries, neighbours and routes exactly those of `peers`.
    pub fn sync(&self, peers: &[Peer]) -> Result<(), String> {
        self.ensure()?;
        let want: BTreeSet<&Peer> = peers.iter().filter(|p| p.underlay != self.local).collect();
        let macs: BTreeSet<String> = want.iter().map(|p| vtep_mac(p.gateway)).collect();
        let gws: BTreeSet<String> = want.iter().map(|p| p.gateway.to_string()).collect();
        let nets: BTreeSet<String> =
            want.iter().flat_map(|p| std::iter::once(&p.subnet).chain(&p.routes)).map(ToString::to_string).collect();
        let mut fdb = String::new();
        for e in json("bridge", &["-j", "fdb", "show", "dev", &self.dev]) {
            if let Some(mac) = e["mac"].as_str() {
                if !macs.contains(mac) {
                    fdb += &format!("fdb del {mac} dev {} self\n", self.dev);
                }
            }
        }
        for p in &want {
            fdb += &format!("fdb replace {} dev {} dst {} self permanent\n", vtep_mac(p.gateway), self.dev, p.underlay);
        }
        let mut ipb = String::new();
        for r in json("ip", &["-j", "-4", "route", "show", "dev", &self.dev]) {
            if let Some(dst) = r["dst"].as_str() {
                if !nets.contains(dst) {
                    ipb += &format!("route del {dst} dev {}\n", self.dev);
                }
            }
        }
        for n in json("ip", &["-j", "-4", "neigh", "show", "dev", &self.dev]) {
            if let Some(dst) = n["dst"].as_str() {
                if !gws.contains(dst) {
                    ipb += &format!("neigh del {dst} dev {}\n", self.dev);
                }
            }
        }
        for p in &want {
            ipb += &format!("neigh replace {} lladdr {} dev {} nud permanent\n", p.gateway, vtep_mac(p.gateway), self.dev);
            for net in std::iter::once(&p.subnet).chain(&p.routes) {
                ipb += &format!("route replace {net} via {} dev {} onlink\n", p.gateway, self.dev);
            }
        }
        if !fdb.is_empty() {
            run("bridge", &["-batch", "-"], Some(&fdb))?;
        }
        if !ipb.is_empty() {
            run("ip", &["-batch", "-"], Some(&ipb))?;
        }
        Ok(())
    }

    /// Removes the device and with it every entry and route through it (tests).
    pub fn remove(&self) {
        let _ = run("ip", &["link", "del", &self.dev], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_follow_from_the_bridge() {
        assert_eq!(device("nimbus0"), "vx-nimbus0");
        assert!(device("a-fifteen-chars").len() <= 15);
        assert_eq!(vtep_mac(Ipv4Addr::new(10, 210, 1, 1)), "0a:59:0a:d2:01:01");
        let p = Peer::from_proto(&HostNetwork { underlay: "198.51.100.2".into(), instance_subnet: "10.210.2.0/24".into(), routes: vec![] });
        assert_eq!(
            p,
            Some(Peer {
                subnet: Subnet { addr: Ipv4Addr::new(10, 210, 2, 0), len: 24 },
                gateway: Ipv4Addr::new(10, 210, 2, 1),
                underlay: Ipv4Addr::new(198, 51, 100, 2),
                routes: vec![],
            })
        );
        assert!(Peer::from_proto(&HostNetwork { underlay: "x".into(), instance_subnet: "10.210.2.0/24".into(), routes: vec![] }).is_none());
        assert!(Peer::from_proto(&HostNetwork {
            underlay: "198.51.100.2".into(),
            instance_subnet: "10.210.2.0/33".into(),
            routes: vec![]
        })
        .is_none());
    }
}
