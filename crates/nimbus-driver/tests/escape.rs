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
//! - in its own test, the symlink → snapshot → restore attack with and without the host-side
//!   key writes the driver used to do;
//! - and, in its own test, the attacker as a VM (`vm`, `vm-disk`, `vm-net`: see
//!   [`a_vm_has_no_door_to_the_host_or_other_tenants`]).
//!
//! Needs root and the debian-12 image (the VM test also the guest kernel); otherwise says why
//! and skips.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Host;
use nimbus_driver::container::runtime::Weaken;
use nimbus_driver::Driver;
use nimbus_proto::{FirewallRule, HostSnapshot, Machine, SnapshotSource, SnapshotState};

const PROBE: &str = include_str!("escape/probe.py");

/// A check's verdicts by name: `(status, detail)`.
type Results = BTreeMap<String, (String, String)>;

/// The planted-link test and the VM test both use nets 248 and 249: one at a time.
static NETS_248_249: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    weaken: Weaken,
    privileged: bool,
    net: u8,
    /// The attacker is a VM (the victim stays a container).
    vm: bool,
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
        Scenario { name: "default", weaken: Weaken::default(), privileged: false, net: 243, vm: false },
        Scenario { name: "kernel", weaken: kernel, privileged: true, net: 244, vm: false },
        Scenario {
            name: "devices",
            weaken: Weaken { device_filter: false, partial_cgroups: false, ..kernel },
            privileged: true,
            net: 245,
            vm: false,
        },
        Scenario { name: "seccomp", weaken: Weaken { seccomp: true, ..Weaken::default() }, privileged: false, net: 246, vm: false },
        Scenario {
            name: "net",
            weaken: Weaken { antispoof: true, ipv6_drop: true, host_input_drop: true, firewall: true, ..Weaken::default() },
            privileged: false,
            net: 247,
            vm: false,
        },
    ]
}

/// The VM scenarios: the attacker a VM with every layer (`vm`, and `vm-disk`, the same VM once
/// the host disk has been handed to it), then with the network layers off (`vm-net`).
fn vm_scenarios() -> Vec<Scenario> {
    vec![
        Scenario { name: "vm", weaken: Weaken::default(), privileged: false, net: 248, vm: true },
        Scenario {
            name: "vm-net",
            weaken: Weaken { antispoof: true, ipv6_drop: true, host_input_drop: true, firewall: true, ..Weaken::default() },
            privileged: false,
            net: 249,
            vm: true,
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

/// What a VM attacker must see, by check: the refusal's piece in `vm`, and the weakened runs
/// (`vm-disk`, `vm-net`) in which the same check must report its door open. These are the doors
/// that lead out of the guest: to the host's disk, files, processes, descriptors and
/// environment, and everything on the bridge (the same host-side firewall and port checks as a
/// container's, on the VM's tap).
const VM_CHECKS: &[(&str, &str, &[&str])] = &[
    ("host_disk", "no guest device holds the host disk's data", &["vm-disk"]),
    ("host_files_via_proc", "nor its content on any guest device", &["vm-disk"]),
    ("foreign_processes", "no host or other-instance process", &[]),
    ("inherited_fds", "no descriptor of the agent's", &[]),
    ("agent_environment", "PID 1's environment is its own", &[]),
    ("host_paths_in_mountinfo", "the root mount names no host path", &[]),
    ("closed_port_v4", "", &["vm-net"]),
    ("other_org_private", "", &["vm-net"]),
    ("closed_port_v6", "", &["vm-net"]),
    ("spoof_ip", "", &["vm-net"]),
    ("spoof_mac", "", &["vm-net"]),
    ("spoof_arp", "", &["vm-net"]),
    ("host_ports", "", &["vm-net"]),
];

/// Checks that in a VM try the guest's own kernel, not the host's: recorded and printed, never
/// asserted open or blocked (see [`a_vm_has_no_door_to_the_host_or_other_tenants`]).
const VM_GUEST_OWN: &[&str] = &[
    "other_gpu",
    "release_agent",
    "raise_limits",
    "host_sysctl",
    "own_sysctl",
    "set_clock",
    "load_module",
    "kexec_load",
    "keyctl",
    "bpf_load",
    "kernel_log",
    "host_keyrings",
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
        Self::loop_over(dir, vec![0x42u8; 1 << 20])
    }

    /// For a VM attacker, always a loop device, whose data the guest looks for by content (the
    /// host's block device numbers inside a guest are the guest kernel's): 1 MiB of 0x42 with
    /// `marker` (the content of the host's marker file) at 8 KiB, as a host file is on a host disk.
    fn with_marker(dir: &std::path::Path, marker: &str) -> HostDisk {
        let mut data = vec![0x42u8; 1 << 20];
        data[8192..8192 + marker.len()].copy_from_slice(marker.as_bytes());
        Self::loop_over(dir, data)
    }

    fn loop_over(dir: &std::path::Path, data: Vec<u8>) -> HostDisk {
        let img = dir.join("disk.img");
        std::fs::write(&img, data).unwrap();
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

/// A QMP connection of the test's own, which can hand QEMU descriptors (`SCM_RIGHTS`).
struct Qmp {
    sock: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &std::path::Path) -> Qmp {
        let sock = UnixStream::connect(path).unwrap_or_else(|e| panic!("QMP {}: {e}", path.display()));
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut q = Qmp { reader: BufReader::new(sock.try_clone().unwrap()), sock };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        q.call("qmp_capabilities", serde_json::json!({}), None);
        q
    }

    /// Runs `command` (with descriptor `fd` passed along); its `return`.
    fn call(&mut self, command: &str, arguments: serde_json::Value, fd: Option<&std::fs::File>) -> serde_json::Value {
        let msg = format!("{}\n", serde_json::json!({"execute": command, "arguments": arguments}));
        match fd {
            None => (&self.sock).write_all(msg.as_bytes()).unwrap(),
            Some(f) => {
                let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
                let mut control = [0u64; 8];
                // SAFETY: a zeroed msghdr is valid; it points at `iov` and `control`, which
                // outlive the call, and `control` has room for one descriptor's cmsg (aligned).
                let sent = unsafe {
                    let mut hdr: libc::msghdr = std::mem::zeroed();
                    hdr.msg_iov = &mut iov;
                    hdr.msg_iovlen = 1;
                    hdr.msg_control = control.as_mut_ptr().cast();
                    hdr.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(&hdr);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), f.as_raw_fd());
                    libc::sendmsg(self.sock.as_raw_fd(), &hdr, 0)
                };
                assert_eq!(sent, msg.len() as isize, "sendmsg to QMP: {}", std::io::Error::last_os_error());
            }
        }
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "QMP closed during {command}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "QMP {command}: {v}");
        }
    }
}

/// The QMP socket of VM `id`, from its QEMU's command line (`-qmp unix:PATH,...`).
fn qmp_socket(h: &Host, id: &str) -> std::path::PathBuf {
    for pid in h.cgroups().pids(id) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if let Some(w) = args.windows(2).find(|w| w[0] == "-qmp") {
            let path = w[1].strip_prefix("unix:").and_then(|p| p.split(',').next()).unwrap_or_else(|| panic!("-qmp {}", w[1]));
            return path.into();
        }
    }
    panic!("no QEMU with a QMP socket in the cgroup of {id}");
}

/// The weakening no setting of the driver makes: the host's disk handed to a running VM. The
/// driver gives a guest only its overlay disk and its seed; here the test gives QEMU (over
/// QMP, as descriptors: QEMU runs unprivileged under the instance's device filter and could not
/// open the device itself) the loop device and a qcow2 overlay whose raw data file it is, and
/// puts that overlay on top of the guest's read-only seed drive (`blockdev-snapshot`): the
/// guest's `/dev/vdb` then reads the host's disk, as it would if the host's disk were attached.
fn hand_host_disk_to(h: &Host, id: &str, loop_dev: &str) {
    let overlay = h.dir.join("handover.qcow2");
    // qemu-img clears the data file it is given: it gets a stand-in, QEMU the loop device.
    let stand_in = h.dir.join("handover.raw");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("data_file={},data_file_raw=on,preallocation=metadata", stand_in.display()))
        .arg(&overlay)
        .arg("1M")
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_file(&stand_in);
    let mut q = Qmp::connect(&qmp_socket(h, id));
    let dev = std::fs::File::open(loop_dev).unwrap();
    let ov = std::fs::File::open(&overlay).unwrap();
    q.call("add-fd", serde_json::json!({"fdset-id": 41}), Some(&dev));
    q.call("add-fd", serde_json::json!({"fdset-id": 42}), Some(&ov));
    q.call(
        "blockdev-add",
        serde_json::json!({"driver": "host_device", "node-name": "host-disk", "filename": "/dev/fdset/41", "read-only": true}),
        None,
    );
    q.call(
        "blockdev-add",
        serde_json::json!({
            "driver": "qcow2", "node-name": "host-disk-overlay", "read-only": true, "backing": null, "data-file": "host-disk",
            "file": {"driver": "file", "filename": "/dev/fdset/42", "read-only": true},
        }),
        None,
    );
    let blocks = q.call("query-block", serde_json::json!({}), None);
    let seed = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["inserted"]["file"].as_str().is_some_and(|f| f.ends_with("seed.iso")))
        .and_then(|b| b["inserted"]["node-name"].as_str())
        .unwrap_or_else(|| panic!("no seed drive in {blocks}"))
        .to_owned();
    q.call("blockdev-snapshot", serde_json::json!({"node": seed, "overlay": "host-disk-overlay"}), None);
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

async fn run(sc: Scenario) -> Results {
    run_all(sc).await.remove(0).1
}

/// The scenario's results; for `vm` also those of `vm-disk`, the same VM after
/// [`hand_host_disk_to`].
async fn run_all(sc: Scenario) -> Vec<(&'static str, Results)> {
    let tag = match sc.name {
        "vm" => "evm".to_owned(),
        "vm-net" => "evn".to_owned(),
        _ => format!("e{}", &sc.name[..1]) + if sc.name == "devices" { "v" } else { "" },
    };
    let h = if sc.vm {
        // A VM's sshd under TCG takes a while to answer.
        Host::with(&tag, sc.net, |c| {
            c.weaken = sc.weaken;
            c.sshd_grace = Duration::from_secs(90);
        })
    } else {
        Host::new(&tag, sc.net, sc.weaken)
    }
    .expect("host");
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
    // The VM test runs beside the container test: a variable of its own.
    std::env::set_var(if sc.vm { "NIMBUS_ESCAPE_AGENT_SECRET_VM" } else { "NIMBUS_ESCAPE_AGENT_SECRET" }, &nonce);
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
    if sc.vm {
        attacker.machine = Machine::Vm;
    }
    let aip = h.launch(&attacker).await;
    let test_binary = std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    let cgroup = if std::path::Path::new(&h.cfg.cgroup_mount).join("cgroup.controllers").exists() { "v2" } else { "v1" };
    let marker_content = format!("host secret {nonce}");
    let disk = if sc.vm { HostDisk::with_marker(&h.dir, &marker_content) } else { HostDisk::new(&h.dir) };
    let mut foreign = vec![format!("31337.{nonce}"), test_binary];
    if sc.vm {
        // Nor the VM's own QEMU, a host process.
        foreign.push(nimbus_driver::vm::qemu::QEMU.to_owned());
    }
    let mut args = serde_json::json!({
        "disk": disk.numbers,
        "marker": marker.to_string_lossy(),
        "foreign": foreign,
        "cgroup": cgroup,
        "fd_marker": format!("fd-marker-{nonce}"),
        "env_marker": nonce,
        "instance_dir": h.instance_dir(&attacker.id).to_string_lossy(),
        "net": {
            "victim": vip, "victim6": victim6, "spoof_src": spoof, "open_port": 8000, "closed_port": 9000,
            "gateway": format!("10.{}.0.1", sc.net), "host_ports": [host_port], "host_ip": host_ip(),
        },
    });
    if sc.vm {
        args["vm"] = true.into();
        args["marker_content"] = marker_content.into();
    }
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
    let mut all = vec![(sc.name, r)];
    if sc.name == "vm" {
        hand_host_disk_to(&h, &attacker.id, disk.loop_dev.as_deref().unwrap());
        args["only"] = serde_json::json!(["host_disk", "host_files_via_proc"]);
        all.push(("vm-disk", probe(&h, &aip, &args)));
    }
    drop((listener, f, disk));
    all
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

/// The escape suite with the attacker a VM (QEMU, its own kernel, a tap on the same bridge with
/// the same MAC and port checks as a container's veth), the victim a container of another org.
///
/// A guest's root owns its kernel: loading a module, setting the clock, `kexec_load`,
/// `keyctl`, loading a bpf program, the kernel log, `/proc/keys` and `/proc/kcore`, host-wide
/// sysctls, `release_agent` and the cgroup limit files (the guest has no cgroup file system
/// mounted; a fresh mount is its own kernel's), and a GPU node made with `mknod` (the guest
/// kernel's device numbers: a host GPU could reach a guest only by VFIO passthrough, which the
/// driver does not wire yet and this host has no GPU for) all act on the guest's own kernel, which is the VM, not the host. They are not
/// escapes there, and some succeed: [`VM_GUEST_OWN`] lists them, and the test prints what they
/// report and asserts nothing about them (but that they ran). What it asserts ([`VM_CHECKS`])
/// are the doors out of the guest:
///
/// - `host_disk`: the host's block device numbers, made with `mknod` in the guest, open the
///   guest kernel's devices; so the guest reads every block device it has (and a node with the
///   host disk's numbers) for the host disk's data, a loop device of 0x42 bytes. `vm-disk`, the
///   same VM after [`hand_host_disk_to`] attached that device behind its seed drive, must find
///   it (no setting of the driver does that: a guest has only what QEMU gives it, its overlay
///   and its seed, so the hook is the test's own, over QMP);
/// - `host_files_via_proc`: the host's marker file is not under `/proc/*/root` of any guest
///   process, and its content is on no guest device; `vm-disk` must find it (the marker is also
///   written on the handed-over disk, as a host file is on a host disk);
/// - `foreign_processes`, `inherited_fds`, `agent_environment`, `host_paths_in_mountinfo`: no
///   host or victim process (nor the VM's own QEMU) in the guest's `/proc`, no descriptor of the
///   agent's, nothing of its environment in PID 1's, no host path in the root mount. There is no
///   layer to turn off for these short of a guest kernel that is not the guest's: the guest's
///   `/proc` lists the tasks of its own kernel, QEMU gets a cleared environment and its
///   descriptors stay in QEMU (a host process). As for containers (where these three have no
///   weakened run either), they must hold;
/// - the network: another org's closed ports (IPv4, IPv6 link-local), its private address, the
///   host's ports, a spoofed source address, a spoofed MAC, a forged ARP claim. `vm-net`, the
///   same with the host's network layers off, must report every one of them open.
///
/// Nets 248 and 249, shared with the planted-link test: the two take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_has_no_door_to_the_host_or_other_tenants() {
    let Some(images) = common::images_dir() else { return };
    if nimbus_driver::vm::guest::prepared(&images).is_none() {
        eprintln!("SKIPPED: no guest kernel in {} (nimbus image build --vm)", images.display());
        return;
    }
    if Command::new(nimbus_driver::vm::qemu::QEMU).arg("--version").output().is_err() {
        eprintln!("SKIPPED: no {}", nimbus_driver::vm::qemu::QEMU);
        return;
    }
    let _nets = NETS_248_249.lock().await;
    let mut results: BTreeMap<&str, Results> = BTreeMap::new();
    for sc in vm_scenarios() {
        for (name, r) in run_all(sc).await {
            eprintln!("== {name} ==");
            for (k, (status, detail)) in &r {
                let own = if VM_GUEST_OWN.contains(&k.as_str()) { " (the guest's own kernel)" } else { "" };
                eprintln!("  {k:<24} {status:<8} {detail}{own}");
            }
            results.insert(name, r);
        }
    }
    let mut failures = Vec::new();
    let vm = &results["vm"];
    for (check, refusal, opened_by) in VM_CHECKS {
        match vm.get(*check) {
            Some((s, d)) if s == "blocked" && d.contains(refusal) => {}
            other => failures.push(format!("vm: {check} must be blocked with {refusal:?}, got {other:?}")),
        }
        for sc in *opened_by {
            match results[sc].get(*check) {
                Some((s, _)) if s == "open" => {}
                other => failures.push(format!("{sc}: {check} must catch the open door, got {other:?}")),
            }
        }
    }
    for (name, r) in &results {
        for (check, (status, detail)) in r {
            if !VM_CHECKS.iter().any(|c| c.0 == check) && !VM_GUEST_OWN.contains(&check.as_str()) {
                failures.push(format!("{name}: {check} is in neither VM table"));
            }
            if status == "error" {
                failures.push(format!("{name}: {check} did not run: {detail}"));
            }
        }
    }
    for check in VM_GUEST_OWN {
        if !vm.contains_key(*check) {
            failures.push(format!("vm: {check} was not recorded"));
        }
    }
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
    let _nets = NETS_248_249.lock().await;
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
