//! Two hosts on one machine, as an operator would run them: one `nimbus server` (HTTPS, its
//! self-signed certificate pinned by the agents) and two `nimbus agent --driver container`
//! processes, each with its own `--bridge` and `--instance-subnet`, registered with one two-use
//! token. Instances land on both, are reachable over SSH at addresses of their host's subnet,
//! and every host object each agent made carries its own bridge's name. Root and the debian-12
//! image are needed (scripts/test provides both); without them the test says so and skips.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// Everything the test started, stopped and removed however it ends.
struct Bed {
    procs: Vec<Child>,
    bridges: Vec<String>,
    dir: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for b in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", b]).stderr(Stdio::null()).status();
            for family in ["inet", "bridge"] {
                let _ = Command::new("nft").args(["delete", "table", family, &format!("nimbus_{b}")]).stderr(Stdio::null()).status();
            }
            // The agent's cgroup parent in every hierarchy (its instances' cgroups are gone).
            for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(h.path().join(format!("nimbus-{b}")));
            }
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/nimbus-{b}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN).arg("admin").arg("--data-dir").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_container_agents_share_one_machine() {
    let Some(images) = common::container_images() else { return };
    let tag = std::process::id() % 10_000;
    let dir = std::env::temp_dir().join(format!("nimbus-two-hosts-{}", nimbus_core::ids::random_hex_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bed = Bed { procs: Vec::new(), bridges: vec![format!("nt{tag}a"), format!("nt{tag}b")], dir: dir.clone() };
    let srv_dir = dir.join("srv");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut srv = Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&srv_dir)
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(srv.stdout.take().unwrap()).lines();
    bed.procs.push(srv);
    let fingerprint = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("certificate fingerprint (sha256): ").map(str::to_owned))
        .expect("the server printed its fingerprint");
    std::thread::spawn(move || for _ in lines {});
    admin(&srv_dir, &["org", "create", "acme"]);
    let key = admin(&srv_dir, &["api-key", "create", "--org", "acme", "--permissions", "ADMIN"]);
    let token = admin(&srv_dir, &["host-token", "create", "--region", "us-east-1", "--uses", "2"]);
    let url = format!("https://127.0.0.1:{port}");
    let subnets = [Ipv4Addr::new(10, 231, (tag % 200) as u8, 0), Ipv4Addr::new(10, 232, (tag % 200) as u8, 0)];
    for (i, (bridge, net)) in bed.bridges.clone().iter().zip(subnets).enumerate() {
        let agent = Command::new(BIN)
            .args(["agent", "--server", &url, "--server-fingerprint", &fingerprint, "--token", &token, "--driver", "container"])
            .args(["--bridge", bridge, "--instance-subnet", &format!("{net}/24"), "--offer-vcpus", "4", "--offer-memory-gib", "8"])
            .arg("--images-dir")
            .arg(&images)
            .arg("--data-dir")
            .arg(dir.join(format!("agent-{i}")))
            .env("NIMBUS_LOG", "warn")
            .spawn()
            .unwrap();
        bed.procs.push(agent);
    }

    let cert = reqwest::Certificate::from_pem(&std::fs::read(srv_dir.join("tls/server.crt")).unwrap()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(cert).timeout(Duration::from_secs(10)).build().unwrap();
    let call = |m: reqwest::Method, path: &str, body: Option<Value>| common::call(&http, &key, m, format!("{url}/api/v1{path}"), body);
    let t = Instant::now();
    while admin(&srv_dir, &["hosts"]).lines().filter(|l| l.contains(" up ")).count() < 2 {
        assert!(t.elapsed() < Duration::from_secs(60), "both agents did not register: {}", admin(&srv_dir, &["hosts"]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ssh_dir = dir.join("ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let ssh_key = ssh_dir.join("id");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&ssh_key).status().unwrap().success());
    let public = std::fs::read_to_string(ssh_key.with_extension("pub")).unwrap();
    let (st, v) = call(reqwest::Method::POST, "/ssh-keys", Some(json!({"name": "k", "public_key": public.trim()}))).await;
    assert_eq!(st, 200, "{v}");
    // Four instances of two vCPUs on two hosts of four: both hosts get some.
    let (st, v) = call(
        reqwest::Method::POST,
        "/instance-operations/launch",
        Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_2x_medium", "ssh_key_names": ["k"], "quantity": 4})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    let instances = loop {
        let (_, v) = call(reqwest::Method::GET, "/instances", None).await;
        let list = v["data"].as_array().cloned().unwrap_or_default();
        if list.len() == 4 && list.iter().all(|i| i["status"] == "active") {
            break list;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "not all active: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut per_subnet = [0, 0];
    for inst in &instances {
        let ip: Ipv4Addr = inst["ip"].as_str().unwrap().parse().unwrap();
        let host = subnets.iter().position(|n| n.octets()[..3] == ip.octets()[..3]).unwrap_or_else(|| panic!("{ip} is in neither subnet"));
        per_subnet[host] += 1;
        let out = Command::new("ssh")
            .arg("-i")
            .arg(&ssh_key)
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=5", &format!("ubuntu@{ip}"), "ip -4 -o addr show eth0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh {ip}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/24")), "{ip}");
    }
    assert_eq!(per_subnet, [2, 2], "two instances on each host");
    // Each host's objects carry its bridge's name: namespaces, cgroups, nftables tables.
    let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for b in &bed.bridges {
        assert_eq!(netns.lines().filter(|l| l.starts_with(&format!("{b}-"))).count(), 2, "{netns}");
        assert!(
            Path::new(&format!("/sys/fs/cgroup/pids/nimbus-{b}")).exists() || Path::new(&format!("/sys/fs/cgroup/nimbus-{b}")).exists()
        );
        let tables = Command::new("nft").args(["list", "table", "bridge", &format!("nimbus_{b}")]).output().unwrap();
        assert!(tables.status.success(), "no bridge table for {b}");
    }

    let ids: Vec<Value> = instances.iter().map(|i| i["id"].clone()).collect();
    let (st, v) = call(reqwest::Method::POST, "/instance-operations/terminate", Some(json!({"instance_ids": ids}))).await;
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    loop {
        let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
        let left = netns.lines().filter(|l| bed.bridges.iter().any(|b| l.starts_with(&format!("{b}-")))).count();
        if left == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "namespaces left after terminate: {netns}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(bed);
}
