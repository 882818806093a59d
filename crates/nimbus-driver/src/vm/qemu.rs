//! One QEMU process per VM: its command line (pure, unit-tested), starting it detached inside
//! the instance's cgroup, talking QMP to it, and the boot probe that decides whether KVM works.
//!
//! QEMU starts as root only to open the tap, the disk and the sockets, then drops to the
//! instance's unprivileged host uid (`-runas`) under its own seccomp filter (`-sandbox`): a
//! guest that escapes into QEMU is an unprivileged process in a cgroup, not root. Direct
//! kernel boot, `-nodefaults`, no display, no firmware menu: the guest's first instruction
//! is the kernel's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::guest::Boot;

pub const QEMU: &str = "qemu-system-x86_64";

/// Where a VM's sockets live: a short path, since a socket's path is at most 107 bytes and an
/// instance directory can be longer. Ids are unique across hosts, so hosts never share one.
pub const RUN_DIR: &str = "/run/nimbus-vm";

pub fn run_dir(id: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(id)
}

/// VM `id`'s QMP socket.
pub fn qmp_socket(id: &str) -> PathBuf {
    run_dir(id).join("qmp.sock")
}

/// Pauses VM `id`'s vCPUs (QMP `stop`) for as long as the guard lives, so that a copy of its
/// disk is what a power cut at that instant would leave; resumed (`cont`) on drop. `None` when
/// it does not run (nothing to pause).
pub fn pause(id: &str) -> Option<Paused> {
    let mut q = Qmp::connect(&qmp_socket(id), Duration::from_secs(2)).ok()?;
    q.execute("stop", serde_json::json!({})).ok()?;
    Some(Paused(q))
}

pub struct Paused(Qmp);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = self.0.execute("cont", serde_json::json!({}));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Everything one VM's command line is made of.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub boot: Boot,
    pub disk: PathBuf,
    pub seed: PathBuf,
    pub tap: String,
    pub mac: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub accel: Accel,
    /// Host `(uid, gid)` QEMU runs as once set up.
    pub runas: (u32, u32),
    pub qmp: PathBuf,
    pub console: PathBuf,
    /// `(tag, vhost-user socket)` of each virtiofs share.
    pub virtiofs: Vec<(String, PathBuf)>,
    /// PCI addresses passed through (VFIO), with their own arguments from `vfio::qemu_args`.
    pub vfio_args: Vec<String>,
}

/// QEMU's arguments for `s` (without the program).
pub fn args(s: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| x.to_string()));
    let accel = match s.accel {
        Accel::Kvm => "kvm".to_owned(),
        // TCG's translation cache defaults to 1 GiB; the cgroup has room for 64 MiB of it.
        Accel::Tcg => "tcg,tb-size=256".to_owned(),
    };
    let cpu = match s.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    push(&["-name", &s.name, "-machine", "q35", "-accel", &accel, "-cpu", cpu]);
    push(&["-smp", &s.vcpus.max(1).to_string(), "-m", &format!("{}M", s.memory_mib.max(128))]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    push(&["-kernel", &s.boot.kernel.to_string_lossy(), "-initrd", &s.boot.initrd.to_string_lossy()]);
    push(&["-append", "console=ttyS0 panic=-1 quiet"]);
    let disk = format!("file={},if=virtio,format=qcow2,discard=unmap", s.disk.display());
    let seed = format!("file={},if=virtio,format=raw,readonly=on", s.seed.display());
    push(&["-drive", &disk, "-drive", &seed]);
    let net = format!("tap,id=n0,ifname={},script=no,downscript=no", s.tap);
    let nic = format!("virtio-net-pci,netdev=n0,mac={}", s.mac);
    push(&["-netdev", &net, "-device", &nic]);
    if !s.virtiofs.is_empty() {
        // vhost-user needs the guest's memory shared with virtiofsd.
        let mem = format!("memory-backend-memfd,id=mem,size={}M,share=on", s.memory_mib.max(128));
        push(&["-object", &mem, "-numa", "node,memdev=mem"]);
        for (i, (tag, sock)) in s.virtiofs.iter().enumerate() {
            let chr = format!("socket,id=fs{i},path={}", sock.display());
            let dev = format!("vhost-user-fs-pci,chardev=fs{i},tag={tag}");
            push(&["-chardev", &chr, "-device", &dev]);
        }
    }
    let serial = format!("file:{}", s.console.display());
    let qmp = format!("unix:{},server=on,wait=off", s.qmp.display());
    push(&["-serial", &serial, "-qmp", &qmp]);
    push(&["-runas", &format!("{}:{}", s.runas.0, s.runas.1)]);
    push(&["-sandbox", "on,obsolete=deny,resourcecontrol=deny"]);
    a.extend(s.vfio_args.iter().cloned());
    a
}

/// Starts QEMU for `s` detached (its own process group, reaped by a thread of ours while we
/// live, adopted by init after), puts it in cgroup `cgroup` of `cgroups`, and returns its pid
/// once its QMP socket answers.
pub fn start(s: &VmSpec, cgroups: &crate::container::cgroup::Cgroups, cgroup: &str) -> Result<u32, String> {
    let _ = std::fs::remove_file(&s.qmp);
    let log = s.console.with_file_name("qemu.log");
    let err = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    // Passed-through devices pin all guest memory for DMA, which QEMU, no longer root after
    // `-runas`, may only do with the lock limit lifted (prlimit execs QEMU: the same process).
    let mut cmd = if s.vfio_args.is_empty() {
        Command::new(QEMU)
    } else {
        let mut c = Command::new("prlimit");
        c.args(["--memlock=unlimited:unlimited", "--", QEMU]);
        c
    };
    let mut child = cmd
        .args(args(s))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {QEMU}: {e} (apt-get install qemu-system-x86)"))?;
    let pid = child.id();
    if let Err(e) = cgroups.add(cgroup, pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("putting QEMU in its cgroup: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            return Err(format!("QEMU exited at start ({st}): {}", tail.into_iter().rev().collect::<Vec<_>>().join(" / ")));
        }
        if Qmp::connect(&s.qmp, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("QEMU's QMP socket never answered".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// A QMP connection, capabilities negotiated.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("QMP {}: {e}", path.display()))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp { reader: BufReader::new(s), writer };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<serde_json::Value, String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l).map_err(|e| format!("QMP read: {e}"))? == 0 {
            return Err("QMP closed".into());
        }
        serde_json::from_str(&l).map_err(|e| format!("QMP said {l:?}: {e}"))
    }

    /// Runs `command`; its `return`, or its `error` as an error. Events in between are skipped.
    pub fn execute(&mut self, command: &str, arguments: serde_json::Value) -> Result<serde_json::Value, String> {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {command}: {}", e["desc"].as_str().unwrap_or("error")));
            }
        }
    }
}

/// Whether KVM boots a guest here: `/dev/kvm` existing is not enough (nested hosts have one
/// that hangs every guest). Boots the initramfs in probe mode and waits for its marker.
pub fn kvm_boots(boot: &Boot, timeout: Duration) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    // `timeout` ends a hung probe guest even when this process is gone by then (an agent or a
    // test that exits first would otherwise leave it behind for good).
    let limit = format!("{}", timeout.as_secs().max(1) + 1);
    let mut child = match Command::new("timeout")
        .args(["-s", "KILL", &limit, QEMU])
        .args(["-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet nimbus.probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let Some(out) = child.stdout.take() else { return false };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.contains(super::guest::PROBE_MARKER) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let ok = rx.recv_timeout(timeout).is_ok();
    // Not `kill`: that would end `timeout` and leave its QEMU. A probe that booted powers off
    // by itself; one that hangs is killed by `timeout` a second later.
    let _ = child.wait();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "i-1".into(),
            boot: Boot { kernel: "/k/vmlinuz".into(), initrd: "/k/initrd.cpio".into() },
            disk: "/d/disk.qcow2".into(),
            seed: "/d/seed.iso".into(),
            tap: "nh0123".into(),
            mac: "52:54:00:0a:09:05".into(),
            vcpus: 2,
            memory_mib: 2048,
            accel: Accel::Tcg,
            runas: (1_001_000, 1_001_000),
            qmp: "/d/qmp.sock".into(),
            console: "/d/console.log".into(),
            virtiofs: vec![],
            vfio_args: vec![],
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn the_command_line_is_minimal_and_unprivileged() {
        let a = args(&spec());
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=256"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-m"), ["2048M"]);
        assert_eq!(after(&a, "-runas"), ["1001000:1001000"], "QEMU drops root");
        assert_eq!(after(&a, "-sandbox"), ["on,obsolete=deny,resourcecontrol=deny"]);
        assert!(a.contains(&"-nodefaults".to_owned()) && a.contains(&"-no-user-config".to_owned()));
        assert_eq!(after(&a, "-kernel"), ["/k/vmlinuz"], "direct kernel boot");
        assert_eq!(
            after(&a, "-drive"),
            ["file=/d/disk.qcow2,if=virtio,format=qcow2,discard=unmap", "file=/d/seed.iso,if=virtio,format=raw,readonly=on"]
        );
        assert_eq!(after(&a, "-netdev"), ["tap,id=n0,ifname=nh0123,script=no,downscript=no"]);
        assert_eq!(after(&a, "-device"), ["virtio-net-pci,netdev=n0,mac=52:54:00:0a:09:05"]);
        assert!(after(&a, "-object").is_empty(), "no shared memory without virtiofs");

        let mut k = spec();
        k.accel = Accel::Kvm;
        k.virtiofs = vec![("fs0".into(), "/d/fs0.sock".into())];
        k.vfio_args = vec!["-device".into(), "vfio-pci,host=0000:17:00.0".into()];
        let a = args(&k);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert_eq!(after(&a, "-object"), ["memory-backend-memfd,id=mem,size=2048M,share=on"]);
        assert_eq!(after(&a, "-chardev"), ["socket,id=fs0,path=/d/fs0.sock"]);
        assert!(after(&a, "-device").contains(&"vhost-user-fs-pci,chardev=fs0,tag=fs0"));
        assert!(after(&a, "-device").contains(&"vfio-pci,host=0000:17:00.0"));
    }
}
