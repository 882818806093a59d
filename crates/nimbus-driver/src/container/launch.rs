//! The container launcher: the program that turns a [`LaunchSpec`] into a running instance.
//! It runs as its own single-threaded process (`nimbus __launch-container SPEC`, or a test
//! binary's launcher), never inside the multi-threaded agent, so that it may fork and change
//! namespaces with ordinary Rust code.
//!
//! ```text
//! agent ── spawns ──> launcher L (host root, host namespaces)
//!                      │ joins the instance's cgroups, closes inherited fds
//!                      │ clone3(NEWUSER|NEWNS|NEWPID|NEWNET|NEWUTS|NEWIPC|NEWCGROUP)
//!                      ├──────────────> C (PID 1 of the instance, root of its user namespace)
//!                      │ uid/gid maps        │ waits for its maps
//!                      │ rootfs overlay ───> │ attaches it, mounts /dev /proc /sys /run,
//!                      │   (idmapped lower)  │ binds file systems, hosts, seed (targets
//!                      │ veth into C's netns │ resolved inside the rootfs: RESOLVE_IN_ROOT)
//!                      │ "net" ────────────> │ pivot_root, hostname, masks
//!                      │                     │ drops capabilities, installs seccomp,
//!                      │ <── EOF on exec ─── │ closes fds, execs tini
//!                      │ prints "ok <pid>" to the agent, then waits for C (a monitor)
//! ```
//!
//! Everything C does to paths inside the rootfs goes through [`resolve_in_root`], so a link a
//! tenant planted in its disk (`/lambda -> /etc`) resolves inside the instance, never on the
//! host; and C does it as the instance's root, which owns nothing on the host. The host never
//! writes into the tenant's disk at all: what an instance boots with (keys, hostname, user
//! data, its SSH host key) reaches it as a read-only seed directory bound at `/run/nimbus`,
//! which the instance's own boot script reads (cloud-init's NoCloud seed works the same way).

use std::ffi::CString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::gpu::GpuPlan;
use super::sys;

/// The user namespace of an unprivileged instance: ids `0..count` inside are
/// `host_base..host_base + count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_base: u32,
    pub count: u32,
}

/// How the instance's root file system is built: an overlay of `lower` (the shared image,
/// read-only) and `upper` (its disk).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rootfs {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the overlay is attached in the instance's mount namespace (a host directory).
    pub target: PathBuf,
    /// Mount `lower` idmapped into the instance's user namespace (the shared image stays owned
    /// by host root on disk). False when `lower` is already a shifted copy, or privileged.
    pub idmap_lower: bool,
}

/// A bind mount of a host path into the instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the instance.
    pub target: String,
    pub readonly: bool,
    /// The target is a file (else a directory).
    pub file: bool,
}

/// A cgroup hierarchy to mount under the instance's `/sys/fs/cgroup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupMount {
    /// Directory under `/sys/fs/cgroup` (empty: `/sys/fs/cgroup` itself, a pure v2 host).
    pub dir: String,
    /// `cgroup` or `cgroup2`.
    pub fstype: String,
    /// Mount options naming the hierarchy (`cpu`, `name=systemd`; empty for cgroup2).
    pub options: String,
}

/// The instance's network: a veth pair whose host end joins `bridge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetSpec {
    pub bridge: String,
    pub host_if: String,
    /// MAC of the instance's `eth0` (derived from its address, so that a reused address never
    /// meets a stale neighbour entry elsewhere on the bridge).
    pub mac: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Name under `/run/netns` the namespace is kept as, for the host's tools.
    pub ns_name: String,
}

/// The layers an instance is fenced with. All on for every unprivileged instance; tests turn
/// single layers off to prove that their checks can fail (see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardening {
    pub seccomp: bool,
    pub drop_caps: bool,
    pub masks: bool,
    pub pid_namespace: bool,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening { seccomp: true, drop_caps: true, masks: true, pid_namespace: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub id: String,
    pub hostname: String,
    pub rootfs: Rootfs,
    /// `None`: a privileged instance (no user namespace; root inside is root on the host).
    pub userns: Option<IdMap>,
    /// `cgroup.procs` files the launcher joins before anything of the instance exists.
    pub cgroup_procs: Vec<PathBuf>,
    pub cgroup_mounts: Vec<CgroupMount>,
    pub net: Option<NetSpec>,
    pub binds: Vec<Bind>,
    pub gpu: Option<GpuPlan>,
    pub hardening: Hardening,
    /// The instance's first program and its environment (nothing of the agent's).
    pub init: Vec<String>,
    pub env: Vec<String>,
}

/// Capabilities no instance keeps, even in its own user namespace: loading modules, raw I/O,
/// the clock, MAC policy, the audit subsystem, the kernel log, process accounting, BPF and
/// perf, wake alarms and suspend blocking. Docker inside needs none of them.
pub const DROPPED_CAPS: [(u32, &str); 13] = [
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (20, "CAP_SYS_PACCT"),
    (25, "CAP_SYS_TIME"),
    (30, "CAP_AUDIT_CONTROL"),
    (32, "CAP_MAC_OVERRIDE"),
    (33, "CAP_MAC_ADMIN"),
    (34, "CAP_SYSLOG"),
    (35, "CAP_WAKE_ALARM"),
    (36, "CAP_BLOCK_SUSPEND"),
    (37, "CAP_AUDIT_READ"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// Files of `/proc` hidden behind `/dev/null`, and directories of `/proc` and `/sys` behind an
/// empty read-only tmpfs (Docker's masked paths).
const MASKED_FILES: [&str; 6] = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats", "/proc/kmsg"];
const MASKED_DIRS: [&str; 5] = ["/proc/acpi", "/proc/scsi", "/proc/asound", "/sys/firmware", "/sys/devices/virtual/powercap"];
/// Read-only binds over themselves (Docker's read-only paths, less `/proc/sys`: namespaced
/// sysctls such as `net.ipv4.ip_forward` of the instance's own network stay writable for
/// Docker inside, and the host-global ones are owned by host root, whom the instance's root
/// is not, so writes to them fail with EACCES).
const READONLY: [&str; 4] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"];

/// Host device nodes every instance gets in its private `/dev`.
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

type Result<T> = std::result::Result<T, String>;

fn ctx(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Entry point of the launcher process. Prints `ok <pid>` (the instance's PID 1 on the host)
/// or `error <message>` on stdout, then stays as the instance's monitor until it ends.
pub fn main(args: &[String]) -> i32 {
    // Nothing the agent had open reaches the instance.
    let _ = sys::close_from(3);
    sys::ignore_signal(libc::SIGPIPE);
    if args.first().map(String::as_str) == Some(USERNS_EXEC) {
        return userns_exec_main(&args[1..]);
    }
    let Some(path) = args.first() else {
        println!("error usage: launcher SPEC.json");
        return 2;
    };
    let spec: LaunchSpec =
        match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
            Ok(s) => s,
            Err(e) => {
                println!("error reading {path}: {e}");
                return 2;
            }
        };
    match launch(&spec) {
        Ok(pid) => {
            println!("ok {pid}");
            let _ = std::io::stdout().flush();
            // The agent stops reading here; nothing more goes to it.
            if let Ok(null) = std::fs::File::open("/dev/null") {
                let _ = sys::dup2(null.as_raw_fd(), 1);
            }
            sys::waitpid(pid).unwrap_or(1)
        }
        Err(e) => {
            println!("error {}", e.replace('\n', " "));
            1
        }
    }
}

/// The launcher's other mode: `--userns-exec BASE COUNT PROCS PROGRAM ARGS...` joins the cgroups
/// whose `cgroup.procs` files PROCS lists (`:`-separated) and runs PROGRAM as root of a fresh
/// user namespace whose ids 0..COUNT are host ids BASE.. (a tenant's range), and
/// waits for it. A VM's virtiofsd runs so: the files a guest's user makes on a shared file
/// system belong to the same host uid as that user's files in the tenant's containers, and
/// the daemon is never host root. The launcher exits once PROGRAM runs. (`unshare(1)` cannot: it needs newuidmap to map a range, and
/// a map written after its exec comes too late for the program's capabilities.)
pub const USERNS_EXEC: &str = "--userns-exec";

fn userns_exec_main(args: &[String]) -> i32 {
    let parse = |i: usize| args.get(i).and_then(|a| a.parse::<u32>().ok());
    let (Some(base), Some(count), Some(procs), Some(program)) = (parse(0), parse(1), args.get(2), args.get(3)) else {
        eprintln!("usage: launcher {USERNS_EXEC} BASE COUNT CGROUP_PROCS_FILES PROGRAM [ARGS...]");
        return 2;
    };
    // Into the instance's cgroups first, so that PROGRAM is born there.
    for f in procs.split(':').filter(|f| !f.is_empty()) {
        if let Err(e) = std::fs::write(f, std::process::id().to_string()) {
            eprintln!("{USERNS_EXEC}: joining {f}: {e}");
            return 1;
        }
    }
    if base == 0 {
        eprintln!("{USERNS_EXEC}: base 0 would be host root");
        return 2;
    }
    match userns_exec(base, count, program, &args[4..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{USERNS_EXEC}: {e}");
            1
        }
    }
}

fn userns_exec(base: u32, count: u32, program: &str, args: &[String]) -> Result<i32> {
    let (ours, theirs) = sys::seqpacket_pair().map_err(ctx("socketpair"))?;
    let pid = sys::clone3(libc::CLONE_NEWUSER as u64).map_err(ctx("clone3"))?;
    if pid == 0 {
        drop(ours);
        let mut buf = [0u8; 16];
        let go = matches!(sys::recv_msg(&theirs, &mut buf), Ok((n, _)) if &buf[..n] == b"maps");
        if !go {
            std::process::exit(1);
        }
        // Root of the new namespace (host uid `base`) for good: the exec below then keeps the
        // namespace's capabilities, and nothing of host root's identity is left.
        let become_root = sys::setgroups_empty().and_then(|_| sys::setresgid(0)).and_then(|_| sys::setresuid(0));
        if let Err(e) = become_root {
            eprintln!("{USERNS_EXEC}: becoming the namespace's root: {e}");
            std::process::exit(1);
        }
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        let e = std::os::unix::process::CommandExt::exec(&mut cmd);
        eprintln!("{USERNS_EXEC}: {program}: {e}");
        std::process::exit(127);
    }
    drop(theirs);
    let mapped = ["uid_map", "gid_map"].iter().try_for_each(|f| {
        let p = format!("/proc/{pid}/{f}");
        std::fs::write(&p, format!("0 {base} {count}\n")).map_err(|e| format!("{p}: {e}"))
    });
    if let Err(e) = mapped {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid);
        return Err(e);
    }
    sys::send_msg(&ours, b"maps", None).map_err(ctx("signalling the child"))?;
    // The socket closes when the child execs (it is close-on-exec); this root process then
    // leaves, so nothing of host root stays beside the program.
    let mut buf = [0u8; 64];
    match sys::recv_msg(&ours, &mut buf) {
        Ok((0, _)) => Ok(0),
        _ => Ok(sys::waitpid(pid).unwrap_or(1)),
    }
}

/// Starts the instance; returns its PID 1 on the host once it has exec'd its init.
pub fn launch(spec: &LaunchSpec) -> Result<libc::pid_t> {
    for p in &spec.cgroup_procs {
        std::fs::write(p, std::process::id().to_string()).map_err(|e| format!("joining {}: {e}", p.display()))?;
    }
    let (ours, theirs) = sys::seqpacket_pair().map_err(ctx("socketpair"))?;
    let mut flags = (libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET | libc::CLONE_NEWCGROUP) as u64;
    if spec.userns.is_some() {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    if spec.hardening.pid_namespace {
        flags |= libc::CLONE_NEWPID as u64;
    }
    let pid = sys::clone3(flags).map_err(ctx("clone3"))?;
    if pid == 0 {
        drop(ours);
        let err = match child(spec, &theirs) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let _ = sys::send_msg(&theirs, format!("error {err}").as_bytes(), None);
        std::process::exit(1);
    }
    drop(theirs);
    let res = parent(spec, pid, &ours);
    if let Err(e) = res {
        // The child may have failed first (and its failure is the cause): its message wins.
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid);
        let mut buf = [0u8; 4096];
        return Err(match sys::recv_msg_nowait(&ours, &mut buf) {
            Ok((n, _)) if n > 0 => child_error(&buf[..n]),
            _ => e,
        });
    }
    // The child's first message is an error, or the socket closes when it execs (it is
    // close-on-exec).
    let mut buf = [0u8; 4096];
    match sys::recv_msg(&ours, &mut buf) {
        Ok((0, _)) => Ok(pid),
        Ok((n, _)) => {
            let _ = sys::waitpid(pid);
            Err(child_error(&buf[..n]))
        }
        Err(e) => Err(format!("waiting for the instance to start: {e}")),
    }
}

/// The child's `error <message>`, as the message.
fn child_error(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg).trim_start_matches("error ").to_owned()
}

/// The launcher's half: maps, root file system, network.
fn parent(spec: &LaunchSpec, pid: libc::pid_t, sock: &OwnedFd) -> Result<()> {
    let userns = match spec.userns {
        Some(m) => {
            for f in ["uid_map", "gid_map"] {
                let p = format!("/proc/{pid}/{f}");
                std::fs::write(&p, format!("0 {} {}\n", m.host_base, m.count)).map_err(|e| format!("{p}: {e}"))?;
            }
            Some(std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from).map_err(ctx("the instance's user namespace"))?)
        }
        None => None,
    };
    let rootfs = overlay(&spec.rootfs, if spec.rootfs.idmap_lower { userns.as_ref() } else { None })?;
    sys::send_msg(sock, b"rootfs", Some(&rootfs)).map_err(ctx("sending the root file system"))?;
    drop(rootfs);
    if let Some(n) = &spec.net {
        network(n, pid)?;
    }
    // The agent says when the host's packet filters for this instance are in place (it loads
    // them meanwhile); nothing of the tenant's runs before.
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line);
    if line.trim() != "go" {
        return Err("the agent called the start off (its firewall update failed, or it went away)".into());
    }
    sys::send_msg(sock, b"net", None).map_err(ctx("signalling the instance"))?;
    Ok(())
}

/// The instance's root file system as a detached overlay mount. With `idmap`, the lower layer
/// is an idmapped clone of the image, so the image's root-owned files belong to the instance's
/// root inside and stay root's on disk, shared by every instance.
pub fn overlay(r: &Rootfs, idmap: Option<&OwnedFd>) -> Result<OwnedFd> {
    // Every layer goes to overlayfs as `/proc/self/fd/N`: the instance's mountinfo then shows
    // those strings, never the host's paths of its disk and of the image.
    let path = |p: &Path| -> Result<OwnedFd> { sys::open_dir_path(p).map_err(ctx(p.display())) };
    let lower = match idmap {
        Some(userns) => {
            let c = sys::cstr(&r.lower).map_err(ctx("image path"))?;
            let tree =
                sys::open_tree(&c, sys::OPEN_TREE_CLONE | sys::AT_RECURSIVE).map_err(ctx(format!("open_tree {}", r.lower.display())))?;
            sys::mount_setattr(&tree, true, sys::MOUNT_ATTR_IDMAP, Some(userns)).map_err(ctx("idmapping the image"))?;
            tree
        }
        None => path(&r.lower)?,
    };
    let (upper, work) = (path(&r.upper)?, path(&r.work)?);
    let fs = sys::fsopen(c"overlay").map_err(ctx("fsopen overlay"))?;
    for (k, v) in [(c"lowerdir", &lower), (c"upperdir", &upper), (c"workdir", &work)] {
        sys::fsconfig_string(&fs, k, &sys::fd_path(v)).map_err(ctx(format!("overlay {}", k.to_string_lossy())))?;
    }
    sys::fsconfig_create(&fs).map_err(ctx("creating the overlay"))?;
    sys::fsmount(&fs, 0).map_err(ctx("fsmount overlay"))
}

fn ip_batch(netns: Option<&str>, lines: &str) -> Result<()> {
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip: cannot start ({e})"))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(lines.as_bytes()).map_err(|e| format!("ip: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The veth pair into the instance's network namespace, and the namespace's addresses.
fn network(n: &NetSpec, pid: libc::pid_t) -> Result<()> {
    // `addrgenmode none`: no IPv6 address on the host end, ever (the bridge carries IPv4 and
    // ARP only: docs/security.md).
    ip_batch(
        None,
        &format!(
            "link add {h} type veth peer name eth0 address {mac} netns {pid}\nlink set {h} addrgenmode none\nlink set {h} master {br} up\nnetns attach {ns} {pid}\n",
            h = n.host_if,
            mac = n.mac,
            br = n.bridge,
            ns = n.ns_name
        ),
    )?;
    ip_batch(
        Some(&n.ns_name),
        &format!("link set lo up\naddr add {}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n", n.addr, n.prefix_len, n.gateway),
    )
}

/// The instance's half, as its PID 1: everything up to `exec` of its init.
fn child(spec: &LaunchSpec, sock: &OwnedFd) -> Result<std::convert::Infallible> {
    let mut buf = [0u8; 64];
    let (_, rootfs) = sys::recv_msg(sock, &mut buf).map_err(ctx("waiting for the root file system"))?;
    let rootfs = rootfs.ok_or("no root file system received")?;
    if spec.userns.is_some() {
        sys::setresgid(0).map_err(ctx("setresgid"))?;
        sys::setgroups_empty().map_err(ctx("setgroups"))?;
        sys::setresuid(0).map_err(ctx("setresuid"))?;
    }
    // Mounts the host makes later (volumes) still reach the instance; nothing goes back.
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None).map_err(ctx("making / a slave"))?;
    let target = sys::open_dir_path(&spec.rootfs.target).map_err(ctx(spec.rootfs.target.display()))?;
    sys::move_mount(&rootfs, &target).map_err(ctx("attaching the root file system"))?;
    drop((rootfs, target));
    let root = sys::open_dir_path(&spec.rootfs.target).map_err(ctx("opening the root file system"))?;
    mount_all(spec, &root)?;
    sys::sethostname(&spec.hostname).map_err(ctx("sethostname"))?;
    sys::fchdir(&root).map_err(ctx("chdir into the root"))?;
    // pivot_root(".", "."): the old root ends up stacked under the new one and is detached at
    // once, without a directory for it in the tenant's disk.
    sys::pivot_root(c".", c".").map_err(ctx("pivot_root"))?;
    sys::umount2(c".", libc::MNT_DETACH).map_err(ctx("detaching the host's root"))?;
    std::env::set_current_dir("/").map_err(ctx("chdir /"))?;
    // Inside the instance now, as its root: whatever links the tenant left in its disk resolve
    // here, never on the host.
    if let Err(e) = provision(Path::new(SEED)) {
        eprintln!("nimbus: first-boot provisioning: {e}");
    }
    let (n, _) = sys::recv_msg(sock, &mut buf).map_err(ctx("waiting for the network"))?;
    if &buf[..n] != b"net" {
        return Err("the launcher went away".into());
    }
    let null = std::fs::File::open("/dev/null").map_err(ctx("/dev/null"))?;
    sys::dup2(null.as_raw_fd(), 0).map_err(ctx("stdin"))?;
    drop(null);
    if spec.hardening.drop_caps {
        for (cap, name) in DROPPED_CAPS {
            if sys::cap_known(cap) {
                sys::capbset_drop(cap).map_err(ctx(format!("dropping {name}")))?;
            }
        }
        sys::ambient_clear().map_err(ctx("clearing ambient capabilities"))?;
    }
    let argv: Vec<CString> =
        spec.init.iter().map(|a| CString::new(a.as_bytes()).map_err(|_| "NUL in init".to_owned())).collect::<Result<_>>()?;
    let envp: Vec<CString> =
        spec.env.iter().map(|a| CString::new(a.as_bytes()).map_err(|_| "NUL in env".to_owned())).collect::<Result<_>>()?;
    let prog = argv.first().cloned().ok_or("no init")?;
    let filters = if spec.hardening.seccomp { super::seccomp::programs()? } else { Vec::new() };
    // Every descriptor but 0-2 closes at exec, the socket to the launcher included: its EOF is
    // the launcher's signal that the instance runs.
    sys::cloexec_from(3).map_err(ctx("close_range"))?;
    sys::default_signal(libc::SIGPIPE);
    for f in &filters {
        sys::seccomp_install(f).map_err(ctx("installing the seccomp filter"))?;
    }
    Err(format!("exec {}: {}", spec.init[0], sys::execve(&prog, &argv, &envp)))
}

/// Where the seed directory appears inside an instance.
pub const SEED: &str = "/run/nimbus";

/// The default user's `(uid, gid, home)` from the instance's `/etc/passwd`.
fn user(passwd: &str, name: &str) -> Option<(u32, u32, PathBuf)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, PathBuf::from(f[5]))))?
    })
}

/// What an instance does on its first boot on its disk (a fresh instance, or one restored from
/// a snapshot of another), once, as cloud-init does per instance: the default user's
/// authorized keys from the seed, and its user data set up to run after sshd is up. Runs in
/// the launcher's child after `pivot_root`, as the instance's root.
pub fn provision(seed: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let state = Path::new("/var/lib/nimbus");
    let id = std::fs::read_to_string(seed.join("instance-id"))?.trim().to_owned();
    if let Ok(h) = std::fs::read_to_string(seed.join("hostname")) {
        let _ = std::fs::write("/etc/hostname", h);
    }
    std::fs::create_dir_all(state)?;
    let seen = std::fs::read_to_string(state.join("instance-id")).map(|s| s.trim().to_owned());
    // A disk from before instance ids were recorded has had its first boot already.
    if seen.is_err() && state.join("first-boot.done").exists() {
        return std::fs::write(state.join("instance-id"), format!("{id}\n"));
    }
    if seen.as_ref().is_ok_and(|s| *s == id) {
        return Ok(());
    }
    if let Some((uid, gid, home)) = user(&std::fs::read_to_string("/etc/passwd").unwrap_or_default(), "ubuntu") {
        let ssh = home.join(".ssh");
        // Anything but a directory there (a link planted before a snapshot, say) is set aside,
        // so the instance's own keys always land in a real directory.
        if let Ok(md) = std::fs::symlink_metadata(&ssh) {
            if !md.is_dir() {
                std::fs::rename(&ssh, home.join(format!(".ssh.moved-by-nimbus.{}", std::process::id())))?;
            }
        }
        if !ssh.exists() {
            std::fs::create_dir(&ssh)?;
        }
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&ssh, Some(uid), Some(gid))?;
        let keys = ssh.join("authorized_keys");
        if std::fs::symlink_metadata(&keys).is_ok_and(|m| !m.is_file()) {
            std::fs::remove_file(&keys)?;
        }
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&keys)?;
        std::io::Write::write_all(&mut f, &std::fs::read(seed.join("authorized_keys"))?)?;
        drop(f);
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(&keys, Some(uid), Some(gid))?;
    }
    if let Ok(script) = std::fs::read(seed.join("user-data")) {
        let first = state.join("first-boot");
        let _ = std::fs::remove_file(&first);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(&first)?;
        std::io::Write::write_all(&mut f, &script)?;
        std::fs::write(state.join("run-first-boot"), "")?;
    }
    std::fs::write(state.join("instance-id"), format!("{id}\n"))?;
    std::fs::write(state.join("first-boot.done"), "")
}

/// Where a mount target lives: created as a directory or a file when missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    No,
    Dir,
    File,
}

const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Opens `path` (absolute, as the instance sees it) as an `O_PATH` descriptor with every
/// component resolved inside `root`: absolute links and `..` stay in the instance, magic links
/// (`/proc/*/root`) are refused. Missing components are created (as directories, the last one
/// as `create` says), never on the host: a link on the way is followed inside the instance, as
/// `mkdir -p` would within it.
pub fn resolve_in_root(root: &OwnedFd, path: &str, create: Create) -> std::io::Result<OwnedFd> {
    resolve_depth(root, path, create, 0)
}

fn resolve_depth(root: &OwnedFd, path: &str, create: Create, depth: u32) -> std::io::Result<OwnedFd> {
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    if depth > 40 {
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    let rel = path.trim_start_matches('/');
    let open = |p: &str, dir: bool| {
        let c = CString::new(if p.is_empty() { "." } else { p }).map_err(|_| invalid())?;
        sys::openat2(root, &c, libc::O_PATH | if dir { libc::O_DIRECTORY } else { 0 }, 0, RESOLVE)
    };
    match open(rel, create == Create::Dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create != Create::No => {}
        other => return other,
    }
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut prefix = String::new();
    for (i, comp) in comps.iter().enumerate() {
        if *comp == ".." || *comp == "." {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "mount targets are plain paths"));
        }
        let parent = open(&prefix, true)?;
        let here = if prefix.is_empty() { (*comp).to_owned() } else { format!("{prefix}/{comp}") };
        let last = i + 1 == comps.len();
        let want_dir = !last || create == Create::Dir;
        if open(&here, want_dir).is_err() {
            let name = CString::new(*comp).map_err(|_| invalid())?;
            let made = if last && create == Create::File {
                sys::create_file_at(&parent, &name, 0o644)
            } else {
                sys::mkdirat(&parent, &name, 0o755)
            };
            match made {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A dangling link: make what it points to, inside the instance, then go on
                    // through it.
                    let link = std::fs::read_link(format!("{}/{comp}", sys::fd_path(&parent).to_string_lossy()))
                        .map_err(|_| std::io::Error::new(e.kind(), format!("{path}: {comp} exists and is not a directory")))?;
                    let link = link.to_string_lossy();
                    let target = if link.starts_with('/') { link.into_owned() } else { format!("/{prefix}/{link}") };
                    drop(resolve_depth(root, &target, if want_dir { Create::Dir } else { create }, depth + 1)?);
                }
                Err(e) => return Err(e),
            }
        }
        prefix = here;
    }
    open(rel, create == Create::Dir)
}

fn mount_at(
    src: Option<&std::ffi::CStr>,
    target: &OwnedFd,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let data = data.map(|d| CString::new(d).unwrap_or_default());
    sys::mount(src, &sys::fd_path(target), fstype, flags, data.as_deref())
}

/// Binds `source` (a host path, or a path of the instance's own mounts) on `target`: a detached
/// clone of the source made read-only before it is attached, so no remount ever touches the
/// mount below the target.
fn bind(source: &Path, target: &OwnedFd, readonly: bool) -> Result<()> {
    let src = sys::cstr(source).map_err(ctx(source.display()))?;
    bind_c(&src, target, readonly).map_err(ctx(format!("binding {}", source.display())))
}

fn bind_c(src: &std::ffi::CStr, target: &OwnedFd, readonly: bool) -> std::io::Result<()> {
    let tree = sys::open_tree(src, sys::OPEN_TREE_CLONE | sys::AT_RECURSIVE)?;
    if readonly {
        sys::mount_setattr(&tree, true, sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV, None)?;
    }
    sys::move_mount(&tree, target)
}

/// Makes the mount at `path` (already mounted) read-only.
fn seal(root: &OwnedFd, path: &str) -> Result<()> {
    let t = at(root, path, Create::No)?;
    sys::mount_setattr(&t, false, sys::MOUNT_ATTR_RDONLY, None).map_err(ctx(format!("read-only {path}")))
}

fn at(root: &OwnedFd, path: &str, create: Create) -> Result<OwnedFd> {
    resolve_in_root(root, path, create).map_err(ctx(format!("mount point {path}")))
}

fn tmpfs(root: &OwnedFd, path: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let t = at(root, path, Create::Dir)?;
    mount_at(Some(c"tmpfs"), &t, Some(c"tmpfs"), flags, Some(data)).map_err(ctx(format!("tmpfs on {path}")))
}

/// Every mount of the instance, on the attached root file system `root`.
fn mount_all(spec: &LaunchSpec, root: &OwnedFd) -> Result<()> {
    const NOSUID: libc::c_ulong = libc::MS_NOSUID;
    const NODEV: libc::c_ulong = libc::MS_NODEV;
    const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;
    // Tenant-chosen places first (file systems, volumes, hosts), while nothing but the
    // instance's own disk is under the root: a planted link can point nowhere else.
    tmpfs(root, "/run", NOSUID | NODEV, "mode=0755")?;
    for b in &spec.binds {
        let t = at(root, &b.target, if b.file { Create::File } else { Create::Dir })?;
        bind(&b.source, &t, b.readonly)?;
    }
    // A private /dev: a few host nodes bound into a fresh tmpfs, and a devpts of its own.
    tmpfs(root, "/dev", NOSUID, "mode=0755")?;
    for d in DEV_NODES {
        let t = at(root, &format!("/dev/{d}"), Create::File)?;
        bind(Path::new(&format!("/dev/{d}")), &t, false)?;
    }
    let pts = at(root, "/dev/pts", Create::Dir)?;
    mount_at(Some(c"devpts"), &pts, Some(c"devpts"), NOSUID | NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620,gid=5"))
        .map_err(ctx("devpts"))?;
    tmpfs(root, "/dev/shm", NOSUID | NODEV, "mode=1777")?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink_in(root, &format!("/dev/{link}"), to)?;
    }
    if let Some(g) = &spec.gpu {
        gpu_mounts(root, g)?;
    }
    let proc_ = at(root, "/proc", Create::Dir)?;
    mount_at(Some(c"proc"), &proc_, Some(c"proc"), NOSUID | NODEV | NOEXEC, None).map_err(ctx("proc"))?;
    if let Some(g) = &spec.gpu {
        gpu_proc(root, g)?;
    }
    let sys_ = at(root, "/sys", Create::Dir)?;
    mount_at(Some(c"sysfs"), &sys_, Some(c"sysfs"), NOSUID | NODEV | NOEXEC | libc::MS_RDONLY, None).map_err(ctx("sysfs"))?;
    cgroups(root, &spec.cgroup_mounts)?;
    if spec.hardening.masks {
        masks(root)?;
    }
    Ok(())
}

/// Makes `link` (an absolute path inside) a symbolic link to `target`, replacing what has that
/// name; its directory is resolved inside the root (through `/proc/self/fd/N` of it).
fn symlink_in(root: &OwnedFd, link: &str, target: &str) -> Result<()> {
    let (dir, name) = link.rsplit_once('/').ok_or_else(|| format!("bad link {link}"))?;
    let d = at(root, if dir.is_empty() { "/" } else { dir }, Create::Dir)?;
    let path = format!("{}/{name}", sys::fd_path(&d).to_string_lossy());
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, &path).map_err(ctx(format!("link {link}")))
}

fn cgroups(root: &OwnedFd, mounts: &[CgroupMount]) -> Result<()> {
    const FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if mounts.iter().all(|m| !m.dir.is_empty()) {
        tmpfs(root, "/sys/fs/cgroup", FLAGS, "mode=0755")?;
    }
    for m in mounts {
        let path = if m.dir.is_empty() { "/sys/fs/cgroup".to_owned() } else { format!("/sys/fs/cgroup/{}", m.dir) };
        let t = at(root, &path, Create::Dir)?;
        let fstype = CString::new(m.fstype.as_str()).map_err(|_| "bad cgroup type".to_owned())?;
        let opts = (!m.options.is_empty()).then_some(m.options.as_str());
        mount_at(Some(&fstype), &t, Some(&fstype), FLAGS, opts).map_err(ctx(format!("{} on {path}", m.fstype)))?;
    }
    if mounts.iter().all(|m| !m.dir.is_empty()) {
        seal(root, "/sys/fs/cgroup")?;
    }
    Ok(())
}

/// `path` resolved inside the root, or `None` where this kernel or image has no such file.
fn existing(root: &OwnedFd, path: &str) -> Result<Option<OwnedFd>> {
    match resolve_in_root(root, path, Create::No) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn masks(root: &OwnedFd) -> Result<()> {
    for f in MASKED_FILES {
        if let Some(t) = existing(root, f)? {
            bind(Path::new("/dev/null"), &t, true)?;
        }
    }
    const EMPTY: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for d in MASKED_DIRS {
        if let Some(t) = existing(root, d)? {
            mount_at(Some(c"tmpfs"), &t, Some(c"tmpfs"), EMPTY, Some("mode=0555")).map_err(ctx(format!("masking {d}")))?;
        }
    }
    for p in READONLY {
        if let Some(t) = existing(root, p)? {
            bind_c(&sys::fd_path(&t), &t, true).map_err(ctx(format!("read-only {p}")))?;
        }
    }
    Ok(())
}

/// The instance's GPUs (see `gpu.rs` for the why of each step): its device nodes and the
/// control nodes, the host driver's libraries read-only in a tmpfs with their soname links,
/// and its tools.
fn gpu_mounts(root: &OwnedFd, g: &GpuPlan) -> Result<()> {
    for d in &g.devices {
        let t = at(root, &d.path, Create::File)?;
        bind(Path::new(&d.path), &t, false)?;
    }
    tmpfs(root, super::gpu::LIB_DIR, libc::MS_NOSUID | libc::MS_NODEV, "mode=0755")?;
    for (src, dst) in &g.files {
        let t = at(root, dst, Create::File)?;
        bind(src, &t, true)?;
    }
    for (target, link) in &g.links {
        symlink_in(root, link, target)?;
    }
    Ok(())
}

/// `/proc/driver/nvidia` with only this instance's GPUs, and `ModifyDeviceFiles: 0` so the
/// libraries never try to create the nodes of GPUs it does not have.
fn gpu_proc(root: &OwnedFd, g: &GpuPlan) -> Result<()> {
    let host = Path::new("/proc/driver/nvidia");
    if !host.is_dir() {
        return Ok(());
    }
    let Ok(t) = resolve_in_root(root, "/proc/driver/nvidia", Create::No) else { return Ok(()) };
    mount_at(Some(c"nvidia"), &t, Some(c"tmpfs"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, Some("mode=0555"))
        .map_err(ctx("/proc/driver/nvidia"))?;
    // The descriptor of the tmpfs just mounted (`t` is the directory beneath it).
    let t = at(root, "/proc/driver/nvidia", Create::No)?;
    let base = sys::fd_path(&t).to_string_lossy().into_owned();
    for f in ["version", "registry", "params"] {
        if let Ok(text) = std::fs::read_to_string(host.join(f)) {
            let text = text.replace("ModifyDeviceFiles: 1", "ModifyDeviceFiles: 0");
            std::fs::write(format!("{base}/{f}"), text).map_err(ctx(format!("/proc/driver/nvidia/{f}")))?;
        }
    }
    for e in &g.proc_entries {
        let inside = format!("/proc/driver/nvidia/{e}");
        let t = at(root, &inside, Create::Dir)?;
        bind(&host.join(e), &t, true)?;
    }
    seal(root, "/proc/driver/nvidia")
}

/// The MAC an instance with address `addr` gets: `0a:58` and the four address bytes (the
/// convention of Kubernetes' bridge plugins), locally administered and unicast.
pub fn mac_for(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 200, 0, 3)), "0a:58:0a:c8:00:03");
    }

    #[test]
    fn dropped_capabilities_include_the_dangerous_ones() {
        let names: Vec<&str> = DROPPED_CAPS.iter().map(|(_, n)| *n).collect();
        for must in ["CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_SYSLOG", "CAP_BPF", "CAP_PERFMON", "CAP_MAC_ADMIN"] {
            assert!(names.contains(&must), "{must}");
        }
        assert!(!names.contains(&"CAP_SYS_ADMIN") && !names.contains(&"CAP_NET_ADMIN"), "nesting needs these in the user namespace");
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    fn root_of(t: &crate::container::TempDir) -> OwnedFd {
        sys::open_dir_path(&t.0.join("root")).unwrap()
    }

    fn setup() -> crate::container::TempDir {
        let t = crate::container::TempDir::new();
        std::fs::create_dir_all(t.0.join("root/etc")).unwrap();
        std::fs::create_dir_all(t.0.join("outside")).unwrap();
        t
    }

    fn where_is(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(sys::fd_path(fd).to_str().unwrap()).unwrap()
    }

    #[test]
    fn absolute_links_and_dotdot_stay_inside_the_root() {
        let t = setup();
        let outside = t.0.join("outside");
        std::os::unix::fs::symlink(&outside, t.0.join("root/lambda")).unwrap();
        std::os::unix::fs::symlink("../../../..", t.0.join("root/etc/up")).unwrap();
        let root = root_of(&t);
        // `/lambda -> <host path>`: the mount point is made inside the root, under that path.
        let fd = resolve_in_root(&root, "/lambda/nfs/shared", Create::Dir).unwrap();
        assert_eq!(where_is(&fd), t.0.join("root").join(outside.strip_prefix("/").unwrap()).join("nfs/shared"));
        assert!(!outside.join("nfs").exists(), "nothing was made on the host");
        // `..` past the root stays at the root.
        let fd = resolve_in_root(&root, "/etc/up/etc", Create::No).unwrap();
        assert_eq!(where_is(&fd), t.0.join("root/etc"));
        // A file target through a link.
        std::os::unix::fs::symlink("/etc/real-hosts", t.0.join("root/etc/hosts")).unwrap();
        let fd = resolve_in_root(&root, "/etc/hosts", Create::File).unwrap();
        assert_eq!(where_is(&fd), t.0.join("root/etc/real-hosts"));
        assert!(t.0.join("root/etc/real-hosts").is_file());
    }

    #[test]
    fn magic_links_and_plain_files_in_the_way_are_refused() {
        let t = setup();
        std::os::unix::fs::symlink("/proc/self/root", t.0.join("root/host")).unwrap();
        std::fs::write(t.0.join("root/file"), "").unwrap();
        let root = root_of(&t);
        // RESOLVE_NO_MAGICLINKS: /proc/self/root is not followed (here /proc is not even in the
        // root, and a link to it resolves inside; with the instance's /proc mounted, the magic
        // link itself is refused).
        assert!(resolve_in_root(&root, "/host/etc", Create::No).is_err());
        let e = resolve_in_root(&root, "/file/x", Create::Dir).unwrap_err();
        assert!(e.to_string().contains("exists and is not a directory") || e.raw_os_error() == Some(libc::ENOTDIR), "{e}");
        let proc_ = resolve_in_root(&sys::open_dir_path(Path::new("/")).unwrap(), "/proc/self/root/etc", Create::No);
        assert_eq!(proc_.unwrap_err().raw_os_error(), Some(libc::ELOOP), "magic links are refused");
    }

    #[test]
    fn link_loops_end() {
        let t = setup();
        std::os::unix::fs::symlink("/b", t.0.join("root/a")).unwrap();
        std::os::unix::fs::symlink("/a", t.0.join("root/b")).unwrap();
        let root = root_of(&t);
        assert!(resolve_in_root(&root, "/a/x", Create::Dir).is_err());
    }
}
