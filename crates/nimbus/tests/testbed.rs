//! Three hosts on one machine (`nimbus dev --hosts 3`: one server, three container agents, each
//! in a network namespace of its own, joined by an underlay bridge) and one region-wide private
//! network across them. What the test shows:
//!
//! - a 3-node cluster spreads over the 3 hosts, and every node SSHes to every other by name and
//!   by private address (through the VXLAN tunnel between the hosts);
//! - an instance of a second org on the same hosts reaches none of them: not on their private
//!   IPv4 addresses (port 22 is open to 0.0.0.0/0 in their rules), not on IPv6 link-local, not
//!   with a node's address forged as its source, and not the hosts' underlay addresses (where a
//!   forged tunnel packet would have to go);
//! - each of those refusals can fail: with the second org's address put into the first org's
//!   member set on one host, or with the underlay rules taken out of the attacker's host, the
//!   same probe gets through;
//! - the org's VPN (its gateway on one host) reaches the org's nodes on every host, and not the
//!   second org's instance;
//! - killing a host's agent (`kill -9`) and restarting it keeps every node connected, and the
//!   restarted agent puts back the rule the weakened run took out;
//! - terminating a node takes its address out of the other hosts' member sets within 1 s.
//!
//! Root and the debian-12 image are needed (scripts/test provides both); otherwise it skips.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// A TCP connect from inside an instance: `python3 /tmp/c.py ADDR PORT [SRC]` prints
/// `connected` or why not (link-local IPv6 goes out of eth0).
const CONNECT_PY: &str = r#"import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(1.5)
try:
    if len(sys.argv) > 3:
        s.bind((sys.argv[3], 0))
    s.connect((addr, port, 0, socket.if_nametoindex("eth0")) if fam == socket.AF_INET6 else (addr, port))
    print("connected")
except OSError as e:
    print("refused:", type(e).__name__, e.errno)
"#;

/// Everything the test started; stopped and removed however it ends.
struct Bed {
    dev: Option<Child>,
    procs: Vec<Child>,
    dir: PathBuf,
    layout: String,
    /// The VPN client's namespace and its link on the underlay.
    client_ns: Option<String>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().chain(self.dev.iter_mut()) {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Some(ns) = &self.client_ns {
            // The client's wireguard-go goes with its interface.
            let _ = Command::new("ip").args(["netns", "exec", ns, "ip", "link", "del", &format!("{}w", &ns[..ns.len() - 1])]).status();
            let _ = Command::new("ip").args(["link", "del", ns]).stderr(Stdio::null()).status();
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        // Agents stop within 250 ms of their parent; the teardown removes what is left.
        std::thread::sleep(Duration::from_millis(600));
        let _ = Command::new(BIN)
            .args(["dev", "--hosts", "3", "--teardown", "--listen", "127.0.0.1:0", "--bed-layout", &self.layout, "--data-dir"])
            .arg(self.dir.join("teardown"))
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Ssh {
    key: PathBuf,
}

impl Ssh {
    /// Runs `cmd` as ubuntu on `ip` (from the machine), feeding `input`; `(ok, stdout + stderr)`.
    fn run(&self, ip: &str, cmd: &str, input: Option<&str>) -> (bool, String) {
        let mut child = Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=5", &format!("ubuntu@{ip}"), cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// Whether a TCP connect from instance `from` to `addr:port` (from `src`) gets through.
    fn connects(&self, from: &str, addr: &str, port: u16, src: Option<&str>) -> (bool, String) {
        let (_, out) = self.run(from, &format!("python3 /tmp/c.py {addr} {port} {}", src.unwrap_or("")), None);
        (out.trim() == "connected", out.trim().to_owned())
    }
}

/// `ip netns exec NS ARGS…`, stdout.
fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The addresses in set `set` of host `ns`'s table for bridge `bridge`.
fn member_set(ns: &str, bridge: &str, set: &str) -> String {
    in_ns(ns, &["nft", "list", "set", "inet", &format!("nimbus_{bridge}"), set])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_one_private_network_per_org() {
    let Some(images) = common::container_images() else { return };
    let tag = format!("tb{}", std::process::id() % 10_000);
    let layout = format!("{tag},203.0.113,10.211");
    let dir = std::env::temp_dir().join(format!("nimbus-testbed-{}", nimbus_core::ids::random_hex_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts: Vec<(String, String)> = (1..=3).map(|i| (format!("{tag}h{i}"), format!("{tag}b{i}"))).collect();
    let mut bed = Bed { dev: None, procs: Vec::new(), dir: dir.clone(), layout: layout.clone(), client_ns: None };
    let bridges: Vec<String> = hosts.iter().map(|h| h.1.clone()).collect();
    let data = dir.join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut dev = Command::new(BIN)
        .args(["dev", "--hosts", "3", "--bed-layout", &layout, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .arg("--images-dir")
        .arg(&images)
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    bed.dev = Some(dev);
    let mut key = String::new();
    for l in lines.by_ref().map_while(Result::ok) {
        if let Some(k) = l.trim().strip_prefix("API key:") {
            key = k.trim().to_owned();
        }
        if l.starts_with("Try:") {
            break;
        }
    }
    assert!(!key.is_empty(), "nimbus dev --hosts 3 printed no API key");
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let call =
        |key: &str, m: reqwest::Method, path: &str, body: Option<Value>| common::call(&http, key, m, format!("{url}/api/v1{path}"), body);
    let ssh_key = dir.join("id");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&ssh_key).status().unwrap().success());
    let public = std::fs::read_to_string(ssh_key.with_extension("pub")).unwrap();
    let private = std::fs::read_to_string(&ssh_key).unwrap();
    let ssh = Ssh { key: ssh_key.clone() };
    let add_key = |k: String| {
        let public = public.clone();
        let call = &call;
        async move {
            let (st, v) = call(&k, reqwest::Method::POST, "/ssh-keys", Some(json!({"name": "k", "public_key": public.trim()}))).await;
            assert_eq!(st, 200, "{v}");
        }
    };
    let active = |k: String, n: usize| {
        let call = &call;
        async move {
            let t = Instant::now();
            loop {
                let (_, v) = call(&k, reqwest::Method::GET, "/instances", None).await;
                let list = v["data"].as_array().cloned().unwrap_or_default();
                if list.len() == n && list.iter().all(|i| i["status"] == "active") {
                    return list;
                }
                assert!(t.elapsed() < Duration::from_secs(120), "not {n} active: {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Host index (0-based) of a private address: its subnet's third octet.
    let host_of = |ip: &str| -> usize { usize::from(ip.parse::<Ipv4Addr>().unwrap().octets()[2]) - 1 };

    // 1. A 3-node cluster of org A, one node per host.
    add_key(key.clone()).await;
    let body = json!({"name": "train", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": 3}, "machine_type": "cpu_1x_small"}}});
    let (st, v) = call(&key, reqwest::Method::POST, "/clusters", Some(body)).await;
    assert_eq!(st, 200, "{v}");
    let listed = active(key.clone(), 3).await;
    // Public addresses: each node's Lambda `ip` comes from the region's pool (the test bed's
    // 203.0.113.128/26), its `private_ip` from its host's subnet; SSH reaches it on the public one.
    let mut publics: Vec<(String, String)> = Vec::new();
    for i in &listed {
        let (ip, private) = (i["ip"].as_str().unwrap().to_owned(), i["private_ip"].as_str().unwrap().to_owned());
        let o = ip.parse::<Ipv4Addr>().unwrap().octets();
        assert!(o[..3] == [203, 0, 113] && (128..192).contains(&o[3]), "ip {ip} is not from the pool: {i}");
        assert_ne!(ip, private);
        publics.push((ip, private));
    }
    let mut nodes: Vec<(String, String, String)> = listed
        .iter()
        .map(|i| {
            (i["hostname"].as_str().unwrap().to_owned(), i["private_ip"].as_str().unwrap().to_owned(), i["id"].as_str().unwrap().to_owned())
        })
        .collect();
    nodes.sort();
    let mut on: Vec<usize> = nodes.iter().map(|n| host_of(&n.1)).collect();
    on.sort_unstable();
    assert_eq!(on, vec![0, 1, 2], "one node per host: {nodes:?}");
    for n in &nodes {
        let (ok, out) = ssh.run(&n.1, "cat > ~/.ssh/id_ed25519 && chmod 600 ~/.ssh/id_ed25519", Some(&private));
        assert!(ok, "{out}");
        let (ok, out) = ssh.run(&n.1, "cat > /tmp/c.py", Some(CONNECT_PY));
        assert!(ok, "{out}");
    }

    for (public, private) in &publics {
        let (ok, out) = ssh.run(public, "ip -4 -o addr show dev eth0", None);
        assert!(ok && out.contains(&format!("{private}/24")), "ssh to the public {public}: {out}");
    }

    // 2. Every node reaches every other over SSH, by name and by private address.
    let mesh = |nodes: Vec<(String, String, String)>| {
        let ssh = &ssh;
        async move {
            for a in &nodes {
                for b in nodes.iter().filter(|b| b.0 != a.0) {
                    for target in [&b.0, &b.1] {
                        let cmd = format!(
                            "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 {target} hostname"
                        );
                        let (ok, out) = ssh.run(&a.1, &cmd, None);
                        assert!(ok && out.trim() == b.0, "{} → {target}: {out}", a.0);
                    }
                }
            }
        }
    };
    mesh(nodes.clone()).await;

    // 3. Org B's instance on the same hosts reaches none of them.
    let out = Command::new(BIN).args(["admin", "--data-dir"]).arg(&data).args(["org", "create", "mallory"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).args(["admin", "--data-dir"]).arg(&data).args(["api-key", "create", "--org", "mallory"]).output().unwrap();
    let key_b = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    add_key(key_b.clone()).await;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "quantity": 1});
    let (st, v) = call(&key_b, reqwest::Method::POST, "/instance-operations/launch", Some(launch)).await;
    assert_eq!(st, 200, "{v}");
    let b = active(key_b.clone(), 1).await[0]["private_ip"].as_str().unwrap().to_owned();
    let bh = host_of(&b);
    assert!(ssh.run(&b, "cat > /tmp/c.py", Some(CONNECT_PY)).0);
    for n in &nodes {
        let (through, how) = ssh.connects(&b, &n.1, 22, None);
        assert!(!through, "org B reached {} ({}) on port 22: {how}", n.0, n.1);
    }
    // IPv6: the node on B's own host, at its link-local address.
    let same = nodes.iter().find(|n| host_of(&n.1) == bh).unwrap();
    let v6 = ssh.run(&same.1, "ip -6 -o addr show dev eth0 scope link", None).1;
    let ll = v6.split_whitespace().skip_while(|w| *w != "inet6").nth(1).and_then(|a| a.split('/').next()).unwrap_or("fe80::1").to_owned();
    let (through, how) = ssh.connects(&b, &ll, 22, None);
    assert!(!through, "org B reached {ll} over IPv6: {how}");
    // Forged source: a node of A's address on B's interface, towards a node on another host.
    let (victim, forged) = {
        let others: Vec<&(String, String, String)> = nodes.iter().filter(|n| host_of(&n.1) != bh).collect();
        (others[0].clone(), others[1].1.clone())
    };
    let (ok, out) = ssh.run(&b, &format!("sudo -n ip addr add {forged}/32 dev eth0"), None);
    assert!(ok, "{out}");
    let (through, how) = ssh.connects(&b, &victim.1, 22, Some(&forged));
    assert!(!through, "org B reached {} from the forged source {forged}: {how}", victim.0);
    assert!(ssh.run(&b, &format!("sudo -n ip addr del {forged}/32 dev eth0"), None).0);
    // The underlay: a listener on another host's underlay address, which the machine reaches.
    let peer = (bh + 1) % 3;
    let peer_underlay = format!("203.0.113.{}", peer + 1);
    let listener = Command::new("ip")
        .args(["netns", "exec", &hosts[peer].0, "python3", "-c"])
        .arg(format!("import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('{peer_underlay}', 7999)); s.listen(64)\nwhile True: s.accept()[0].close()"))
        .spawn()
        .unwrap();
    bed.procs.push(listener);
    let t = Instant::now();
    while std::net::TcpStream::connect_timeout(&format!("{peer_underlay}:7999").parse().unwrap(), Duration::from_millis(300)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "the underlay listener never answered the machine");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (through, how) = ssh.connects(&b, &peer_underlay, 7999, None);
    assert!(!through, "org B reached the underlay address {peer_underlay}: {how}");
    // The public path is another matter: org A's rules open port 22 to 0.0.0.0/0, and B's
    // instance reaches a node there (at its public address, from its own).
    let victim_public = publics.iter().find(|p| p.1 == victim.1).unwrap().0.clone();
    let (through, how) = ssh.connects(&b, &victim_public, 22, None);
    assert!(through, "the public address answers on the port the rules open: {how}");

    // 3b. Org A's VPN reaches its nodes on every host, and not B's instance.
    if Command::new("sh").args(["-c", "command -v wireguard-go && command -v wg"]).output().is_ok_and(|o| o.status.success()) {
        let native = |m: reqwest::Method, path: &str, body: Option<Value>| common::call(&http, &key, m, format!("{url}/v1{path}"), body);
        let (st, created) = native(reqwest::Method::POST, "/vpn", Some(json!({"name": "office", "region": "us-east-1"}))).await;
        assert_eq!(st, 201, "{created}");
        let vpn_id = created["data"]["id"].as_str().unwrap().to_owned();
        let client_key = created["data"]["client_private_key"].as_str().unwrap().to_owned();
        let t = Instant::now();
        let vpn = loop {
            let (_, v) = native(reqwest::Method::GET, &format!("/vpn/{vpn_id}"), None).await;
            if v["data"]["status"] == "up" {
                break v["data"].clone();
            }
            assert!(v["data"]["status"] != "failed", "{v}");
            assert!(t.elapsed() < Duration::from_secs(20), "the gateway never came up: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut networks: Vec<String> = vpn["networks"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect();
        networks.sort();
        assert_eq!(networks, ["10.211.1.0/24", "10.211.2.0/24", "10.211.3.0/24"], "{vpn}");
        // The client: a namespace of its own on the underlay, as a laptop on the internet.
        let cns = format!("{tag}c");
        bed.client_ns = Some(cns.clone());
        let sh = |c: &str| assert!(Command::new("sh").args(["-c", c]).status().unwrap().success(), "{c}");
        sh(&format!("ip netns add {cns} && ip link add {cns} mtu 1550 type veth peer name {cns}p && ip link set {cns}p netns {cns}"));
        sh(&format!("ip link set {cns} master {tag}u0 up"));
        let nsx = |c: &str| sh(&format!("ip netns exec {cns} {c}"));
        nsx(&format!("ip link set {cns}p name eth0"));
        nsx("ip addr add 203.0.113.200/24 dev eth0");
        nsx("ip link set eth0 up");
        nsx("ip link set lo up");
        // wireguard-go's control socket (/var/run/wireguard/<name>.sock) is machine-wide: a
        // name of this run's own.
        let wgc = format!("{tag}w");
        nsx(&format!("wireguard-go {wgc}"));
        let key_file = dir.join("vpn-client.key");
        std::fs::write(&key_file, &client_key).unwrap();
        let gw = vpn["gateway_address"].as_str().unwrap().to_owned();
        let allowed = std::iter::once(format!("{gw}/32")).chain(networks.iter().cloned()).collect::<Vec<_>>().join(",");
        nsx(&format!(
            "wg set {wgc} private-key {} peer {} endpoint {} allowed-ips {allowed} persistent-keepalive 1",
            key_file.display(),
            vpn["gateway_public_key"].as_str().unwrap(),
            vpn["endpoint"].as_str().unwrap()
        ));
        nsx(&format!("ip addr add {}/32 dev {wgc}", vpn["client_address"].as_str().unwrap()));
        nsx(&format!("ip link set {wgc} up"));
        for n in networks.iter().chain([&format!("{gw}/32")]) {
            nsx(&format!("ip route add {n} dev {wgc}"));
        }
        let banner = |ip: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &cns, "timeout", "3", "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/22; head -c 4 <&3")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).starts_with("SSH-")
        };
        for n in &nodes {
            let t = Instant::now();
            while !banner(&n.1) {
                assert!(t.elapsed() < Duration::from_secs(20), "no SSH banner from {} ({}) through the VPN", n.0, n.1);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert!(!banner(&b), "org B's instance answered through org A's VPN");
        let (st, v) = native(reqwest::Method::DELETE, &format!("/vpn/{vpn_id}"), None).await;
        assert_eq!(st, 200, "{v}");
        // Every host hears of it: the tunnel leaves every host's private set.
        let t = Instant::now();
        while hosts.iter().any(|(ns, br)| member_set(ns, br, "private").contains("10.201.")) {
            assert!(t.elapsed() < Duration::from_secs(5), "the deleted VPN's tunnel is still private somewhere");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        eprintln!("SKIPPED (VPN part): wireguard-go and wg are needed (scripts/test installs them)");
    }

    // 4. Each refusal can fail. (a) B's address in A's member set on the victim's host.
    let (vns, vbr) = &hosts[host_of(&victim.1)];
    let set = member_set(vns, vbr, "m0");
    assert!(set.contains(&victim.1) && !set.contains(&b), "the victim's host serves only org A: {set}");
    in_ns(vns, &["nft", "add", "element", "inet", &format!("nimbus_{vbr}"), "m0", &format!("{{ {b} }}")]);
    let (through, how) = ssh.connects(&b, &victim.1, 22, None);
    assert!(through, "weakened: with B in A's member set the probe must get through: {how}");
    in_ns(vns, &["nft", "delete", "element", "inet", &format!("nimbus_{vbr}"), "m0", &format!("{{ {b} }}")]);
    assert!(!ssh.connects(&b, &victim.1, 22, None).0, "the member set is back");
    // (b) The underlay rules out of the forward chain of B's host: the one that keeps its
    // instances off the underlay, and the one that refuses tunnelled packets with a source that
    // is not private (the peer's answers come back through the tunnel).
    let (bns, bbr) = &hosts[bh];
    let chain = in_ns(bns, &["nft", "-a", "list", "chain", "inet", &format!("nimbus_{bbr}"), "forward"]);
    for rule in ["ip daddr @underlay drop", "ip saddr != @private drop"] {
        let handle = chain
            .lines()
            .find(|l| l.contains(rule))
            .and_then(|l| l.rsplit("# handle ").next())
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|| panic!("no {rule:?} on B's host: {chain}"));
        in_ns(bns, &["nft", "delete", "rule", "inet", &format!("nimbus_{bbr}"), "forward", "handle", &handle]);
    }
    let (through, how) = ssh.connects(&b, &peer_underlay, 7999, None);
    assert!(through, "weakened: without the underlay rule the probe must get through: {how}");

    // 5. kill -9 of B's host's agent, and a restart: nodes stay connected throughout, and the
    // restarted agent rewrites its filters (the underlay rule is back).
    let agent = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
        .find_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> =
                cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            (args.get(1).map(String::as_str) == Some("agent") && args.contains(bns)).then_some((pid, args))
        })
        .expect("B's host's agent");
    assert!(Command::new("kill").args(["-9", &agent.0.to_string()]).status().unwrap().success());
    let across = |from: &str| nodes.iter().find(|n| n.1 != from && host_of(&n.1) == bh).map(|n| n.1.clone()).unwrap();
    let from = nodes.iter().find(|n| host_of(&n.1) != bh).unwrap().1.clone();
    let to = across(&from);
    for _ in 0..3 {
        let (through, how) = ssh.connects(&from, &to, 22, None);
        assert!(through, "agent down: {from} → {to}: {how}");
    }
    let restarted = Command::new(&agent.1[0]).args(&agent.1[1..]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    bed.procs.push(restarted);
    let t = Instant::now();
    loop {
        let (through, how) = ssh.connects(&from, &to, 22, None);
        assert!(through, "agent restarting: {from} → {to}: {how}");
        let chain = in_ns(bns, &["nft", "list", "chain", "inet", &format!("nimbus_{bbr}"), "forward"]);
        if chain.contains("ip daddr @underlay drop") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the restarted agent never rewrote its filters: {chain}");
    }
    assert!(!ssh.connects(&b, &peer_underlay, 7999, None).0, "after the restart the underlay is closed again");
    mesh(nodes.clone()).await;

    // 6. Terminating a node takes it out of the other hosts' member sets within 1 s.
    let gone = nodes.iter().find(|n| host_of(&n.1) != bh).unwrap().clone();
    // The third host: it serves org A alone, so A's member set there is m0.
    let watch = nodes.iter().find(|n| host_of(&n.1) != host_of(&gone.1) && host_of(&n.1) != bh).unwrap().clone();
    let (wns, wbr) = &hosts[host_of(&watch.1)];
    assert!(member_set(wns, wbr, "m0").contains(&gone.1));
    let t = Instant::now();
    let (st, v) = call(&key, reqwest::Method::POST, "/instance-operations/terminate", Some(json!({"instance_ids": [gone.2]}))).await;
    assert_eq!(st, 200, "{v}");
    while member_set(wns, wbr, "m0").contains(&gone.1) {
        assert!(t.elapsed() < Duration::from_secs(5), "{} still a member on {wns}", gone.1);
        std::thread::sleep(Duration::from_millis(10));
    }
    let converged = t.elapsed();
    eprintln!("terminate → out of the member set of another host: {} ms", converged.as_millis());
    assert!(converged < Duration::from_secs(1), "membership took {converged:?}");
    // Its host lets go of its public address.
    let gone_public = publics.iter().find(|p| p.1 == gone.1).unwrap().0.clone();
    let gns = &hosts[host_of(&gone.1)].0;
    let t = Instant::now();
    while in_ns(gns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).contains(&format!("{gone_public}/32")) {
        assert!(t.elapsed() < Duration::from_secs(15), "{gone_public} still held by {gns}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Everything goes; nothing of the instances is left on any host.
    for k in [&key, &key_b] {
        let (_, v) = call(k, reqwest::Method::GET, "/instances", None).await;
        let ids: Vec<Value> = v["data"].as_array().unwrap().iter().map(|i| i["id"].clone()).collect();
        let (st, v) = call(k, reqwest::Method::POST, "/instance-operations/terminate", Some(json!({"instance_ids": ids}))).await;
        assert_eq!(st, 200, "{v}");
    }
    let t = Instant::now();
    loop {
        let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
        if !netns.lines().any(|l| bridges.iter().any(|b| l.starts_with(&format!("{b}-")))) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "instance namespaces left: {netns}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(bed);
}
