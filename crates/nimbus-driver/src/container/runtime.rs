//! Starting and stopping one container: an overlay over the image (mounted inside the
//! container's own mount namespace, so it disappears with the container), mount/uts/ipc/pid
//! namespaces plus the instance's network namespace, `pivot_root` into the overlay, and `tini`
//! as PID 1 supervising a real OpenSSH `sshd`.
//!
//! The container is started detached (its own process group, output to `console.log`), so it
//! outlives the agent that started it; everything about it is found again from its directory,
//! its cgroup and its network namespace.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cgroup::{Cgroups, Limits};
use super::gpu::{self, GpuPlan};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[from] super::cgroup::CgroupError),
    #[error("{0}")]
    Start(String),
}

type Result<T> = std::result::Result<T, RuntimeError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_owned(), source }
}

/// Everything needed to run one instance.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub hostname: String,
    /// The image's root file system (read-only lower layer).
    pub lower: PathBuf,
    /// The instance's directory: `upper/` (its disk), `work/`, `merged/`, `console.log`.
    pub dir: PathBuf,
    pub limits: Limits,
    /// `/run/netns/...` of the instance's network namespace.
    pub netns: String,
    pub addr: Ipv4Addr,
    pub authorized_keys: Vec<String>,
    /// `(host directory, mount point)` bind mounts (file systems).
    pub mounts: Vec<(PathBuf, String)>,
    /// uid/gid of the default user inside the image.
    pub user_uid: u32,
    /// First-boot script made from the launch's `user_data`, run once.
    pub first_boot: Option<String>,
    /// sshd accepts passwords (`ssh_pwauth: true` in the user data); keys only otherwise.
    pub password_ssh: bool,
    /// A host file bound over the instance's `/etc/hosts`, which the driver keeps current
    /// (its cluster peers' names), as container engines do.
    pub hosts_file: Option<PathBuf>,
    /// The instance's GPUs (`None`: no GPU, and nothing GPU-related happens).
    pub gpu: Option<GpuPlan>,
}

const BOOT: &str = r#"#!/bin/sh
# Written by the Nimbus container driver; runs under tini as the instance's first program.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
h=$(hostname)
echo "$h" > /etc/hostname
grep -q "[[:space:]]$h\$" /etc/hosts 2>/dev/null || echo "127.0.1.1 $h" >> /etc/hosts
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
mkdir -p /run/sshd && chmod 0755 /run/sshd
# user_data runs once per instance, after sshd is up, with its output where cloud-init keeps it.
if [ -x /etc/nimbus/first-boot ] && [ ! -e /var/lib/nimbus/first-boot.done ]; then
  mkdir -p /var/lib/nimbus && touch /var/lib/nimbus/first-boot.done
  (sleep 0.2; /etc/nimbus/first-boot >> /var/log/cloud-init-output.log 2>&1) &
fi
# sshd is a service of the instance, not its life: if it dies the instance keeps running (and
# is reported unhealthy), as a VM would.
PW=no; [ -e /etc/nimbus/password-ssh ] && PW=yes
/usr/sbin/sshd -D -e -o UsePAM=no -o PasswordAuthentication=$PW -o HostKey=/etc/ssh/ssh_host_ed25519_key &
exec sleep infinity
"#;

/// Runs as PID 1 of the new PID namespace, from the host's /bin/sh, before and across
/// `pivot_root`; parameters arrive in the environment so nothing is re-quoted.
const INIT: &str = r#"set -e
# Slave, not private: mounts the host makes later under the instance's volumes directory reach
# the running container (volumes attach without a restart); nothing goes the other way.
mount --make-rslave /
R="$NIMBUS_ROOT"
mount -t overlay overlay -o "lowerdir=$NIMBUS_LOWER,upperdir=$NIMBUS_UPPER,workdir=$NIMBUS_WORK" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o nosuid,mode=0755 dev "$R/dev"
for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
ln -sf pts/ptmx "$R/dev/ptmx"
ln -sf /proc/self/fd "$R/dev/fd"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$R/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=0755 run "$R/run"
# GPUs, only for an instance that has some (see gpu.rs for the why of each step): its device
# nodes and the control nodes into /dev (other GPUs' nodes are never there, which is what hides
# them from NVML and CUDA); the host driver's libraries read-only in a tmpfs with their soname
# links (fresh at every start, so a host driver upgrade leaves nothing stale; the tmpfs itself
# stays writable for ldconfig's link upkeep) and its tools over /usr/bin; a tmpfs over
# /proc/driver/nvidia with only this instance's GPU entries and ModifyDeviceFiles: 0, so the
# libraries never try to create the missing nodes.
if [ -n "$NIMBUS_GPU_LIBDIR" ]; then
  printf '%s\n' "$NIMBUS_GPU_DEVS" | while read -r d; do
    [ -n "$d" ] || continue
    mkdir -p "$(dirname "$R$d")"
    touch "$R$d"
    mount --bind "$d" "$R$d"
  done
  mkdir -p "$R$NIMBUS_GPU_LIBDIR"
  mount -t tmpfs -o nosuid,nodev,mode=0755 nimbus-nvidia "$R$NIMBUS_GPU_LIBDIR"
  printf '%s\n' "$NIMBUS_GPU_FILES" | while IFS='|' read -r src dst; do
    [ -n "$src" ] || continue
    mkdir -p "$(dirname "$R$dst")"
    [ -e "$R$dst" ] || touch "$R$dst"
    mount --bind "$src" "$R$dst"
    mount -o remount,bind,ro,nosuid,nodev "$R$dst"
  done
  printf '%s\n' "$NIMBUS_GPU_LINKS" | while IFS='|' read -r target link; do
    [ -n "$target" ] || continue
    ln -sfn "$target" "$R$link"
  done
  P="$R/proc/driver/nvidia"
  if [ -d "$P" ]; then
    mount -t tmpfs -o nosuid,nodev,noexec,mode=0555 nvidia "$P"
    for f in version registry params; do
      if [ -f "/proc/driver/nvidia/$f" ]; then
        sed 's/^ModifyDeviceFiles: 1$/ModifyDeviceFiles: 0/' "/proc/driver/nvidia/$f" > "$P/$f"
      fi
    done
    mkdir -p "$P/gpus"
    printf '%s\n' "$NIMBUS_GPU_PROC" | while read -r e; do
      [ -n "$e" ] || continue
      mkdir -p "$P/$e"
      mount --bind "/proc/driver/nvidia/$e" "$P/$e"
    done
    mount -o remount,ro,nosuid,nodev,noexec "$P"
  fi
fi
# The instance's own cgroup, read-only, as the root of its cgroup namespace: tools inside see
# their limits (memory.max / memory.limit_in_bytes) and nothing of the host's tree.
if [ "$NIMBUS_CGROUP" = v2 ]; then
  mount -t cgroup2 -o ro,nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
else
  mount -t tmpfs -o nosuid,nodev,noexec,mode=0755 cgroup "$R/sys/fs/cgroup"
  for c in $NIMBUS_CGROUP; do
    mkdir -p "$R/sys/fs/cgroup/$c"
    mount -t cgroup -o ro,nosuid,nodev,noexec,$c cgroup "$R/sys/fs/cgroup/$c"
  done
  mount -o remount,ro,bind "$R/sys/fs/cgroup"
fi
if [ -n "$NIMBUS_HOSTS_FILE" ]; then
  [ -e "$R/etc/hosts" ] || touch "$R/etc/hosts"
  mount --bind "$NIMBUS_HOSTS_FILE" "$R/etc/hosts"
fi
printf '%s\n' "$NIMBUS_MOUNTS" | while IFS='|' read -r src dst; do
  [ -n "$src" ] || continue
  mkdir -p "$R$dst"
  mount --bind "$src" "$R$dst"
done
if [ -n "$NIMBUS_VOLUMES" ]; then
  mkdir -p "$R/mnt/volumes"
  mount --bind "$NIMBUS_VOLUMES" "$R/mnt/volumes"
fi
hostname "$NIMBUS_HOSTNAME"
cd "$R"
mkdir -p .nimbus-oldroot
pivot_root . .nimbus-oldroot
cd /
umount -l /.nimbus-oldroot
rmdir /.nimbus-oldroot
# The driver's libraries into the image's ld cache (the ld.so.conf.d entry is written by the
# agent into the instance's disk). Not fatal: the libraries stay usable with LD_LIBRARY_PATH.
if [ -n "$NIMBUS_GPU_LIBDIR" ]; then
  if command -v ldconfig >/dev/null 2>&1; then
    ldconfig || echo "nimbus: ldconfig failed; the NVIDIA libraries are in $NIMBUS_GPU_LIBDIR" >&2
  else
    echo "nimbus: the image has no ldconfig; the NVIDIA libraries are in $NIMBUS_GPU_LIBDIR" >&2
  fi
fi
exec env -i /usr/bin/tini -s -g -- /bin/sh /etc/nimbus/boot.sh
"#;

fn write(path: &Path, body: &str, mode: u32) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    std::fs::write(path, body).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

fn chown(path: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(io(path))
}

/// Lays out the instance directory and writes what the instance boots with into its disk
/// (boot script, the default user's authorized keys). Idempotent; the disk is kept.
pub fn prepare(spec: &Spec) -> Result<()> {
    for d in ["upper", "work", "merged"] {
        let p = spec.dir.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let upper = spec.dir.join("upper");
    write(&upper.join("etc/nimbus/boot.sh"), BOOT, 0o755)?;
    if let Some(script) = &spec.first_boot {
        write(&upper.join("etc/nimbus/first-boot"), script, 0o700)?;
    }
    let marker = upper.join("etc/nimbus/password-ssh");
    if spec.password_ssh {
        write(&marker, "", 0o644)?;
    } else if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(&marker))?;
    }
    let ssh = upper.join("home/ubuntu/.ssh");
    let keys: String = spec.authorized_keys.iter().map(|k| format!("{}\n", k.trim())).collect();
    write(&ssh.join("authorized_keys"), &keys, 0o600)?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).map_err(io(&ssh))?;
    // The home directory must exist in the upper layer with the image's ownership and mode, or
    // copy-up would give it root's and sshd's StrictModes would refuse the key.
    let home = upper.join("home/ubuntu");
    let lower_home = spec.lower.join("home/ubuntu");
    let mode = std::fs::metadata(&lower_home).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o750);
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(mode)).map_err(io(&home))?;
    for p in [&home, &ssh, &ssh.join("authorized_keys")] {
        chown(p, spec.user_uid)?;
    }
    Ok(())
}

/// Starts the container detached and returns the host pid of its launcher. The launcher joins
/// the cgroup before it execs anything, so no process of the instance ever runs outside it.
pub fn start(spec: &Spec, cgroups: &Cgroups, cgroup_name: &str) -> Result<u32> {
    cgroups.create(cgroup_name, spec.limits)?;
    super::storage::share_volumes_dir(&spec.dir).map_err(RuntimeError::Start)?;
    if let Some(plan) = &spec.gpu {
        // Before the launcher joins, so no process of the instance ever runs unrestricted.
        if !cgroups.restrict_devices(cgroup_name, &plan.device_numbers())? {
            tracing::debug!(instance = %spec.id, "no cgroup v1 devices controller: GPU isolation is the container's /dev alone");
        }
        // The instance is not running, so its disk (the overlay's upper dir) may be written.
        write(&spec.dir.join("upper").join(gpu::LD_CONF.trim_start_matches('/')), &plan.ld_conf, 0o644)?;
    }
    let procs: Vec<String> = cgroups.dirs(cgroup_name).iter().map(|d| d.join("cgroup.procs").display().to_string()).collect();
    let join: String = procs.iter().map(|p| format!("echo $$ > {p}; ")).collect();
    let log_path = spec.dir.join("console.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let mounts: String = spec.mounts.iter().map(|(src, dst)| format!("{}|{}\n", src.display(), dst)).collect();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{join}exec \"$@\""))
        .arg("nimbus-launch")
        .args([
            "nsenter",
            &format!("--net={}", spec.netns),
            "--",
            "unshare",
            "--propagation",
            "unchanged",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--cgroup",
            "--fork",
            "--",
        ])
        .args(["sh", "-c", INIT])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NIMBUS_ROOT", spec.dir.join("merged"))
        .env("NIMBUS_LOWER", &spec.lower)
        .env("NIMBUS_UPPER", spec.dir.join("upper"))
        .env("NIMBUS_WORK", spec.dir.join("work"))
        .env("NIMBUS_HOSTNAME", &spec.hostname)
        .env("NIMBUS_MOUNTS", mounts)
        .env("NIMBUS_HOSTS_FILE", spec.hosts_file.as_deref().map(|p| p.as_os_str().to_owned()).unwrap_or_default())
        .env("NIMBUS_VOLUMES", super::storage::volumes_dir(&spec.dir))
        .envs(spec.gpu.iter().flat_map(GpuPlan::env))
        .env(
            "NIMBUS_CGROUP",
            match cgroups.version() {
                super::cgroup::Version::V2 => "v2",
                super::cgroup::Version::V1 => "cpu memory pids",
            },
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| RuntimeError::Start(format!("spawning the container launcher: {e}")))?;
    let pid = child.id();
    // Reap the launcher whenever it ends, so it never lingers as a zombie of the agent. If the
    // agent exits first, init adopts and reaps it.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// Whether `addr:22` answers with an SSH banner within `timeout`.
pub fn ssh_banner(addr: Ipv4Addr, timeout: Duration) -> bool {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((addr, 22)), timeout) else { return false };
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(n) if n >= 4 && buf.starts_with(b"SSH-"))
}

/// Stops the container: every process in its cgroup is killed and the cgroup removed. Mounts go
/// with the container's mount namespace; the disk (upper dir) stays.
pub fn stop(cgroups: &Cgroups, cgroup_name: &str) -> Result<()> {
    cgroups.destroy(cgroup_name)?;
    Ok(())
}

/// Whether the container has live processes.
pub fn running(cgroups: &Cgroups, cgroup_name: &str) -> bool {
    !cgroups.pids(cgroup_name).is_empty()
}

#[cfg(test)]
mod tests {
    use super::super::net::Network;
    use super::*;
    use std::time::Instant;

    fn image() -> Option<PathBuf> {
        let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        if !is_root {
            eprintln!("SKIPPED: containers need root");
            return None;
        }
        let dir = std::env::var("NIMBUS_TEST_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/var/tmp/nimbus-images"));
        if !super::super::image::exists(&dir, "debian-12") {
            eprintln!(
                "SKIPPED: no debian-12 image in {} (build it with `nimbus image build --images-dir {}`)",
                dir.display(),
                dir.display()
            );
            return None;
        }
        for tool in ["ssh", "ssh-keygen", "nsenter", "unshare"] {
            if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| !o.status.success()).unwrap_or(true) {
                eprintln!("SKIPPED: {tool} is not installed");
                return None;
            }
        }
        Some(super::super::image::rootfs(&dir, "debian-12"))
    }

    /// Waits up to 20 s for the SSH banner of `addr` (the console log is the failure message).
    fn await_banner(addr: Ipv4Addr, dir: &Path) {
        let t = Instant::now();
        while !ssh_banner(addr, Duration::from_millis(200)) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no SSH banner: {}",
                std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ssh -i key ubuntu@addr cmd`, non-interactive, trusting the new host key.
    fn ssh_as_ubuntu(key: &Path, addr: Ipv4Addr, cmd: &str) -> std::process::Output {
        Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg(format!("ubuntu@{addr}"))
            .arg(cmd)
            .output()
            .unwrap()
    }

    #[test]
    fn a_container_boots_sshd_enforces_limits_and_leaves_nothing() {
        let Some(lower) = image() else { return };
        let tag = std::process::id() % 10_000;
        let net = Network::new(&format!("nrt{tag}"), Ipv4Addr::new(10, 232, 0, 1), 24, &format!("nrt{tag}-"));
        let cg = Cgroups::detect(Path::new("/sys/fs/cgroup"), &format!("nimbus-rt-test-{tag}")).expect("cgroups");
        let dir = std::env::temp_dir().join(format!("nimbus-rt-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id");
        assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), "from the host\n").unwrap();

        let id = "c0ffee00c0ffee00c0ffee00c0ffee00";
        net.ensure_bridge().unwrap();
        let addr = net.address(1);
        net.create(id, addr).unwrap();
        let spec = Spec {
            id: id.into(),
            hostname: "box-1".into(),
            lower,
            dir: dir.join("inst"),
            limits: Limits { cpu_millis: 1000, memory_bytes: 256 << 20, pids: 256 },
            netns: net.ns_path(id),
            addr,
            authorized_keys: vec![pubkey],
            mounts: vec![(shared.clone(), "/lambda/nfs/shared".into())],
            user_uid: 1000,
            first_boot: None,
            password_ssh: false,
            hosts_file: None,
            gpu: None,
        };
        prepare(&spec).unwrap();
        let t = Instant::now();
        start(&spec, &cg, id).unwrap();
        await_banner(addr, &spec.dir);
        eprintln!("start -> SSH banner: {:?}", t.elapsed());
        let ssh = |cmd: &str| ssh_as_ubuntu(&key, addr, cmd);
        let out = ssh("hostname; whoami; sudo -n id -u; cat /lambda/nfs/shared/hello.txt; cat /proc/1/comm");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.lines().collect::<Vec<_>>(), vec!["box-1", "ubuntu", "0", "from the host", "tini"]);
        assert_eq!(cg.limits(id).unwrap(), spec.limits);
        assert!(!cg.pids(id).is_empty());
        // Writes persist in the instance's disk (the upper dir) across a restart.
        assert!(ssh("echo kept > ~/state.txt").status.success());
        stop(&cg, id).unwrap();
        assert!(!running(&cg, id));
        start(&spec, &cg, id).unwrap();
        let t = Instant::now();
        while !ssh_banner(addr, Duration::from_millis(200)) {
            assert!(t.elapsed() < Duration::from_secs(20), "no SSH after restart");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = ssh("cat ~/state.txt");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept");

        // Tear down: nothing of the instance remains on the host. The shared volumes directory
        // is the one host-side mount `start` makes; the driver unmounts it with the instance.
        stop(&cg, id).unwrap();
        super::super::storage::unmount_all(&spec.dir);
        net.destroy(id);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(spec.dir.to_str().unwrap()), "a mount of the instance leaked into the host");
        assert!(!cg.exists(id) && !net.exists(id) && !net.veth_exists(id));
        cg.remove_parent();
        net.remove_bridge();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A GPU plan applied to a real container, with stand-ins for the NVIDIA pieces (this
    /// machine has none): a host device node (`/dev/kmsg`), a host library with a soname link,
    /// and a host tool. Checks what needs no GPU: the nodes, read-only files, the ld cache, and
    /// on a cgroup v1 host the device whitelist (allowed nodes open, others do not, and what the
    /// container always needs — `/dev/null`, ptys — still works).
    #[test]
    fn a_gpu_plan_is_applied_inside_the_container() {
        let Some(lower) = image() else { return };
        let lib = Path::new("/lib/x86_64-linux-gnu/libz.so.1");
        let Ok(real) = std::fs::canonicalize(lib) else {
            eprintln!("SKIPPED: no {} on this machine", lib.display());
            return;
        };
        let real_name = real.file_name().unwrap().to_str().unwrap().to_owned();
        let tag = std::process::id() % 10_000;
        let net = Network::new(&format!("nrg{tag}"), Ipv4Addr::new(10, 234, 0, 1), 24, &format!("nrg{tag}-"));
        let cg = Cgroups::detect(Path::new("/sys/fs/cgroup"), &format!("nimbus-rtg-test-{tag}")).expect("cgroups");
        let dir = std::env::temp_dir().join(format!("nimbus-rtg-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id");
        assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();

        let id = "9e0000009e0000009e0000009e000000";
        net.ensure_bridge().unwrap();
        let addr = net.address(1);
        net.create(id, addr).unwrap();
        let plan = GpuPlan {
            devices: vec![gpu::DeviceNode { path: "/dev/kmsg".into(), major: 1, minor: 11 }],
            files: vec![
                (real.clone(), format!("{}/{real_name}", gpu::LIB_DIR)),
                (PathBuf::from("/bin/true"), "/usr/bin/nimbus-gpu-tool".into()),
            ],
            links: vec![(real_name.clone(), format!("{}/libz.so.1", gpu::LIB_DIR))],
            proc_entries: vec![],
            ld_conf: format!("{}\n", gpu::LIB_DIR),
        };
        let spec = Spec {
            id: id.into(),
            hostname: "gpu-1".into(),
            lower,
            dir: dir.join("inst"),
            limits: Limits { cpu_millis: 1000, memory_bytes: 256 << 20, pids: 256 },
            netns: net.ns_path(id),
            addr,
            authorized_keys: vec![pubkey],
            mounts: vec![],
            user_uid: 1000,
            first_boot: None,
            password_ssh: false,
            hosts_file: None,
            gpu: Some(plan),
        };
        prepare(&spec).unwrap();
        start(&spec, &cg, id).unwrap();
        await_banner(addr, &spec.dir);
        let ssh = |cmd: &str| {
            let o = ssh_as_ubuntu(&key, addr, cmd);
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)).trim().to_owned()
        };
        let whitelist = cg.dirs(id).iter().any(|d| d.ends_with(format!("devices/nimbus-rtg-test-{tag}/{id}")));
        eprintln!("cgroup v1 devices whitelist: {whitelist}");

        assert_eq!(ssh("stat -c '%F %t:%T' /dev/kmsg"), "character special file 1:b");
        assert_eq!(ssh("sudo -n sh -c ': < /dev/kmsg' && echo opened"), "opened");
        assert_eq!(ssh("stat -L -c %s /usr/lib/nimbus-nvidia/libz.so.1"), std::fs::metadata(&real).unwrap().len().to_string());
        assert_eq!(
            ssh(&format!("sudo -n sh -c 'echo x >> /usr/lib/nimbus-nvidia/{real_name}' 2>/dev/null || echo read-only")),
            "read-only"
        );
        assert_eq!(ssh("/usr/bin/nimbus-gpu-tool && echo ran"), "ran");
        assert_eq!(ssh("cat /etc/ld.so.conf.d/000-nimbus-nvidia.conf"), "/usr/lib/nimbus-nvidia");
        // The libraries of the plan come first in the instance's ld cache, ahead of the image's.
        let first = ssh("/sbin/ldconfig -p | grep -m1 'libz.so.1 '");
        assert!(first.ends_with("=> /usr/lib/nimbus-nvidia/libz.so.1"), "{first}");
        // What every container needs still works under the whitelist: /dev/null, ptys.
        assert_eq!(ssh("echo x > /dev/null && python3 -c 'import os; m, s = os.openpty(); print(os.ttyname(s)[:9])'"), "/dev/pts/");
        if whitelist {
            // Nodes outside the plan do not open even for root inside (who may still mknod).
            let out = ssh("sudo -n mknod /tmp/mem c 1 1 && echo made && sudo -n sh -c ': < /tmp/mem' 2>&1 | grep -c 'Operation not permitted'; sudo -n rm -f /tmp/mem");
            assert_eq!(out, "made\n1", "mknod is allowed, opening is not");
            let list = std::fs::read_to_string(cg.dirs(id).last().unwrap().join("devices.list")).unwrap();
            assert!(list.contains("c 1:11 rwm") && !list.contains("a *:* rwm"), "{list}");
        }

        stop(&cg, id).unwrap();
        super::super::storage::unmount_all(&spec.dir);
        net.destroy(id);
        assert!(!cg.exists(id), "the devices cgroup goes with the others");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(spec.dir.to_str().unwrap()), "a mount of the instance leaked into the host");
        cg.remove_parent();
        net.remove_bridge();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
