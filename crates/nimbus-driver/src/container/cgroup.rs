//! Resource limits, device access and the instance's own cgroup tree, behind one type with a
//! v2 backend (`cpu.max`, `memory.max`, `pids.max`, an eBPF device program; production GPU
//! hosts) and a v1 backend (`cpu.cfs_quota_us`, `memory.limit_in_bytes`, `pids.max`, the
//! `devices` whitelist; the hybrid layout of the dev and CI machines).
//!
//! Every cgroup lives under a parent the agent creates and owns (`nimbus` by default, or another
//! name for tests): the driver never writes into a cgroup it did not create.
//!
//! An instance gets a cgroup in **every** hierarchy of the host (on a hybrid host: each v1
//! hierarchy, the named `systemd` one and the v2 `unified` one), and is the root of its own
//! cgroup namespace in all of them. So a tenant who mounts any hierarchy sees only its own
//! subtree — never the host's root with its `release_agent` — and can move no process out of
//! it. The subtree is delegated to the instance's root the way cgroup v2 delegation and LXD
//! do it: the directory and its `cgroup.procs`/`tasks`/`cgroup.threads`/`cgroup.subtree_control`
//! are chowned to the instance's root, so Docker inside can create child cgroups; the limit and
//! device files stay host root's, so the instance cannot raise its own limits (children are
//! bounded by their parent: the kernel's hierarchy does the rest).
//!
//! Device access ([`super::devices`]): a v1 `devices` whitelist where the host has the
//! controller, and the eBPF program on the instance's cgroup2 directory where the host has a
//! cgroup2 hierarchy (on a hybrid host, both).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::devices::Rule;

/// Limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU bandwidth in thousandths of a CPU (2 vCPUs = 2000).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy under {0}")]
    Unsupported(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {0} still has processes after kill")]
    Busy(String),
    #[error("no device filter can be set on this host: {0}")]
    NoDeviceFilter(String),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy under the cgroup mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Directory under the mount (`cpu`, `systemd`, `unified`; empty for a pure v2 host).
    pub dir: String,
    /// `cgroup` (v1) or `cgroup2`.
    pub fstype: &'static str,
    /// v1 mount options that name it (`cpu`, `cpu,cpuacct`, `name=systemd`).
    pub options: String,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.fstype == "cgroup" && self.options.split(',').any(|o| o == controller)
    }
}

/// The cgroup tree of this host, rooted at `mount` (normally `/sys/fs/cgroup`), with our parent.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    mount: PathBuf,
    parent: String,
    hierarchies: Vec<Hierarchy>,
}

const CFS_PERIOD_US: u64 = 100_000;
/// The v1 controllers the limits and metrics need (`cpuacct`: CPU time for metrics).
const V1_REQUIRED: [&str; 4] = ["cpu", "memory", "pids", "cpuacct"];

/// The v1 super options of the cgroup mounts under `mount`, by directory name, from
/// `/proc/self/mountinfo` (`rw,cpu,cpuacct` → `cpu,cpuacct`).
fn mount_options(mount: &Path) -> Vec<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", mount.display());
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            if post.next()? != "cgroup" {
                return None;
            }
            let dir = point.strip_prefix(&prefix)?;
            let opts = post.nth(1)?.split(',').filter(|o| !matches!(*o, "rw" | "ro")).collect::<Vec<_>>().join(",");
            Some((dir.to_owned(), opts))
        })
        .collect()
}

impl Cgroups {
    /// Detects the layout: a pure v2 mount (cpu, memory and pids in `cgroup.controllers`), or
    /// v1 hierarchies as subdirectories (the hybrid layout counts as v1, with its cgroup2 part
    /// as one more hierarchy).
    pub fn detect(mount: &Path, parent: &str) -> Result<Cgroups> {
        let v2 = mount.join("cgroup.controllers");
        if let Ok(c) = std::fs::read_to_string(&v2) {
            if ["cpu", "memory", "pids"].iter().all(|k| c.split_whitespace().any(|w| w == *k)) {
                let h = vec![Hierarchy { dir: String::new(), fstype: "cgroup2", options: String::new() }];
                return Ok(Cgroups { version: Version::V2, mount: mount.to_owned(), parent: parent.to_owned(), hierarchies: h });
            }
        }
        let opts = mount_options(mount);
        let mut hierarchies = Vec::new();
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(mount).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
        entries.sort();
        for p in entries {
            // Co-mounted controllers appear once more as links (`cpu -> cpu,cpuacct`).
            if p.is_symlink() || !p.join("cgroup.procs").exists() {
                continue;
            }
            let Some(dir) = p.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            if p.join("cgroup.controllers").exists() {
                hierarchies.push(Hierarchy { dir, fstype: "cgroup2", options: String::new() });
                continue;
            }
            let options = opts.iter().find(|(d, _)| *d == dir).map(|(_, o)| o.clone()).unwrap_or_else(|| {
                // A tree that is not a real mount (unit tests): the directory names the controller.
                if dir == "systemd" {
                    "name=systemd".to_owned()
                } else {
                    dir.clone()
                }
            });
            hierarchies.push(Hierarchy { dir, fstype: "cgroup", options });
        }
        let cg = Cgroups { version: Version::V1, mount: mount.to_owned(), parent: parent.to_owned(), hierarchies };
        if V1_REQUIRED.iter().all(|c| cg.v1(c).is_some()) {
            Ok(cg)
        } else {
            Err(CgroupError::Unsupported(mount.to_owned()))
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.has(controller))
    }

    fn base(&self, h: &Hierarchy) -> PathBuf {
        self.mount.join(&h.dir).join(&self.parent)
    }

    fn dir_of(&self, h: &Hierarchy, name: &str) -> PathBuf {
        self.base(h).join(name)
    }

    /// The directory of cgroup `name` in the hierarchy of v1 `controller` (or the v2 one).
    fn controller_dir(&self, name: &str, controller: &str) -> Option<PathBuf> {
        match self.version {
            Version::V2 => Some(self.mount.join(&self.parent).join(name)),
            Version::V1 => self.v1(controller).map(|h| self.dir_of(h, name)),
        }
    }

    /// The cgroup2 directory of `name` (v2, or the unified part of a hybrid host).
    fn cgroup2_dir(&self, name: &str) -> Option<PathBuf> {
        self.hierarchies.iter().find(|h| h.fstype == "cgroup2").map(|h| self.dir_of(h, name))
    }

    /// Directories that make up cgroup `name`, one per hierarchy.
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| self.dir_of(h, name)).collect()
    }

    /// The `cgroup.procs` files a process writes itself into to join cgroup `name`. With
    /// `partial`, only the limit-bearing v1 controllers (a deliberately weakened launch, for
    /// the escape suite's self-test: the instance is then not the root of every hierarchy).
    pub fn procs_files(&self, name: &str, partial: bool) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .filter(|h| !partial || self.version == Version::V2 || V1_REQUIRED.iter().any(|c| h.has(c)))
            .map(|h| self.dir_of(h, name).join("cgroup.procs"))
            .collect()
    }

    /// What an instance mounts under its `/sys/fs/cgroup`: every hierarchy, by the options
    /// that name it.
    pub fn mounts(&self) -> Vec<super::launch::CgroupMount> {
        self.hierarchies
            .iter()
            .map(|h| super::launch::CgroupMount { dir: h.dir.clone(), fstype: h.fstype.to_owned(), options: h.options.clone() })
            .collect()
    }

    fn write(path: &Path, value: &str) -> Result<()> {
        std::fs::write(path, value).map_err(io(path))
    }

    fn ensure_parent(&self) -> Result<()> {
        for h in &self.hierarchies {
            let p = self.base(h);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            if h.has("cpuset") {
                Self::inherit_cpuset(&p)?;
            }
        }
        if self.version == Version::V2 {
            // Controllers must be enabled on every level above the leaf.
            Self::write(&self.mount.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
            Self::write(&self.mount.join(&self.parent).join("cgroup.subtree_control"), "+cpu +memory +pids")?;
        }
        Ok(())
    }

    /// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and nothing can join it
    /// until it has some: copy its parent's.
    fn inherit_cpuset(dir: &Path) -> Result<()> {
        let Some(parent) = dir.parent() else { return Ok(()) };
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                let theirs = std::fs::read_to_string(parent.join(f)).map_err(io(&parent.join(f)))?;
                Self::write(&dir.join(f), theirs.trim())?;
            }
        }
        Ok(())
    }

    /// Creates (or updates) cgroup `name` with `limits` and the device `rules` (`None`: no
    /// device filter, a deliberately weakened launch), delegated to host uid `owner` (the
    /// instance's root; `None` for a privileged instance). Idempotent.
    pub fn create(&self, name: &str, limits: Limits, rules: Option<&[Rule]>, owner: Option<u32>) -> Result<()> {
        self.ensure_parent()?;
        for h in &self.hierarchies {
            let d = self.dir_of(h, name);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
            if h.has("cpuset") {
                Self::inherit_cpuset(&d)?;
            }
        }
        let quota = limits.cpu_millis * CFS_PERIOD_US / 1000;
        let dir = |c: &str| self.controller_dir(name, c).ok_or_else(|| CgroupError::Unsupported(self.mount.clone()));
        match self.version {
            Version::V1 => {
                let cpu = dir("cpu")?;
                Self::write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                Self::write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                Self::write(&dir("memory")?.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                Self::write(&dir("pids")?.join("pids.max"), &limits.pids.to_string())?;
            }
            Version::V2 => {
                let d = dir("")?;
                Self::write(&d.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                Self::write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                Self::write(&d.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        if let Some(rules) = rules {
            self.restrict_devices(name, rules)?;
        }
        if let Some(uid) = owner {
            self.delegate(name, uid)?;
        }
        Ok(())
    }

    /// Device filters for cgroup `name`: the v1 whitelist where the host has the `devices`
    /// controller, the eBPF program where it has a cgroup2 hierarchy. Fails when neither could
    /// be set: an instance never runs without one.
    fn restrict_devices(&self, name: &str, rules: &[Rule]) -> Result<()> {
        let mut set = false;
        if let Some(h) = self.v1("devices") {
            let d = self.dir_of(h, name);
            // Deny everything (a new cgroup inherits allow-all), then allow, one rule a write.
            Self::write(&d.join("devices.deny"), "a")?;
            let path = d.join("devices.allow");
            for rule in rules {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&path).map_err(io(&path))?;
                f.write_all(rule.v1_line().as_bytes()).map_err(io(&path))?;
            }
            set = true;
        }
        let mut bpf_error = None;
        if let Some(d) = self.cgroup2_dir(name) {
            // Once per cgroup: a program stays attached as long as the cgroup exists.
            match super::devices::attached(&d) {
                Ok(n) if n > 0 => set = true,
                _ => match super::devices::attach(&d, rules) {
                    Ok(()) => set = true,
                    Err(e) => bpf_error = Some(format!("{}: {e}", d.display())),
                },
            }
        }
        match (set, bpf_error) {
            (true, None) => Ok(()),
            (true, Some(e)) => {
                tracing::warn!(cgroup = name, error = %e, "no eBPF device program (the v1 devices whitelist applies)");
                Ok(())
            }
            (false, e) => Err(CgroupError::NoDeviceFilter(e.unwrap_or_else(|| "no devices controller and no cgroup2".into()))),
        }
    }

    /// Hands the subtree of `name` to host uid/gid `uid` (the instance's root): the directory
    /// and the files that move processes and enable controllers, never the limit files.
    fn delegate(&self, name: &str, uid: u32) -> Result<()> {
        for h in &self.hierarchies {
            let d = self.dir_of(h, name);
            let files: &[&str] = if h.fstype == "cgroup2" {
                &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"]
            } else {
                &["cgroup.procs", "tasks", "cgroup.clone_children"]
            };
            std::os::unix::fs::chown(&d, Some(uid), Some(uid)).map_err(io(&d))?;
            for f in files {
                let p = d.join(f);
                if p.exists() {
                    std::os::unix::fs::chown(&p, Some(uid), Some(uid)).map_err(io(&p))?;
                }
            }
        }
        Ok(())
    }

    /// Reads the limits back from the kernel.
    pub fn limits(&self, name: &str) -> Result<Limits> {
        let read = |p: PathBuf| -> Result<String> { std::fs::read_to_string(&p).map(|s| s.trim().to_owned()).map_err(io(&p)) };
        let num = |s: String| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
        let dir = |c: &str| self.controller_dir(name, c).ok_or_else(|| CgroupError::Unsupported(self.mount.clone()));
        Ok(match self.version {
            Version::V1 => Limits {
                cpu_millis: num(read(dir("cpu")?.join("cpu.cfs_quota_us"))?) * 1000 / CFS_PERIOD_US,
                memory_bytes: num(read(dir("memory")?.join("memory.limit_in_bytes"))?),
                pids: num(read(dir("pids")?.join("pids.max"))?),
            },
            Version::V2 => {
                let d = dir("")?;
                Limits {
                    cpu_millis: num(read(d.join("cpu.max"))?) * 1000 / CFS_PERIOD_US,
                    memory_bytes: num(read(d.join("memory.max"))?),
                    pids: num(read(d.join("pids.max"))?),
                }
            }
        })
    }

    /// CPU time used so far (µs) and memory in use (bytes, without reclaimable page cache, as
    /// `docker stats` counts it). `None` when the cgroup is gone.
    pub fn usage(&self, name: &str) -> Option<(u64, u64)> {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let stat = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        };
        match self.version {
            Version::V1 => {
                let cpu_ns: u64 = read(self.controller_dir(name, "cpuacct")?.join("cpuacct.usage"))?.trim().parse().ok()?;
                let m = self.controller_dir(name, "memory")?;
                let mem: u64 = read(m.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
                let inactive = read(m.join("memory.stat")).and_then(|t| stat(&t, "total_inactive_file")).unwrap_or(0);
                Some((cpu_ns / 1000, mem.saturating_sub(inactive)))
            }
            Version::V2 => {
                let d = self.controller_dir(name, "")?;
                let cpu_us = stat(&read(d.join("cpu.stat"))?, "usage_usec")?;
                let mem: u64 = read(d.join("memory.current"))?.trim().parse().ok()?;
                let inactive = read(d.join("memory.stat")).and_then(|t| stat(&t, "inactive_file")).unwrap_or(0);
                Some((cpu_us, mem.saturating_sub(inactive)))
            }
        }
    }

    /// Moves process `pid` into cgroup `name` (every hierarchy).
    pub fn add(&self, name: &str, pid: u32) -> Result<()> {
        for f in self.procs_files(name, false) {
            Self::write(&f, &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in cgroup `name` and every cgroup below it (an instance's own children, such
    /// as Docker's inside it); empty when it does not exist.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        let Some(top) = self.controller_dir(name, "pids") else { return Vec::new() };
        let mut out = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) else { continue };
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dirs(name).iter().any(|d| d.exists())
    }

    /// Names of the cgroups under our parent (to find orphans after a crash).
    pub fn list(&self) -> Vec<String> {
        let Some(base) = self.controller_dir("", "pids") else { return Vec::new() };
        let mut names: Vec<String> = std::fs::read_dir(base)
            .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Kills every process in cgroup `name` (and below) and removes it, children first.
    /// Idempotent.
    pub fn destroy(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        if let Some(d) = self.cgroup2_dir(name).filter(|_| self.version == Version::V2) {
            // cgroup.kill (Linux 5.14) kills the whole subtree at once.
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        loop {
            let pids = self.pids(name);
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(name.to_owned()));
            }
            for pid in pids {
                if let Ok(p) = libc::pid_t::try_from(pid) {
                    let _ = super::sys::kill(p, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for d in self.dirs(name) {
            remove_tree(&d)?;
        }
        Ok(())
    }

    /// Removes our parent if it is empty (tests use their own parent and clean it up).
    pub fn remove_parent(&self) {
        for h in &self.hierarchies {
            let _ = std::fs::remove_dir(self.base(h));
        }
    }
}

/// Removes a cgroup directory and its children, deepest first. A cgroup can be removed only
/// once its last task has been reaped, hence the retries.
fn remove_tree(d: &Path) -> Result<()> {
    if !d.exists() {
        return Ok(());
    }
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir(d) {
        if e.kind() == std::io::ErrorKind::NotFound {
            break;
        }
        tries += 1;
        if tries > 500 {
            return Err(CgroupError::Io { path: d.to_owned(), source: e });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(test: &str) -> Option<Cgroups> {
        if !super::super::inventory::is_root() {
            eprintln!("SKIPPED: cgroup tests need root");
            return None;
        }
        match Cgroups::detect(Path::new("/sys/fs/cgroup"), &format!("nimbus-test-{}-{test}", std::process::id())) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                None
            }
        }
    }

    #[test]
    fn limits_apply_to_processes_and_destroy_leaves_nothing() {
        let Some(cg) = real("limits") else { return };
        let limits = Limits { cpu_millis: 500, memory_bytes: 64 << 20, pids: 32 };
        cg.create("inst-a", limits, None, None).expect("create");
        assert_eq!(cg.limits("inst-a").expect("read"), limits);
        cg.create("inst-a", limits, None, None).expect("create is idempotent");

        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        cg.add("inst-a", child.id()).expect("add");
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).expect("proc cgroup");
        assert!(own.contains(&format!("/{}/inst-a", cg.parent)), "{own}");
        assert_eq!(cg.pids("inst-a"), vec![child.id()]);
        assert_eq!(cg.list(), vec!["inst-a".to_owned()]);

        // destroy kills the process; reap it so the cgroup can go.
        let reaper = std::thread::spawn(move || child.wait());
        cg.destroy("inst-a").expect("destroy");
        let status = reaper.join().expect("join").expect("wait");
        assert!(!status.success(), "the process was killed");
        assert!(!cg.exists("inst-a"));
        for d in cg.dirs("inst-a") {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        cg.destroy("inst-a").expect("destroy is idempotent");
        cg.remove_parent();
        assert!(cg.list().is_empty());
    }

    /// A fake cgroup mount with the given v1 controllers (files are plain files: writes are
    /// recorded, nothing is enforced).
    fn fake_v1(controllers: &[&str]) -> crate::container::TempDir {
        let t = crate::container::TempDir::new();
        for c in controllers {
            std::fs::create_dir_all(t.0.join(c)).expect("mkdir");
            std::fs::write(t.0.join(c).join("cgroup.procs"), "").expect("write");
        }
        t
    }

    #[test]
    fn every_hierarchy_is_joined_limits_are_set_and_the_subtree_is_delegated() {
        let t = fake_v1(&["cpu", "memory", "pids", "cpuacct", "devices", "freezer", "systemd"]);
        let cg = Cgroups::detect(&t.0, "nimbus").expect("v1");
        assert_eq!(
            cg.hierarchies().iter().map(|h| h.options.as_str()).collect::<Vec<_>>(),
            ["cpu", "cpuacct", "devices", "freezer", "memory", "pids", "name=systemd"]
        );
        let limits = Limits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 64 };
        let rules = super::super::devices::rules_with(&[(195, 3)]);
        cg.create("i", limits, Some(&rules), None).expect("create");
        assert_eq!(cg.procs_files("i", false).len(), 7, "the instance is in every hierarchy");
        assert_eq!(cg.procs_files("i", true).len(), 4, "the weakened launch joins only the limit-bearing ones");
        let dev = t.0.join("devices/nimbus/i");
        assert_eq!(std::fs::read_to_string(dev.join("devices.deny")).expect("deny"), "a");
        let allowed = std::fs::read_to_string(dev.join("devices.allow")).expect("allow");
        let want: String = rules.iter().map(super::super::devices::Rule::v1_line).collect();
        assert_eq!(allowed, want, "one rule per write, base list first");
        assert!(allowed.ends_with("c 195:3 rwm"));
        assert_eq!(cg.limits("i").expect("limits"), limits);
        let mounts = cg.mounts();
        assert!(mounts.iter().any(|m| m.dir == "systemd" && m.options == "name=systemd" && m.fstype == "cgroup"));

        // Without a devices controller and without cgroup2, no instance may start.
        let t1 = fake_v1(&["cpu", "memory", "pids", "cpuacct"]);
        let cg1 = Cgroups::detect(&t1.0, "nimbus").expect("v1");
        let e = cg1.create("i", limits, Some(&rules), None).expect_err("no filter possible");
        assert!(matches!(e, CgroupError::NoDeviceFilter(_)), "{e}");
        cg1.create("j", limits, None, None).expect("a weakened launch without a filter");
    }

    #[test]
    fn v2_limits_go_where_v2_wants_them() {
        let t = crate::container::TempDir::new();
        std::fs::write(t.0.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let cg = Cgroups::detect(&t.0, "nimbus").expect("v2");
        assert_eq!(cg.version(), Version::V2);
        let limits = Limits { cpu_millis: 1500, memory_bytes: 2 << 30, pids: 128 };
        cg.create("i", limits, None, None).expect("create");
        let d = t.0.join("nimbus/i");
        assert_eq!(std::fs::read_to_string(d.join("cpu.max")).unwrap(), "150000 100000");
        assert_eq!(std::fs::read_to_string(t.0.join("nimbus/cgroup.subtree_control")).unwrap(), "+cpu +memory +pids");
        assert_eq!(cg.limits("i").unwrap(), limits);
        assert_eq!(cg.procs_files("i", false), vec![d.join("cgroup.procs")]);
        assert_eq!(cg.mounts().len(), 1);
        assert_eq!((cg.mounts()[0].dir.as_str(), cg.mounts()[0].fstype.as_str()), ("", "cgroup2"));
        // A fake tree takes no eBPF program: with a filter asked for, v2 refuses to go on.
        assert!(matches!(cg.create("j", limits, Some(&super::super::devices::base_rules()), None), Err(CgroupError::NoDeviceFilter(_))));
    }

    /// On the real hierarchies of this host: the delegated files belong to the instance's
    /// root, the limit files do not.
    #[test]
    fn delegation_hands_over_the_subtree_but_not_the_limits() {
        use std::os::unix::fs::MetadataExt;
        let Some(cg) = real("delegate") else { return };
        let limits = Limits { cpu_millis: 500, memory_bytes: 64 << 20, pids: 32 };
        cg.create("d", limits, Some(&super::super::devices::base_rules()), Some(1_234_567)).expect("create");
        for h in cg.hierarchies() {
            let d = cg.dir_of(h, "d");
            assert_eq!(std::fs::metadata(&d).unwrap().uid(), 1_234_567, "{}", d.display());
            assert_eq!(std::fs::metadata(d.join("cgroup.procs")).unwrap().uid(), 1_234_567);
        }
        let mem = cg.controller_dir("d", "memory").unwrap();
        let file = if cg.version() == Version::V1 { "memory.limit_in_bytes" } else { "memory.max" };
        assert_eq!(std::fs::metadata(mem.join(file)).unwrap().uid(), 0, "limits stay host root's");
        cg.destroy("d").expect("destroy");
        cg.remove_parent();
    }

    /// Runs a Python that writes 256 MiB inside cgroup `name`.
    fn hog_in(cg: &Cgroups, name: &str) -> std::process::ExitStatus {
        let joins: Vec<String> = cg.procs_files(name, false).iter().map(|f| format!("echo $$ > {};", f.display())).collect();
        let script = format!("{} exec python3 -c 'b = bytes(1) * (256 << 20); print(len(b))'", joins.join(" "));
        std::process::Command::new("sh").arg("-c").arg(&script).stdout(std::process::Stdio::null()).status().expect("run")
    }

    #[test]
    fn memory_limit_is_enforced_by_the_kernel() {
        use std::os::unix::process::ExitStatusExt;
        let Some(cg) = real("oom") else { return };
        cg.create("roomy", Limits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 16 }, None, None).expect("create");
        assert!(hog_in(&cg, "roomy").success(), "256 MiB fits in 1 GiB (and python3 runs)");
        cg.create("tight", Limits { cpu_millis: 1000, memory_bytes: 32 << 20, pids: 16 }, None, None).expect("create");
        let st = hog_in(&cg, "tight");
        assert_eq!(st.signal(), Some(9), "the kernel OOM-kills 256 MiB in a 32 MiB cgroup: {st:?}");
        cg.destroy("roomy").expect("destroy");
        cg.destroy("tight").expect("destroy");
        cg.remove_parent();
    }
}
