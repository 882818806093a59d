//! End to end on the container driver: launch through the Lambda API, wait for `active`, SSH in
//! as `ubuntu`, write into a file system, terminate, launch a second instance with the same file
//! system and read the file back, and check that nothing of either instance is left on the host.
//! Needs root, ssh and the debian-12 image (scripts/test builds it); otherwise it says why and
//! skips.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_driver::container::cgroup::Cgroups;
use nimbus_driver::container::driver::ContainerConfig;
use nimbus_driver::container::image;
use nimbus_proto::Inventory;
use nimbus_test_utils::TestServer;
use serde_json::json;

fn ready() -> Option<PathBuf> {
    if !Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false) {
        eprintln!("SKIPPED: the container driver needs root");
        return None;
    }
    let images = std::env::var("NIMBUS_TEST_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/var/tmp/nimbus-images"));
    if !image::exists(&images, "debian-12") {
        eprintln!("SKIPPED: no debian-12 image in {} (scripts/test builds it)", images.display());
        return None;
    }
    Some(images)
}

fn ssh(key: &std::path::Path, ip: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=5"])
        .arg(format!("ubuntu@{ip}"))
        .arg(cmd)
        .output()
        .expect("ssh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Removes what a failed run may leave on the host (containers, namespaces, cgroups, the test
/// bridge), so that one failure cannot poison the next run. Runs on panic too.
struct HostCleanup {
    cfg: ContainerConfig,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        // Volumes mounted under instance directories (a failed test may leave them mounted).
        for e in std::fs::read_dir(self.cfg.data_dir.join("instances")).map(|r| r.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            nimbus_driver::container::storage::unmount_all(&e.path());
        }
        nimbus_driver::container::storage::unmount_host_mounts(&self.cfg.data_dir);
        if let Ok(cg) = Cgroups::detect(&self.cfg.cgroup_mount, &self.cfg.cgroup_parent) {
            for name in cg.list() {
                let _ = cg.destroy(&name);
            }
            cg.remove_parent();
        }
        for entry in std::fs::read_dir("/run/netns").map(|r| r.filter_map(|e| e.ok()).collect::<Vec<_>>()).unwrap_or_default() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.cfg.ns_prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
        // Ports left on the bridge (a VM's tap outlives its QEMU) go with it.
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show", "master", &self.cfg.bridge]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                    let _ = Command::new("ip").args(["link", "del", name]).status();
                }
            }
        }
        let _ = Command::new("ip").args(["link", "del", &self.cfg.bridge]).stderr(std::process::Stdio::null()).status();
        nimbus_driver::container::firewall::remove(&self.cfg.bridge);
        // VPN gateways the driver made (a failed test may not have deleted its VPN through the API).
        nimbus_driver::container::vpn::Gateways::new(&self.cfg.data_dir, &self.cfg.bridge, String::new(), None).remove_all();
    }
}

/// A container host of this test process: its own bridge `<prefix><tag>` on `10.<net>.0.0/24`,
/// namespaces and cgroup parent, so tests running side by side never share host objects.
fn host_config(data: &std::path::Path, images: &std::path::Path, prefix: &str, net: u8, sshd_grace: Duration) -> ContainerConfig {
    let tag = std::process::id() % 10_000;
    ContainerConfig {
        bridge: format!("{prefix}{tag}"),
        gateway: Ipv4Addr::new(10, net, 0, 1),
        prefix_len: 24,
        ns_prefix: format!("{prefix}{tag}-"),
        cgroup_parent: format!("nimbus-{prefix}-{tag}"),
        inventory: Some(Inventory {
            hostname: prefix.into(),
            cpu_model: "test".into(),
            vcpus: 4,
            memory_mib: 8192,
            disk_gib: 100,
            gpus: vec![],
            driver: "container".into(),
            public_ip: None,
            network: None,
            machines: vec![],
        }),
        sshd_grace,
        launcher: Some(nimbus_driver::container::runtime::Launcher::binary(env!("CARGO_BIN_EXE_nimbus-test-launch"))),
        ..ContainerConfig::new(data, images)
    }
}

/// A test's container host and SSH key pair: registers a container host of `s` (data under
/// `<server dir>/<dir_name>`, bridge `<prefix>…` on 10.`net`.0.0/24, see `host_config`) and makes
/// a fresh ed25519 key. The guard cleans the host up, also when the test fails.
struct Rig {
    cfg: ContainerConfig,
    data: PathBuf,
    key: PathBuf,
    public: String,
    _cleanup: HostCleanup,
}

async fn rig(s: &mut TestServer, images: &std::path::Path, dir_name: &str, prefix: &str, net: u8, sshd_grace: Duration) -> Rig {
    let data = s.dir.0.join(dir_name);
    let cfg = host_config(&data, images, prefix, net, sshd_grace);
    let cleanup = HostCleanup { cfg: cfg.clone() };
    s.add_container_host("us-east-1", cfg.clone()).await;
    let keydir = s.dir.0.join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let key = keydir.join("id");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    Rig { cfg, data, key, public, _cleanup: cleanup }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_ssh_file_systems_terminate_and_nothing_leaks() {
    let Some(images) = ready() else { return };
    let mut s = TestServer::builder().start().await;
    let data = s.dir.0.join("container-host");
    let cfg = host_config(&data, &images, "nbe", 233, Duration::from_secs(1));
    let _cleanup = HostCleanup { cfg: cfg.clone() };
    s.add_container_host("us-east-1", cfg.clone()).await;

    let keydir = s.dir.0.join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let key = keydir.join("id");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    s.expect("POST", "/ssh-keys", Some(json!({"name": "e2e", "public_key": public.trim()})), 200).await;
    s.expect("POST", "/filesystems", Some(json!({"name": "shared", "region": "us-east-1"})), 200).await;

    let user_data = r#"#cloud-config
write_files:
  - path: /etc/nimbus-e2e
    content: "written by cloud-config\n"
    permissions: '0640'
runcmd:
  - echo ran-runcmd > /tmp/runcmd.txt
"#;
    let mut launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["e2e"],
        "file_system_names": ["shared"], "hostname": "first", "quantity": 1});
    // Invalid cloud-config is refused at launch.
    launch["user_data"] = json!("#cloud-config\nruncmd: [unclosed\n");
    let (st, body) = s.call(&s.key, "POST", "/instance-operations/launch", Some(launch.clone())).await;
    assert_eq!((st, body["error"]["code"].as_str()), (400, Some("global/invalid-parameters")), "{body}");
    launch["user_data"] = json!(user_data);
    let t = Instant::now();
    let v = s.expect("POST", "/instance-operations/launch", Some(launch.clone()), 200).await;
    let id1 = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let inst = s.wait_status(&s.key, &id1, "active").await;
    let ip1 = inst["ip"].as_str().unwrap().to_owned();
    // `active` means reachable: SSH works at the first try (dstack tries exactly once).
    let (ok, out) = ssh(&key, &ip1, "hostname; whoami; sudo -n true && echo sudo-ok; echo hello-from-first > /lambda/nfs/shared/note.txt");
    eprintln!("launch -> first successful ssh: {:?}", t.elapsed());
    assert!(ok, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["first", "ubuntu", "sudo-ok"]);
    // user_data ran once on first boot, with its output where cloud-init keeps it.
    let t = Instant::now();
    loop {
        let (_, out) = ssh(&key, &ip1, "sudo -n cat /etc/nimbus-e2e /tmp/runcmd.txt; sudo -n stat -c %a /etc/nimbus-e2e; sudo -n tail -n 1 /var/log/cloud-init-output.log");
        if out.contains("nimbus-cloud-init: done") {
            assert_eq!(
                out.lines().collect::<Vec<_>>(),
                vec!["written by cloud-config", "ran-runcmd", "640", "nimbus-cloud-init: done"],
                "{out}"
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "user_data never finished: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cg = Cgroups::detect(&cfg.cgroup_mount, &cfg.cgroup_parent).unwrap();
    let limits = cg.limits(&id1).unwrap();
    assert_eq!((limits.cpu_millis, limits.memory_bytes), (1000, 1 << 30), "cpu_1x_small: 1 vCPU, 1 GiB");
    // The same limits, seen from inside the instance (its own cgroup namespace).
    let inside = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                  cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; cat /proc/self/cgroup | head -1";
    let (ok, out) = ssh(&key, &ip1, inside);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1073741824", "{out}");
    assert!(lines[1] == "100000" || lines[1] == "100000 100000", "{out}");
    assert!(lines[2].ends_with(":/"), "the instance is the root of its cgroup namespace: {out}");

    // Metrics are the kernel's own counters: a busy loop inside shows up as most of a core, capped
    // near one (the instance's limit), and its memory and disk are non-zero. The loop runs until
    // seen (at most 20 s) and the bar is half a core: on a loaded 2-core machine a shorter loop
    // could miss every one-second sample at 0.7 cores (seen while compiles ran alongside).
    let (ok, out) = ssh(&key, &ip1, "nohup timeout 20 sh -c 'while :; do :; done' >/dev/null 2>&1 & echo busy");
    assert!(ok, "{out}");
    let t = Instant::now();
    loop {
        let (st, v) = s.native(&s.key, "GET", &format!("/instances/{id1}/metrics?step=1"), None).await;
        assert_eq!(st, 200, "{v}");
        let points = v["data"]["points"].as_array().cloned().unwrap_or_default();
        if let Some(p) = points.iter().rev().find(|p| p["cpu_millicores"].as_i64().unwrap_or(0) >= 500) {
            assert!(p["cpu_millicores"].as_i64().unwrap() <= 1_150, "capped near one core: {p}");
            assert!(p["memory_bytes"].as_i64().unwrap() > 1 << 20, "{p}");
            assert!(p["disk_bytes"].as_i64().unwrap() > 0, "{p}");
            let _ = ssh(&key, &ip1, "pkill -f 'while :; do :; done'; true");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no busy sample: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Firewall: only what the rules allow reaches the instance; the instance cannot reach the
    // host's own services.
    let (ok, out) =
        ssh(&key, &ip1, "for p in 8080 9090; do nohup python3 -m http.server $p >/dev/null 2>&1 & done; sleep 0.5; echo started");
    assert!(ok, "{out}");
    let reach = |port: u16| {
        let addr: std::net::SocketAddr = format!("{ip1}:{port}").parse().unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    };
    assert!(!reach(8080) && !reach(9090), "default rules allow only SSH");
    let rules = json!({"data": [
        {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "ssh"},
        {"protocol": "tcp", "port_range": [8080, 8080], "source_network": format!("{}/32", cfg.gateway), "description": "web from the host"}
    ]});
    s.expect("PUT", "/firewall-rules", Some(rules), 200).await;
    let t = Instant::now();
    while !reach(8080) {
        assert!(t.elapsed() < Duration::from_secs(10), "the new rule never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!reach(9090), "a port no rule names stays closed");
    let host_service = std::net::TcpListener::bind((cfg.gateway, 0)).unwrap();
    let port = host_service.local_addr().unwrap().port();
    let (_, out) =
        ssh(&key, &ip1, &format!("timeout 2 bash -c 'echo > /dev/tcp/{}/{port}' && echo reachable || echo blocked", cfg.gateway));
    assert_eq!(out.trim(), "blocked", "instances must not reach the host's services");
    drop(host_service);

    // An instance whose sshd dies is unhealthy; a restart through the API brings it back.
    let _ = ssh(&key, &ip1, "sudo -n pkill -x sshd");
    s.wait_status(&s.key, &id1, "unhealthy").await;
    s.expect("POST", "/instance-operations/restart", Some(json!({"instance_ids": [id1]})), 200).await;
    s.wait_status(&s.key, &id1, "active").await;
    let (ok, out) = ssh(&key, &ip1, "cat /lambda/nfs/shared/note.txt");
    assert!(ok && out.trim() == "hello-from-first", "{out}");

    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id1]})), 200).await;
    s.wait_status(&s.key, &id1, "terminated").await;

    let mut second = launch.clone();
    second["hostname"] = json!("second");
    let v = s.expect("POST", "/instance-operations/launch", Some(second), 200).await;
    let id2 = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let inst = s.wait_status(&s.key, &id2, "active").await;
    let (ok, out) = ssh(&key, inst["ip"].as_str().unwrap(), "cat /lambda/nfs/shared/note.txt");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "hello-from-first", "the file system outlived the first instance");
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id2]})), 200).await;
    s.wait_status(&s.key, &id2, "terminated").await;

    // Nothing of either instance is left: processes (cgroups), namespaces, veths, mounts, dirs.
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in [&id1, &id2] {
        while cg.exists(id) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!cg.exists(id), "cgroup of {id} left behind");
        assert!(!std::path::Path::new(&format!("/run/netns/{}{}", cfg.ns_prefix, &id[..12])).exists(), "netns of {id} left behind");
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!("nh{}", &id[..12])), "veth of {id} left behind");
        assert!(!data.join("instances").join(id).exists(), "instance dir of {id} left behind");
    }
    let table =
        Command::new("nft").args(["list", "table", "inet", &nimbus_driver::container::firewall::table_name(&cfg.bridge)]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains(&id1[..12]) && !table.contains(&id2[..12]), "nftables rules left behind: {table}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(data.to_str().unwrap()), "a mount under the host's data dir leaked");
    assert!(data.join("file-systems").read_dir().unwrap().next().is_some(), "file systems are kept");
    s.shutdown().await;
}

/// Runs `cmd args` inside network namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

struct PeerCleanup {
    ns: String,
    veth: String,
    wg: String,
}

impl Drop for PeerCleanup {
    fn drop(&mut self) {
        // wireguard-go outlives its namespace unless told to go.
        let _ = Command::new("pkill").args(["-f", &format!("wireguard-go {}", self.wg)]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).stderr(std::process::Stdio::null()).status();
    }
}

/// A WireGuard peer (a network namespace of this test, with wireguard-go) connects through the
/// VPN's gateway to its organization's instance, and cannot reach another organization's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpn_peer_reaches_its_orgs_instance_only() {
    let Some(images) = ready() else { return };
    if Command::new("sh").args(["-c", "command -v wireguard-go && command -v wg"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("SKIPPED: wireguard-go and wg are needed (scripts/test installs them)");
        return;
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").map(|s| s.trim() != "1").unwrap_or(true) {
        eprintln!("SKIPPED: net.ipv4.ip_forward is 0 on this host (VPN gateways route)");
        return;
    }
    let tag = std::process::id() % 10_000;
    let mut s = TestServer::builder().start().await;
    let data = s.dir.0.join("vpn-host");
    let cfg = host_config(&data, &images, "nbv", 236, Duration::from_secs(5));
    let _cleanup = HostCleanup { cfg: cfg.clone() };
    s.add_container_host("us-east-1", cfg.clone()).await;

    // One instance in our org, one in another org, same host.
    let key_id = s.expect("POST", "/ssh-keys", Some(json!({"name": "v", "public_key": crate::PUBKEY})), 200).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let mine = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    let (_, other_key) = s.org_with_key("vpn-other", "ADMIN").await;
    let (_, k2) = s.call(&other_key, "POST", "/ssh-keys", Some(json!({"name": "o", "public_key": crate::PUBKEY}))).await;
    let body2 = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [k2["data"]["id"]]});
    let (st, v) = s.native(&other_key, "POST", "/instances", Some(body2)).await;
    assert_eq!(st, 201, "{v}");
    let theirs = v["data"]["id"].as_str().unwrap().to_owned();
    let my_ip = s.wait_native_status(&format!("/instances/{mine}"), "running").await["private_ip"].as_str().unwrap().to_owned();
    let their_ip = loop {
        let (_, v) = s.native(&other_key, "GET", &format!("/instances/{theirs}"), None).await;
        if v["data"]["status"] == "running" {
            break v["data"]["private_ip"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let created = s.nexpect("POST", "/vpn", Some(json!({"name": "office", "region": "us-east-1"})), 201).await;
    let vpn_id = created["id"].as_str().unwrap().to_owned();
    let client_key = created["client_private_key"].as_str().unwrap().to_owned();
    assert_eq!(nimbus_core::wireguard::public_key(&client_key).as_deref(), created["client_public_key"].as_str());
    let t = Instant::now();
    let vpn = loop {
        let v = s.nexpect("GET", &format!("/vpn/{vpn_id}"), None, 200).await;
        if v["status"] == "up" {
            break v;
        }
        assert!(v["status"] != "failed", "{v}");
        assert!(t.elapsed() < Duration::from_secs(20), "the gateway never came up: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(vpn["network"], "10.236.0.0/24");
    let endpoint = vpn["endpoint"].as_str().unwrap().to_owned();

    // The peer: its own namespace, reaching the host over a veth, running userspace WireGuard.
    let ns = format!("nbvpeer{tag}");
    let veth = format!("nbvp{tag}");
    let wg_if = format!("wgp{tag}");
    let _peer = PeerCleanup { ns: ns.clone(), veth: veth.clone(), wg: wg_if.clone() };
    let sh = |c: &str| assert!(Command::new("sh").args(["-c", c]).status().unwrap().success(), "{c}");
    sh(&format!("ip netns add {ns}"));
    sh(&format!("ip link add {veth} type veth peer name {veth}x && ip link set {veth}x netns {ns}"));
    sh(&format!("ip addr add 10.237.{}.1/30 dev {veth} && ip link set {veth} up", tag % 250));
    for c in [
        format!("ip addr add 10.237.{}.2/30 dev {veth}x", tag % 250),
        format!("ip link set {veth}x up"),
        "ip link set lo up".to_owned(),
        format!("ip route add default via 10.237.{}.1", tag % 250),
    ] {
        let args: Vec<&str> = c.split(' ').collect();
        let (ok, out) = in_ns(&ns, &args);
        assert!(ok, "{c}: {out}");
    }
    let (ok, out) = in_ns(&ns, &["wireguard-go", &wg_if]);
    assert!(ok, "wireguard-go: {out}");
    let mut wg = Command::new("ip")
        .args(["netns", "exec", &ns, "wg", "set", &wg_if, "private-key", "/dev/stdin", "peer", vpn["gateway_public_key"].as_str().unwrap()])
        .args(["endpoint", &endpoint, "allowed-ips", &format!("{}/32,10.236.0.0/24", vpn["gateway_address"].as_str().unwrap())])
        .args(["persistent-keepalive", "1"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        wg.stdin.take().unwrap().write_all(client_key.as_bytes()).unwrap();
    }
    assert!(wg.wait().unwrap().success());
    for c in [
        format!("ip addr add {}/32 dev {wg_if}", vpn["client_address"].as_str().unwrap()),
        format!("ip link set {wg_if} up"),
        format!("ip route add 10.236.0.0/24 dev {wg_if}"),
        format!("ip route add {}/32 dev {wg_if}", vpn["gateway_address"].as_str().unwrap()),
    ] {
        let args: Vec<&str> = c.split(' ').collect();
        let (ok, out) = in_ns(&ns, &args);
        assert!(ok, "{c}: {out}");
    }
    let banner = |ip: &str| in_ns(&ns, &["timeout", "4", "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/22; head -c 4 <&3")]);
    let t = Instant::now();
    loop {
        let (ok, out) = banner(&my_ip);
        if ok && out.starts_with("SSH-") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no SSH banner from our instance through the tunnel: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gateway forwards only to its org's instances.
    let (ok, out) = banner(&their_ip);
    assert!(!(ok && out.starts_with("SSH-")), "another org's instance answered through our VPN: {out}");

    // Deleting the VPN takes the gateway down.
    s.nexpect("DELETE", &format!("/vpn/{vpn_id}"), None, 200).await;
    let iface = format!("/sys/class/net/nv{}", &vpn_id[..12]);
    let t = Instant::now();
    while std::path::Path::new(&iface).exists() {
        assert!(t.elapsed() < Duration::from_secs(15), "{iface} is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in [&mine] {
        s.nexpect("DELETE", &format!("/instances/{id}"), None, 200).await;
    }
    let (st, _) = s.native(&other_key, "DELETE", &format!("/instances/{theirs}"), None).await;
    assert_eq!(st, 200);
}

/// Volumes and snapshots on real containers: a 1 GiB volume attached to a running instance
/// appears at /mnt/volumes/<name> without a restart, is writable by `ubuntu`, and a write past
/// its size fails with ENOSPC; detaching removes it from the running instance; a volume snapshot
/// restores into a new volume with the same data; a stopped instance's disk snapshot restores
/// into a new instance; afterwards nothing stays mounted or attached to a loop device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_enforce_size_attach_live_and_snapshots_restore() {
    let Some(images) = ready() else { return };
    let mut s = TestServer::builder().start().await;
    let rig = rig(&mut s, &images, "storage-host", "nbs", 238, Duration::from_secs(5)).await;
    let (data, key, public) = (rig.data.clone(), rig.key.clone(), rig.public.clone());
    let kid = s.expect("POST", "/ssh-keys", Some(json!({"name": "st", "public_key": public.trim()})), 200).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [kid]});
    let a = s.nexpect("POST", "/instances", Some(body.clone()), 201).await["id"].as_str().unwrap().to_owned();
    let ip = s.wait_native_status(&format!("/instances/{a}"), "running").await["ip"].as_str().unwrap().to_owned();

    let vid = s.nexpect("POST", "/volumes", Some(json!({"name": "data", "region": "us-east-1", "size_gib": 1})), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.nexpect("POST", &format!("/volumes/{vid}/attach"), Some(json!({"instance_id": a})), 200).await;
    s.wait_native_status(&format!("/volumes/{vid}"), "attached").await;
    let (ok, out) =
        ssh(&key, &ip, "echo hello > /mnt/volumes/data/note && cat /mnt/volumes/data/note && df -k /mnt/volumes/data | tail -1");
    assert!(ok && out.contains("hello"), "the volume is in the running instance and ubuntu can write: {out}");
    let (_, out) = ssh(&key, &ip, "dd if=/dev/zero of=/mnt/volumes/data/fill bs=1M count=1200 2>&1; rm -f /mnt/volumes/data/fill; sync");
    assert!(out.contains("No space left on device"), "writing past 1 GiB must fail with ENOSPC: {out}");

    // Growing an attached volume: online where the host allows it, otherwise at the next
    // mount (this project's VMs refuse the online-resize ioctl); 2 GiB after a re-attach either way.
    s.nexpect("POST", &format!("/volumes/{vid}/resize"), Some(json!({"size_gib": 2})), 200).await;
    s.nexpect("POST", &format!("/volumes/{vid}/detach"), None, 200).await;
    let t = Instant::now();
    while ssh(&key, &ip, "test -e /mnt/volumes/data/note && echo still || echo gone").1.trim() != "gone" {
        assert!(t.elapsed() < Duration::from_secs(15), "detached volume still visible");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.nexpect("POST", &format!("/volumes/{vid}/attach"), Some(json!({"instance_id": a})), 200).await;
    let t = Instant::now();
    loop {
        let (_, out) = ssh(&key, &ip, "df -k --output=size /mnt/volumes/data | tail -1; cat /mnt/volumes/data/note");
        let kib: u64 = out.lines().next().unwrap_or("").trim().parse().unwrap_or(0);
        if kib > 1_500_000 {
            assert!(out.contains("hello"), "the data survived the grow: {out}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the volume did not grow inside the instance: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A snapshot of the mounted volume (frozen while copied), restored into a new volume.
    let sid =
        s.nexpect("POST", "/snapshots", Some(json!({"name": "vsnap", "volume_id": vid})), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/snapshots/{sid}"), "available").await;
    s.nexpect("POST", &format!("/volumes/{vid}/detach"), None, 200).await;
    let t = Instant::now();
    loop {
        let (_, out) = ssh(&key, &ip, "test -e /mnt/volumes/data/note && echo still || echo gone");
        if out.trim() == "gone" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "detached volume still visible: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = s.nexpect("POST", &format!("/snapshots/{sid}/restore"), Some(json!({"name": "copy"})), 201).await;
    let copy = r["volume"]["id"].as_str().unwrap().to_owned();
    s.nexpect("POST", &format!("/volumes/{copy}/attach"), Some(json!({"instance_id": a})), 200).await;
    s.wait_native_status(&format!("/volumes/{copy}"), "attached").await;
    let (ok, out) = ssh(&key, &ip, "cat /mnt/volumes/copy/note");
    assert!(ok && out.contains("hello"), "restored volume has the data: {out}");

    // A stopped instance's disk, snapshotted and restored into a new instance.
    ssh(&key, &ip, "echo from-a > /home/ubuntu/marker");
    s.nexpect("POST", &format!("/instances/{a}/stop"), None, 200).await;
    s.wait_native_status(&format!("/instances/{a}"), "stopped").await;
    let isnap =
        s.nexpect("POST", "/snapshots", Some(json!({"name": "disk", "instance_id": a})), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/snapshots/{isnap}"), "available").await;
    let r = s
        .nexpect(
            "POST",
            &format!("/snapshots/{isnap}/restore"),
            Some(json!({"name": "b", "instance_type": "cpu_1x_small", "ssh_keys": [kid]})),
            201,
        )
        .await;
    let b = r["instance"]["id"].as_str().unwrap().to_owned();
    let ip_b = s.wait_native_status(&format!("/instances/{b}"), "running").await["ip"].as_str().unwrap().to_owned();
    let (ok, out) = ssh(&key, &ip_b, "cat /home/ubuntu/marker");
    assert!(ok && out.contains("from-a"), "the restored instance has the source's disk: {out}");

    for id in [&a, &b] {
        s.nexpect("DELETE", &format!("/instances/{id}"), None, 200).await;
        s.wait_native_status(&format!("/instances/{id}"), "terminated").await;
    }
    for v in [&vid, &copy] {
        s.wait_native_status(&format!("/volumes/{v}"), "available").await;
        s.nexpect("DELETE", &format!("/volumes/{v}"), None, 200).await;
    }
    let t = Instant::now();
    loop {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let loops = String::from_utf8(Command::new("losetup").arg("-a").output().unwrap().stdout).unwrap();
        let ours = data.display().to_string();
        let left_mounts = mounts.lines().filter(|l| l.contains(&ours)).count();
        let left_loops = loops.lines().filter(|l| l.contains(&ours)).count();
        let files = std::fs::read_dir(data.join("volumes")).map(|d| d.count()).unwrap_or(0);
        if left_mounts == 0 && left_loops == 0 && files == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "left behind: {left_mounts} mounts, {left_loops} loop devices, {files} volume files"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Voltage Park storage on real containers: one volume shared by two running instances (its
/// file system mounted once on the host, bound into both) shows in both at
/// /mnt/volumes/<name>; a file written in one is read in the other, and the bytes it takes show
/// in `used_capacity_bytes` (measured by the agent on the host mount); detaching removes it from
/// both; afterwards nothing stays mounted or attached to a loop device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voltage_storage_shared_by_two_instances_and_measured() {
    let Some(images) = ready() else { return };
    let mut s = TestServer::builder().start().await;
    let rig = rig(&mut s, &images, "vp-storage-host", "nbp", 241, Duration::from_secs(5)).await;
    let (data, key, public) = (rig.data.clone(), rig.key.clone(), rig.public.clone());
    let kid = s.expect("POST", "/ssh-keys", Some(json!({"name": "vp", "public_key": public.trim()})), 200).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [kid]});
    let mut ids = Vec::new();
    let mut ips = Vec::new();
    for _ in 0..2 {
        let id = s.nexpect("POST", "/instances", Some(body.clone()), 201).await["id"].as_str().unwrap().to_owned();
        ids.push(id);
    }
    for id in &ids {
        ips.push(s.wait_native_status(&format!("/instances/{id}"), "running").await["ip"].as_str().unwrap().to_owned());
    }
    let uuid = |h: &str| format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);

    let (st, v) = s
        .call(
            &s.key,
            "POST",
            "/storage/",
            Some(json!({"size_in_gb": 1, "name": "Shared Data", "order_ids": [uuid(&ids[0]), uuid(&ids[1])]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let sid = v["id"].as_str().unwrap().to_owned();
    let native = s.wait_native_status(&format!("/volumes/{}", sid.replace('-', "")), "attached").await;
    let at = native["mount_point"].as_str().unwrap().to_owned();
    assert!(at.starts_with("/mnt/volumes/shared-data-"), "{native}");

    let (ok, out) = ssh(&key, &ips[0], &format!("dd if=/dev/zero of={at}/blob bs=1M count=48 2>&1 && sync && echo written"));
    assert!(ok && out.contains("written"), "the first instance writes into the shared volume: {out}");
    let (ok, out) = ssh(&key, &ips[1], &format!("stat -c %s {at}/blob"));
    assert!(ok && out.trim() == (48u64 << 20).to_string(), "the second instance sees the same file: {out}");

    let t = Instant::now();
    loop {
        let (st, g) = s.call(&s.key, "GET", &format!("/storage/{sid}"), None).await;
        assert_eq!(st, 200, "{g}");
        let used = g["used_capacity_bytes"].as_i64().unwrap();
        if used >= 48 << 20 {
            assert!(used < 200 << 20, "used bytes are the file system's, not the volume's size: {g}");
            assert_eq!(g["status"], "active", "{g}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "the 48 MiB file never showed in used_capacity_bytes: {g}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Detached from both (an empty set of orders): gone from both running instances.
    let (st, v) = s.call(&s.key, "PATCH", &format!("/storage/{sid}"), Some(json!({"order_ids": []}))).await;
    assert_eq!((st, &v["order_ids"]), (200, &json!([])), "{v}");
    for ip in &ips {
        let t = Instant::now();
        while ssh(&key, ip, &format!("test -e {at}/blob && echo still || echo gone")).1.trim() != "gone" {
            assert!(t.elapsed() < Duration::from_secs(15), "detached volume still visible in {ip}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (st, _) = s.call(&s.key, "DELETE", &format!("/storage/{sid}"), None).await;
    assert_eq!(st, 204);
    for id in &ids {
        s.nexpect("DELETE", &format!("/instances/{id}"), None, 200).await;
        s.wait_native_status(&format!("/instances/{id}"), "terminated").await;
    }
    let t = Instant::now();
    loop {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let loops = String::from_utf8(Command::new("losetup").arg("-a").output().unwrap().stdout).unwrap();
        let ours = data.display().to_string();
        let left_mounts = mounts.lines().filter(|l| l.contains(&ours)).count();
        let left_loops = loops.lines().filter(|l| l.contains(&ours)).count();
        let files = std::fs::read_dir(data.join("volumes")).map(|d| d.count()).unwrap_or(0);
        if left_mounts == 0 && left_loops == 0 && files == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "left behind: {left_mounts} mounts, {left_loops} loop devices, {files} volume files"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ssh -p port ubuntu@host cmd` with `key`.
fn ssh_port(key: &std::path::Path, host: &str, port: i64, cmd: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=5", "-p", &port.to_string()])
        .arg(format!("ubuntu@{host}"))
        .arg(cmd)
        .output()
        .expect("ssh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Seed 004 end to end: org key → instant VM with `selective` keys, a password and a cloud-init
/// `write_files` → SSH through the returned `public_ip` and `port_forwards` → the file is there
/// → power stop/start (the disk survives) → delete → nothing held, no forward left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voltage_vm_ssh_through_its_port_forward_power_and_delete() {
    let Some(images) = ready() else { return };
    // A port range of its own: forwards DNAT every local address, so stay clear of others.
    let mut s = TestServer::builder().config(|c| c.port_forwards.first_port = 42_100).start().await;
    let rig = rig(&mut s, &images, "vp-vm-host", "nbw", 243, Duration::from_secs(5)).await;
    let (cfg, key, public) = (rig.cfg.clone(), rig.key.clone(), rig.public.clone());
    let vp = |m: &'static str, p: String, b: Option<serde_json::Value>| {
        let s = &s;
        async move { s.send(&s.key, m, format!("{}/api/v1{p}", s.url), b).await }
    };

    let (st, mine) = vp("POST", "/organization/ssh-keys".into(), Some(json!({"name": "mine", "content": public.trim()}))).await;
    assert_eq!(st, 201, "{mine}");
    let (st, _) = vp("POST", "/organization/ssh-keys".into(), Some(json!({"name": "not mine", "content": crate::PUBKEY}))).await;
    assert_eq!(st, 201);
    let (_, presets) = vp("GET", "/instant-deploy-presets?available=true".into(), None).await;
    let preset = presets
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["resources"]["vcpu_count"] == 1 && p["resources"]["gpus"] == json!({}))
        .unwrap_or_else(|| panic!("no 1-vCPU preset available: {presets}"))
        .clone();
    let (_, node) = vp("GET", "/locations?limit=15".into(), None).await;
    let hostnode_id = node["results"].as_array().unwrap().iter().find(|l| l["region"] == "us-east-1").unwrap()["hostnodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let free = |v: serde_json::Value| (v["available_resources"]["vcpu_count"].clone(), v["available_ports"].as_array().map(Vec::len));
    let before = free(vp("GET", format!("/hostnodes/{hostnode_id}"), None).await.1);
    assert_eq!(before, (json!(4), Some(256)));

    let (st, created) = vp(
        "POST",
        "/virtual-machines/instant".into(),
        Some(json!({
            "config_id": preset["id"],
            "name": "e2e vm",
            "password": "e2e-password-1",
            "organization_ssh_keys": {"mode": "selective", "ssh_key_ids": [mine["id"]]},
            "cloud_init": {"write_files": [{"path": "/etc/vp-e2e", "content": "hello from voltage park\n"}]},
        })),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    let vm = created["vm_id"].as_str().unwrap().to_owned();
    let wait = |want: &'static str| {
        let vp = &vp;
        let vm = vm.clone();
        async move {
            let t = Instant::now();
            loop {
                let (st, v) = vp("GET", format!("/virtual-machines/{vm}"), None).await;
                assert_eq!(st, 200, "{v}");
                if v["status"] == want {
                    return v;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "never {want}: {v}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let v = wait("Running").await;
    let host = v["public_ip"].as_str().unwrap().to_owned();
    let port = v["port_forwards"][0]["external_port"].as_i64().unwrap();
    assert_eq!((host.as_str(), v["port_forwards"][0]["internal_port"].as_i64(), port), ("127.0.0.1", Some(22), 42_100));
    assert_eq!(free(vp("GET", format!("/hostnodes/{hostnode_id}"), None).await.1), (json!(3), Some(255)));

    // Through the forward: the first try works ("Running" means reachable), cloud-init's file
    // arrives (it runs right after sshd starts), only the selected key is authorized.
    let (ok, out) = ssh_port(&key, &host, port, "cat ~/.ssh/authorized_keys");
    assert!(ok, "ssh through the port forward: {out}");
    assert!(out.contains(public.trim()) && !out.contains(crate::PUBKEY), "{out}");
    let mut file = String::new();
    for _ in 0..50 {
        let (_, out) = ssh_port(&key, &host, port, "cat /etc/vp-e2e 2>/dev/null");
        file = out;
        if file.contains("hello from voltage park") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(file, "hello from voltage park\n");
    // The password is set (as a SHA-512 crypt hash that verifies) and sshd accepts passwords.
    let check = "sudo -n getent shadow ubuntu | cut -d: -f2 > /tmp/h; python3 -c \"import crypt; h=open('/tmp/h').read().strip(); print(h[:3], crypt.crypt('e2e-password-1', h) == h)\" 2>/dev/null; ps -o args= -C sshd | grep -c PasswordAuthentication=yes";
    let (ok, out) = ssh_port(&key, &host, port, check);
    assert!(ok && out.starts_with("$6$ True\n"), "{out}");

    // Stop (keeps the reservation), start: the disk and the forward survive.
    let (st, _) = vp("PUT", format!("/virtual-machines/{vm}/power-status"), Some(json!({"status": "stopped"}))).await;
    assert_eq!(st, 200);
    wait("Stopped").await;
    assert!(!ssh_port(&key, &host, port, "true").0, "a stopped VM does not answer");
    assert_eq!(free(vp("GET", format!("/hostnodes/{hostnode_id}"), None).await.1), (json!(3), Some(255)));
    let (st, _) = vp("PUT", format!("/virtual-machines/{vm}/power-status"), Some(json!({"status": "started"}))).await;
    assert_eq!(st, 200);
    wait("Running").await;
    let (ok, out) = ssh_port(&key, &host, port, "cat /etc/vp-e2e");
    assert!(ok && out == "hello from voltage park\n", "{out}");

    // A port forward of its own: a server on the VM's 8080, reached on the host's address at
    // the chosen external port; closed again, it is not.
    let serve = "printf '%s\\n' 'import socket' 's=socket.socket()' 's.setsockopt(1,2,1)' 's.bind((\"0.0.0.0\",8080))' 's.listen(8)' 'while True:' ' c=s.accept()[0]; c.sendall(b\"hello-8080\"); c.close()' > /tmp/s.py && (nohup python3 /tmp/s.py >/dev/null 2>&1 &) && echo served";
    let (ok, out) = ssh_port(&key, &host, port, serve);
    assert!(ok && out.contains("served"), "{out}");
    let (st, f) = vp("POST", format!("/virtual-machines/{vm}/port-forwards"), Some(json!({"internal_port": 8080}))).await;
    assert_eq!(st, 201, "{f}");
    let ext = u16::try_from(f["external_port"].as_i64().unwrap()).unwrap();
    let hello = |p: u16| -> Option<String> {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect_timeout(&format!("{host}:{p}").parse().ok()?, Duration::from_millis(500)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut b = String::new();
        c.read_to_string(&mut b).ok()?;
        Some(b)
    };
    let t = Instant::now();
    while hello(ext).as_deref() != Some("hello-8080") {
        assert!(t.elapsed() < Duration::from_secs(15), "the forward to 8080 never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(free(vp("GET", format!("/hostnodes/{hostnode_id}"), None).await.1), (json!(3), Some(254)), "the host port is taken");
    let (st, _) = vp("DELETE", format!("/virtual-machines/{vm}/port-forwards/{ext}"), None).await;
    assert_eq!(st, 202);
    let t = Instant::now();
    while hello(ext).is_some() {
        assert!(t.elapsed() < Duration::from_secs(15), "the closed forward still answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Delete: everything it held comes back and its forward is gone from the host.
    let (st, _) = vp("DELETE", format!("/virtual-machines/{vm}"), None).await;
    assert_eq!(st, 202);
    let t = Instant::now();
    while vp("GET", format!("/virtual-machines/{vm}"), None).await.0 != 404 {
        assert!(t.elapsed() < Duration::from_secs(30), "VM not gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(free(vp("GET", format!("/hostnodes/{hostnode_id}"), None).await.1), before);
    let table =
        Command::new("nft").args(["list", "table", "inet", &nimbus_driver::container::firewall::table_name(&cfg.bridge)]).output().unwrap();
    let rules = String::from_utf8_lossy(&table.stdout);
    assert!(!rules.contains("42100") && !rules.contains("dnat"), "no forward left: {rules}");
    assert!(!ssh_port(&key, &host, port, "true").0);
}

/// Seed 003 end to end: a 3-node dedicated cluster on the container driver; node 1 reaches
/// node 2 by name over SSH on the private network; a node killed from the host becomes
/// `NOT_READY` and then `LIVE` again; delete leaves no capacity allocated and nothing on the host.
/// Every process of an instance killed from the host: the agent starts it again by itself, and
/// the server hears of the death first (`unhealthy`, with its event), even when no heartbeat
/// falls between the death and the restart. The heartbeat here is longer than the whole test, so
/// only the agent's report before restarting can tell the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_processes_die_is_unhealthy_until_the_agent_restarts_it() {
    let Some(images) = ready() else { return };
    let mut s = TestServer::builder()
        .config(|c| {
            c.agents.heartbeat_interval_ms = 600_000;
            c.agents.host_timeout_ms = 1_200_000;
        })
        .start()
        .await;
    let rig = rig(&mut s, &images, "died-host", "nbd", 246, Duration::from_secs(5)).await;
    let cg = Cgroups::detect(&rig.cfg.cgroup_mount, &rig.cfg.cgroup_parent).unwrap();
    s.expect("POST", "/ssh-keys", Some(json!({"name": "d", "public_key": rig.public.trim()})), 200).await;
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["d"], "quantity": 1})),
            200,
        )
        .await;
    let id = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let inst = s.wait_status(&s.key, &id, "active").await;
    let ip = inst["ip"].as_str().unwrap().to_owned();
    assert!(ssh(&rig.key, &ip, "true").0);

    let pids = cg.pids(&id);
    assert!(!pids.is_empty(), "the instance has processes");
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let t = Instant::now();
    let died = loop {
        let events = s.control.store().event_list_by_org(&s.org.id, 0, None, None, Some("instance"), 1000).await.unwrap();
        if let Some(e) = events.into_iter().find(|e| e.kind == "instance.unhealthy" && e.resource_id == id) {
            break e;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the dead instance was never unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(died.payload["from"], "active", "{}", died.payload);
    let back = s.wait_status(&s.key, &id, "active").await;
    assert_eq!(back["ip"].as_str(), Some(ip.as_str()), "same address after the restart");
    let mut up = false;
    for _ in 0..50 {
        if ssh(&rig.key, &ip, "true").0 {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(up, "the restarted instance answers SSH");
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id]})), 200).await;
    s.wait_status(&s.key, &id, "terminated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_reach_each_other_by_name_and_come_back() {
    let Some(images) = ready() else { return };
    // This test polls the clusters API (plan-limited, like the native API) for a while.
    let mut s = TestServer::builder()
        .config(|c| {
            for p in c.rate_limits.plans.values_mut() {
                p.per_hour = 10_000_000;
                p.burst = 100_000;
            }
        })
        .start()
        .await;
    let rig = rig(&mut s, &images, "cluster-host", "nbc", 244, Duration::from_secs(5)).await;
    let (cfg, data, key, public) = (rig.cfg.clone(), rig.data.clone(), rig.key.clone(), rig.public.clone());
    s.expect("POST", "/ssh-keys", Some(json!({"name": "cl", "public_key": public.trim()})), 200).await;
    let api = |m: &'static str, p: String, b: Option<serde_json::Value>| {
        let s = &s;
        async move { s.send(&s.key, m, format!("{}/api/v1{p}", s.url), b).await }
    };

    let (st, c) = api(
        "POST",
        "/clusters".into(),
        Some(json!({"name": "c", "provider": "NIMBUS", "spec": {"dedicated": {"region_nodes": {"us-east-1": 3}, "machine_type": "cpu_1x_small"}}})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    let id = c["id"].as_str().unwrap().to_owned();
    let t = Instant::now();
    loop {
        let (_, v) = api("GET", format!("/clusters/{id}"), None).await;
        if v["state"] == "CREATED" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "cluster never CREATED: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut insts = s.control.store().instance_list_by_org(&s.org.id).await.unwrap();
    insts.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    assert_eq!(insts.iter().map(|i| i.hostname.as_str()).collect::<Vec<_>>(), ["c-1", "c-2", "c-3"]);
    let ip1 = insts[0].ip.clone().unwrap();

    // Node 1 knows its peers by name (/etc/hosts) and reaches node 2 over SSH by that name.
    let mut peers_known = String::new();
    for _ in 0..50 {
        let (_, out) = ssh(&key, &ip1, "getent hosts c-2 c-3");
        peers_known = out;
        if peers_known.lines().count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(peers_known.contains(insts[1].ip.as_deref().unwrap()) && peers_known.contains("c-3"), "{peers_known}");
    let copy = Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg(format!("ubuntu@{ip1}"))
        .arg("umask 077; cat > ~/.ssh/id_ed25519")
        .stdin(std::fs::File::open(&key).unwrap())
        .status()
        .unwrap();
    assert!(copy.success());
    let (ok, out) = ssh(&key, &ip1, "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o LogLevel=ERROR c-2 hostname");
    assert!(ok && out.trim() == "c-2", "node 1 → node 2 by name: {out}");

    // Kill node 3 from the host: NOT_READY, then LIVE again (restarted by the cluster).
    let node3 = insts[2].id.to_string();
    let cg = Cgroups::detect(&cfg.cgroup_mount, &cfg.cgroup_parent).unwrap();
    for pid in cg.pids(&node3) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let status3 = || async {
        let (_, n) = api("GET", format!("/clusters/{id}/nodes"), None).await;
        n["nodes"].as_array().unwrap().iter().find(|x| x["name"] == "c-3").map(|x| x["status"].as_str().unwrap().to_owned()).unwrap()
    };
    // The node is NOT_READY from the agent's report of the death until its restart is up:
    // under a loaded suite that can be shorter than one poll of the API, so the event of the
    // transition counts as having seen it too.
    let went_unhealthy = || async {
        let events = s.control.store().event_list_by_org(&insts[2].org_id, 0, None, None, Some("instance"), 10_000).await.unwrap();
        events.iter().any(|e| e.resource_id == node3 && e.kind == "instance.unhealthy")
    };
    let t = Instant::now();
    while status3().await != "NOT_READY" && !went_unhealthy().await {
        assert!(t.elapsed() < Duration::from_secs(30), "killed node never NOT_READY");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    while status3().await != "LIVE" {
        assert!(t.elapsed() < Duration::from_secs(60), "killed node never LIVE again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ssh(&key, &insts[2].ip.clone().unwrap(), "true").0, "node 3 answers again");

    // Delete: no capacity left allocated, nothing of the nodes left on the host.
    let (st, _) = api("DELETE", format!("/clusters/{id}"), None).await;
    assert_eq!(st, 200);
    let t = Instant::now();
    loop {
        let hosts = s.control.store().host_list(None, true).await.unwrap();
        if hosts.iter().all(|h| h.used == nimbus_core::catalog::Resources::default()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "capacity still allocated: {:?}", hosts[0].used);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.wait_for("no node directory left", || async { std::fs::read_dir(data.join("instances")).map(|d| d.count() == 0).unwrap_or(true) })
        .await;
    assert!(cg.list().is_empty(), "no cgroup left");
}

/// Polls the Lambda API until instance `id` is `status` (VMs under TCG boot in seconds, not
/// the milliseconds `wait_status` allows).
async fn wait_lambda_status(s: &TestServer, id: &str, status: &str, secs: u64) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let (st, v) = s.call(&s.key, "GET", &format!("/instances/{id}"), None).await;
        assert_eq!(st, 200, "{v}");
        if v["data"]["status"] == status {
            return v["data"].clone();
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "instance {id} never became {status}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A VM through the Lambda API, as a Lambda client uses one: launched with a file system,
/// `active` only once its sshd answers (SSH works at the first try), the file system shared
/// with a container of the same org both ways, restarted with its disk kept, terminated with
/// nothing left on the host. Skips without the guest kernel (`nimbus image build --vm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_through_the_lambda_api_shares_a_file_system_and_leaves_nothing() {
    let Some(images) = ready() else { return };
    if nimbus_driver::vm::guest::prepared(&images).is_none() {
        eprintln!("SKIPPED: no guest kernel in {} (nimbus image build --vm)", images.display());
        return;
    }
    let mut s = TestServer::builder().start().await;
    let rig = rig(&mut s, &images, "vm-host", "nbm", 239, Duration::from_secs(120)).await;
    let cg = Cgroups::detect(&rig.cfg.cgroup_mount, &rig.cfg.cgroup_parent).unwrap();
    s.expect("POST", "/ssh-keys", Some(json!({"name": "vm", "public_key": rig.public.trim()})), 200).await;
    s.expect("POST", "/filesystems", Some(json!({"name": "shared", "region": "us-east-1"})), 200).await;
    let types = s.expect("GET", "/instance-types", None, 200).await;
    assert!(
        types["data"]["cpu_1x_small_vm"]["regions_with_capacity_available"].as_array().is_some_and(|r| !r.is_empty()),
        "a host that runs VMs offers the VM type: {}",
        types["data"]["cpu_1x_small_vm"]
    );
    let launch = |t: &str, host: &str| {
        json!({"region_name": "us-east-1", "instance_type_name": t, "ssh_key_names": ["vm"], "file_system_names": ["shared"],
            "hostname": host, "quantity": 1})
    };
    let t = Instant::now();
    let v = s.expect("POST", "/instance-operations/launch", Some(launch("cpu_1x_small_vm", "vm-one")), 200).await;
    let vm = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let inst = wait_lambda_status(&s, &vm, "active", 180).await;
    let ip = inst["ip"].as_str().unwrap().to_owned();
    let (ok, out) = ssh(&rig.key, &ip, "hostname; uname -r; echo from-vm > /lambda/nfs/shared/vm.txt && echo wrote");
    eprintln!("VM launch -> active -> first ssh: {:?}", t.elapsed());
    assert!(ok, "SSH works at the first try once active: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"vm-one"), "{out}");
    assert!(lines.get(1).is_some_and(|k| k.contains("cloud-amd64")), "its own kernel: {out}");
    assert!(out.contains("wrote"), "{out}");
    let qemu = cg.pids(&vm);
    assert!(!qemu.is_empty(), "the VM's QEMU is in its cgroup");

    let v = s.expect("POST", "/instance-operations/launch", Some(launch("cpu_1x_small", "ct-one")), 200).await;
    let ct = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let cinst = wait_lambda_status(&s, &ct, "active", 60).await;
    let cip = cinst["ip"].as_str().unwrap().to_owned();
    let (ok, out) = ssh(
        &rig.key,
        &cip,
        "cat /lambda/nfs/shared/vm.txt; stat -c %U /lambda/nfs/shared/vm.txt; echo from-ct > /lambda/nfs/shared/ct.txt",
    );
    assert!(
        ok && out.lines().take(2).collect::<Vec<_>>() == ["from-vm", "ubuntu"],
        "the container reads the VM's file as its ubuntu's: {out}"
    );
    let (ok, out) = ssh(&rig.key, &ip, "cat /lambda/nfs/shared/ct.txt; stat -c %U /lambda/nfs/shared/ct.txt");
    assert!(ok && out.lines().collect::<Vec<_>>() == ["from-ct", "ubuntu"], "the VM reads the container's file: {out}");

    // Restart through the API: the disk is kept, the VM answers again.
    assert!(ssh(&rig.key, &ip, "echo kept > ~/note; sync").0);
    s.expect("POST", "/instance-operations/restart", Some(json!({"instance_ids": [vm]})), 200).await;
    wait_lambda_status(&s, &vm, "active", 180).await;
    let (ok, out) = ssh(&rig.key, &ip, "cat ~/note");
    assert!(ok && out.trim() == "kept", "the disk survived the restart: {out}");
    assert_ne!(cg.pids(&vm), qemu, "a restart is a new QEMU");

    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [vm, ct]})), 200).await;
    wait_lambda_status(&s, &vm, "terminated", 60).await;
    wait_lambda_status(&s, &ct, "terminated", 60).await;
    s.wait_for("no instance directory left", || async {
        std::fs::read_dir(rig.data.join("instances")).map(|d| d.count() == 0).unwrap_or(true)
    })
    .await;
    assert!(cg.pids(&vm).is_empty() && !cg.exists(&vm), "no QEMU and no cgroup left");
    assert!(!std::path::Path::new("/run/nimbus-vm").join(&vm).exists(), "no socket directory left");
    let ports =
        String::from_utf8_lossy(&Command::new("ip").args(["-o", "link", "show", "master", &rig.cfg.bridge]).output().unwrap().stdout)
            .into_owned();
    assert!(ports.trim().is_empty(), "no tap or veth left on the bridge: {ports}");
    let hosts = s.control.store().host_list(None, true).await.unwrap();
    assert!(hosts.iter().all(|h| h.used == nimbus_core::catalog::Resources::default()), "capacity released");
}
