//! Instance networking: one network namespace per instance, joined to a host bridge by a veth
//! pair, with an address from the bridge's subnet. The host reaches every instance at its
//! address (the instance's `ip` on a single machine), and instances reach each other.
//!
//! Done with iproute2 (`ip`), which every Linux host has; the driver owns only names with its
//! prefix (`nimbus-…` namespaces, `nh…` veths, its bridge).

use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NetError {
    pub what: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, NetError>;

fn ip(args: &[&str]) -> Result<String> {
    let out =
        Command::new("ip").args(args).output().map_err(|e| NetError { what: format!("ip {}", args.join(" ")), message: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError { what: format!("ip {}", args.join(" ")), message: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// The host side: a bridge with the gateway address of a /16 (or smaller) subnet.
#[derive(Debug, Clone)]
pub struct Network {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Prefix of the namespaces this network owns (`nimbus-` in production, unique in tests).
    pub ns_prefix: String,
}

impl Network {
    pub fn new(bridge: &str, gateway: Ipv4Addr, prefix_len: u8, ns_prefix: &str) -> Self {
        Network { bridge: bridge.to_owned(), gateway, prefix_len, ns_prefix: ns_prefix.to_owned() }
    }

    /// Creates the bridge and its address if missing. Idempotent.
    pub fn ensure_bridge(&self) -> Result<()> {
        if ip(&["link", "show", &self.bridge]).is_err() {
            ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        }
        let cidr = format!("{}/{}", self.gateway, self.prefix_len);
        if !ip(&["-4", "addr", "show", "dev", &self.bridge])?.contains(&cidr) {
            ip(&["addr", "add", &cidr, "dev", &self.bridge])?;
        }
        ip(&["link", "set", &self.bridge, "up"])?;
        Ok(())
    }

    /// Removes the bridge (tests; production keeps it).
    pub fn remove_bridge(&self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }

    /// The n-th instance address of the subnet (n from 1; the gateway is .1 of the subnet).
    pub fn address(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) + 1 + n)
    }

    pub fn ns_name(&self, id: &str) -> String {
        format!("{}{}", self.ns_prefix, &id[..id.len().min(12)])
    }

    fn veth_name(&self, id: &str) -> String {
        // Interface names are at most 15 bytes.
        format!("nh{}", &id[..id.len().min(12)])
    }

    /// Bytes `(received, sent)` by the instance so far, read from the host end of its veth
    /// (what the host end sends, the instance receives).
    pub fn counters(&self, id: &str) -> Option<(u64, u64)> {
        let base = std::path::Path::new("/sys/class/net").join(self.veth_name(id)).join("statistics");
        let read = |f: &str| std::fs::read_to_string(base.join(f)).ok().and_then(|s| s.trim().parse::<u64>().ok());
        Some((read("tx_bytes")?, read("rx_bytes")?))
    }

    pub fn ns_path(&self, id: &str) -> String {
        format!("/run/netns/{}", self.ns_name(id))
    }

    /// Creates the instance's namespace with `addr` on `eth0` and a default route via the bridge.
    /// Idempotent: an existing namespace is recreated from scratch.
    pub fn create(&self, id: &str, addr: Ipv4Addr) -> Result<()> {
        self.destroy(id);
        let ns = self.ns_name(id);
        let vh = self.veth_name(id);
        let vc = format!("{vh}c");
        let vc = &vc[..vc.len().min(15)];
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &vh, "type", "veth", "peer", "name", vc])?;
        ip(&["link", "set", vc, "netns", &ns])?;
        ip(&["link", "set", &vh, "master", &self.bridge, "up"])?;
        ip(&["-n", &ns, "link", "set", vc, "name", "eth0"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/{}", self.prefix_len), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &self.gateway.to_string()])?;
        Ok(())
    }

    /// Removes the namespace and veth. Idempotent; never fails (what is gone is gone).
    pub fn destroy(&self, id: &str) {
        let _ = ip(&["link", "del", &self.veth_name(id)]);
        let _ = ip(&["netns", "del", &self.ns_name(id)]);
    }

    pub fn exists(&self, id: &str) -> bool {
        std::path::Path::new(&self.ns_path(id)).exists()
    }

    /// Whether any interface of ours for `id` is still on the host.
    pub fn veth_exists(&self, id: &str) -> bool {
        ip(&["link", "show", &self.veth_name(id)]).is_ok()
    }

    /// Names (id prefixes) of the namespaces this network owns.
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_prefix(&self.ns_prefix).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        let ok = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: network namespace tests need root");
        }
        ok
    }

    #[test]
    fn namespaces_are_reachable_from_the_host_and_leave_nothing() {
        if !root() {
            return;
        }
        let tag = std::process::id() % 10_000;
        let net = Network::new(&format!("nbt{tag}"), Ipv4Addr::new(10, 231, 0, 1), 24, &format!("nbt{tag}-"));
        net.ensure_bridge().expect("bridge");
        net.ensure_bridge().expect("bridge is idempotent");
        let (a, b) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb");
        net.create(a, net.address(1)).expect("create a");
        net.create(b, net.address(2)).expect("create b");
        assert_eq!(net.address(1), Ipv4Addr::new(10, 231, 0, 3));
        let mut names = net.list();
        names.sort();
        assert_eq!(names, vec!["aaaaaaaaaaaa".to_owned(), "bbbbbbbbbbbb".to_owned()]);
        // Host -> instance, and instance -> instance over the bridge (ICMP via a TCP-free probe:
        // `ip netns exec … ip route get` proves routing; a real TCP round trip is in the driver test).
        let route = Command::new("ip").args(["route", "get", &net.address(1).to_string()]).output().expect("route");
        assert!(String::from_utf8_lossy(&route.stdout).contains(&net.bridge), "{:?}", route);
        let inner = Command::new("ip").args(["-n", &net.ns_name(a), "route", "get", &net.address(2).to_string()]).output().expect("route");
        assert!(String::from_utf8_lossy(&inner.stdout).contains("eth0"));
        net.destroy(a);
        net.destroy(b);
        net.destroy(b);
        assert!(!net.exists(a) && !net.exists(b));
        assert!(!net.veth_exists(a) && !net.veth_exists(b));
        assert!(net.list().is_empty());
        net.remove_bridge();
    }
}
