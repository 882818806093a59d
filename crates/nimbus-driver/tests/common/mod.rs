//! A container host for the driver's integration tests: a real `ContainerDriver` with its own
//! bridge, subnet, cgroup parent, namespaces and data directory (so tests side by side never
//! share host objects), the real launcher binary, the debian-12 image, and an SSH key pair.
//! Dropping it removes everything it made, also when the test failed.

#![allow(dead_code)]
// Test support: a failed set-up step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_driver::container::cgroup::Cgroups;
use nimbus_driver::container::driver::{ContainerConfig, ContainerDriver};
use nimbus_driver::container::runtime::{Launcher, Weaken};
use nimbus_driver::container::{firewall, image, storage};
use nimbus_driver::Driver;
use nimbus_proto::{DesiredInstance, Inventory, Power};

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

pub fn images_dir() -> Option<PathBuf> {
    if !is_root() {
        eprintln!("SKIPPED: the container driver needs root");
        return None;
    }
    let dir = std::env::var("NIMBUS_TEST_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/var/tmp/nimbus-images"));
    if !image::exists(&dir, "debian-12") {
        eprintln!("SKIPPED: no debian-12 image in {} (scripts/test builds it)", dir.display());
        return None;
    }
    Some(dir)
}

pub struct Host {
    pub driver: ContainerDriver,
    pub cfg: ContainerConfig,
    pub dir: PathBuf,
    pub key: PathBuf,
    pub pubkey: String,
}

/// A fresh instance id (32 hex digits, like the server's).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).expect("urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Host {
    /// A host named `tag` (at most 4 characters) on 10.`net`.0.0/24.
    pub fn new(tag: &str, net: u8, weaken: Weaken) -> Option<Host> {
        Self::with(tag, net, |c| c.weaken = weaken)
    }

    pub fn with(tag: &str, net: u8, tweak: impl FnOnce(&mut ContainerConfig)) -> Option<Host> {
        let images = images_dir()?;
        let pid = std::process::id() % 10_000;
        let dir = std::env::temp_dir().join(format!("nimbus-dt-{tag}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = ContainerConfig {
            bridge: format!("nd{tag}{pid}"),
            gateway: Ipv4Addr::new(10, net, 0, 1),
            prefix_len: 24,
            ns_prefix: format!("nd{tag}{pid}-"),
            cgroup_parent: format!("nimbus-dt-{tag}-{pid}"),
            inventory: Some(Inventory {
                hostname: tag.into(),
                cpu_model: "test".into(),
                vcpus: 4,
                memory_mib: 8192,
                disk_gib: 100,
                gpus: vec![],
                driver: "container".into(),
                public_ip: None,
                network: None,
                machines: vec![],
            }),
            sshd_grace: Duration::from_secs(20),
            launcher: Some(Launcher::binary(env!("CARGO_BIN_EXE_nimbus-launch"))),
            ..ContainerConfig::new(&dir.join("data"), &images)
        };
        tweak(&mut cfg);
        let driver = ContainerDriver::new(cfg.clone()).expect("container driver");
        let key = dir.join("id");
        assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_owned();
        Some(Host { driver, cfg, dir, key, pubkey })
    }

    pub fn spec(&self, tenant: &str, hostname: &str) -> DesiredInstance {
        DesiredInstance {
            id: new_id(),
            hostname: hostname.into(),
            image: "debian-12".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 10,
            gpu_indices: vec![],
            mig_devices: vec![],
            ssh_public_keys: vec![self.pubkey.clone()],
            user_data: None,
            power: Power::Running,
            restart_generation: 0,
            file_system_mounts: vec![],
            firewall: vec![],
            volumes: vec![],
            source_snapshot: None,
            ssh_port: None,
            port_forwards: vec![],
            public_address: None,
            peers: vec![],
            tenant: tenant.into(),
            privileged: false,
            machine: Default::default(),
        }
    }

    /// Ensures the instance and waits until its sshd answers; returns its address.
    pub async fn launch(&self, spec: &DesiredInstance) -> String {
        let r = self.driver.ensure(spec).await.expect("ensure");
        let ip = r.ip.clone().expect("an address");
        assert!(self.driver.wait_ready(&spec.id).await, "sshd never answered: {}", self.console(&spec.id));
        ip
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("instances").join(id)
    }

    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.instance_dir(id).join("console.log")).unwrap_or_default()
    }

    /// `ssh ubuntu@ip cmd`: (success, stdout + stderr).
    pub fn ssh(&self, ip: &str, cmd: &str) -> (bool, String) {
        ssh_with(&self.key, ip, cmd)
    }

    /// Runs `script` as root inside (through sudo); its stdout and stderr.
    pub fn root(&self, ip: &str, script: &str) -> String {
        let (_, out) = self.ssh(ip, &format!("sudo -n sh -c {}", shell_quote(script)));
        out
    }

    pub fn cgroups(&self) -> Cgroups {
        Cgroups::detect(&self.cfg.cgroup_mount, &self.cfg.cgroup_parent).unwrap()
    }
}

pub fn ssh_with(key: &Path, ip: &str, cmd: &str) -> (bool, String) {
    ssh_user(key, "ubuntu", ip, cmd)
}

pub fn ssh_user(key: &Path, user: &str, ip: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=5"])
        .arg(format!("{user}@{ip}"))
        .arg(cmd)
        .output()
        .expect("ssh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Polls `f` every 20 ms for up to `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::env::var_os("NIMBUS_TEST_KEEP").is_some() {
            eprintln!("NIMBUS_TEST_KEEP: leaving the host {} as it is", self.dir.display());
            return;
        }
        // Drop may run inside the test's runtime: a runtime of its own, on a thread of its own.
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                if let Ok(list) = rt.block_on(self.driver.list()) {
                    for r in list {
                        let _ = rt.block_on(self.driver.destroy(&r.id));
                    }
                }
            });
        });
        for e in std::fs::read_dir(self.cfg.data_dir.join("instances")).map(|r| r.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            storage::unmount_all(&e.path());
        }
        storage::unmount_host_mounts(&self.cfg.data_dir);
        let cg = self.cgroups();
        for name in cg.list() {
            let _ = cg.destroy(&name);
        }
        cg.remove_parent();
        let _ = Command::new("ip").args(["link", "del", &self.cfg.bridge]).stderr(std::process::Stdio::null()).status();
        firewall::remove(&self.cfg.bridge);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
