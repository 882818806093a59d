//! Instance networking: one network namespace per instance, joined to a host bridge by a veth
//! pair, with an address from the bridge's subnet. The host reaches every instance at its
//! address (the instance's `ip` on a single machine), and instances reach each other.
//!
//! The namespace itself is made by the launcher at every start, inside the instance's user
//! namespace (so its root administers its own network, as Docker inside needs); this module
//! names things, keeps the bridge, and removes what a stopped instance leaves. Each instance's
//! MAC follows from its address ([`super::launch::mac_for`]), so a reused address never meets a
//! stale neighbour entry on the bridge (a launch right after a terminate used to wait out the
//! host's ARP cache, 27–46 s), and the bridge filter knows which MAC each port may send.
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

/// The interface of this namespace that holds address `addr`: `(name, MTU)`.
pub fn link_holding(addr: std::net::IpAddr) -> Option<(String, u32)> {
    let out = super::tool("ip", &["-j", "addr", "show"], None).ok()?;
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
    let want = addr.to_string();
    links.iter().find_map(|l| {
        l["addr_info"].as_array()?.iter().any(|a| a["local"].as_str() == Some(want.as_str())).then_some(())?;
        Some((l["ifname"].as_str()?.to_owned(), l["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())?))
    })
}

/// Moves this process into the named network namespace (`/run/netns/NAME`, as `ip netns add`
/// makes): how one machine runs several agents as separate hosts (the test bed). Only the
/// network namespace changes; mounts, `/sys/fs/cgroup` included, stay the machine's. Must run
/// while the process has one thread (before any runtime starts): `setns` moves only the caller.
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name:?} is not a network namespace name")));
    }
    let f = std::fs::File::open(std::path::Path::new("/run/netns").join(name))?;
    super::sys::setns_net(&std::os::fd::OwnedFd::from(f))
}

/// `(received, sent)` bytes of interface `name` in this process's network namespace.
///
/// Read from `/proc/self/net/dev`, which shows the namespace of the reading process, and not
/// from `/sys/class/net`, which shows the namespace `/sys` was mounted in: an agent that runs in
/// a network namespace of its own (a test-bed host) keeps the machine's `/sys`, cgroups and all.
pub fn link_bytes(name: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/net/dev").ok()?;
    parse_net_dev(&text, name)
}

/// Whether interface `name` exists in this process's network namespace.
pub fn link_exists(name: &str) -> bool {
    link_bytes(name).is_some()
}

fn parse_net_dev(text: &str, name: &str) -> Option<(u64, u64)> {
    text.lines().skip(2).find_map(|l| {
        let (n, rest) = l.split_once(':')?;
        if n.trim() != name {
            return None;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        Some((*f.first()?, *f.get(8)?))
    })
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
        // The bridge carries IPv4 and ARP only: no IPv6 address on the host's side of it.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.bridge), "1");
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
        let (rx, tx) = link_bytes(&self.veth_name(id))?;
        Some((tx, rx))
    }

    pub fn ns_path(&self, id: &str) -> String {
        format!("/run/netns/{}", self.ns_name(id))
    }

    /// What the launcher needs to give instance `id` its network at `addr`.
    pub fn launch_spec(&self, id: &str, addr: Ipv4Addr) -> super::launch::NetSpec {
        super::launch::NetSpec {
            bridge: self.bridge.clone(),
            host_if: self.veth_name(id),
            mac: super::launch::mac_for(addr),
            addr,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
            ns_name: self.ns_name(id),
        }
    }

    /// Makes `name` a tap device that `owner` (QEMU's unprivileged uid) may open, on the bridge
    /// (a VM's port, named as a container's veth so that the same firewall rules apply).
    pub fn ensure_tap(&self, name: &str, owner: u32) -> Result<()> {
        if !link_exists(name) {
            ip(&["tuntap", "add", "dev", name, "mode", "tap", "user", &owner.to_string(), "group", &owner.to_string()])?;
        }
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", name, "master", &self.bridge])?;
        ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// The host end of instance `id`'s veth (a bridge port).
    pub fn port(&self, id: &str) -> String {
        self.veth_name(id)
    }

    /// Removes the namespace and veth, and the bridge's neighbour entry for `addr` (the next
    /// instance there is another machine). Idempotent; never fails (what is gone is gone).
    pub fn destroy(&self, id: &str, addr: Option<Ipv4Addr>) {
        if self.veth_exists(id) {
            let _ = ip(&["link", "del", &self.veth_name(id)]);
        }
        if self.exists(id) {
            let _ = ip(&["netns", "del", &self.ns_name(id)]);
        }
        if let Some(a) = addr {
            let _ = ip(&["neigh", "del", &a.to_string(), "dev", &self.bridge]);
        }
    }

    pub fn exists(&self, id: &str) -> bool {
        std::path::Path::new(&self.ns_path(id)).exists()
    }

    /// Whether any interface of ours for `id` is still on the host.
    pub fn veth_exists(&self, id: &str) -> bool {
        link_exists(&self.veth_name(id))
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
    fn interface_counters_come_from_the_namespace_of_the_process() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n\
nh0123456789ab: 52 3 0 0 0 0 0 0 77 4 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text, "nh0123456789ab"), Some((52, 77)));
        assert_eq!(parse_net_dev(text, "lo"), Some((1000, 1000)));
        assert_eq!(parse_net_dev(text, "nh0123"), None);
        assert!(link_exists("lo"), "this process's loopback");
    }

    #[test]
    fn launch_specs_name_everything_after_the_instance() {
        let net = Network::new("nbt0", Ipv4Addr::new(10, 231, 0, 1), 24, "nbt0-");
        let n = net.launch_spec("aaaaaaaaaaaaaaaabbbb", net.address(1));
        assert_eq!((n.host_if.as_str(), n.ns_name.as_str(), n.mac.as_str()), ("nhaaaaaaaaaaaa", "nbt0-aaaaaaaaaaaa", "0a:58:0a:e7:00:03"));
        assert_eq!((n.addr, n.gateway, n.prefix_len), (Ipv4Addr::new(10, 231, 0, 3), Ipv4Addr::new(10, 231, 0, 1), 24));
        assert!(n.host_if.len() <= 15, "interface names are at most 15 bytes");
    }

    #[test]
    fn the_bridge_is_made_once_and_carries_no_ipv6() {
        if !root() {
            return;
        }
        let tag = std::process::id() % 10_000;
        let net = Network::new(&format!("nbt{tag}"), Ipv4Addr::new(10, 231, 0, 1), 24, &format!("nbt{tag}-"));
        net.ensure_bridge().expect("bridge");
        net.ensure_bridge().expect("bridge is idempotent");
        let v6 = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", net.bridge)).unwrap_or_default();
        let route = Command::new("ip").args(["route", "get", &net.address(1).to_string()]).output().expect("route");
        assert!(String::from_utf8_lossy(&route.stdout).contains(&net.bridge), "{:?}", route);
        net.destroy("aaaaaaaaaaaaaaaa", Some(net.address(1)));
        net.remove_bridge();
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            assert_eq!(v6.trim(), "1");
        }
    }
}
