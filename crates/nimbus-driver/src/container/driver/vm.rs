//! Instances the host runs as VMs (`DesiredInstance.machine == vm`): the driver's host-wide
//! parts (address, ledger, cgroup, bridge port, firewall, stop, destroy, health) are the
//! containers'; what differs is how the instance starts: a tap on the bridge with the
//! instance's MAC (so the same anti-spoofing rules hold), a qcow2 overlay, a NoCloud seed
//! and a QEMU process (`crate::vm`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::vm::{disk, guest, qemu, seed, vfio};

use super::*;

/// Debian's virtiofsd (shipped with QEMU 7.2 in qemu-system-common).
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

const SYSFS: &str = "/sys";

/// The instance directory's record of the devices moved to vfio-pci.
const VFIO_RECORD: &str = "vfio.json";

/// What QEMU gets for a VM's GPUs: its arguments, and the `/dev/vfio` nodes with their numbers.
#[derive(Default)]
struct Passthrough {
    args: Vec<String>,
    nodes: Vec<(PathBuf, (u32, u32))>,
}

use crate::vm::qemu::run_dir;

/// What this host runs VMs with, decided once: the guest kernel, and KVM or TCG.
#[derive(Debug, Clone)]
pub(super) struct VmHost {
    pub boot: guest::Boot,
    pub accel: qemu::Accel,
}

/// Whether VMs can run here at all (QEMU, the seed tool and a prepared guest kernel), without
/// booting anything.
pub(super) fn vm_capable(images_dir: &std::path::Path) -> Option<guest::Boot> {
    let boot = guest::prepared(images_dir)?;
    let has = |p: &str, arg: &str| std::process::Command::new(p).arg(arg).output().is_ok_and(|o| o.status.success());
    (has(qemu::QEMU, "--version") && has("genisoimage", "--version")).then_some(boot)
}

/// Starts the KVM probe in the background; the first VM start waits for its answer.
pub(super) fn probe_in_background(boot: guest::Boot) -> std::sync::Arc<OnceLock<VmHost>> {
    let cell = std::sync::Arc::new(OnceLock::new());
    let c = cell.clone();
    std::thread::spawn(move || {
        // Once per boot of the host (the answer is kept under /run, which a reboot empties):
        // an agent restart, or several drivers on one machine, ask the kernel only once.
        let kept = std::path::Path::new(qemu::RUN_DIR).join("accel");
        let accel = match std::fs::read_to_string(&kept).ok().and_then(|s| serde_json::from_str::<qemu::Accel>(s.trim()).ok()) {
            Some(a) => a,
            None => {
                let a = if qemu::kvm_boots(&boot, Duration::from_secs(5)) { qemu::Accel::Kvm } else { qemu::Accel::Tcg };
                if std::fs::create_dir_all(qemu::RUN_DIR).is_ok() {
                    let _ = std::fs::write(&kept, serde_json::to_string(&a).unwrap_or_default());
                }
                a
            }
        };
        match accel {
            qemu::Accel::Kvm => tracing::info!("KVM boots guests here: VMs run with KVM"),
            qemu::Accel::Tcg => {
                tracing::warn!("KVM does not boot a guest here (or there is no /dev/kvm): VMs run under TCG emulation, which is slow")
            }
        }
        let _ = c.set(VmHost { boot, accel });
    });
    cell
}

impl ContainerDriver {
    fn vm_host(&self, id: &str) -> Result<VmHost> {
        let cell = self
            .vm
            .as_ref()
            .ok_or_else(|| err(id, "this host runs no VMs (no QEMU, genisoimage or guest kernel: nimbus image build --vm)"))?;
        let t = std::time::Instant::now();
        loop {
            if let Some(h) = cell.get() {
                return Ok(h.clone());
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(err(id, "the KVM probe never finished"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts VM instance `ledger` (already written) unless its QEMU runs; the caller holds the lock.
    pub(super) fn start_vm_locked(&self, ledger: &mut Ledger) -> Result<()> {
        let spec = ledger.spec.clone();
        let id = spec.id.as_str();
        if runtime::running(&self.cgroups, id) {
            return self.sync_firewall();
        }
        let host = self.vm_host(id)?;
        let base = disk::ensure_base(&self.cfg.images_dir, &spec.image).map_err(|e| err(id, e))?;
        let rs = self.runtime_spec(ledger)?;
        let dir = rs.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| err(id, e))?;
        let disk_path = dir.join(super::super::storage::VM_DISK);
        // A disk restored from a snapshot starts as its copy (and gets this instance's keys on
        // its first boot, its instance id being new).
        if let (false, Some(snap)) = (disk_path.exists(), &spec.source_snapshot) {
            self.storage.restore_vm_disk(snap, &disk_path).map_err(|e| err(id, e))?;
        }
        disk::ensure_overlay(&base, &disk_path, spec.disk_gib).map_err(|e| err(id, e))?;
        // The guest's root is the VM's own; QEMU runs as the tenant's unprivileged host uid.
        let uid = self.ranges.base_for(&spec.tenant).map_err(|e| err(id, e))?;
        runtime::write_seed(&runtime::Spec { userns: None, ..rs.clone() }).map_err(|e| err(id, e))?;
        write_hosts(&dir.join("hosts"), &spec.hostname, &spec.peers).map_err(|e| err(id, e))?;
        let addr = self.net.address(ledger.addr_index);
        let mac = super::super::launch::mac_for(addr);
        let iso = dir.join("seed.iso");
        // File systems, then volumes (their host mounts, as containers get them by bind mount),
        // each over virtiofs: `(tag, host directory, mount point in the guest)`.
        let mut exports: Vec<(String, PathBuf, String)> =
            rs.mounts.iter().enumerate().map(|(i, (host, at))| (format!("fs{i}"), host.clone(), at.clone())).collect();
        for (j, v) in spec.volumes.iter().enumerate() {
            super::super::storage::check_mount(v).map_err(|e| err(id, e))?;
            let m = self.storage.host_mount(&v.volume_id).map_err(|e| err(id, e))?;
            exports.push((format!("vol{j}"), m, format!("/mnt/volumes/{}", v.name)));
        }
        let shares: Vec<(String, String)> = exports.iter().map(|(t, _, at)| (t.clone(), at.clone())).collect();
        let s = seed::SeedSpec {
            instance_id: id,
            hostname: &spec.hostname,
            address: addr,
            prefix_len: self.cfg.prefix_len,
            gateway: self.cfg.gateway,
            mac: &mac,
            user_data: spec.user_data.as_deref(),
            mounts: &shares,
        };
        seed::write(&rs.seed_dir(), &s, Some(&dir.join("hosts")), &iso).map_err(|e| err(id, e))?;
        for f in [&disk_path, &iso] {
            std::os::unix::fs::chown(f, Some(uid), Some(uid)).map_err(|e| err(id, e))?;
        }
        let gpus = self.pass_gpus(&spec, &dir).map_err(|e| err(id, e))?;
        // Guest memory plus QEMU's own (device emulation, TCG's translation cache).
        let limits = Limits { memory_bytes: rs.limits.memory_bytes + (384 << 20), ..rs.limits };
        let mut rules: Vec<(u32, u32)> = vec![(10, 200)];
        if host.accel == qemu::Accel::Kvm {
            rules.push((10, 232));
        }
        rules.extend(gpus.nodes.iter().map(|(_, n)| *n));
        self.cgroups.create(id, limits, Some(&super::super::devices::rules_with(&rules)), None).map_err(|e| err(id, e))?;
        self.net.destroy(id, None);
        let tap = self.net.port(id);
        self.net.ensure_tap(&tap, uid).map_err(|e| err(id, e))?;
        ledger.started_at = now_secs();
        self.write_ledger(id, ledger)?;
        self.sync_firewall()?;
        let run = run_dir(id);
        std::fs::create_dir_all(&run).map_err(|e| err(id, format!("{}: {e}", run.display())))?;
        // From here on a failure undoes the cgroup (killing whatever started in it) and the tap.
        let undo = |e: String| {
            let _ = self.cgroups.destroy(id);
            self.net.destroy(id, None);
            err(id, e)
        };
        let mut virtiofs = Vec::new();
        for (i, (tag, host_dir, _)) in exports.iter().enumerate() {
            virtiofs.push((tag.clone(), self.start_virtiofsd(id, i, host_dir, uid).map_err(undo)?));
        }
        let vm = qemu::VmSpec {
            name: id.to_owned(),
            boot: host.boot,
            disk: disk_path,
            seed: iso,
            tap,
            mac,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            accel: host.accel,
            runas: (uid, uid),
            qmp: qemu::qmp_socket(id),
            console: dir.join("console.log"),
            virtiofs,
            vfio_args: gpus.args,
        };
        for (node, _) in &gpus.nodes {
            // QEMU opens them after dropping root; they are the VM's alone until it is gone.
            std::os::unix::fs::chown(node, Some(uid), Some(uid)).map_err(|e| err(id, format!("{}: {e}", node.display())))?;
        }
        qemu::start(&vm, &self.cgroups, id).map_err(undo)?;
        tracing::info!(instance = %id, accel = ?host.accel, "VM started");
        Ok(())
    }

    /// Hands the instance's GPUs to `vfio-pci` (each with its whole IOMMU group) for QEMU,
    /// recording what they were bound to in `vfio.json` so that [`Self::give_gpus_back`] can
    /// return them, also after an agent restart. Refuses, before touching anything, where the
    /// IOMMU is off or a GPU is not known by its PCI address.
    fn pass_gpus(&self, spec: &DesiredInstance, dir: &std::path::Path) -> std::result::Result<Passthrough, String> {
        if spec.gpu_indices.is_empty() && spec.mig_devices.is_empty() {
            return Ok(Passthrough::default());
        }
        if !spec.mig_devices.is_empty() {
            return Err("MIG devices cannot be passed through to a VM; use a container type for MIG slices".into());
        }
        let sysfs = std::path::Path::new(SYSFS);
        if !vfio::iommu_enabled(sysfs) {
            return Err(vfio::VfioError::IommuOff(sysfs.join("kernel/iommu_groups")).to_string());
        }
        let gpus = super::super::inventory::gpus();
        let mut bus_ids = Vec::new();
        for i in &spec.gpu_indices {
            let g = gpus
                .iter()
                .find(|g| g.index == *i)
                .ok_or_else(|| format!("GPU {i} is not on this host (NVML lists {} GPUs)", gpus.len()))?;
            if g.pci_bus_id.is_empty() {
                return Err(format!("NVML gives no PCI address for GPU {i}"));
            }
            bus_ids.push(g.pci_bus_id.clone());
        }
        let record = dir.join(VFIO_RECORD);
        let previous: Vec<vfio::Binding> = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let bindings = vfio::bind_gpus(sysfs, &bus_ids, &previous).map_err(|e| e.to_string())?;
        let body = serde_json::to_vec_pretty(&bindings).map_err(|e| e.to_string())?;
        crate::files::write_private(&record, &body).map_err(|e| format!("{}: {e}", record.display()))?;
        let addrs: Vec<String> = bindings.iter().map(|b| b.address.clone()).collect();
        let args = vfio::qemu_args(&addrs).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for n in vfio::vfio_device_nodes(sysfs, &addrs).map_err(|e| e.to_string())? {
            let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&n).map_err(|e| format!("{}: {e}", n.display()))?);
            nodes.push((n, (libc::major(rdev), libc::minor(rdev))));
        }
        Ok(Passthrough { args, nodes })
    }

    /// Gives a terminated VM's GPUs back to their host drivers (and their nodes back to root).
    pub(super) fn give_gpus_back(&self, id: &str) -> Result<()> {
        let record = self.dir(id).join(VFIO_RECORD);
        let Ok(b) = std::fs::read(&record) else { return Ok(()) };
        let bindings: Vec<vfio::Binding> = serde_json::from_slice(&b).map_err(|e| err(id, format!("{}: {e}", record.display())))?;
        let sysfs = std::path::Path::new(SYSFS);
        let addrs: Vec<String> = bindings.iter().map(|b| b.address.clone()).collect();
        for n in vfio::vfio_device_nodes(sysfs, &addrs).unwrap_or_default() {
            let _ = std::os::unix::fs::chown(&n, Some(0), Some(0));
        }
        vfio::restore(sysfs, &bindings).map_err(|e| err(id, e))?;
        std::fs::remove_file(&record).map_err(|e| err(id, e))
    }

    /// Serves `host_dir` to the VM over vhost-user (its `i`-th share): virtiofsd as root of a
    /// user namespace over the tenant's id range (`--userns-exec` of the launcher), so the
    /// guest's users are the tenant's container users on the host and the daemon is never
    /// host root. It gets its listening socket on stdin (made here, owned by QEMU's uid) and
    /// lives in the instance's cgroup, so it goes with the VM.
    fn start_virtiofsd(&self, id: &str, i: usize, host_dir: &std::path::Path, base: u32) -> std::result::Result<PathBuf, String> {
        let dir = self.dir(id);
        let sock = run_dir(id).join(format!("vfs-{i}.sock"));
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        std::os::unix::fs::chown(&sock, Some(base), Some(base)).map_err(|e| format!("{}: {e}", sock.display()))?;
        let log_path = dir.join("virtiofsd.log");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = std::process::Command::new(&self.launcher.program)
            .args(&self.launcher.args)
            .arg(super::super::launch::USERNS_EXEC)
            .arg(base.to_string())
            .arg(idmap::RANGE.to_string())
            .arg(self.cgroups.procs_files(id, false).iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":"))
            .arg(VIRTIOFSD)
            .arg("--fd=0")
            .arg("-o")
            .arg(format!("source={}", host_dir.display()))
            .args(["-o", "cache=auto", "-o", "sandbox=namespace"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(listener)))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting virtiofsd: {e}"))?;
        // The launcher leaves once virtiofsd runs; its status says whether it got that far.
        let status = child.wait().map_err(|e| format!("virtiofsd's launcher: {e}"))?;
        if !status.success() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("virtiofsd did not start ({status}): {}", log.lines().last().unwrap_or("")));
        }
        Ok(sock)
    }

    /// Asks a VM's QEMU to quit (it flushes the disk first) and waits a moment for it, so that
    /// the kill that follows finds nothing mid-write. Not a VM, or no answer: nothing.
    pub(super) fn quit_vm(&self, id: &str) {
        if self.ledger(id).is_none_or(|l| l.spec.machine != nimbus_proto::Machine::Vm) {
            return;
        }
        if let Ok(mut q) = qemu::Qmp::connect(&qemu::qmp_socket(id), Duration::from_secs(2)) {
            let _ = q.execute("quit", serde_json::json!({}));
            let t = std::time::Instant::now();
            while runtime::running(&self.cgroups, id) && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// What a VM leaves outside its instance directory (its sockets), removed at destroy.
    pub(super) fn remove_vm_run_dir(&self, id: &str) {
        let _ = std::fs::remove_dir_all(run_dir(id));
    }
}
