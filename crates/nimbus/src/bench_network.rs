//! `nimbus bench network`: what the private network between hosts costs, beside the same pair
//! of instances on one host, and how fast membership converges.
//!
//! Brings up a test bed of two hosts (`nimbus dev --hosts 2` as a child process, in the RFC 2544
//! benchmarking range 198.18.0.0/24 so that it never meets a demo's bed), launches one org's
//! 2-node cluster (one node per host) and one more instance (best fit: beside one of the nodes),
//! opens TCP 5201 between them in the org's firewall rules, and measures from inside the
//! instances' network namespaces with `nimbus bench tcp-peer` (this binary; the same path as
//! the instances' own traffic: their veth, the bridge, and across hosts the VXLAN tunnel):
//! - throughput: one TCP stream, 128 KiB writes for `--secs`, bytes counted by the receiver;
//! - latency: 1-byte ping-pong on one connection (TCP_NODELAY), 2,000 round trips;
//! - membership: launch → the new address in the other host's member set (and → `active`), and
//!   terminate → gone from it, over `--rounds` instances.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::bench::pct;

const LAYOUT: &str = "nbn,198.18.0,10.212";
const PORT: u16 = 5201;
const RTTS: usize = 2_000;

#[derive(clap::Args, Debug)]
pub struct NetworkArgs {
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Throughput and latency runs per pair (alternating between the pairs).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Launch/terminate rounds for the membership figures.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[command(flatten)]
    pub images: crate::image::ImagesDir,
}

#[derive(clap::Args, Debug)]
pub struct TcpPeerArgs {
    /// Serve on ADDR:PORT (counts what it receives; echoes in ping-pong mode).
    #[arg(long, conflicts_with = "to")]
    pub serve: Option<String>,
    /// Measure against a server at ADDR:PORT; prints one JSON line.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
}

/// The measuring peer: a tiny iperf (throughput, `T`) and ping-pong (latency, `R`) over TCP.
pub fn tcp_peer(a: &TcpPeerArgs) -> anyhow::Result<()> {
    if let Some(addr) = &a.serve {
        let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).is_err() {
                    return;
                }
                let _ = s.set_nodelay(true);
                if mode[0] == b'T' {
                    let mut buf = vec![0u8; 1 << 17];
                    let mut n: u64 = 0;
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    let _ = s.write_all(&n.to_be_bytes());
                } else {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
                }
            });
        }
        return Ok(());
    }
    let Some(to) = &a.to else { bail!("--serve ADDR or --to ADDR") };
    let connect = || -> anyhow::Result<TcpStream> {
        let t = Instant::now();
        loop {
            match TcpStream::connect(to) {
                Ok(s) => return Ok(s),
                Err(e) if t.elapsed() > Duration::from_secs(10) => return Err(e).with_context(|| format!("connecting {to}")),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    let mut s = connect()?;
    s.write_all(b"T")?;
    let buf = vec![0x5au8; 1 << 17];
    let t = Instant::now();
    let end = t + Duration::from_secs(a.secs);
    while Instant::now() < end {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    let secs = t.elapsed().as_secs_f64();
    let gbps = u64::from_be_bytes(n) as f64 * 8.0 / secs / 1e9;
    let mut r = connect()?;
    r.set_nodelay(true)?;
    r.write_all(b"R")?;
    let mut rtts = Vec::with_capacity(RTTS);
    let mut b = [0u8; 1];
    for i in 0..RTTS + 100 {
        let t = Instant::now();
        r.write_all(b"x")?;
        r.read_exact(&mut b)?;
        if i >= 100 {
            rtts.push(t.elapsed());
        }
    }
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("{}", json!({"gbps": gbps, "rtt_p50_us": us(pct(&rtts, 0.5)), "rtt_p99_us": us(pct(&rtts, 0.99))}));
    Ok(())
}

/// One pair's figures over the runs.
struct Pair {
    name: &'static str,
    gbps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Pair {
    fn new(name: &'static str) -> Pair {
        Pair { name, gbps: Vec::new(), p50: Vec::new(), p99: Vec::new() }
    }
}

struct Bed {
    dev: Child,
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
    servers: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        std::thread::sleep(Duration::from_millis(600));
        let _ = Command::new(&self.exe)
            .args(["dev", "--hosts", "2", "--teardown", "--listen", "127.0.0.1:0", "--bed-layout", LAYOUT, "--data-dir"])
            .arg(self.dir.join("teardown"))
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    async fn call(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut rb = self.http.request(m, format!("{}/api/v1{path}", self.url)).bearer_auth(&self.key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let st = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !st.is_success() {
            bail!("{path}: {st} {v}");
        }
        Ok(v)
    }

    async fn instances(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.call(reqwest::Method::GET, "/instances", None).await?["data"].as_array().cloned().unwrap_or_default())
    }
}

/// Host number (1-based) of a test-bed private address: its third octet.
fn host_of(ip: &str) -> u8 {
    ip.parse::<std::net::Ipv4Addr>().map(|a| a.octets()[2]).unwrap_or(0)
}

fn instance_ns(ip: &str, id: &str) -> String {
    format!("nbnb{}-{}", host_of(ip), &id[..12])
}

fn in_set(host: u8, ip: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("nbnh{host}"), "nft", "list", "set", "inet", &format!("nimbus_nbnb{host}"), "m0"])
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).split(|c: char| !(c.is_ascii_digit() || c == '.')).any(|w| w == ip))
}

pub async fn run(a: NetworkArgs) -> anyhow::Result<()> {
    if !nimbus_driver::container::inventory::is_root() {
        bail!("nimbus bench network runs container hosts in network namespaces: run it as root");
    }
    let exe = std::env::current_exe()?;
    let dir = crate::bench::temp_dir("network")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut dev = Command::new(&exe)
        .args(["dev", "--hosts", "2", "--bed-layout", LAYOUT, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .arg("--images-dir")
        .arg(a.images.path())
        // Room for a cluster, an instance beside it and the membership rounds' instances on
        // hosts that share this machine.
        .args(["--offer-vcpus", "16", "--offer-memory-gib", "64"])
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = dev.stdout.take().context("dev stdout")?;
    let mut bed = Bed { dev, dir: dir.clone(), exe: exe.clone(), servers: Vec::new() };
    let mut key = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for l in lines.by_ref().map_while(Result::ok) {
        if let Some(k) = l.trim().strip_prefix("API key:") {
            key = k.trim().to_owned();
        }
        if l.starts_with("Try:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    if key.is_empty() {
        bail!("nimbus dev --hosts 2 did not come up (see {}/data/hosts/*/agent.log)", dir.display());
    }
    let api =
        Api { http: reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?, url: format!("http://127.0.0.1:{port}"), key };
    let ssh_key = dir.join("id");
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&ssh_key).status()?;
    anyhow::ensure!(ok.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(ssh_key.with_extension("pub"))?;
    api.call(reqwest::Method::POST, "/ssh-keys", Some(json!({"name": "bench", "public_key": public.trim()}))).await?;
    let rules = json!({"data": [
        {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "ssh"},
        {"protocol": "tcp", "port_range": [PORT, PORT], "source_network": "10.212.0.0/16", "description": "bench"},
    ]});
    api.call(reqwest::Method::PUT, "/firewall-rules", Some(rules)).await?;
    let cluster = json!({"name": "netbench", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": 2}, "machine_type": "cpu_1x_small"}}});
    let cl = api.call(reqwest::Method::POST, "/clusters", Some(cluster)).await?;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["bench"], "quantity": 1});
    api.call(reqwest::Method::POST, "/instance-operations/launch", Some(launch.clone())).await?;
    let t = Instant::now();
    let all = loop {
        let l = api.instances().await?;
        if l.len() == 3 && l.iter().all(|i| i["status"] == "active") {
            break l;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("instances never all active: {l:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let node = |i: &Value| i["hostname"].as_str().is_some_and(|h| h.starts_with("netbench-"));
    let single = all.iter().find(|i| !node(i)).context("the single instance")?;
    let sip = single["private_ip"].as_str().unwrap_or_default().to_owned();
    let sid = single["id"].as_str().unwrap_or_default().to_owned();
    let beside = all.iter().find(|i| node(i) && host_of(i["private_ip"].as_str().unwrap_or_default()) == host_of(&sip));
    let across = all.iter().find(|i| node(i) && host_of(i["private_ip"].as_str().unwrap_or_default()) != host_of(&sip));
    let (Some(beside), Some(across)) = (beside, across) else { bail!("placement gave no same-host and cross-host pair: {all:?}") };
    let mut results = [Pair::new("same host"), Pair::new("across two hosts (VXLAN)")];
    for dst in [beside, across] {
        let ip = dst["private_ip"].as_str().unwrap_or_default();
        let ns = instance_ns(ip, dst["id"].as_str().unwrap_or_default());
        let server = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .args(["bench", "tcp-peer", "--serve", &format!("{ip}:{PORT}")])
            .stdout(Stdio::null())
            .spawn()?;
        bed.servers.push(server);
    }
    for _ in 0..a.runs {
        for (k, dst) in [beside, across].iter().enumerate() {
            let ip = dst["private_ip"].as_str().unwrap_or_default();
            let out = Command::new("ip")
                .args(["netns", "exec", &instance_ns(&sip, &sid)])
                .arg(&exe)
                .args(["bench", "tcp-peer", "--to", &format!("{ip}:{PORT}"), "--secs", &a.secs.to_string()])
                .output()?;
            anyhow::ensure!(out.status.success(), "tcp-peer to {ip}: {}", String::from_utf8_lossy(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout)?;
            results[k].gbps.push(v["gbps"].as_f64().unwrap_or(0.0));
            results[k].p50.push(v["rtt_p50_us"].as_f64().unwrap_or(0.0));
            results[k].p99.push(v["rtt_p99_us"].as_f64().unwrap_or(0.0));
        }
    }
    // Membership: each round launches one instance, waits for its address in the other host's
    // set (the org is the only tenant there: set m0) and for `active`, then terminates it.
    let (mut joined, mut activated, mut left) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        let t = Instant::now();
        let v = api.call(reqwest::Method::POST, "/instance-operations/launch", Some(launch.clone())).await?;
        let id = v["data"]["instance_ids"][0].as_str().unwrap_or_default().to_owned();
        let (mut ip, mut seen, mut active) = (String::new(), None, None);
        while seen.is_none() || active.is_none() {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("instance {id} did not become a member and active in 60 s");
            }
            if ip.is_empty() || active.is_none() {
                let i = api.call(reqwest::Method::GET, &format!("/instances/{id}"), None).await?;
                ip = i["data"]["private_ip"].as_str().unwrap_or_default().to_owned();
                if i["data"]["status"] == "active" && active.is_none() {
                    active = Some(t.elapsed());
                }
            }
            if !ip.is_empty() && seen.is_none() && in_set(3 - host_of(&ip), &ip) {
                seen = Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        joined.extend(seen);
        activated.extend(active);
        let t = Instant::now();
        api.call(reqwest::Method::POST, "/instance-operations/terminate", Some(json!({"instance_ids": [id]}))).await?;
        while in_set(3 - host_of(&ip), &ip) {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("{ip} still a member 10 s after terminate");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        left.push(t.elapsed());
    }
    println!(
        "nimbus bench network: 2 test-bed hosts on one machine ({} vCPUs), one org; TCP between instances' namespaces, {} runs × {} s per pair",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        a.runs,
        a.secs
    );
    println!("{:<28} {:>18} {:>12} {:>12}", "pair", "throughput Gbit/s", "RTT p50 µs", "RTT p99 µs");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    for r in &mut results {
        println!("{:<28} {:>18.2} {:>12.1} {:>12.1}", r.name, median(&mut r.gbps), median(&mut r.p50), median(&mut r.p99));
    }
    for v in [&mut joined, &mut activated, &mut left] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("membership over {} launches and terminates (ms):           p50      max", a.rounds);
    println!("  launch → address in the other host's member set     {:>8.0} {:>8.0}", ms(pct(&joined, 0.5)), ms(pct(&joined, 1.0)));
    println!("  launch → status active                               {:>8.0} {:>8.0}", ms(pct(&activated, 0.5)), ms(pct(&activated, 1.0)));
    println!("  terminate → gone from the other host's member set   {:>8.0} {:>8.0}", ms(pct(&left, 0.5)), ms(pct(&left, 1.0)));
    // Clean up: the cluster and the single instance; the bed goes with `bed`.
    let _ = api.call(reqwest::Method::DELETE, &format!("/clusters/{}", cl["id"].as_str().unwrap_or_default()), None).await;
    let _ = api.call(reqwest::Method::POST, "/instance-operations/terminate", Some(json!({"instance_ids": [sid]}))).await;
    let t = Instant::now();
    while !api.instances().await?.is_empty() && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = Instant::now();
    loop {
        let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output()?.stdout)?;
        if !netns.lines().any(|l| l.starts_with("nbnb")) || t.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(bed);
    Ok(())
}
