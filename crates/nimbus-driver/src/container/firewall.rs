//! Host-side packet filtering for container instances, with nftables, in one table the driver
//! owns (`inet nimbus_<bridge>`), rewritten atomically (`nft -f`) from the ledgers whenever an
//! instance or its rules change:
//!
//! - **input**: instances do not reach the host's own services (only replies to connections the
//!   host opened);
//! - **forward** and **output**: traffic *to* an instance, from other instances (bridged traffic
//!   passes the inet hooks through br_netfilter) or from the host, is allowed only by the
//!   instance's rules (the org's global rules plus its rulesets) or as a reply; the host itself may
//!   always reach port 22, because the agent's health probe must (documented).
//!
//! - **port forwards**: an instance with an `ssh_port` gets that host port DNATed to its port 22
//!   (`prerouting` for traffic from outside, `output` for the host itself, on every local
//!   address, 127.0.0.1 included: such packets are masqueraded to the bridge gateway); forwarded
//!   connections pass the instance's allow-list, as the forward is an explicit exposure.
//!
//! - **ports** (a second table, `bridge nimbus_<bridge>`): every frame an instance sends into
//!   the bridge, to another instance or to the host, must carry its own MAC and, for IPv4 and
//!   ARP, its own address; anything else (another source, IPv6, VLAN tags, other ethertypes)
//!   is dropped at its port. So an instance can neither spoof another instance or the gateway
//!   nor slip past a rule by adding an allowed address to its interface.
//! - **IPv6** is not offered to instances: the bridge carries IPv4 and ARP only, the host's
//!   bridge end has IPv6 disabled, and the inet table drops IPv6 to and from the bridge, so the
//!   default is drop for both families.
//!
//! - **the private network** (see `fabric`): traffic to an instance from a private address (any
//!   instance subnet of the region) is dropped unless the address is a member of the
//!   instance's own org (a named set per org, the server's member list plus this host's own
//!   instances), before any allow rule: another org's instance reaches it on no port, whatever
//!   the rules say. Tunnelled traffic is accepted only from the region's other hosts (UDP 4789
//!   from their underlay addresses) and only with a private source; instances never reach the
//!   hosts' underlay addresses, so none can hand a host a forged tunnel packet; and their
//!   traffic to another host's instances is never masqueraded (the source is the proof).
//!
//! Terminating an instance rewrites the tables without it: no rule of it is left.

use std::collections::BTreeMap;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use nimbus_proto::FirewallRule;

/// One instance's entry: its address and its allow rules.
pub struct Entry<'a> {
    pub id: &'a str,
    pub addr: Ipv4Addr,
    /// Its bridge port (the host end of its veth) and the one MAC it may send from.
    pub port: String,
    pub mac: String,
    pub rules: &'a [FirewallRule],
    /// Host ports forwarded to ports of the instance: `(host port, instance port)` (its SSH
    /// forward is `(ssh_port, 22)`).
    pub forwards: Vec<(u16, u16)>,
    /// Its cluster peers: allowed to reach it on every port.
    pub peers: Vec<Ipv4Addr>,
    /// Its org (`DesiredInstance::tenant`): whose private addresses may reach it.
    pub tenant: &'a str,
    /// Its public address, NATed 1:1 to `addr` (traffic to it passes the rules like any other
    /// from outside).
    pub public: Option<Ipv4Addr>,
}

/// What the region's private network adds to the filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Private {
    /// Every instance subnet of the region, this host's included.
    pub subnets: Vec<nimbus_core::net::Subnet>,
    /// The private addresses of each org's instances, by tenant. An entry's tenant missing here
    /// has no member at all (its instances then accept no private source but the gateway).
    pub members: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The region's other hosts' underlay addresses.
    pub underlays: Vec<Ipv4Addr>,
    /// The tunnel device, when this host takes part in a private network across hosts.
    pub tunnel: Option<String>,
}

fn elements<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", v.join(", "))
    }
}

pub fn table_name(bridge: &str) -> String {
    format!("nimbus_{}", bridge.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

fn rule_line(r: &FirewallRule) -> Option<String> {
    // Sources were validated as CIDRs by the server; refuse anything else rather than emit it.
    let src = r.source.split_once('/').map(|(a, l)| (a.parse::<Ipv4Addr>().ok(), l.parse::<u8>().ok()));
    let src = match src {
        Some((Some(a), Some(l))) if l <= 32 => format!("{a}/{l}"),
        _ => return None,
    };
    let ports = |p: &str| match r.port_range {
        Some((lo, hi)) if lo == hi => Some(format!("{p} dport {lo}")),
        Some((lo, hi)) => Some(format!("{p} dport {lo}-{hi}")),
        None => None,
    };
    Some(match r.protocol.as_str() {
        "tcp" | "udp" => format!("ip saddr {src} {} accept", ports(&r.protocol)?),
        "icmp" => format!("ip saddr {src} ip protocol icmp accept"),
        "all" => format!("ip saddr {src} accept"),
        _ => return None,
    })
}

/// Host-level options of the tables.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Masquerade instance traffic leaving the host (outbound internet). The operator also
    /// enables `net.ipv4.ip_forward`; the driver changes no sysctl itself.
    pub outbound_nat: Option<nimbus_core::net::Subnet>,
    /// The layers below are on in every real deployment; the escape suite's self-test turns
    /// them off one at a time to show that its network checks can fail.
    pub antispoof: bool,
    pub ipv6_drop: bool,
    pub host_input_drop: bool,
    pub instance_rules: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { outbound_nat: None, antispoof: true, ipv6_drop: true, host_input_drop: true, instance_rules: true }
    }
}

/// Name of the bridge-family table.
pub fn bridge_table_name(bridge: &str) -> String {
    table_name(bridge)
}

/// The per-port source checks (bridge family), pure.
pub fn render_ports(bridge: &str, entries: &[Entry<'_>], opts: Options) -> String {
    let t = bridge_table_name(bridge);
    let mut s = format!("table bridge {t} {{}}\ndelete table bridge {t}\ntable bridge {t} {{\n");
    for hook in ["forward", "input"] {
        s += &format!("  chain {hook} {{\n    type filter hook {hook} priority -200; policy accept;\n");
        if opts.antispoof || opts.ipv6_drop {
            for e in entries {
                s += &format!("    iifname \"{}\" jump p_{}\n", e.port, &e.id[..e.id.len().min(12)]);
            }
        }
        s += "  }\n";
    }
    for e in entries {
        s += &format!("  chain p_{} {{\n", &e.id[..e.id.len().min(12)]);
        if opts.antispoof {
            s += &format!(
                "    ether saddr != {mac} drop\n    ether type arp arp saddr ether != {mac} drop\n    ether type arp arp saddr ip != {ip} drop\n    ether type ip ip saddr != {ip} drop\n",
                mac = e.mac,
                ip = e.addr
            );
        }
        s += "    ether type { ip, arp } accept\n";
        s += if opts.ipv6_drop { "    drop\n" } else { "    accept\n" };
        s += "  }\n";
    }
    s += "}\n";
    s
}

/// The complete ruleset text for `entries` (pure; unit-tested).
pub fn render(bridge: &str, gateway: Ipv4Addr, entries: &[Entry<'_>], private: &Private, opts: Options) -> String {
    let t = table_name(bridge);
    let mut s = format!("table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{\n");
    s += &format!("  set private {{\n    type ipv4_addr; flags interval;{}\n  }}\n", elements(&private.subnets));
    s += &format!("  set underlay {{\n    type ipv4_addr;{}\n  }}\n", elements(&private.underlays));
    let mut tenants: Vec<&str> = private.members.keys().map(String::as_str).collect();
    for e in entries {
        if !tenants.contains(&e.tenant) {
            tenants.push(e.tenant);
        }
    }
    tenants.sort_unstable();
    for (k, tenant) in tenants.iter().enumerate() {
        let members = private.members.get(*tenant).map(Vec::as_slice).unwrap_or_default();
        s += &format!("  set m{k} {{\n    type ipv4_addr;{}\n  }}\n", elements(members));
    }
    s += &format!("  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"{bridge}\" ct state established,related accept\n");
    if opts.host_input_drop {
        s += &format!("    iifname \"{bridge}\" drop\n");
    }
    if private.tunnel.is_some() {
        s += &format!("    udp dport {} ip saddr != @underlay drop\n", super::fabric::VXLAN_PORT);
    }
    s += "  }\n";
    for e in entries {
        let c = &e.id[..e.id.len().min(12)];
        s += &format!("  chain i_{c} {{\n    ip saddr {gateway} tcp dport 22 accept\n");
        let mut inner: Vec<u16> = e.forwards.iter().map(|f| f.1).collect();
        inner.sort_unstable();
        inner.dedup();
        for port in inner {
            s += &format!("    ct status dnat tcp dport {port} accept\n");
        }
        let k = tenants.iter().position(|t| *t == e.tenant).unwrap_or(0);
        // The host's own gateway address is the host, not an instance: the rules decide for it.
        s += &format!("    ip saddr != {gateway} ip saddr @private ip saddr != @m{k} drop\n");
        if !e.peers.is_empty() {
            let set: Vec<String> = e.peers.iter().map(ToString::to_string).collect();
            s += &format!("    ip saddr {{ {} }} accept\n", set.join(", "));
        }
        for r in e.rules.iter().filter_map(rule_line) {
            s += &format!("    {r}\n");
        }
        s += "    drop\n  }\n";
    }
    for hook in ["forward", "output"] {
        s += &format!("  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n");
        if opts.ipv6_drop {
            s += &format!("    meta nfproto ipv6 oifname \"{bridge}\" drop\n");
            if hook == "forward" {
                s += &format!("    meta nfproto ipv6 iifname \"{bridge}\" drop\n");
            }
        }
        if let (Some(tunnel), "forward") = (&private.tunnel, hook) {
            s += &format!("    iifname \"{bridge}\" ip daddr @underlay drop\n    iifname \"{tunnel}\" ip saddr != @private drop\n");
        }
        s += "    ct state established,related accept\n";
        for e in entries.iter().filter(|_| opts.instance_rules) {
            s += &format!("    ip daddr {} jump i_{}\n", e.addr, &e.id[..e.id.len().min(12)]);
        }
        s += "  }\n";
    }
    let forwards: Vec<(u16, Ipv4Addr, u16)> = entries.iter().flat_map(|e| e.forwards.iter().map(|(h, i)| (*h, e.addr, *i))).collect();
    if !forwards.is_empty() {
        for (chain, hook) in [("pf_prerouting", "prerouting"), ("pf_output", "output")] {
            s += &format!("  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n");
            for (port, addr, inner) in &forwards {
                s += &format!("    fib daddr type local tcp dport {port} dnat ip to {addr}:{inner}\n");
            }
            s += "  }\n";
        }
        s += &format!(
            "  chain pf_postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"{bridge}\" ip saddr 127.0.0.0/8 ct status dnat masquerade\n  }}\n"
        );
    }
    let publics: Vec<(Ipv4Addr, Ipv4Addr)> = entries.iter().filter_map(|e| e.public.map(|p| (p, e.addr))).collect();
    if !publics.is_empty() {
        // Before the port forwards' chains (-100): a public address is local too, and its
        // whole port space is the instance's.
        for (chain, hook) in [("pub_prerouting", "prerouting"), ("pub_output", "output")] {
            s += &format!("  chain {chain} {{\n    type nat hook {hook} priority -110; policy accept;\n");
            for (public, private) in &publics {
                s += &format!("    ip daddr {public} dnat ip to {private}\n");
            }
            s += "  }\n";
        }
        s += "  chain pub_postrouting {\n    type nat hook postrouting priority 90; policy accept;\n";
        for (public, private) in &publics {
            s += &format!("    ip saddr {private} oifname != \"{bridge}\" ip daddr != @private snat ip to {public}\n");
        }
        s += "  }\n";
    }
    if let Some(net) = opts.outbound_nat {
        s += &format!(
            "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr {net} oifname != \"{bridge}\" ip daddr != @private masquerade\n  }}\n"
        );
    }
    s += "}\n";
    s
}

/// Loads `text` atomically.
pub fn apply(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: cannot start ({e}); install Debian's nftables package"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Removes the tables (tests).
pub fn remove(bridge: &str) {
    let _ = Command::new("nft").args(["delete", "table", "inet", &table_name(bridge)]).stderr(Stdio::null()).status();
    let _ = Command::new("nft").args(["delete", "table", "bridge", &bridge_table_name(bridge)]).stderr(Stdio::null()).status();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rules: &[FirewallRule], ssh_port: Option<u16>, peers: Vec<Ipv4Addr>) -> Entry<'_> {
        let forwards = ssh_port.map(|p| (p, 22)).into_iter().collect();
        Entry {
            id: "abcdef0123456789",
            addr: Ipv4Addr::new(10, 200, 0, 3),
            port: "nhabcdef012345".into(),
            mac: "0a:58:0a:c8:00:03".into(),
            rules,
            forwards,
            peers,
            tenant: "org-a",
            public: None,
        }
    }

    #[test]
    fn ports_may_send_only_their_own_addresses_and_no_ipv6() {
        let e = [entry(&[], None, vec![])];
        let t = render_ports("nimbus0", &e, Options::default());
        assert!(t.starts_with("table bridge nimbus_nimbus0 {}\ndelete table bridge nimbus_nimbus0\n"), "{t}");
        assert_eq!(t.matches("iifname \"nhabcdef012345\" jump p_abcdef012345").count(), 2, "bridged and to the host: {t}");
        for rule in [
            "ether saddr != 0a:58:0a:c8:00:03 drop",
            "ether type arp arp saddr ether != 0a:58:0a:c8:00:03 drop",
            "ether type arp arp saddr ip != 10.200.0.3 drop",
            "ether type ip ip saddr != 10.200.0.3 drop",
            "ether type { ip, arp } accept\n    drop\n",
        ] {
            assert!(t.contains(rule), "{rule}: {t}");
        }
        let inet = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &e, &Private::default(), Options::default());
        assert!(
            inet.contains("meta nfproto ipv6 iifname \"nimbus0\" drop") && inet.contains("meta nfproto ipv6 oifname \"nimbus0\" drop"),
            "{inet}"
        );
        // The weakened variants the escape suite's self-test uses.
        let open = render_ports("nimbus0", &e, Options { antispoof: false, ipv6_drop: false, ..Options::default() });
        assert!(!open.contains("saddr") && !open.contains("jump"), "{open}");
        let no_input = render(
            "nimbus0",
            Ipv4Addr::new(10, 200, 0, 1),
            &e,
            &Private::default(),
            Options { host_input_drop: false, ..Options::default() },
        );
        assert!(!no_input.contains("\n    iifname \"nimbus0\" drop"), "{no_input}");
    }

    #[test]
    fn renders_allow_lists_per_instance() {
        let rules = vec![
            FirewallRule { protocol: "tcp".into(), port_range: Some((22, 22)), source: "0.0.0.0/0".into() },
            FirewallRule { protocol: "udp".into(), port_range: Some((5000, 5010)), source: "10.0.0.0/8".into() },
            FirewallRule { protocol: "icmp".into(), port_range: None, source: "1.2.3.4/32".into() },
            FirewallRule { protocol: "tcp".into(), port_range: Some((1, 2)), source: "not-a-cidr; drop".into() },
        ];
        let e = [entry(&rules, None, vec![])];
        let t = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &e, &Private::default(), Options::default());
        assert!(t.contains("chain i_abcdef012345 {"), "{t}");
        assert!(t.contains("ip saddr 0.0.0.0/0 tcp dport 22 accept"));
        assert!(t.contains("ip saddr 10.0.0.0/8 udp dport 5000-5010 accept"));
        assert!(t.contains("ip saddr 1.2.3.4/32 ip protocol icmp accept"));
        assert!(!t.contains("not-a-cidr"), "invalid sources are never emitted");
        assert!(t.contains("ip daddr 10.200.0.3 jump i_abcdef012345"));
        assert!(t.contains("iifname \"nimbus0\" drop"));
        assert!(!t.contains("masquerade"), "no NAT unless asked");
        let nat = render(
            "nimbus0",
            Ipv4Addr::new(10, 200, 0, 1),
            &e,
            &Private::default(),
            Options { outbound_nat: Some(nimbus_core::net::Subnet { addr: Ipv4Addr::new(10, 200, 0, 0), len: 16 }), ..Options::default() },
        );
        assert!(nat.contains("ip saddr 10.200.0.0/16 oifname != \"nimbus0\" ip daddr != @private masquerade"), "{nat}");
        assert!(!t.contains("dnat"), "no forwards unless an instance has a port");
    }

    #[test]
    fn public_addresses_are_nated_one_to_one() {
        let mut e = entry(&[], None, vec![]);
        e.public = Some(Ipv4Addr::new(203, 0, 113, 70));
        let t = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &[e], &Private::default(), Options::default());
        assert_eq!(t.matches("ip daddr 203.0.113.70 dnat ip to 10.200.0.3").count(), 2, "from outside and from the host: {t}");
        assert!(t.contains("priority -110"), "{t}");
        assert!(t.contains("ip saddr 10.200.0.3 oifname != \"nimbus0\" ip daddr != @private snat ip to 203.0.113.70"), "{t}");
        let none = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &[entry(&[], None, vec![])], &Private::default(), Options::default());
        assert!(!none.contains("snat") && !none.contains("pub_"), "{none}");
    }

    #[test]
    fn renders_port_forwards() {
        let mut with_more = entry(&[], Some(20001), vec![Ipv4Addr::new(10, 200, 0, 4)]);
        with_more.forwards.push((20002, 8080));
        let t = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &[with_more], &Private::default(), Options::default());
        assert_eq!(t.matches("fib daddr type local tcp dport 20002 dnat ip to 10.200.0.3:8080").count(), 2, "{t}");
        assert!(t.contains("ct status dnat tcp dport 22 accept\n    ct status dnat tcp dport 8080 accept"), "{t}");
        let e = [entry(&[], Some(20001), vec![Ipv4Addr::new(10, 200, 0, 4)])];
        let t = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &e, &Private::default(), Options::default());
        assert_eq!(t.matches("fib daddr type local tcp dport 20001 dnat ip to 10.200.0.3:22").count(), 2, "{t}");
        assert!(t.contains("ct status dnat tcp dport 22 accept"), "{t}");
        assert!(t.contains("ip saddr { 10.200.0.4 } accept"), "cluster peers: {t}");
        assert!(t.contains("oifname \"nimbus0\" ip saddr 127.0.0.0/8 ct status dnat masquerade"), "{t}");
    }

    #[test]
    fn private_sources_must_be_members_of_the_instances_org() {
        let mut a = entry(&[], None, vec![]);
        a.tenant = "org-a";
        let mut b = entry(&[], None, vec![]);
        b.id = "0123456789abcdef";
        b.addr = Ipv4Addr::new(10, 200, 0, 4);
        b.tenant = "org-b";
        let private = Private {
            subnets: vec![
                nimbus_core::net::Subnet { addr: Ipv4Addr::new(10, 200, 0, 0), len: 24 },
                nimbus_core::net::Subnet { addr: Ipv4Addr::new(10, 201, 0, 0), len: 24 },
            ],
            members: [("org-a".to_owned(), vec![Ipv4Addr::new(10, 200, 0, 3), Ipv4Addr::new(10, 201, 0, 7)])].into_iter().collect(),
            underlays: vec![Ipv4Addr::new(198, 51, 100, 2)],
            tunnel: Some("vx-nimbus0".into()),
        };
        let t = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &[a, b], &private, Options::default());
        assert!(t.contains("set private {\n    type ipv4_addr; flags interval; elements = { 10.200.0.0/24, 10.201.0.0/24 };"), "{t}");
        assert!(t.contains("set m0 {\n    type ipv4_addr; elements = { 10.200.0.3, 10.201.0.7 };"), "{t}");
        // org-b has no member list from the server: an empty set, so no private source passes.
        assert!(t.contains("set m1 {\n    type ipv4_addr;\n  }"), "{t}");
        let chain_a = t.split("chain i_abcdef012345 {").nth(1).and_then(|c| c.split('}').next()).unwrap_or_default();
        let chain_b = t.split("chain i_0123456789ab {").nth(1).and_then(|c| c.split('}').next()).unwrap_or_default();
        // The org check comes after the host's probe and before any allow rule.
        assert!(
            chain_a.contains("ip saddr 10.200.0.1 tcp dport 22 accept\n    ip saddr != 10.200.0.1 ip saddr @private ip saddr != @m0 drop"),
            "{chain_a}"
        );
        assert!(chain_b.contains("ip saddr != 10.200.0.1 ip saddr @private ip saddr != @m1 drop"), "{chain_b}");
        assert!(t.contains("udp dport 4789 ip saddr != @underlay drop"), "{t}");
        assert!(t.contains("iifname \"nimbus0\" ip daddr @underlay drop\n    iifname \"vx-nimbus0\" ip saddr != @private drop"), "{t}");
        assert!(t.contains("set underlay {\n    type ipv4_addr; elements = { 198.51.100.2 };"), "{t}");
        // A lone host: no tunnel rules at all.
        let lone = render("nimbus0", Ipv4Addr::new(10, 200, 0, 1), &[entry(&[], None, vec![])], &Private::default(), Options::default());
        assert!(!lone.contains("4789") && !lone.contains("@underlay drop") && lone.contains("!= @m0 drop"), "{lone}");
    }
}
