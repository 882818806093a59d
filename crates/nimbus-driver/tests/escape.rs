//! The escape suite: from inside an instance, as its root, every way out the isolation issue
//! lists is tried (`escape/probe.py`), against a victim instance of another organization on the
//! same host, and each must be refused with its specific refusal. Then the same probe runs
//! against deliberately weakened launches (one group of layers off at a time) and each check
//! must catch the hole it is there for: no check passes vacuously.
//!
//! Scenarios:
//! - `default`: what every instance gets;
//! - `kernel`: a privileged instance (no user namespace) without seccomp, bounding set, masks,
//!   PID namespace, device filter, and joined to only the limit-bearing cgroups;
//! - `devices`: the same but with the device filter on (that layer alone must hold);
//! - `seccomp`: an unprivileged instance without the seccomp filter (the user namespace alone
//!   must still hold where it is a second layer);
//! - `net`: no port source checks, no IPv6 drop, no host input drop, no allow lists;
//! - and, in its own test, the symlink → snapshot → restore attack with and without the
//!   host-side key writes the driver used to do.
//!
//! Needs root and the debian-12 image; otherwise says why and skips.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::Host;
use nimbus_driver::container::runtime::Weaken;
use nimbus_driver::Driver;
use nimbus_proto::{FirewallRule, HostSnapshot, SnapshotSource, SnapshotState};

const PROBE: &str = include_str!("escape/probe.py");

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    weaken: Weaken,
    privileged: bool,
    net: u8,
}

fn scenarios() -> Vec<Scenario> {
    let kernel = Weaken {
        seccomp: true,
        caps: true,
        masks: true,
        pid_namespace: true,
        device_filter: true,
        partial_cgroups: true,
        ..Weaken::default()
    };
    vec![
        Scenario { name: "default", weaken: Weaken::default(), privileged: false, net: 243 },
        Scenario { name: "kernel", weaken: kernel, privileged: true, net: 244 },
        Scenario { name: "devices", weaken: Weaken { device_filter: false, partial_cgroups: false, ..kernel }, privileged: true, net: 245 },
        Scenario { name: "seccomp", weaken: Weaken { seccomp: true, ..Weaken::default() }, privileged: false, net: 246 },
        Scenario {
            name: "net",
            weaken: Weaken { antispoof: true, ipv6_drop: true, host_input_drop: true, firewall: true, ..Weaken::default() },
            privileged: false,
            net: 247,
        },
    ]
}

/// Every check of the probe: what the default launch must answer (a piece of the refusal it
/// reports), and the weakened scenarios in which it must report the hole open.
const CHECKS: &[(&str, &str, &[&str])] = &[
    ("host_disk", "mknod: EPERM", &["kernel"]),
    ("other_gpu", "mknod: EPERM", &["kernel"]),
    ("host_files_via_proc", "not reachable", &["kernel"]),
    ("foreign_processes", "no host or other-instance process", &["kernel"]),
    ("release_agent", "no hierarchy shows a release_agent", &["kernel"]),
    ("raise_limits", "EACCES", &["kernel"]),
    ("host_sysctl", "vm.swappiness: EACCES", &["kernel"]),
    ("set_clock", "settimeofday: EPERM", &["kernel"]),
    ("load_module", "init_module EPERM, finit_module EPERM", &["kernel"]),
    ("kexec_load", "kexec_load and kexec_file_load: EPERM", &["kernel"]),
    ("keyctl", "keyctl: ENOSYS", &["kernel", "seccomp"]),
    ("bpf_load", "bpf(BPF_PROG_LOAD): EPERM", &["kernel"]),
    ("kernel_log", "syslog EPERM", &["kernel"]),
    ("host_keyrings", "/proc/keys masked", &["kernel"]),
    ("closed_port_v4", "", &["net"]),
    ("other_org_private", "", &["net"]),
    ("closed_port_v6", "", &["net"]),
    ("spoof_ip", "", &["net"]),
    ("spoof_mac", "", &["net"]),
    ("spoof_arp", "", &["net"]),
    ("host_ports", "", &["net"]),
    ("inherited_fds", "", &[]),
    ("agent_environment", "", &[]),
    ("host_paths_in_mountinfo", "", &[]),
];

/// Layers that must hold on their own in a weakened scenario: `(scenario, check, refusal)`.
const ALONE: &[(&str, &str, &str)] = &[
    ("devices", "host_disk", "open refused: EPERM"),
    ("devices", "other_gpu", "open refused: EPERM"),
    ("seccomp", "set_clock", "settimeofday: EPERM"),
    ("seccomp", "release_agent", "no hierarchy shows a release_agent"),
    ("seccomp", "host_sysctl", "EACCES"),
];

/// A block device of this host that host root can read: its root disk where the machine lets
/// root open it, else a loop device over a file of the test (this project's VMs refuse even
/// host root the root disk). Reading it from inside an instance is reading host data.
struct HostDisk {
    numbers: (u32, u32),
    loop_dev: Option<String>,
}

impl HostDisk {
    fn new(dir: &std::path::Path) -> HostDisk {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = info.lines().find(|l| l.split(' ').nth(4) == Some("/")).and_then(|l| l.split(' ').nth(2)).unwrap_or("0:0").to_owned();
        let (ma, mi): (u32, u32) = root.split_once(':').map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(0))).unwrap_or((0, 0));
        let dev = std::fs::read_link(format!("/sys/dev/block/{ma}:{mi}"))
            .ok()
            .and_then(|p| p.file_name().map(|n| format!("/dev/{}", n.to_string_lossy())));
        if ma != 0 && dev.as_ref().is_some_and(|d| std::fs::File::open(d).is_ok()) {
            return HostDisk { numbers: (ma, mi), loop_dev: None };
        }
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0x42u8; 1 << 20]).unwrap();
        let out = Command::new("losetup").args(["--find", "--show"]).arg(&img).output().unwrap();
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(dev.starts_with("/dev/loop"), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&dev).unwrap());
        HostDisk { numbers: (libc::major(rdev), libc::minor(rdev)), loop_dev: Some(dev) }
    }
}

impl Drop for HostDisk {
    fn drop(&mut self) {
        if let Some(d) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
    }
}

/// The host's own address (source of its default route), reachable from instances through
/// the gateway.
fn host_ip() -> Option<String> {
    let out = Command::new("ip").args(["-4", "route", "get", "1.1.1.1"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut w = text.split_whitespace();
    while let Some(x) = w.next() {
        if x == "src" {
            return w.next().map(str::to_owned);
        }
    }
    None
}

/// Runs the probe as root in the instance at `ip`; its verdicts by check.
fn probe(h: &Host, ip: &str, args: &serde_json::Value) -> BTreeMap<String, (String, String)> {
    let hex: String = args.to_string().bytes().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("ssh")
        .arg("-i")
        .arg(&h.key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg(format!("ubuntu@{ip}"))
        .arg(format!("sudo -n python3 - {hex}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(PROBE.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("probe output ({e}): {text}{}", String::from_utf8_lossy(&out.stderr)));
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| (k.clone(), (r[0].as_str().unwrap_or("").to_owned(), r[1].as_str().unwrap_or("").to_owned())))
        .collect()
}

fn rule(port: u16, source: &str) -> FirewallRule {
    FirewallRule { protocol: "tcp".into(), port_range: Some((port, port)), source: source.into() }
}

async fn run(sc: Scenario) -> BTreeMap<String, (String, String)> {
    let tag = format!("e{}", &sc.name[..1]) + if sc.name == "devices" { "v" } else { "" };
    let h = Host::new(&tag, sc.net, sc.weaken).expect("host");
    let nonce = common::new_id()[..12].to_owned();
    let marker = h.dir.join("marker");
    std::fs::write(&marker, format!("host secret {nonce}\n")).unwrap();
    // A descriptor of the "agent" (this process) without close-on-exec, and a variable in its
    // environment: neither may reach an instance.
    let fd_marker = h.dir.join(format!("fd-marker-{nonce}"));
    let f = std::fs::File::create(&fd_marker).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: clears FD_CLOEXEC on a descriptor this test owns and keeps open.
    unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
    std::env::set_var("NIMBUS_ESCAPE_AGENT_SECRET", &nonce);
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let spoof = format!("10.{}.0.77", sc.net);

    let mut victim = h.spec("org-victim", "victim");
    // The host's weakenings apply to every instance on it (without a PID namespace, say, only a
    // privileged instance can mount its /proc).
    victim.privileged = sc.privileged;
    victim.firewall = vec![rule(22, "0.0.0.0/0"), rule(8000, &format!("{spoof}/32"))];
    let vip = h.launch(&victim).await;
    let serve = format!(
        "nohup python3 -c 'import socket, threading\n\
def serve(p):\n    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind((\"::\", p)); s.listen(16)\n    while True: s.accept()[0].close()\n\
[threading.Thread(target=serve, args=(p,)).start() for p in (8000, 9000)]' >/dev/null 2>&1 & nohup sleep 31337.{nonce} >/dev/null 2>&1 & sleep 0.3; echo started"
    );
    assert!(h.ssh(&vip, &serve).1.contains("started"));
    let v6 = h.ssh(&vip, "ip -6 -o addr show dev eth0 scope link").1;
    let victim6 =
        v6.split_whitespace().skip_while(|w| *w != "inet6").nth(1).and_then(|a| a.split('/').next()).unwrap_or("fe80::1").to_owned();

    let mut attacker = h.spec("org-attacker", "attacker");
    attacker.privileged = sc.privileged;
    let aip = h.launch(&attacker).await;
    let test_binary = std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    let cgroup = if std::path::Path::new(&h.cfg.cgroup_mount).join("cgroup.controllers").exists() { "v2" } else { "v1" };
    let disk = HostDisk::new(&h.dir);
    let args = serde_json::json!({
        "disk": disk.numbers,
        "marker": marker.to_string_lossy(),
        "foreign": [format!("31337.{nonce}"), test_binary],
        "cgroup": cgroup,
        "fd_marker": format!("fd-marker-{nonce}"),
        "env_marker": nonce,
        "instance_dir": h.instance_dir(&attacker.id).to_string_lossy(),
        "net": {
            "victim": vip, "victim6": victim6, "spoof_src": spoof, "open_port": 8000, "closed_port": 9000,
            "gateway": format!("10.{}.0.1", sc.net), "host_ports": [host_port], "host_ip": host_ip(),
        },
    });
    let mut r = probe(&h, &aip, &args);
    // ARP: where the forged request landed, the host now sends the victim's traffic to us.
    let neigh = String::from_utf8_lossy(&Command::new("ip").args(["neigh", "show", &vip, "dev", &h.cfg.bridge]).output().unwrap().stdout)
        .into_owned();
    let attacker_mac = nimbus_driver::container::launch::mac_for(aip.parse().unwrap());
    let arp = if neigh.contains(&attacker_mac) {
        ("open", format!("the host's entry for {vip}: {}", neigh.trim()))
    } else {
        ("blocked", neigh.trim().to_owned())
    };
    r.insert("spoof_arp".into(), (arp.0.into(), arp.1));
    drop((listener, f, disk));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_is_closed_and_every_check_can_fail() {
    if common::images_dir().is_none() {
        return;
    }
    let mut results = BTreeMap::new();
    for sc in scenarios() {
        let r = run(sc).await;
        eprintln!("== {} ==", sc.name);
        for (k, (status, detail)) in &r {
            eprintln!("  {k:<24} {status:<8} {detail}");
        }
        results.insert(sc.name, r);
    }
    let mut failures = Vec::new();
    let default = &results["default"];
    for (check, refusal, opened_by) in CHECKS {
        match default.get(*check) {
            Some((s, d)) if s == "blocked" && d.contains(refusal) => {}
            other => failures.push(format!("default: {check} must be blocked with {refusal:?}, got {other:?}")),
        }
        for sc in *opened_by {
            match results[sc].get(*check) {
                Some((s, _)) if s == "open" => {}
                other => failures.push(format!("{sc}: {check} must catch the open door, got {other:?}")),
            }
        }
    }
    for (sc, check, refusal) in ALONE {
        match results[sc].get(*check) {
            Some((s, d)) if s == "blocked" && d.contains(refusal) => {}
            other => failures.push(format!("{sc}: {check} must still be blocked ({refusal:?}) by the layers left, got {other:?}")),
        }
    }
    // Not an escape: an instance's own namespaced sysctls stay writable (Docker inside).
    assert_eq!(default.get("own_sysctl").map(|x| x.0.as_str()), Some("allowed"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The attack found by hand: a tenant without sudo makes `~/.ssh` a link to a host path,
/// snapshots the disk and restores it; the agent used to follow the link as host root. Also a
/// planted `/lambda -> <host path>` before a file system is mounted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_link_never_leads_the_host_out_of_the_disk() {
    if common::images_dir().is_none() {
        return;
    }
    for (weakened, net) in [(false, 248), (true, 249)] {
        let weaken = Weaken { host_side_writes: weakened, ..Weaken::default() };
        let h = Host::new(if weakened { "syw" } else { "sy" }, net, weaken).expect("host");
        let target = h.dir.join("host-dir");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(target.join("secret"), "host secret\n").unwrap();
        let t = target.to_string_lossy().into_owned();

        let mut s = h.spec("org-a", "source");
        let ip = h.launch(&s).await;
        // A way back in as root first: the tenant is about to give up its own ~/.ssh.
        let (ok, out) = h.ssh(&ip, "sudo -n install -d -m 700 /root/.ssh && sudo -n cp ~/.ssh/authorized_keys /root/.ssh/");
        assert!(ok, "{out}");
        let (ok, out) = h.ssh(&ip, &format!("rm -rf ~/.ssh && ln -s {t} ~/.ssh && sudo -n ln -s {t} /lambda && ls -ld ~/.ssh /lambda"));
        assert!(ok, "{out}");
        // The planted /lambda: a file system mounted at /lambda/nfs/shared after a restart.
        s.file_system_mounts = vec![nimbus_proto::MountSpec {
            file_system_id: "0123456789abcdef0123456789abcdef".into(),
            mount_point: "/lambda/nfs/shared".into(),
        }];
        h.driver.restart(&s).await.unwrap();
        assert!(h.driver.wait_ready(&s.id).await, "{}", h.console(&s.id));
        assert!(!target.join("nfs").exists(), "the mount point was made on the host through the planted link");
        let (_, inside) = common::ssh_user(&h.key, "root", &ip, "ls -d /lambda/nfs/shared && readlink /lambda");
        assert!(inside.contains(&t) && inside.contains("/lambda/nfs/shared"), "inside, the link resolves inside the instance: {inside}");

        let snap = common::new_id();
        let report = h
            .driver
            .sync_storage(&[], &[HostSnapshot { id: snap.clone(), source: SnapshotSource::Instance { id: s.id.clone() } }])
            .await
            .unwrap();
        assert_eq!(report.snapshots[0].state, SnapshotState::Ready, "{:?}", report.snapshots[0].message);
        let mut restored = h.spec("org-a", "restored");
        restored.source_snapshot = Some(snap.clone());
        let rip = h.launch(&restored).await;
        let md = std::fs::metadata(&target).unwrap();
        let touched = target.join("authorized_keys").exists() || md.uid() != 0;
        if weakened {
            assert!(touched, "the weakened launch must show the hole: the host wrote through the link into {t}");
        } else {
            assert!(!touched, "the host followed the tenant's link into {t}");
            assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o700));
            assert_eq!(std::fs::read_to_string(target.join("secret")).unwrap(), "host secret\n");
            // And the restored instance still takes its own keys (the link was set aside inside).
            let (ok, out) = h.ssh(&rip, "ls -ld ~/.ssh ~/.ssh.moved-by-nimbus.* && cat ~/.ssh/authorized_keys | wc -l");
            assert!(ok, "{out}");
        }
    }
}
