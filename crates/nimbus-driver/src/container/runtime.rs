//! Starting and stopping one container. The agent prepares everything the instance boots with
//! on the host side — its cgroups (limits, device filter, delegation), the seed directory, the
//! launch spec — and hands the rest to the launcher (`launch.rs`), a separate process that
//! builds the namespaces and execs the instance's init: `tini` as PID 1, running the seed's
//! boot script, which installs the keys and user data inside the instance and starts a real
//! OpenSSH `sshd`.
//!
//! The host never writes into the instance's disk (its overlay upper directory): the tenant
//! controls every name in it, links included. What the instance needs from the host arrives
//! in the seed directory `<instance dir>/seed/`, host-owned, bound read-only at `/run/nimbus`,
//! and is copied into place by the instance's own root from inside.
//!
//! The container is started detached (the launcher is its own process group and stays as its
//! monitor), so it outlives the agent that started it; everything about it is found again from
//! its directory, its cgroup and its network namespace.

use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cgroup::{Cgroups, Limits};
use super::gpu::GpuPlan;
use super::launch::{Bind, Hardening, IdMap, LaunchSpec, NetSpec, Rootfs};

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

/// The program that launches containers: `program args… SPEC.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Launcher {
    /// The `nimbus` binary running now, through its hidden launcher subcommand.
    pub fn current_exe() -> std::io::Result<Launcher> {
        Ok(Launcher { program: std::env::current_exe()?, args: vec![LAUNCH_SUBCOMMAND.into()] })
    }

    /// A binary whose `main` is `launch::main` (test binaries).
    pub fn binary(path: impl Into<PathBuf>) -> Launcher {
        Launcher { program: path.into(), args: vec![] }
    }
}

/// The hidden subcommand of `nimbus` that runs [`super::launch::main`].
pub const LAUNCH_SUBCOMMAND: &str = "__launch-container";

/// Layers a test turns off on purpose (the escape suite's self-test); all false in service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weaken {
    pub seccomp: bool,
    pub caps: bool,
    pub masks: bool,
    pub pid_namespace: bool,
    pub device_filter: bool,
    /// Join only the cpu/memory/pids/cpuacct hierarchies (the instance is then not the root of
    /// the others' cgroup namespaces: the `release_agent` door).
    pub partial_cgroups: bool,
    /// Write the keys into the instance's disk from the host, following its links (the door
    /// the symlink → snapshot → restore attack used).
    pub host_side_writes: bool,
    pub antispoof: bool,
    pub ipv6_drop: bool,
    pub host_input_drop: bool,
    /// No per-instance allow lists (every port of every instance open to every other).
    pub firewall: bool,
}

impl Weaken {
    pub fn any(&self) -> bool {
        *self != Weaken::default()
    }
}

/// Everything needed to run one instance.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub hostname: String,
    /// The image's root file system (read-only lower layer), or its shifted copy.
    pub lower: PathBuf,
    /// Mount `lower` idmapped (see `idmap.rs`).
    pub idmap_lower: bool,
    /// The instance's directory: `upper/` (its disk), `work/`, `merged/`, `seed/`,
    /// `console.log`.
    pub dir: PathBuf,
    pub limits: Limits,
    pub net: NetSpec,
    pub authorized_keys: Vec<String>,
    /// `(host directory, mount point)` bind mounts (file systems).
    pub mounts: Vec<(PathBuf, String)>,
    /// `None`: privileged (no user namespace).
    pub userns: Option<IdMap>,
    /// First-boot script made from the launch's `user_data`, run once per instance.
    pub first_boot: Option<String>,
    /// sshd accepts passwords (`ssh_pwauth: true` in the user data); keys only otherwise.
    pub password_ssh: bool,
    /// A host file bound over the instance's `/etc/hosts`, which the driver keeps current
    /// (its cluster peers' names), as container engines do.
    pub hosts_file: Option<PathBuf>,
    /// The instance's GPUs (`None`: no GPU, and nothing GPU-related happens).
    pub gpu: Option<GpuPlan>,
    pub launcher: Launcher,
    pub weaken: Weaken,
}

impl Spec {
    /// Host uid of the instance's root (0 for a privileged instance).
    pub fn root_uid(&self) -> u32 {
        self.userns.map_or(0, |m| m.host_base)
    }

    pub fn seed_dir(&self) -> PathBuf {
        self.dir.join("seed")
    }

    /// The `authorized_keys` file of the default user: one key a line.
    fn authorized_keys_text(&self) -> String {
        self.authorized_keys.iter().map(|k| format!("{}\n", k.trim())).collect()
    }
}

/// The instance's boot script, run by tini as its first program, inside the instance as its
/// root. Read-only at /run/nimbus/boot.sh.
const BOOT: &str = r#"#!/bin/sh
# Written by the Nimbus container driver; runs under tini as the instance's first program. The
# launcher has put the keys in place already (inside the instance, as its root); what is left
# is started from here, with as few programs as possible before sshd listens.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
S=/run/nimbus
mkdir -p /run/sshd
if [ -f $S/gpu-ld.conf ]; then
  cp $S/gpu-ld.conf /etc/ld.so.conf.d/000-nimbus-nvidia.conf
  if command -v ldconfig >/dev/null 2>&1; then
    ldconfig || echo "nimbus: ldconfig failed; the NVIDIA libraries are in /usr/lib/nimbus-nvidia" >&2
  else
    echo "nimbus: the image has no ldconfig; the NVIDIA libraries are in /usr/lib/nimbus-nvidia" >&2
  fi
fi
# cgroup v2: the instance is the root of a delegated subtree; its processes move to a leaf so
# that controllers can be enabled for what runs inside (Docker), as systemd does.
if [ -f /sys/fs/cgroup/cgroup.controllers ] && [ ! -d /sys/fs/cgroup/init ]; then
  mkdir /sys/fs/cgroup/init 2>/dev/null && for p in $(cat /sys/fs/cgroup/cgroup.procs); do echo "$p" > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null; done
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
fi
# sshd is a service of the instance, not its life: if it dies the instance keeps running (and
# is reported unhealthy), as a VM would.
PW=no; [ -e $S/password-ssh ] && PW=yes
/usr/sbin/sshd -D -e -o UsePAM=no -o PasswordAuthentication=$PW -o HostKey=$S/ssh_host_ed25519_key &
# user_data runs once per instance, after sshd is up, with its output where cloud-init keeps it.
if [ -e /var/lib/nimbus/run-first-boot ]; then
  rm -f /var/lib/nimbus/run-first-boot
  (sleep 0.2; /var/lib/nimbus/first-boot >> /var/log/cloud-init-output.log 2>&1) &
fi
exec sleep infinity
"#;

/// Writes `body` to `dir/name` by rename (a fresh inode every time; `dir` is host-owned, so
/// nothing in it can be a tenant's link), owned by `uid` with `mode`.
fn seed_file(dir: &Path, name: &str, body: &[u8], uid: u32, mode: u32) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::os::unix::fs::chown(&tmp, Some(uid), Some(uid)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

fn remove_seed_file(dir: &Path, name: &str) -> Result<()> {
    match std::fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::Io { path: dir.join(name), source: e }),
        _ => Ok(()),
    }
}

/// An ed25519 host key in OpenSSH format: `(private, public)`.
fn host_key() -> Result<(String, String)> {
    let key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| RuntimeError::Start(format!("host key: {e}")))?;
    let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(|e| RuntimeError::Start(format!("host key: {e}")))?;
    let public = key.public_key().to_openssh().map_err(|e| RuntimeError::Start(format!("host key: {e}")))?;
    Ok((private.to_string(), format!("{public}\n")))
}

/// Writes the seed directory the instance boots from (`launch::provision` and the boot script
/// read it inside). The instance's host key is made once and kept (its clients' known_hosts
/// stay valid across restarts).
pub fn write_seed(spec: &Spec) -> Result<()> {
    let d = spec.seed_dir();
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).map_err(io(&d))?;
    std::os::unix::fs::chown(&d, Some(0), Some(0)).map_err(io(&d))?;
    let root = spec.root_uid();
    seed_file(&d, "boot.sh", BOOT.as_bytes(), 0, 0o755)?;
    seed_file(&d, "instance-id", format!("{}\n", spec.id).as_bytes(), 0, 0o644)?;
    seed_file(&d, "hostname", format!("{}\n", spec.hostname).as_bytes(), 0, 0o644)?;
    seed_file(&d, "authorized_keys", spec.authorized_keys_text().as_bytes(), 0, 0o644)?;
    match &spec.first_boot {
        // May hold secrets: readable by the instance's root only.
        Some(script) => seed_file(&d, "user-data", script.as_bytes(), root, 0o600)?,
        None => remove_seed_file(&d, "user-data")?,
    }
    if spec.password_ssh {
        seed_file(&d, "password-ssh", b"", 0, 0o644)?;
    } else {
        remove_seed_file(&d, "password-ssh")?;
    }
    match &spec.gpu {
        Some(plan) => seed_file(&d, "gpu-ld.conf", plan.ld_conf.as_bytes(), 0, 0o644)?,
        None => remove_seed_file(&d, "gpu-ld.conf")?,
    }
    let key = d.join("ssh_host_ed25519_key");
    if !key.exists() {
        let (private, public) = host_key()?;
        seed_file(&d, "ssh_host_ed25519_key.pub", public.as_bytes(), 0, 0o644)?;
        seed_file(&d, "ssh_host_ed25519_key", private.as_bytes(), root, 0o600)?;
    } else {
        // A privileged instance turned unprivileged (or the reverse) keeps its key, re-owned.
        std::os::unix::fs::chown(&key, Some(root), Some(root)).map_err(io(&key))?;
    }
    Ok(())
}

/// Lays out the instance directory: the disk (`upper/`, made owned by the instance's root, so
/// that its `/` is its own), the overlay's `work/` and the mount point `merged/`. Idempotent;
/// the disk's contents are the tenant's and are never touched.
pub fn prepare(spec: &Spec) -> Result<()> {
    let upper = spec.dir.join("upper");
    if !upper.exists() {
        std::fs::create_dir_all(&upper).map_err(io(&upper))?;
        let root = spec.root_uid();
        std::os::unix::fs::chown(&upper, Some(root), Some(root)).map_err(io(&upper))?;
    }
    for d in ["work", "merged"] {
        let p = spec.dir.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    if spec.weaken.host_side_writes {
        legacy_host_side_keys(spec)?;
    }
    Ok(())
}

/// What the driver did before the seed existed, kept only as a deliberately weakened path for
/// the escape suite: writing the keys into the disk from the host follows whatever links the
/// tenant left there.
fn legacy_host_side_keys(spec: &Spec) -> Result<()> {
    tracing::error!(instance = %spec.id, "WEAKENED LAUNCH: writing keys into the instance's disk from the host, following its links");
    let root = spec.root_uid();
    let upper = spec.dir.join("upper");
    let home = upper.join("home/ubuntu");
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).map_err(io(&ssh))?;
    let path = ssh.join("authorized_keys");
    std::fs::write(&path, spec.authorized_keys_text()).map_err(io(&path))?;
    let own = |p: &Path, uid: u32| std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(io(p));
    own(&upper.join("home"), root)?;
    for p in [&home, &ssh, &path] {
        own(p, root + 1000)?;
    }
    Ok(())
}

/// The spec the launcher gets.
pub fn launch_spec(spec: &Spec, cgroups: &Cgroups) -> LaunchSpec {
    let mut binds: Vec<Bind> =
        spec.mounts.iter().map(|(src, dst)| Bind { source: src.clone(), target: dst.clone(), readonly: false, file: false }).collect();
    binds.push(Bind { source: super::storage::volumes_dir(&spec.dir), target: "/mnt/volumes".into(), readonly: false, file: false });
    if let Some(h) = &spec.hosts_file {
        binds.push(Bind { source: h.clone(), target: "/etc/hosts".into(), readonly: true, file: true });
    }
    // Last, so nothing the tenant named can be mounted over it.
    binds.push(Bind { source: spec.seed_dir(), target: super::launch::SEED.into(), readonly: true, file: false });
    let w = spec.weaken;
    LaunchSpec {
        id: spec.id.clone(),
        hostname: spec.hostname.clone(),
        rootfs: Rootfs {
            lower: spec.lower.clone(),
            upper: spec.dir.join("upper"),
            work: spec.dir.join("work"),
            target: spec.dir.join("merged"),
            idmap_lower: spec.idmap_lower && spec.userns.is_some(),
        },
        userns: spec.userns,
        cgroup_procs: cgroups.procs_files(&spec.id, w.partial_cgroups),
        cgroup_mounts: cgroups.mounts(),
        net: Some(spec.net.clone()),
        binds,
        gpu: spec.gpu.clone(),
        hardening: Hardening { seccomp: !w.seccomp, drop_caps: !w.caps, masks: !w.masks, pid_namespace: !w.pid_namespace },
        init: ["/usr/bin/tini", "-s", "-g", "--", "/bin/sh", &format!("{}/boot.sh", super::launch::SEED)].map(str::to_owned).to_vec(),
        env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=linux", "container=nimbus"]
            .map(str::to_owned)
            .to_vec(),
    }
}

/// Starts the container detached and returns the host pid of its PID 1. Its cgroups (limits,
/// device filter, delegation) exist before the launcher joins them, so no process of the
/// instance ever runs outside them or unfiltered. `meanwhile` runs while the launcher builds the
/// instance (the host's packet filters); the launcher execs the instance's first program only
/// after it returned true, and tears everything down when it returned false.
pub fn start(spec: &Spec, cgroups: &Cgroups, meanwhile: impl FnOnce() -> bool) -> Result<u32> {
    if spec.weaken.any() {
        tracing::error!(instance = %spec.id, weaken = ?spec.weaken, "WEAKENED LAUNCH: isolation layers are off for this instance (tests only)");
    }
    if spec.userns.is_none() {
        tracing::warn!(instance = %spec.id, "PRIVILEGED instance: no user namespace, root inside is root on this host");
    }
    let rules = spec.gpu.as_ref().map(GpuPlan::device_numbers).unwrap_or_default();
    let rules = super::devices::rules_with(&rules);
    let owner = spec.userns.map(|m| m.host_base);
    cgroups.create(&spec.id, spec.limits, (!spec.weaken.device_filter).then_some(rules.as_slice()), owner)?;
    super::storage::share_volumes_dir(&spec.dir).map_err(RuntimeError::Start)?;
    write_seed(spec)?;
    let ls = launch_spec(spec, cgroups);
    let spec_path = spec.dir.join("launch.json");
    let body = serde_json::to_vec_pretty(&ls).map_err(|e| RuntimeError::Start(e.to_string()))?;
    std::fs::write(&spec_path, body).map_err(io(&spec_path))?;
    let log_path = spec.dir.join("console.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    let mut child = Command::new(&spec.launcher.program)
        .args(&spec.launcher.args)
        .arg(&spec_path)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| RuntimeError::Start(format!("spawning the container launcher {}: {e}", spec.launcher.program.display())))?;
    let out = child.stdout.take().ok_or_else(|| RuntimeError::Start("launcher without stdout".into()))?;
    let go = meanwhile();
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // A launcher that already failed has closed its end; its answer below says why.
        let _ = stdin.write_all(if go { b"go\n" } else { b"stop\n" });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    // The launcher stays as the container's monitor; reap it whenever it ends, so it never
    // lingers as a zombie of the agent. If the agent exits first, init adopts it.
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid.parse().map_err(|_| RuntimeError::Start(format!("launcher said {line:?}")));
    }
    // Whatever got as far as the cgroup goes again, so a failed start leaves nothing running.
    let _ = cgroups.destroy(&spec.id);
    Err(RuntimeError::Start(match line.strip_prefix("error ") {
        Some(e) => format!("the container did not start: {e}"),
        None => format!("the container launcher gave no answer ({line:?}); see {}", log_path.display()),
    }))
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
