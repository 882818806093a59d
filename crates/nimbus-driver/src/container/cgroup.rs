//! Resource limits through cgroups, behind one type with a v2 backend (`cpu.max`, `memory.max`,
//! `pids.max`; production GPU hosts) and a v1 backend (`cpu.cfs_quota_us`,
//! `memory.limit_in_bytes`, `pids.max`; the hybrid layout of the dev and CI machines).
//!
//! Every cgroup lives under a parent the agent creates and owns (`nimbus` by default, or another
//! name for tests): the driver never writes into a cgroup it did not create.
//!
//! Device access: on v1 hosts with a `devices` controller, instances with GPUs also get a cgroup
//! there with a whitelist ([`Cgroups::restrict_devices`]); instances without GPUs are left as
//! before (no `devices` cgroup of their own). v2 filters devices only through eBPF programs,
//! which this driver does not load: there device access is limited by what the container's
//! private `/dev` shows (see `docs/gpu.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// The cgroup tree of this host, rooted at `mount` (normally `/sys/fs/cgroup`), with our parent.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    mount: PathBuf,
    parent: String,
}

/// `cpuacct` comes last: only accounting (CPU time for metrics), no limits, so indices 0..3
/// stay the limit-bearing controllers.
const V1_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "cpuacct"];
/// The v1 device whitelist of an instance with GPUs, before its GPU nodes: exactly the nodes of
/// the container's private `/dev` as `runtime` builds it (`null`, `zero`, `full`, `random`,
/// `urandom`, `tty`, the `ptmx` and ptys of its own devpts), plus `mknod` of anything (useless
/// without read/write, and what package scripts expect), as Docker's default list.
pub const BASE_DEVICE_RULES: [&str; 10] =
    ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"];
const CFS_PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Detects the layout: a pure v2 mount, or v1 controllers (the hybrid layout counts as v1,
    /// since its v2 part has no controllers).
    pub fn detect(mount: &Path, parent: &str) -> Result<Cgroups> {
        let v2 = mount.join("cgroup.controllers");
        if let Ok(c) = std::fs::read_to_string(&v2) {
            if ["cpu", "memory", "pids"].iter().all(|k| c.split_whitespace().any(|w| w == *k)) {
                return Ok(Cgroups { version: Version::V2, mount: mount.to_owned(), parent: parent.to_owned() });
            }
        }
        if V1_CONTROLLERS.iter().all(|c| mount.join(c).join("cgroup.procs").exists()) {
            return Ok(Cgroups { version: Version::V1, mount: mount.to_owned(), parent: parent.to_owned() });
        }
        Err(CgroupError::Unsupported(mount.to_owned()))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Directories that make up cgroup `name` (one per v1 controller, one for v2). On v1 the
    /// `devices` cgroup comes last, and only once [`Cgroups::restrict_devices`] made it.
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self.version {
            Version::V1 => {
                let mut d: Vec<PathBuf> = V1_CONTROLLERS.iter().map(|c| self.mount.join(c).join(&self.parent).join(name)).collect();
                let devices = self.mount.join("devices").join(&self.parent).join(name);
                if devices.is_dir() {
                    d.push(devices);
                }
                d
            }
            Version::V2 => vec![self.mount.join(&self.parent).join(name)],
        }
    }

    /// Turns device access of cgroup `name` (made by [`Cgroups::create`]) into a whitelist:
    /// [`BASE_DEVICE_RULES`] plus read/write of the char devices `allow` (`(major, minor)`).
    /// Only where the host has a v1 `devices` controller; returns whether it did. Call it before
    /// any process joins: the launcher then joins the `devices` cgroup with the others.
    pub fn restrict_devices(&self, name: &str, allow: &[(u32, u32)]) -> Result<bool> {
        if self.version != Version::V1 || !self.mount.join("devices").join("cgroup.procs").exists() {
            return Ok(false);
        }
        let parent = self.mount.join("devices").join(&self.parent);
        let d = parent.join(name);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        // Deny everything (the default a new cgroup inherits is allow-all), then allow, one rule
        // per write as the kernel wants them.
        Self::write(&d.join("devices.deny"), "a")?;
        let rules = BASE_DEVICE_RULES.iter().map(|r| (*r).to_owned()).chain(allow.iter().map(|(ma, mi)| format!("c {ma}:{mi} rwm")));
        let path = d.join("devices.allow");
        for rule in rules {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&path).map_err(io(&path))?;
            f.write_all(rule.as_bytes()).map_err(io(&path))?;
        }
        Ok(true)
    }

    fn write(path: &Path, value: &str) -> Result<()> {
        std::fs::write(path, value).map_err(io(path))
    }

    fn ensure_parent(&self) -> Result<()> {
        match self.version {
            Version::V1 => {
                for c in V1_CONTROLLERS {
                    let p = self.mount.join(c).join(&self.parent);
                    std::fs::create_dir_all(&p).map_err(io(&p))?;
                }
            }
            Version::V2 => {
                let p = self.mount.join(&self.parent);
                std::fs::create_dir_all(&p).map_err(io(&p))?;
                // Controllers must be enabled on every level above the leaf.
                Self::write(&self.mount.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                Self::write(&p.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
            }
        }
        Ok(())
    }

    /// Creates (or updates) cgroup `name` with `limits`. Idempotent.
    pub fn create(&self, name: &str, limits: Limits) -> Result<()> {
        self.ensure_parent()?;
        for d in self.dirs(name) {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let quota = limits.cpu_millis * CFS_PERIOD_US / 1000;
        match self.version {
            Version::V1 => {
                let [cpu, mem, pids] = [0, 1, 2].map(|i| self.dirs(name)[i].clone());
                Self::write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                Self::write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                Self::write(&mem.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                Self::write(&pids.join("pids.max"), &limits.pids.to_string())?;
            }
            Version::V2 => {
                let d = &self.dirs(name)[0];
                Self::write(&d.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                Self::write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                Self::write(&d.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// Reads the limits back from the kernel.
    pub fn limits(&self, name: &str) -> Result<Limits> {
        let read = |p: PathBuf| -> Result<String> { std::fs::read_to_string(&p).map(|s| s.trim().to_owned()).map_err(io(&p)) };
        let num = |s: String| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
        let d = self.dirs(name);
        Ok(match self.version {
            Version::V1 => Limits {
                cpu_millis: num(read(d[0].join("cpu.cfs_quota_us"))?) * 1000 / CFS_PERIOD_US,
                memory_bytes: num(read(d[1].join("memory.limit_in_bytes"))?),
                pids: num(read(d[2].join("pids.max"))?),
            },
            Version::V2 => Limits {
                cpu_millis: num(read(d[0].join("cpu.max"))?) * 1000 / CFS_PERIOD_US,
                memory_bytes: num(read(d[0].join("memory.max"))?),
                pids: num(read(d[0].join("pids.max"))?),
            },
        })
    }

    /// CPU time used so far (µs) and memory in use (bytes, without reclaimable page cache, as
    /// `docker stats` counts it). `None` when the cgroup is gone.
    pub fn usage(&self, name: &str) -> Option<(u64, u64)> {
        let d = self.dirs(name);
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let stat = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        };
        match self.version {
            Version::V1 => {
                let cpu_ns: u64 = read(d[3].join("cpuacct.usage"))?.trim().parse().ok()?;
                let mem: u64 = read(d[1].join("memory.usage_in_bytes"))?.trim().parse().ok()?;
                let inactive = read(d[1].join("memory.stat")).and_then(|t| stat(&t, "total_inactive_file")).unwrap_or(0);
                Some((cpu_ns / 1000, mem.saturating_sub(inactive)))
            }
            Version::V2 => {
                let cpu_us = stat(&read(d[0].join("cpu.stat"))?, "usage_usec")?;
                let mem: u64 = read(d[0].join("memory.current"))?.trim().parse().ok()?;
                let inactive = read(d[0].join("memory.stat")).and_then(|t| stat(&t, "inactive_file")).unwrap_or(0);
                Some((cpu_us, mem.saturating_sub(inactive)))
            }
        }
    }

    /// Moves process `pid` into cgroup `name` (every controller).
    pub fn add(&self, name: &str, pid: u32) -> Result<()> {
        for d in self.dirs(name) {
            Self::write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in cgroup `name`; empty when it does not exist.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .dirs(name)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dirs(name).iter().any(|d| d.exists())
    }

    /// Names of the cgroups under our parent (to find orphans after a crash).
    pub fn list(&self) -> Vec<String> {
        let base = match self.version {
            Version::V1 => self.mount.join(V1_CONTROLLERS[0]).join(&self.parent),
            Version::V2 => self.mount.join(&self.parent),
        };
        let mut names: Vec<String> = std::fs::read_dir(base)
            .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Kills every process in cgroup `name` and removes it. Idempotent.
    pub fn destroy(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids(name);
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(name.to_owned()));
            }
            for pid in pids {
                // SIGKILL through kill(1) keeps this module free of unsafe code.
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).stderr(std::process::Stdio::null()).status();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for d in self.dirs(name) {
            if d.exists() {
                // A cgroup directory can be removed only once its last task has been reaped.
                let mut tries = 0;
                while let Err(e) = std::fs::remove_dir(&d) {
                    tries += 1;
                    if tries > 200 {
                        return Err(CgroupError::Io { path: d.clone(), source: e });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        Ok(())
    }

    /// Removes our parent if it is empty (tests use their own parent and clean it up).
    pub fn remove_parent(&self) {
        let parents: Vec<PathBuf> = match self.version {
            Version::V1 => V1_CONTROLLERS.iter().chain(&["devices"]).map(|c| self.mount.join(c).join(&self.parent)).collect(),
            Version::V2 => vec![self.mount.join(&self.parent)],
        };
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }
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
        cg.create("inst-a", limits).expect("create");
        assert_eq!(cg.limits("inst-a").expect("read"), limits);
        cg.create("inst-a", limits).expect("create is idempotent");

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
    fn v1_devices_whitelist_only_where_asked_and_only_with_the_controller() {
        let t = fake_v1(&["cpu", "memory", "pids", "cpuacct", "devices"]);
        let cg = Cgroups::detect(&t.0, "nimbus").expect("v1");
        let limits = Limits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 64 };
        cg.create("plain", limits).expect("create");
        assert_eq!(cg.dirs("plain").len(), 4, "no devices cgroup for an instance without GPUs");
        assert!(!t.0.join("devices/nimbus/plain").exists());

        cg.create("gpu", limits).expect("create");
        assert!(cg.restrict_devices("gpu", &[(195, 3), (195, 255), (508, 0)]).expect("restrict"));
        let dirs = cg.dirs("gpu");
        assert_eq!(dirs.last(), Some(&t.0.join("devices/nimbus/gpu")), "the launcher joins the devices cgroup too");
        assert_eq!(std::fs::read_to_string(dirs[4].join("devices.deny")).expect("deny"), "a");
        let allowed = std::fs::read_to_string(dirs[4].join("devices.allow")).expect("allow");
        let mut want: String = BASE_DEVICE_RULES.concat();
        want.push_str("c 195:3 rwmc 195:255 rwmc 508:0 rwm");
        assert_eq!(allowed, want, "one rule per write, base list first");
        assert!(BASE_DEVICE_RULES.contains(&"c 1:3 rwm") && BASE_DEVICE_RULES.contains(&"c 136:* rwm"), "/dev/null and ptys stay usable");
        assert_eq!(cg.limits("gpu").expect("limits"), limits, "limits still read from cpu, memory, pids");

        // Without the controller (or on v2) nothing is written and the caller is told.
        let t1 = fake_v1(&["cpu", "memory", "pids", "cpuacct"]);
        let cg1 = Cgroups::detect(&t1.0, "nimbus").expect("v1");
        cg1.create("gpu", limits).expect("create");
        assert!(!cg1.restrict_devices("gpu", &[(195, 0)]).expect("restrict"));
        assert_eq!(cg1.dirs("gpu").len(), 4);
        let t2 = crate::container::TempDir::new();
        std::fs::write(t2.0.join("cgroup.controllers"), "cpuset cpu io memory pids").expect("write");
        let cg2 = Cgroups::detect(&t2.0, "nimbus").expect("v2");
        assert!(!cg2.restrict_devices("gpu", &[(195, 0)]).expect("restrict"));
        assert!(!t2.0.join("devices").exists());
    }

    /// Runs a Python that writes 256 MiB inside cgroup `name`.
    fn hog_in(cg: &Cgroups, name: &str) -> std::process::ExitStatus {
        let joins: Vec<String> = cg.dirs(name).iter().map(|d| format!("echo $$ > {}/cgroup.procs;", d.display())).collect();
        let script = format!("{} exec python3 -c 'b = bytes(1) * (256 << 20); print(len(b))'", joins.join(" "));
        std::process::Command::new("sh").arg("-c").arg(&script).stdout(std::process::Stdio::null()).status().expect("run")
    }

    #[test]
    fn memory_limit_is_enforced_by_the_kernel() {
        use std::os::unix::process::ExitStatusExt;
        let Some(cg) = real("oom") else { return };
        cg.create("roomy", Limits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 16 }).expect("create");
        assert!(hog_in(&cg, "roomy").success(), "256 MiB fits in 1 GiB (and python3 runs)");
        cg.create("tight", Limits { cpu_millis: 1000, memory_bytes: 32 << 20, pids: 16 }).expect("create");
        let st = hog_in(&cg, "tight");
        assert_eq!(st.signal(), Some(9), "the kernel OOM-kills 256 MiB in a 32 MiB cgroup: {st:?}");
        cg.destroy("roomy").expect("destroy");
        cg.destroy("tight").expect("destroy");
        cg.remove_parent();
    }
}
