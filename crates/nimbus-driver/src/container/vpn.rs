//! WireGuard gateways for the native API's VPNs.
//!
//! Each gateway is an interface on the host (`nv` + 12 hex of the VPN id): in-kernel WireGuard
//! where the kernel has it, otherwise `wireguard-go`, the userspace implementation (Debian's
//! `wireguard-go` package), which this machine needs. The interface carries the gateway's tunnel
//! address; the host routes between it and the instance bridge, and an nftables table of the
//! driver's own lets traffic from the tunnel reach only the listed instance addresses (the
//! VPN's organization's). Routing needs `net.ipv4.ip_forward=1`; the driver reports the gateway
//! failed with that reason rather than changing the host's sysctls itself.
//!
//! Interfaces this driver made are remembered as marker files under `<data_dir>/vpns/`, so two
//! drivers on one machine (tests) never take down each other's gateways.

use std::path::{Path, PathBuf};

use nimbus_proto::{VpnGateway, VpnReport};

use super::tool as run;

fn link_exists(name: &str) -> bool {
    super::net::link_exists(name)
}

/// Whether the running kernel has WireGuard (probed once by creating and deleting a link).
fn kernel_wireguard() -> bool {
    static K: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *K.get_or_init(|| {
        let probe = format!("nvprobe{}", std::process::id() % 100_000);
        let ok = run("ip", &["link", "add", &probe, "type", "wireguard"], None).is_ok();
        if ok {
            let _ = run("ip", &["link", "del", &probe], None);
        }
        ok
    })
}

/// The address other machines reach this host at: the source address of its default route
/// (a route lookup; nothing is sent).
fn host_address() -> Option<String> {
    let out = run("ip", &["-4", "route", "get", "1.1.1.1"], None).ok()?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next().map(str::to_owned);
        }
    }
    None
}

fn ip_forward() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|s| s.trim() == "1")
}

pub struct Gateways {
    markers: PathBuf,
    table: String,
    /// The instance network behind the gateways (`10.200.0.0/16`).
    network: String,
    /// Where clients reach this host (`--public-ip`), when configured.
    endpoint_ip: Option<String>,
}

impl Gateways {
    pub fn new(data_dir: &Path, bridge: &str, network: String, endpoint_ip: Option<String>) -> Self {
        let table = format!("nimbus_vpn_{}", bridge.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        Gateways { markers: data_dir.join("vpns"), table, network, endpoint_ip }
    }

    fn ours(&self) -> Vec<String> {
        std::fs::read_dir(&self.markers)
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    fn ensure(&self, g: &VpnGateway) -> Result<(), String> {
        if !g.interface.starts_with("nv") || g.interface.len() > 15 || !g.interface.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("bad interface name {:?}", g.interface));
        }
        std::fs::create_dir_all(&self.markers).map_err(|e| e.to_string())?;
        std::fs::write(self.markers.join(&g.interface), &g.id).map_err(|e| e.to_string())?;
        if !link_exists(&g.interface) {
            if kernel_wireguard() {
                run("ip", &["link", "add", &g.interface, "type", "wireguard"], None)?;
            } else {
                // Daemonizes once the interface exists; exits by itself when the link is deleted.
                run("wireguard-go", &[&g.interface], None).map_err(|e| format!("{e} (install Debian's wireguard-go package)"))?;
            }
        }
        let port = g.listen_port.to_string();
        run("wg", &["set", &g.interface, "listen-port", &port, "private-key", "/dev/stdin"], Some(&g.private_key))?;
        let current = run("wg", &["show", &g.interface, "peers"], None)?;
        for stale in current.split_whitespace().filter(|p| !g.peers.iter().any(|q| q.public_key == *p)) {
            run("wg", &["set", &g.interface, "peer", stale, "remove"], None)?;
        }
        for p in &g.peers {
            run("wg", &["set", &g.interface, "peer", &p.public_key, "allowed-ips", &p.allowed_ip], None)?;
        }
        // Another interface routing the same tunnel subnet (a second Nimbus agent on this host,
        // or a leftover) would take the replies: refuse clearly instead of half-working.
        let owner = run("ip", &["-o", "-4", "address", "show", "to", &g.address], None).unwrap_or_default();
        if let Some(other) = owner.split_whitespace().nth(1).filter(|i| *i != g.interface) {
            return Err(format!("the tunnel address {} is already on interface {other}", g.address));
        }
        run("ip", &["address", "replace", &g.address, "dev", &g.interface], None)?;
        run("ip", &["link", "set", &g.interface, "up"], None)?;
        Ok(())
    }

    /// The forwarding filter for every gateway: from a tunnel, only to its allowed addresses.
    pub fn render(&self, gateways: &[VpnGateway]) -> String {
        let t = &self.table;
        let mut s = format!("table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n");
        for g in gateways {
            let ips: Vec<&str> = g.reachable.iter().map(String::as_str).filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok()).collect();
            if !ips.is_empty() {
                s += &format!("    iifname \"{}\" ip daddr {{ {} }} accept\n", g.interface, ips.join(", "));
            }
            s += &format!("    iifname \"{}\" drop\n", g.interface);
        }
        s += "  }\n}\n";
        s
    }

    /// Makes this driver's gateways exactly `desired`.
    pub fn sync(&self, desired: &[VpnGateway]) -> Vec<VpnReport> {
        for name in self.ours() {
            if !desired.iter().any(|g| g.interface == name) {
                let _ = run("ip", &["link", "del", &name], None);
                let _ = std::fs::remove_file(self.markers.join(&name));
            }
        }
        let filter = if desired.is_empty() {
            let _ = run("nft", &["delete", "table", "inet", &self.table], None);
            Ok(())
        } else {
            super::firewall::apply(&self.render(desired))
        };
        // A host of a test bed (or a host without a default route) has no "source of the
        // default route": the configured public address says where clients come in.
        let endpoint_host = self.endpoint_ip.clone().or_else(host_address);
        let forward = ip_forward();
        desired
            .iter()
            .map(|g| {
                let res = self.ensure(g).and_then(|()| filter.clone()).and_then(|()| {
                    if forward {
                        Ok(())
                    } else {
                        Err("net.ipv4.ip_forward is 0 on this host: enable it so VPN traffic can reach instances".to_owned())
                    }
                });
                VpnReport {
                    id: g.id.clone(),
                    up: res.is_ok(),
                    endpoint: endpoint_host.as_ref().map(|h| format!("{h}:{}", g.listen_port)),
                    network: Some(self.network.clone()),
                    message: res.err(),
                }
            })
            .collect()
    }

    /// Takes down every gateway of this driver (driver teardown in tests).
    pub fn remove_all(&self) {
        self.sync(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_proto::VpnPeer;

    #[test]
    fn filter_allows_only_the_listed_instances() {
        let g = Gateways::new(Path::new("/nonexistent"), "nimbus0", "10.200.0.0/16".into(), None);
        let gw = |iface: &str, reachable: Vec<&str>| VpnGateway {
            id: "v".into(),
            interface: iface.into(),
            private_key: String::new(),
            listen_port: 51820,
            address: "10.201.0.1/24".into(),
            peers: vec![VpnPeer { public_key: "k".into(), allowed_ip: "10.201.0.2/32".into() }],
            reachable: reachable.into_iter().map(str::to_owned).collect(),
        };
        let t = g.render(&[gw("nvaaa", vec!["10.200.0.5", "10.200.0.9", "evil; drop"]), gw("nvbbb", vec![])]);
        assert!(t.contains("table inet nimbus_vpn_nimbus0 {"), "{t}");
        assert!(t.contains("iifname \"nvaaa\" ip daddr { 10.200.0.5, 10.200.0.9 } accept"), "{t}");
        assert!(t.contains("iifname \"nvaaa\" drop"));
        assert!(t.contains("iifname \"nvbbb\" drop") && !t.contains("iifname \"nvbbb\" ip daddr"), "{t}");
        assert!(!t.contains("evil"));
    }
}
