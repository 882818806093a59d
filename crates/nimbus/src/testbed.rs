//! A test bed of several hosts on one machine, built the way mininet and containerlab build
//! topologies: each host is a network namespace with one interface (`eth0`) on an underlay
//! bridge in the machine's own namespace, where the server listens; each runs a real
//! `nimbus agent --netns …` with the container driver, its own instance bridge and subnet, and
//! its underlay address as its VXLAN endpoint. Instances of different hosts then meet only
//! through the region's private network, exactly as on separate machines.
//!
//! ```text
//!   machine namespace: <p>u0 198.51.100.254/24 ── server (agent protocol)
//!        │ veth <p>h1           │ veth <p>h2            │ veth <p>h3
//!   netns <p>h1: eth0 .1      netns <p>h2: eth0 .2     netns <p>h3: eth0 .3
//!        agent, bridge <p>b1    agent, bridge <p>b2     agent, bridge <p>b3
//!        10.210.1.0/24          10.210.2.0/24           10.210.3.0/24
//! ```
//!
//! The machine's namespace routes every host's instance subnet to that host, so SSH from the
//! machine reaches every instance. Addresses are a documentation range (RFC 5737) and a private
//! range, on links this module makes: nothing leaves the machine. `ensure` is idempotent and
//! `remove` undoes it (instances should be gone first: their namespaces hang off the hosts').

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use nimbus_core::net::Subnet;

/// The shape of a test bed.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Prefix of every name the bed makes (at most 6 characters).
    pub prefix: String,
    pub hosts: u8,
    /// The underlay's /24: hosts are `.1`…`.N`, the machine is `.254`.
    pub underlay: [u8; 3],
    /// Host `i` gets instance subnet `A.B.i.0/24`.
    pub subnets: [u8; 2],
}

impl Layout {
    /// `PREFIX,A.B.C,S.T` (what `--bed-layout` takes).
    pub fn parse(s: &str, hosts: u8) -> anyhow::Result<Layout> {
        let bad = || anyhow::anyhow!("--bed-layout {s:?}: PREFIX,A.B.C,S.T (e.g. nbd,198.51.100,10.210)");
        let mut parts = s.split(',');
        let (Some(prefix), Some(u), Some(n), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
        let nums = |x: &str| -> Option<Vec<u8>> { x.split('.').map(|o| o.parse::<u8>().ok()).collect() };
        let (Some(u), Some(n)) = (nums(u), nums(n)) else { return Err(bad()) };
        let (Ok(underlay), Ok(subnets)) = (<[u8; 3]>::try_from(u), <[u8; 2]>::try_from(n)) else { return Err(bad()) };
        Ok(Layout { prefix: prefix.to_owned(), hosts, underlay, subnets })
    }
}

/// One host of the bed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedHost {
    pub index: u8,
    pub netns: String,
    pub underlay: Ipv4Addr,
    pub bridge: String,
    pub subnet: String,
}

#[derive(Debug, Clone)]
pub struct TestBed {
    pub layout: Layout,
    pub hosts: Vec<BedHost>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn exists(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl TestBed {
    pub fn new(layout: Layout) -> anyhow::Result<TestBed> {
        if layout.prefix.is_empty() || layout.prefix.len() > 6 || !layout.prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("test bed prefix {:?}: 1 to 6 letters or digits", layout.prefix);
        }
        if !(1..=32).contains(&layout.hosts) {
            bail!("a test bed has 1 to 32 hosts");
        }
        let [a, b, c] = layout.underlay;
        let [s0, s1] = layout.subnets;
        let hosts = (1..=layout.hosts)
            .map(|i| BedHost {
                index: i,
                netns: format!("{}h{i}", layout.prefix),
                underlay: Ipv4Addr::new(a, b, c, i),
                bridge: format!("{}b{i}", layout.prefix),
                subnet: format!("{s0}.{s1}.{i}.0/24"),
            })
            .collect();
        Ok(TestBed { layout, hosts })
    }

    /// The machine's address on the underlay: where agents reach the server.
    pub fn machine_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.layout.underlay;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// The public addresses of the bed's region: .128/26 of the underlay's /24 (hosts are
    /// `.1`…`.32`, the machine `.254`), so the machine reaches them on the underlay bridge.
    pub fn public_pool(&self) -> String {
        let [a, b, c] = self.layout.underlay;
        format!("{a}.{b}.{c}.128/26")
    }

    fn underlay_bridge(&self) -> String {
        format!("{}u0", self.layout.prefix)
    }

    /// Refuses a layout whose underlay or instance subnets the machine already uses on a link
    /// that is not the bed's: the bed's traffic must never meet a real network.
    fn check_free(&self) -> anyhow::Result<()> {
        let out = Command::new("ip").args(["-j", "-4", "route", "show", "table", "all"]).output().context("ip route")?;
        let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let [a, b, c] = self.layout.underlay;
        let [s0, s1] = self.layout.subnets;
        let underlay = Subnet { addr: Ipv4Addr::new(a, b, c, 0), len: 24 };
        let instances = Subnet { addr: Ipv4Addr::new(s0, s1, 0, 0), len: 16 };
        let ours: Vec<String> = std::iter::once(self.underlay_bridge()).chain(self.hosts.iter().map(|h| h.netns.clone())).collect();
        for r in &routes {
            let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else { continue };
            if ours.iter().any(|o| o == dev) {
                continue;
            }
            // `ip -j` writes a host route without its /32 (and "default" for 0/0, which is skipped).
            let net = match dst.parse::<Ipv4Addr>() {
                Ok(addr) => Some(Subnet { addr, len: 32 }),
                Err(_) => Subnet::parse_any(dst),
            };
            let Some(net) = net else { continue };
            for (ours, what) in [(underlay, "underlay"), (instances, "instance subnets")] {
                if net.overlaps(&ours) {
                    bail!("this machine already routes {dst} through {dev}: the test bed's {what} {ours} would meet it; pick another --bed-layout");
                }
            }
        }
        Ok(())
    }

    /// Makes whatever of the bed is missing. Idempotent.
    pub fn ensure(&self) -> anyhow::Result<()> {
        self.check_free()?;
        let br = self.underlay_bridge();
        if !exists(&["link", "show", &br]) {
            ip(&["link", "add", &br, "mtu", "1550", "type", "bridge"])?;
        }
        let me = format!("{}/24", self.machine_addr());
        let have = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &br]).output()?;
        if !String::from_utf8_lossy(&have.stdout).contains(&me) {
            ip(&["addr", "add", &me, "dev", &br])?;
        }
        ip(&["link", "set", &br, "up"])?;
        for h in &self.hosts {
            if !Path::new("/run/netns").join(&h.netns).exists() {
                ip(&["netns", "add", &h.netns])?;
            }
            let ns = |args: &[&str]| -> anyhow::Result<()> {
                let mut full = vec!["-n", h.netns.as_str()];
                full.extend_from_slice(args);
                ip(&full)
            };
            let outer = h.netns.clone();
            if !exists(&["-n", &h.netns, "link", "show", "eth0"]) {
                if exists(&["link", "show", &outer]) {
                    ip(&["link", "del", &outer])?;
                }
                let inner = format!("{outer}p");
                ip(&["link", "add", &outer, "mtu", "1550", "type", "veth", "peer", "name", &inner, "mtu", "1550"])?;
                ip(&["link", "set", &inner, "netns", &h.netns])?;
                ns(&["link", "set", &inner, "name", "eth0"])?;
            }
            ip(&["link", "set", &outer, "master", &br, "up"])?;
            ns(&["link", "set", "lo", "up"])?;
            let addr = format!("{}/24", h.underlay);
            let out = Command::new("ip").args(["-n", &h.netns, "-4", "-o", "addr", "show", "dev", "eth0"]).output()?;
            if !String::from_utf8_lossy(&out.stdout).contains(&addr) {
                ns(&["addr", "add", &addr, "dev", "eth0"])?;
            }
            ns(&["link", "set", "eth0", "up"])?;
            // A host routes between its instances and the tunnel; a new namespace starts with
            // forwarding off (the sysctl is per namespace).
            sysctl_in(&h.netns, "net/ipv4/ip_forward", "1")?;
            ip(&["route", "replace", &h.subnet, "via", &h.underlay.to_string(), "dev", &br])?;
        }
        Ok(())
    }

    /// Removes the bed: what is left of instances (their processes, namespaces and cgroups,
    /// when their agents did not get to destroy them), then the hosts' namespaces (with their
    /// bridges and tunnels), links and routes.
    pub fn remove(&self) {
        let hierarchies: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain([std::path::PathBuf::from("/sys/fs/cgroup")])
            .collect();
        for h in &self.hosts {
            for root in &hierarchies {
                kill_tree(&root.join(format!("nimbus-{}", h.bridge)));
            }
        }
        // Whatever else still runs in a host's namespace (its agent, a VPN gateway's
        // wireguard-go): a deleted namespace name does not stop a process inside it.
        let inodes: Vec<u64> = self
            .hosts
            .iter()
            .filter_map(|h| std::fs::metadata(Path::new("/run/netns").join(&h.netns)).ok())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .collect();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else { continue };
            let ino = link.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').parse::<u64>().ok();
            if ino.is_some_and(|i| inodes.contains(&i)) && pid != std::process::id() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if self.hosts.iter().any(|h| name.starts_with(&format!("{}-", h.bridge))) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
        for h in &self.hosts {
            for root in &hierarchies {
                rmdir_tree(&root.join(format!("nimbus-{}", h.bridge)));
            }
        }
        for h in &self.hosts {
            let _ = ip(&["route", "del", &h.subnet]);
            let _ = ip(&["link", "del", &h.netns]);
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["link", "del", &self.underlay_bridge()]);
    }

    /// The `nimbus agent` arguments that make host `h` of this bed (after `agent`).
    pub fn agent_args(&self, h: &BedHost, server: &str, token: &str, data_dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = [
            "--netns",
            &h.netns,
            "--server",
            server,
            // The agent protocol crosses only this machine's own links.
            "--insecure",
            "--token",
            token,
            "--bridge",
            &h.bridge,
            "--instance-subnet",
            &h.subnet,
            "--underlay",
            &h.underlay.to_string(),
            "--public-ip",
            &h.underlay.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.push("--data-dir".into());
        v.push(data_dir.to_string_lossy().into_owned());
        v
    }
}

/// SIGKILLs every process in cgroup `dir` and below.
fn kill_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            kill_tree(&e.path());
        }
    }
    for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
    }
}

/// Removes cgroup `dir` and its children, leaves first (only empty cgroups go).
fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Writes a sysctl inside network namespace `ns` (`/proc/sys/<key>`, read in that namespace).
fn sysctl_in(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    // `ip netns exec` gives the child the namespace's view of /proc/sys/net.
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &format!("echo {value} > /proc/sys/{key}")])
        .stdin(Stdio::null())
        .status()
        .context("ip netns exec")?;
    if !status.success() {
        bail!("setting {key} in {ns} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(hosts: u8) -> Layout {
        Layout::parse("nbd,198.51.100,10.210", hosts).expect("the default layout")
    }

    #[test]
    fn every_host_gets_its_own_names_and_addresses() {
        let bed = TestBed::new(dev(3)).expect("bed");
        assert_eq!(bed.machine_addr(), Ipv4Addr::new(198, 51, 100, 254));
        let h = &bed.hosts[2];
        assert_eq!((h.netns.as_str(), h.bridge.as_str(), h.subnet.as_str()), ("nbdh3", "nbdb3", "10.210.3.0/24"));
        assert_eq!(h.underlay, Ipv4Addr::new(198, 51, 100, 3));
        let args = bed.agent_args(h, "http://198.51.100.254:1", "tok", Path::new("/d"));
        let s = args.join(" ");
        assert!(
            s.contains("--netns nbdh3") && s.contains("--underlay 198.51.100.3") && s.contains("--instance-subnet 10.210.3.0/24"),
            "{s}"
        );
        let l = Layout::parse("nbt7,203.0.113,10.211", 2).expect("layout");
        assert_eq!((l.prefix.as_str(), l.underlay, l.subnets, l.hosts), ("nbt7", [203, 0, 113], [10, 211], 2));
        for bad in ["nbt", "nbt,192.0.2", "nbt,192.0.2.1,10.211", "nbt,192.0.2,10.211.3", "nbt,192.0.x,10.211", "a,b,c,d"] {
            assert!(Layout::parse(bad, 2).is_err(), "{bad}");
        }
        for bad in [Layout { prefix: "".into(), ..dev(3) }, Layout { prefix: "toolong7".into(), ..dev(3) }, dev(0)] {
            assert!(TestBed::new(bad).is_err());
        }
    }
}
