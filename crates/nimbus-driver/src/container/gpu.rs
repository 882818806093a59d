//! GPUs inside container instances: which host device nodes, driver libraries and tools an
//! instance with `gpu_indices` and `mig_devices` gets, worked out as a [`GpuPlan`] that `runtime`
//! applies while it builds the container.
//!
//! What an instance gets, following what `nvidia-container-cli` does for Docker:
//! - `/dev/nvidia<minor>` of each of its GPUs (NVML index → minor number), plus the control nodes
//!   the host has (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset`),
//!   bind-mounted into its private `/dev`. The other GPUs' nodes are simply not there, and that
//!   is what makes NVML and CUDA inside see only the instance's GPUs (renumbered from 0).
//! - For a MIG device, its parent GPU's node and exactly two `nvidia-caps` nodes: its GPU
//!   instance's and its compute instance's (minors from procfs). Two tenants share the parent
//!   node, so these caps are what fences one slice from the other; no other cap (other slices,
//!   `mig/config`, `mig/monitor`) is ever given, to MIG or whole-GPU instances.
//! - The host driver's user-space libraries (found in the host's `ldconfig -p`), read-only, in a
//!   tmpfs at [`LIB_DIR`] with their soname links, an `ld.so.conf.d` entry for that directory,
//!   and `ldconfig` run inside; the driver's tools (`nvidia-smi`, …) read-only in `/usr/bin`.
//!   User space must match the host's kernel module exactly, so it always comes from the host.
//! - A tmpfs over `/proc/driver/nvidia` holding the driver's `version`, `registry` and `params`
//!   (with `ModifyDeviceFiles: 0`, so the libraries inside never try to create the missing
//!   nodes of other GPUs) and bind mounts of only the instance's `gpus/<bus id>` entries (and
//!   of its MIG devices' `capabilities/gpu<minor>/mig/gi<G>` directories).
//! - A device filter that lets the instance open only its own GPUs' nodes besides the base
//!   set (`devices.rs`: the v1 whitelist and the cgroup v2 eBPF program), so even a node it
//!   makes itself with `mknod` for another GPU does not open.
//!
//! Where the host has NVIDIA's CDI spec, it names the libraries, tools and control nodes instead
//! of the `ldconfig -p` and `PATH` scan ([`super::cdi`]; [`GpuPlan::source`] says which one).
//!
//! Discovery reads a root directory (`/` in production, a fake tree in tests) and parses text, so
//! all of it is tested without a GPU; only [`Host::read`] touches NVML and runs programs.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nimbus_proto::MigDeviceRef;

use super::cdi;

/// Char major of the NVIDIA GPU and control nodes (fixed by the driver).
pub const NVIDIA_MAJOR: u32 = 195;
/// Minor of `/dev/nvidiactl`.
pub const NVIDIACTL_MINOR: u32 = 255;
/// Minor of `/dev/nvidia-modeset`.
pub const MODESET_MINOR: u32 = 254;
/// Where the driver's libraries appear inside an instance (a tmpfs, rebuilt at every start).
pub const LIB_DIR: &str = "/usr/lib/nimbus-nvidia";
/// The `ld.so.conf.d` entry that puts [`LIB_DIR`] first in the instance's library search.
pub const LD_CONF: &str = "/etc/ld.so.conf.d/000-nimbus-nvidia.conf";
/// Where the driver's tools appear inside an instance.
pub(crate) const BIN_DIR: &str = "/usr/bin";
/// The host directories searched for the tools, in order (the default root `PATH`).
const HOST_PATH: [&str; 6] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// The driver's tools an instance gets when the host has them.
pub const BINARIES: [&str; 5] =
    ["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"];
/// File name prefixes of the driver's user-space libraries (compute, utility, video, graphics).
const LIB_PREFIXES: [&str; 10] = [
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-",
    "libnvcuvid.so",
    "libnvoptix.so",
    "libvdpau_nvidia.so",
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLESv1_CM_nvidia.so",
];
/// `libnvidia-*` libraries that are not the driver's (the container toolkit's own).
const LIB_EXCLUDED: [&str; 1] = ["libnvidia-container"];
/// Without these nothing GPU works inside, so a plan without them is refused.
const REQUIRED_LIBS: [&str; 2] = ["libcuda.so.1", "libnvidia-ml.so.1"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("the instance asks for GPUs {indices:?} but this host has no NVIDIA driver loaded ({path} does not exist)")]
    NoDriver { indices: Vec<i64>, path: PathBuf },
    #[error("GPU index {index} is not on this host ({count} GPU(s) found through {source_name})")]
    UnknownIndex { index: i64, count: usize, source_name: &'static str },
    #[error("device node {path} of GPU index {index} (minor {minor}) does not exist (`nvidia-modprobe -c {minor}` creates it)")]
    MissingNode { index: i64, minor: u32, path: PathBuf },
    #[error("the NVIDIA driver's user-space libraries ({missing}) are not in this host's `ldconfig -p`; install the driver's user-space packages")]
    MissingLibraries { missing: String },
    #[error("MIG device {uuid}: its parent GPU index {parent_index} is not on this host ({count} GPU(s) found through {source_name})")]
    UnknownMigParent { uuid: String, parent_index: i64, count: usize, source_name: &'static str },
    #[error("MIG device {uuid} (GPU {parent_index}, GPU instance {gpu_instance_id}, compute instance {compute_instance_id}) is not on this host: {path} names no device minor (was the GPU repartitioned?)")]
    UnknownMigDevice { uuid: String, parent_index: i64, gpu_instance_id: i64, compute_instance_id: i64, path: PathBuf },
    #[error(
        "capability node {path} of MIG device {uuid} does not exist or has unknown numbers (`nvidia-modprobe -f {proc_path}` creates it)"
    )]
    MissingCapNode { uuid: String, path: PathBuf, proc_path: PathBuf },
}

/// One GPU of the host as the driver numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGpu {
    /// NVML index (what the scheduler hands out in `gpu_indices`).
    pub index: u32,
    /// Minor number of its `/dev/nvidia<minor>`.
    pub minor: u32,
    /// PCI bus id as `/proc/driver/nvidia/gpus` names it (`0000:3b:00.0`); empty when unknown.
    pub bus_id: String,
    /// `GPU-…`, to find the GPU in a CDI spec by UUID; empty when unknown.
    pub uuid: String,
}

/// A character device an instance gets, at the same path inside as on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceNode {
    /// Absolute path, e.g. `/dev/nvidia0`.
    pub path: String,
    pub major: u32,
    pub minor: u32,
}

/// Everything `runtime` does to give an instance its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GpuPlan {
    /// Device nodes to bind into the instance's `/dev`: its GPUs first, then the control nodes.
    pub devices: Vec<DeviceNode>,
    /// Read-only file bind mounts: (host path, absolute path inside).
    pub files: Vec<(PathBuf, String)>,
    /// Symbolic links inside: (link target, absolute link path), e.g. `libcuda.so.1` → the
    /// versioned library, both in [`LIB_DIR`].
    pub links: Vec<(String, String)>,
    /// Entries of the host's `/proc/driver/nvidia` to show inside, relative to it
    /// (`gpus/0000:3b:00.0`, `capabilities`).
    pub proc_entries: Vec<String>,
    /// Contents of [`LD_CONF`].
    pub ld_conf: String,
    /// Where the device nodes and files came from.
    #[serde(default)]
    pub source: PlanSource,
}

/// What decided a plan's control nodes, libraries and tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanSource {
    /// The host's `ldconfig -p`, `PATH` and `/dev`.
    #[default]
    Discovery,
    /// The host's NVIDIA CDI spec ([`super::cdi`]).
    Cdi,
}

impl GpuPlan {
    /// `(major, minor)` of every device node, for a cgroup device whitelist.
    pub fn device_numbers(&self) -> Vec<(u32, u32)> {
        self.devices.iter().map(|d| (d.major, d.minor)).collect()
    }
}

/// `abs` (an absolute path on the host) under `root`.
pub(crate) fn under(root: &Path, abs: impl AsRef<Path>) -> PathBuf {
    let abs = abs.as_ref();
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// Whether `s` can travel in the init script's line format.
pub(crate) fn safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['|', '\n', '\r'])
}

/// Major and minor of a Linux `dev_t` (the glibc `major()`/`minor()` encoding).
pub fn dev_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x00ff);
    (major as u32, minor as u32)
}

/// Character device majors by driver name, from `/proc/devices`.
pub fn char_majors(proc_devices: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut in_char = false;
    for line in proc_devices.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line == "Character devices:";
            continue;
        }
        if !in_char {
            continue;
        }
        if let Some((num, name)) = line.split_once(char::is_whitespace) {
            if let Ok(n) = num.parse::<u32>() {
                out.entry(name.trim().to_owned()).or_insert(n);
            }
        }
    }
    out
}

/// The canonical form of a PCI bus id, as `/proc/driver/nvidia/gpus` spells it: a 4-digit
/// domain, lower case (`00000000:3B:00.0` from NVML becomes `0000:3b:00.0`).
pub fn normalize_bus_id(bus_id: &str) -> String {
    let s = bus_id.trim().to_ascii_lowercase();
    match s.split_once(':') {
        Some((domain, rest)) => match u32::from_str_radix(domain, 16) {
            Ok(d) => format!("{d:04x}:{rest}"),
            Err(_) => s,
        },
        None => s,
    }
}

/// What one `/proc/driver/nvidia/gpus/<bus id>/information` says.
struct Information {
    minor: u32,
    bus: Option<String>,
    uuid: String,
    excluded: bool,
}

fn parse_information(text: &str) -> Option<Information> {
    let mut minor = None;
    let mut bus = None;
    let mut uuid = String::new();
    let mut excluded = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.trim() {
            "Device Minor" => minor = v.parse::<u32>().ok(),
            "Bus Location" => bus = Some(normalize_bus_id(v)),
            "GPU Excluded" => excluded = v.eq_ignore_ascii_case("yes"),
            "GPU UUID" => uuid = v.to_owned(),
            _ => {}
        }
    }
    minor.map(|minor| Information { minor, bus, uuid, excluded })
}

/// The GPUs as the kernel driver lists them in `/proc/driver/nvidia/gpus/*/information`, indexed
/// in PCI bus id order (NVML's enumeration order, and what `nvidia-container-cli` assumes when
/// NVML is not at hand). GPUs the driver was told to exclude are skipped, as NVML skips them.
pub fn gpus_from_proc(root: &Path) -> Vec<HostGpu> {
    let dir = under(root, "/proc/driver/nvidia/gpus");
    let mut found: Vec<(String, u32, String)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let text = std::fs::read_to_string(e.path().join("information")).ok()?;
                    let i = parse_information(&text)?;
                    (!i.excluded).then(|| (i.bus.unwrap_or_else(|| normalize_bus_id(&name)), i.minor, i.uuid))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().enumerate().map(|(i, (bus_id, minor, uuid))| HostGpu { index: i as u32, minor, bus_id, uuid }).collect()
}

/// The GPUs NVML sees, with their minor numbers; `None` when NVML does not load.
pub fn gpus_from_nvml() -> Option<Vec<HostGpu>> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let count = nvml.device_count().ok()?;
    let mut out = Vec::new();
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else { continue };
        let Ok(minor) = d.minor_number() else { continue };
        let bus_id = d.pci_info().map(|p| normalize_bus_id(&p.bus_id)).unwrap_or_default();
        out.push(HostGpu { index: i, minor, bus_id, uuid: d.uuid().unwrap_or_default() });
    }
    Some(out)
}

/// The device node at `path` under `root` if it exists. Its numbers come from the node itself
/// when it is a character device, otherwise (fake trees in tests) from `expected`; a node whose
/// numbers cannot be known is left out.
pub(crate) fn node(root: &Path, path: &str, expected: Option<(u32, u32)>) -> Option<DeviceNode> {
    let meta = std::fs::metadata(under(root, path)).ok()?;
    let numbers = if meta.file_type().is_char_device() { Some(dev_numbers(meta.rdev())) } else { expected };
    match numbers {
        Some((major, minor)) => Some(DeviceNode { path: path.to_owned(), major, minor }),
        None => {
            tracing::warn!(path, "NVIDIA device node with unknown numbers left out");
            None
        }
    }
}

/// `/dev/nvidia<minor>`, if it exists.
pub fn gpu_node(root: &Path, minor: u32) -> Option<DeviceNode> {
    node(root, &format!("/dev/nvidia{minor}"), Some((NVIDIA_MAJOR, minor)))
}

/// The control nodes that exist: `nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`,
/// `nvidia-modeset`. `majors` is [`char_majors`] of the host. The `nvidia-caps` nodes are not
/// control nodes: each grants one MIG capability (see [`mig_nodes`]).
pub fn control_nodes(root: &Path, majors: &BTreeMap<String, u32>) -> Vec<DeviceNode> {
    let uvm = majors.get("nvidia-uvm").copied();
    [
        ("/dev/nvidiactl", Some((NVIDIA_MAJOR, NVIDIACTL_MINOR))),
        ("/dev/nvidia-uvm", uvm.map(|m| (m, 0))),
        ("/dev/nvidia-uvm-tools", uvm.map(|m| (m, 1))),
        ("/dev/nvidia-modeset", Some((NVIDIA_MAJOR, MODESET_MINOR))),
    ]
    .into_iter()
    .filter_map(|(p, n)| node(root, p, n))
    .collect()
}

/// The minor of a capability's `/dev/nvidia-caps/nvidia-cap<N>`: the `DeviceFileMinor:` line
/// of its procfs `access` (or `config`, `monitor`) file.
pub fn parse_cap_minor(text: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "DeviceFileMinor").then(|| v.trim().parse::<u32>().ok()).flatten()
    })
}

/// The procfs directory (relative to `/proc/driver/nvidia`) of GPU instance `gi` of the GPU
/// with minor `minor`: it holds the GPU instance's `access` and a `ci<C>/access` per compute
/// instance.
fn gi_dir(minor: u32, gi: i64) -> String {
    format!("capabilities/gpu{minor}/mig/gi{gi}")
}

/// The (GPU instance, compute instance) ids of the MIG devices the driver lists for the GPU with
/// minor `minor` in `/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>/ci<C>`, sorted.
pub fn mig_instances(root: &Path, minor: u32) -> Vec<(i64, i64)> {
    let ids = |dir: &Path, prefix: &str| -> Vec<i64> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok()?.strip_prefix(prefix)?.parse::<i64>().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mig = under(root, "/proc/driver/nvidia").join(format!("capabilities/gpu{minor}/mig"));
    let mut out: Vec<(i64, i64)> =
        ids(&mig, "gi").into_iter().flat_map(|gi| ids(&mig.join(format!("gi{gi}")), "ci").into_iter().map(move |ci| (gi, ci))).collect();
    out.sort();
    out
}

/// The two capability nodes of MIG device `m` (its GPU instance's and its compute instance's
/// `nvidia-cap<N>`, N from procfs) on `parent`, which is what `nvidia-container-cli` gives a
/// container for one MIG device. Opening the parent's `/dev/nvidia<minor>` alone gives no MIG
/// device; these two select the slice, so they are the only caps an instance ever gets.
pub fn mig_nodes(root: &Path, majors: &BTreeMap<String, u32>, parent: &HostGpu, m: &MigDeviceRef) -> Result<[DeviceNode; 2], GpuError> {
    let dir = gi_dir(parent.minor, m.gpu_instance_id);
    let unknown = |path: &str| GpuError::UnknownMigDevice {
        uuid: m.uuid.clone(),
        parent_index: m.parent_index,
        gpu_instance_id: m.gpu_instance_id,
        compute_instance_id: m.compute_instance_id,
        path: PathBuf::from(format!("/proc/driver/nvidia/{path}")),
    };
    let gi_access = format!("{dir}/access");
    let ci_access = format!("{dir}/ci{}/access", m.compute_instance_id);
    // Negative ids would name no directory anyway; refusing them keeps `-` out of the paths.
    if m.gpu_instance_id < 0 || m.compute_instance_id < 0 {
        return Err(unknown(&ci_access));
    }
    let caps = majors.get("nvidia-caps").copied();
    let cap = |rel: &str| -> Result<DeviceNode, GpuError> {
        let text = std::fs::read_to_string(under(root, "/proc/driver/nvidia").join(rel)).unwrap_or_default();
        let minor = parse_cap_minor(&text).ok_or_else(|| unknown(rel))?;
        let path = format!("/dev/nvidia-caps/nvidia-cap{minor}");
        // A real node whose numbers disagree with procfs is some other capability's node.
        node(root, &path, caps.map(|c| (c, minor))).filter(|n| n.minor == minor && caps.is_none_or(|c| c == n.major)).ok_or_else(|| {
            GpuError::MissingCapNode {
                uuid: m.uuid.clone(),
                path: PathBuf::from(&path),
                proc_path: PathBuf::from(format!("/proc/driver/nvidia/{rel}")),
            }
        })
    };
    Ok([cap(&gi_access)?, cap(&ci_access)?])
}

/// One library of the host's `ldconfig -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdEntry {
    /// The name the cache knows it by (`libcuda.so.1`).
    pub name: String,
    pub path: PathBuf,
}

/// The `ldconfig -p` flag of this machine's native ABI (`libc6,x86-64`, …); 32-bit and foreign
/// libraries are not for the instance.
pub fn ld_arch_flag() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "AArch64",
        "powerpc64" => "64bit",
        _ => "x86-64",
    }
}

/// The entries of `ldconfig -p` output for the ABI `arch_flag`, in the cache's (priority) order.
pub fn parse_ldconfig(text: &str, arch_flag: &str) -> Vec<LdEntry> {
    text.lines()
        .filter_map(|line| {
            let (lhs, path) = line.trim().split_once(" => ")?;
            let (name, flags) = lhs.split_once(" (")?;
            let flags = flags.strip_suffix(')')?;
            flags
                .split(',')
                .any(|f| f.trim() == arch_flag)
                .then(|| LdEntry { name: name.trim().to_owned(), path: PathBuf::from(path.trim()) })
        })
        .collect()
}

/// Whether `name` is one of the NVIDIA driver's user-space libraries.
pub fn is_driver_library(name: &str) -> bool {
    name.contains(".so") && LIB_PREFIXES.iter().any(|p| name.starts_with(p)) && !LIB_EXCLUDED.iter().any(|p| name.starts_with(p))
}

/// `p` without `.` and `..` components (lexically).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The regular file `path` (absolute, on the host) leads to once its symbolic links are
/// followed, resolved under `root`; `None` when it leads nowhere.
pub(crate) fn resolve(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut p = path.to_owned();
    for _ in 0..40 {
        let meta = std::fs::symlink_metadata(under(root, &p)).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(p);
        }
        let target = std::fs::read_link(under(root, &p)).ok()?;
        p = if target.is_absolute() { target } else { normalize(&p.parent()?.join(target)) };
    }
    None
}

/// The host's driver tools: (host path, path inside), the first of each along the default root
/// `PATH`.
pub fn binaries(root: &Path) -> Vec<(PathBuf, String)> {
    BINARIES
        .iter()
        .filter_map(|bin| {
            HOST_PATH.iter().map(|d| PathBuf::from(d).join(bin)).find(|p| std::fs::metadata(under(root, p)).is_ok_and(|m| m.is_file()))
        })
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            safe(&p.display().to_string()).then(|| (p, format!("{BIN_DIR}/{name}")))
        })
        .collect()
}

/// What the host has to offer, read once per instance start.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/` in production.
    pub root: PathBuf,
    pub gpus: Vec<HostGpu>,
    /// Where `gpus` came from, for error messages (`NVML`, `/proc/driver/nvidia/gpus`).
    pub gpus_source: &'static str,
    /// Output of `ldconfig -p`.
    pub ldconfig: String,
    /// [`ld_arch_flag`].
    pub arch: &'static str,
}

impl Host {
    /// Reads this machine. Without `/dev/nvidiactl` nothing else is looked at (the plan fails
    /// with [`GpuError::NoDriver`]). Like `nvidia-container-cli --load-kmods`, missing nodes of
    /// a loaded driver (`nvidia-uvm` appears on first CUDA use) are created with
    /// `nvidia-modprobe` when the host has it.
    pub fn read() -> Host {
        let root = PathBuf::from("/");
        let mut host = Host { root: root.clone(), gpus: Vec::new(), gpus_source: "NVML", ldconfig: String::new(), arch: ld_arch_flag() };
        if !root.join("dev/nvidiactl").exists() {
            return host;
        }
        if !root.join("dev/nvidia-uvm").exists() {
            modprobe(&["-u", "-c=0"]);
        }
        match gpus_from_nvml() {
            Some(g) => host.gpus = g,
            None => {
                host.gpus = gpus_from_proc(&root);
                host.gpus_source = "/proc/driver/nvidia/gpus";
            }
        }
        for g in &host.gpus {
            if gpu_node(&root, g.minor).is_none() {
                modprobe(&[&format!("-c={}", g.minor)]);
            }
            // The caps nodes of MIG devices appear only when something asks for them.
            for (gi, ci) in mig_instances(&root, g.minor) {
                let dir = format!("/proc/driver/nvidia/{}", gi_dir(g.minor, gi));
                for access in [format!("{dir}/access"), format!("{dir}/ci{ci}/access")] {
                    let minor = std::fs::read_to_string(&access).ok().and_then(|t| parse_cap_minor(&t));
                    if minor.is_some_and(|n| !Path::new(&format!("/dev/nvidia-caps/nvidia-cap{n}")).exists()) {
                        modprobe(&["-f", &access]);
                    }
                }
            }
        }
        host.ldconfig = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
            .iter()
            .find_map(|l| Command::new(l).arg("-p").output().ok().filter(|o| o.status.success()))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        host
    }

    /// The plan for an instance with whole GPUs `indices` only (what `nimbus host inventory
    /// --gpu-plan` shows); see [`Host::plan_with_mig`].
    pub fn plan(&self, indices: &[i64]) -> Result<GpuPlan, GpuError> {
        self.plan_with_mig(indices, &[])
    }

    /// The plan for an instance with whole GPUs `indices` (NVML indices) and MIG devices `mig`;
    /// duplicates are ignored.
    pub fn plan_with_mig(&self, indices: &[i64], mig: &[MigDeviceRef]) -> Result<GpuPlan, GpuError> {
        let root = &self.root;
        let ctl = under(root, "/dev/nvidiactl");
        if !ctl.exists() {
            let mut asked = indices.to_vec();
            asked.extend(mig.iter().map(|m| m.parent_index));
            return Err(GpuError::NoDriver { indices: asked, path: PathBuf::from("/dev/nvidiactl") });
        }
        let majors = char_majors(&std::fs::read_to_string(under(root, "/proc/devices")).unwrap_or_default());
        let mut plan = GpuPlan { ld_conf: format!("{LIB_DIR}\n"), ..GpuPlan::default() };

        let wanted: BTreeSet<i64> = indices.iter().copied().collect();
        let mut whole: Vec<&HostGpu> = Vec::new();
        for &index in &wanted {
            let Some(g) = self.gpus.iter().find(|g| i64::from(g.index) == index) else {
                return Err(GpuError::UnknownIndex { index, count: self.gpus.len(), source_name: self.gpus_source });
            };
            self.add_gpu(&mut plan, g)?;
            whole.push(g);
        }
        let mut migs: Vec<cdi::WantedMig> = Vec::new();
        for m in mig {
            let Some(g) = self.gpus.iter().find(|g| i64::from(g.index) == m.parent_index) else {
                return Err(GpuError::UnknownMigParent {
                    uuid: m.uuid.clone(),
                    parent_index: m.parent_index,
                    count: self.gpus.len(),
                    source_name: self.gpus_source,
                });
            };
            self.add_gpu(&mut plan, g)?;
            let caps = mig_nodes(root, &majors, g, m)?;
            for n in &caps {
                if !plan.devices.contains(n) {
                    plan.devices.push(n.clone());
                }
            }
            // NVML inside reads the two caps' minors there. Only this GPU instance's directory:
            // the other instances' entries (and `mig/config`, `mig/monitor`) stay out of sight.
            let entry = gi_dir(g.minor, m.gpu_instance_id);
            if !plan.proc_entries.contains(&entry) {
                plan.proc_entries.push(entry);
            }
            migs.push(cdi::WantedMig { parent: g, mig: m, caps });
        }

        let selection = match cdi::find(root) {
            Ok(None) => None,
            Ok(Some((path, spec))) => match cdi::select(&spec, root, &majors, &whole, &migs) {
                Ok(sel) => {
                    tracing::info!(spec = %path, "GPU plan from the host's CDI spec");
                    Some(sel)
                }
                Err(reason) => {
                    tracing::warn!(spec = %path, %reason, "CDI spec not used for this instance; discovering the driver instead");
                    None
                }
            },
            Err(reason) => {
                tracing::warn!(%reason, "CDI spec unreadable; discovering the driver instead");
                None
            }
        };
        let (entries, only) = match &selection {
            Some(sel) => {
                plan.source = PlanSource::Cdi;
                plan.devices.extend(sel.devices.iter().cloned());
                // The spec's files first (each under its own name), then every name the ld
                // cache knows one of them by, for the soname links.
                let mut e: Vec<LdEntry> = sel
                    .libraries
                    .iter()
                    .filter_map(|p| Some(LdEntry { name: p.file_name()?.to_str()?.to_owned(), path: p.clone() }))
                    .collect();
                e.extend(parse_ldconfig(&self.ldconfig, self.arch));
                let real: BTreeSet<PathBuf> = sel.libraries.iter().filter_map(|p| resolve(root, p)).collect();
                (e, Some(real))
            }
            None => {
                plan.devices.extend(control_nodes(root, &majors));
                (parse_ldconfig(&self.ldconfig, self.arch).into_iter().filter(|e| is_driver_library(&e.name)).collect(), None)
            }
        };

        // Libraries: each real file once under its own name, and a link for every other name the
        // cache knows it by (`libcuda.so.1` → `libcuda.so.550.54.15`), first entry winning.
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut links: BTreeMap<String, String> = BTreeMap::new();
        for e in entries {
            if !safe(&e.name) || e.name.contains('/') || files.contains_key(&e.name) || links.contains_key(&e.name) {
                continue;
            }
            if LIB_EXCLUDED.iter().any(|p| e.name.starts_with(p)) {
                continue;
            }
            let Some(real) = resolve(root, &e.path) else { continue };
            if only.as_ref().is_some_and(|o| !o.contains(&real)) {
                continue;
            }
            let Some(real_name) = real.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            if !safe(&real_name) || !safe(&real.display().to_string()) || links.contains_key(&real_name) {
                continue;
            }
            files.entry(real_name.clone()).or_insert(real);
            if e.name != real_name {
                links.insert(e.name, real_name);
            }
        }
        if only.is_some() {
            // A spec may list libraries the ld cache does not know (a driver outside the
            // search path): their soname is the one every driver release uses.
            for req in REQUIRED_LIBS {
                let stem = req.trim_end_matches('1');
                let found = files.keys().find(|n| n.starts_with(stem) && n.as_str() != req).cloned();
                if let (false, false, Some(target)) = (files.contains_key(req), links.contains_key(req), found) {
                    links.insert(req.to_owned(), target);
                }
            }
        }
        let missing: Vec<&str> = REQUIRED_LIBS.iter().copied().filter(|l| !files.contains_key(*l) && !links.contains_key(*l)).collect();
        if !missing.is_empty() {
            return Err(GpuError::MissingLibraries { missing: missing.join(", ") });
        }
        plan.files = files.into_iter().map(|(name, src)| (src, format!("{LIB_DIR}/{name}"))).collect();
        plan.links = links.into_iter().map(|(name, target)| (target, format!("{LIB_DIR}/{name}"))).collect();
        // Tools: the spec's where it lists them, the rest from `PATH`.
        let listed: Vec<(PathBuf, String)> = selection.map(|s| s.binaries).unwrap_or_default();
        let found = binaries(root).into_iter().filter(|(_, inside)| !listed.iter().any(|(_, l)| l == inside));
        plan.files.extend(listed.iter().cloned().chain(found));
        Ok(plan)
    }

    /// GPU `g`'s node and its `/proc/driver/nvidia/gpus` entry, once, whether the instance has
    /// the whole GPU or MIG devices of it.
    fn add_gpu(&self, plan: &mut GpuPlan, g: &HostGpu) -> Result<(), GpuError> {
        let node = gpu_node(&self.root, g.minor).ok_or_else(|| GpuError::MissingNode {
            index: i64::from(g.index),
            minor: g.minor,
            path: PathBuf::from(format!("/dev/nvidia{}", g.minor)),
        })?;
        if plan.devices.contains(&node) {
            return Ok(());
        }
        plan.devices.push(node);
        let entry = format!("gpus/{}", g.bus_id);
        if safe(&g.bus_id) && under(&self.root, "/proc/driver/nvidia").join(&entry).is_dir() {
            plan.proc_entries.push(entry);
        } else {
            tracing::warn!(index = g.index, bus_id = %g.bus_id, "no /proc/driver/nvidia/gpus entry for this GPU");
        }
        Ok(())
    }
}

/// Best effort: `nvidia-modprobe` (setuid helper shipped with the driver) creates device nodes.
fn modprobe(args: &[&str]) {
    match Command::new("nvidia-modprobe").args(args).status() {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(?args, status = %s, "nvidia-modprobe failed"),
        Err(e) => tracing::debug!(?args, error = %e, "nvidia-modprobe not run"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::TempDir;

    fn put(root: &Path, path: &str, body: &str) {
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, body).expect("write");
    }

    fn symlink(root: &Path, path: &str, target: &str) {
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, p).expect("symlink");
    }

    const PROC_DEVICES: &str = "Character devices:\n  1 mem\n  5 /dev/tty\n136 pts\n195 nvidia-frontend\n234 nvidia-caps\n \
        508 nvidia-uvm\n\nBlock devices:\n  7 loop\n  8 sd\n509 nvidia-uvm-block-confusion\n";

    fn uuid(minor: u32) -> String {
        format!("GPU-5d6e1f0a-7b3c-4e2d-9a8b-00000000000{minor}")
    }

    fn information(minor: u32, bus: &str, excluded: bool) -> String {
        format!(
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 244\nGPU UUID: \t {}\nBus Type: \t PCIe\nBus Location: \t {bus}\n\
             Device Minor: \t {minor}\nGPU Excluded:\t {}\n",
            uuid(minor),
            if excluded { "Yes" } else { "No" }
        )
    }

    const LDCONFIG: &str = "9 libs found in cache `/etc/ld.so.cache'\n\
        \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n\
        \tlibnvidia-ml.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvidia-ml.so.1\n\
        \tlibnvidia-ml.so.1 (libc6) => /lib/i386-linux-gnu/libnvidia-ml.so.1\n\
        \tlibnvidia-ml.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvidia-ml.so\n\
        \tlibcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12\n\
        \tlibcuda.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so.1\n\
        \tlibcuda.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so\n\
        \tlibcudadebugger.so.1 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libcudadebugger.so.1\n\
        \tlibnvidia-container.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvidia-container.so.1\n\
        \tlibnvidia-ptxjitcompiler.so.1 (libc6,AArch64) => /lib/aarch64-linux-gnu/libnvidia-ptxjitcompiler.so.1\n\
        Cache generated by: ldconfig (GNU libc) stable release version 2.36\n";

    /// A host with 4 GPUs (index = bus order; minors deliberately not in index order, GPU on bus
    /// 0000:c1 excluded by the driver), uvm, modeset, the driver's libraries as a distribution
    /// installs them (versioned file plus soname links) and tools. GPU index 0 (minor 0) is in
    /// MIG mode with two MIG devices, A (GPU instance 1, compute instance 0, caps 12 and 13) and
    /// B (GPU instance 2, compute instance 0, caps 21 and 22), besides the global `mig/config`
    /// (cap 1) and `mig/monitor` (cap 2), as the driver lays them out.
    fn fake_host() -> TempDir {
        let t = TempDir::new();
        let r = &t.0;
        put(r, "/proc/devices", PROC_DEVICES);
        for (bus, minor, excluded) in
            [("0000:3b:00.0", 2, false), ("0000:1a:00.0", 0, false), ("0000:5e:00.0", 1, false), ("0000:c1:00.0", 3, true)]
        {
            put(r, &format!("/proc/driver/nvidia/gpus/{bus}/information"), &information(minor, bus, excluded));
            put(r, &format!("/dev/nvidia{minor}"), "");
        }
        let cap = |n: u32| format!("DeviceFileMinor: {n}\nDeviceFileMode: 292\nDeviceFileModify: 1\n");
        for (path, minor) in [
            ("mig/config", 1),
            ("mig/monitor", 2),
            ("gpu0/mig/gi1/access", 12),
            ("gpu0/mig/gi1/ci0/access", 13),
            ("gpu0/mig/gi2/access", 21),
            ("gpu0/mig/gi2/ci0/access", 22),
        ] {
            put(r, &format!("/proc/driver/nvidia/capabilities/{path}"), &cap(minor));
            put(r, &format!("/dev/nvidia-caps/nvidia-cap{minor}"), "");
        }
        for n in ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"] {
            put(r, &format!("/dev/{n}"), "");
        }
        let lib = "/lib/x86_64-linux-gnu";
        for real in [
            "libnvidia-ml.so.550.54.15",
            "libcuda.so.550.54.15",
            "libcudadebugger.so.550.54.15",
            "libz.so.1.2.13",
            "libnvidia-container.so.1.14.0",
        ] {
            put(r, &format!("{lib}/{real}"), "ELF");
        }
        symlink(r, &format!("{lib}/libnvidia-ml.so.1"), "libnvidia-ml.so.550.54.15");
        symlink(r, &format!("{lib}/libnvidia-ml.so"), "libnvidia-ml.so.1");
        symlink(r, &format!("{lib}/libcuda.so.1"), "libcuda.so.550.54.15");
        symlink(r, &format!("{lib}/libcuda.so"), "../x86_64-linux-gnu/./libcuda.so.1");
        symlink(r, &format!("{lib}/libcudadebugger.so.1"), "libcudadebugger.so.550.54.15");
        symlink(r, &format!("{lib}/libz.so.1"), "libz.so.1.2.13");
        symlink(r, &format!("{lib}/libnvidia-container.so.1"), "libnvidia-container.so.1.14.0");
        put(r, "/usr/bin/nvidia-smi", "ELF");
        put(r, "/usr/bin/nvidia-persistenced", "ELF");
        put(r, "/usr/local/bin/nvidia-cuda-mps-control", "ELF");
        put(r, "/usr/bin/nvidia-cuda-mps-control", "ELF (shadowed)");
        t
    }

    fn host(root: &Path) -> Host {
        Host {
            root: root.to_owned(),
            gpus: gpus_from_proc(root),
            gpus_source: "/proc/driver/nvidia/gpus",
            ldconfig: LDCONFIG.into(),
            arch: "x86-64",
        }
    }

    #[test]
    fn dev_t_decoding_matches_glibc() {
        // makedev(195, 0), makedev(195, 255), makedev(508, 1), and a large minor.
        assert_eq!(dev_numbers(0xc300), (195, 0));
        assert_eq!(dev_numbers(0xc3ff), (195, 255));
        assert_eq!(dev_numbers((508 & 0xfff) << 8 | 1), (508, 1));
        assert_eq!(dev_numbers((0x1_2345 & 0xff) | ((0x1_2345 & !0xff) << 12) | (4 << 8)), (4, 0x1_2345));
        // Real nodes decode to what ls -l shows.
        let null = std::fs::metadata("/dev/null").expect("/dev/null");
        assert_eq!(dev_numbers(null.rdev()), (1, 3));
    }

    #[test]
    fn proc_devices_gives_char_majors_only() {
        let m = char_majors(PROC_DEVICES);
        assert_eq!(m.get("nvidia-uvm"), Some(&508));
        assert_eq!(m.get("nvidia-caps"), Some(&234));
        assert_eq!(m.get("nvidia-frontend"), Some(&195));
        assert_eq!(m.get("pts"), Some(&136));
        assert_eq!(m.get("loop"), None, "block devices are not char majors");
        assert_eq!(m.get("nvidia-uvm-block-confusion"), None);
    }

    #[test]
    fn bus_ids_are_normalized_to_the_proc_spelling() {
        assert_eq!(normalize_bus_id("00000000:3B:00.0"), "0000:3b:00.0");
        assert_eq!(normalize_bus_id("0000:3b:00.0"), "0000:3b:00.0");
        assert_eq!(normalize_bus_id("00000001:C1:00.0"), "0001:c1:00.0");
        assert_eq!(normalize_bus_id("weird"), "weird");
    }

    #[test]
    fn proc_gpus_are_indexed_by_bus_id_and_skip_excluded() {
        let t = fake_host();
        assert_eq!(
            gpus_from_proc(&t.0),
            vec![
                HostGpu { index: 0, minor: 0, bus_id: "0000:1a:00.0".into(), uuid: uuid(0) },
                HostGpu { index: 1, minor: 2, bus_id: "0000:3b:00.0".into(), uuid: uuid(2) },
                HostGpu { index: 2, minor: 1, bus_id: "0000:5e:00.0".into(), uuid: uuid(1) },
            ]
        );
        let empty = TempDir::new();
        assert!(gpus_from_proc(&empty.0).is_empty());
    }

    #[test]
    fn control_nodes_are_those_that_exist_with_their_numbers() {
        let t = fake_host();
        let nodes = control_nodes(&t.0, &char_majors(PROC_DEVICES));
        let got: Vec<(&str, u32, u32)> = nodes.iter().map(|n| (n.path.as_str(), n.major, n.minor)).collect();
        assert_eq!(
            got,
            vec![
                ("/dev/nvidiactl", 195, 255),
                ("/dev/nvidia-uvm", 508, 0),
                ("/dev/nvidia-uvm-tools", 508, 1),
                ("/dev/nvidia-modeset", 195, 254),
            ]
        );
        // Without a uvm major the uvm nodes of a fake tree cannot be numbered and are left out;
        // absent nodes are simply not there.
        std::fs::remove_file(t.0.join("dev/nvidia-modeset")).expect("rm");
        let nodes = control_nodes(&t.0, &BTreeMap::new());
        assert_eq!(nodes.iter().map(|n| n.path.as_str()).collect::<Vec<_>>(), vec!["/dev/nvidiactl"]);
    }

    #[test]
    fn ldconfig_output_is_parsed_for_the_native_abi() {
        let e = parse_ldconfig(LDCONFIG, "x86-64");
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "libz.so.1",
                "libnvidia-ml.so.1",
                "libnvidia-ml.so",
                "libcudart.so.12",
                "libcuda.so.1",
                "libcuda.so",
                "libcudadebugger.so.1",
                "libnvidia-container.so.1"
            ]
        );
        assert_eq!(e[1].path, PathBuf::from("/lib/x86_64-linux-gnu/libnvidia-ml.so.1"));
        let arm = parse_ldconfig(LDCONFIG, "AArch64");
        assert_eq!(arm.len(), 1);
        assert_eq!(arm[0].name, "libnvidia-ptxjitcompiler.so.1");
        assert!(parse_ldconfig("", "x86-64").is_empty());
        assert!(parse_ldconfig("garbage => here\n", "x86-64").is_empty());
    }

    #[test]
    fn driver_libraries_are_told_apart() {
        for yes in [
            "libcuda.so.1",
            "libcuda.so",
            "libcudadebugger.so.1",
            "libnvidia-ml.so.1",
            "libnvidia-ptxjitcompiler.so.1",
            "libnvcuvid.so.1",
            "libGLX_nvidia.so.0",
        ] {
            assert!(is_driver_library(yes), "{yes}");
        }
        for no in
            ["libcudart.so.12", "libz.so.1", "libnvidia-container.so.1", "libnvidia-container-go.so.1", "libcudnn.so.9", "libnvidia-ml.a"]
        {
            assert!(!is_driver_library(no), "{no}");
        }
    }

    #[test]
    fn the_plan_gives_only_the_instance_gpus_plus_control_nodes_libraries_and_tools() {
        let t = fake_host();
        let plan = host(&t.0).plan(&[2, 1, 2]).expect("plan");
        let devs: Vec<(&str, u32, u32)> = plan.devices.iter().map(|n| (n.path.as_str(), n.major, n.minor)).collect();
        assert_eq!(
            devs,
            vec![
                ("/dev/nvidia2", 195, 2),
                ("/dev/nvidia1", 195, 1),
                ("/dev/nvidiactl", 195, 255),
                ("/dev/nvidia-uvm", 508, 0),
                ("/dev/nvidia-uvm-tools", 508, 1),
                ("/dev/nvidia-modeset", 195, 254),
            ],
            "index 1 is minor 2 (bus 3b), index 2 is minor 1 (bus 5e); never nvidia0, and no MIG \
             capability (neither config/monitor nor GPU 0's MIG devices)"
        );
        assert_eq!(plan.proc_entries, vec!["gpus/0000:3b:00.0", "gpus/0000:5e:00.0"]);
        let lib = |n: &str| (PathBuf::from(format!("/lib/x86_64-linux-gnu/{n}")), format!("{LIB_DIR}/{n}"));
        let bin = |d: &str, n: &str| (PathBuf::from(format!("{d}/{n}")), format!("/usr/bin/{n}"));
        assert_eq!(
            plan.files,
            vec![
                lib("libcuda.so.550.54.15"),
                lib("libcudadebugger.so.550.54.15"),
                lib("libnvidia-ml.so.550.54.15"),
                bin("/usr/bin", "nvidia-smi"),
                bin("/usr/bin", "nvidia-persistenced"),
                bin("/usr/local/bin", "nvidia-cuda-mps-control"),
            ],
            "each real library once; 32-bit, foreign-ABI, toolkit and container-toolkit libraries never"
        );
        let link = |n: &str, t: &str| (t.to_owned(), format!("{LIB_DIR}/{n}"));
        assert_eq!(
            plan.links,
            vec![
                link("libcuda.so", "libcuda.so.550.54.15"),
                link("libcuda.so.1", "libcuda.so.550.54.15"),
                link("libcudadebugger.so.1", "libcudadebugger.so.550.54.15"),
                link("libnvidia-ml.so", "libnvidia-ml.so.550.54.15"),
                link("libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15"),
            ]
        );
        assert_eq!(plan.ld_conf, "/usr/lib/nimbus-nvidia\n");
        assert_eq!(plan.device_numbers()[..2], [(195, 2), (195, 1)]);
    }

    #[test]
    fn the_plan_travels_to_the_launcher_unchanged() {
        let t = fake_host();
        let plan = host(&t.0).plan(&[0]).expect("plan");
        let json = serde_json::to_value(&plan).expect("serializes");
        assert_eq!(json["devices"][0]["path"], "/dev/nvidia0");
        assert_eq!(json["devices"][1]["path"], "/dev/nvidiactl");
        assert_eq!(json["proc_entries"], serde_json::json!(["gpus/0000:1a:00.0"]), "a whole GPU in MIG mode gets no caps");
        let back: GpuPlan = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, plan);
    }

    #[test]
    fn plans_fail_clearly_rather_than_launching_without_gpus() {
        // No driver at all (this is also what a machine without GPUs reads).
        let empty = TempDir::new();
        let e = host(&empty.0).plan(&[0]).expect_err("no driver");
        assert_eq!(e, GpuError::NoDriver { indices: vec![0], path: "/dev/nvidiactl".into() });
        assert!(e.to_string().contains("no NVIDIA driver"), "{e}");

        let t = fake_host();
        let h = host(&t.0);
        // The excluded GPU does not count: 3 GPUs, indices 0-2.
        let e = h.plan(&[3]).expect_err("unknown index");
        assert_eq!(e.to_string(), "GPU index 3 is not on this host (3 GPU(s) found through /proc/driver/nvidia/gpus)");
        assert!(h.plan(&[-1]).is_err());

        std::fs::remove_file(t.0.join("dev/nvidia1")).expect("rm");
        let e = h.plan(&[2]).expect_err("missing node");
        assert_eq!(e, GpuError::MissingNode { index: 2, minor: 1, path: "/dev/nvidia1".into() });
        assert!(h.plan(&[0]).is_ok(), "other GPUs are unaffected");

        let no_libs = Host { ldconfig: String::new(), ..h.clone() };
        let e = no_libs.plan(&[0]).expect_err("no libraries");
        assert_eq!(e, GpuError::MissingLibraries { missing: "libcuda.so.1, libnvidia-ml.so.1".into() });
        // A dangling library link is as good as no library.
        std::fs::remove_file(t.0.join("lib/x86_64-linux-gnu/libcuda.so.550.54.15")).expect("rm");
        assert_eq!(h.plan(&[0]).expect_err("dangling"), GpuError::MissingLibraries { missing: "libcuda.so.1".into() });
    }

    fn mig(parent_index: i64, gi: i64, ci: i64) -> MigDeviceRef {
        MigDeviceRef { parent_index, uuid: format!("MIG-gi{gi}-ci{ci}"), gpu_instance_id: gi, compute_instance_id: ci }
    }

    #[test]
    fn mig_capability_minors_and_instances_come_from_procfs() {
        assert_eq!(parse_cap_minor("DeviceFileMinor: 12\nDeviceFileMode: 292\nDeviceFileModify: 1\n"), Some(12));
        assert_eq!(parse_cap_minor("DeviceFileMode: 292\n"), None);
        assert_eq!(parse_cap_minor("DeviceFileMinor: twelve\n"), None);
        let t = fake_host();
        assert_eq!(mig_instances(&t.0, 0), vec![(1, 0), (2, 0)]);
        assert!(mig_instances(&t.0, 2).is_empty(), "GPUs without MIG mode have none");
    }

    #[test]
    fn a_mig_plan_gives_the_parent_and_only_its_own_two_capability_nodes() {
        let t = fake_host();
        let h = host(&t.0);
        let plan = h.plan_with_mig(&[], &[mig(0, 1, 0)]).expect("plan");
        let devs: Vec<(&str, u32, u32)> = plan.devices.iter().map(|n| (n.path.as_str(), n.major, n.minor)).collect();
        assert_eq!(
            devs,
            vec![
                ("/dev/nvidia0", 195, 0),
                ("/dev/nvidia-caps/nvidia-cap12", 234, 12),
                ("/dev/nvidia-caps/nvidia-cap13", 234, 13),
                ("/dev/nvidiactl", 195, 255),
                ("/dev/nvidia-uvm", 508, 0),
                ("/dev/nvidia-uvm-tools", 508, 1),
                ("/dev/nvidia-modeset", 195, 254),
            ],
            "A's GPU instance and compute instance caps; never B's (21, 22), config (1) or monitor (2)"
        );
        assert_eq!(plan.proc_entries, vec!["gpus/0000:1a:00.0", "capabilities/gpu0/mig/gi1"]);
        // The device filter is exactly the plan: nothing of B, config or monitor gets through.
        let numbers = plan.device_numbers();
        assert_eq!(numbers, devs.iter().map(|&(_, a, b)| (a, b)).collect::<Vec<_>>());
        for other in [(234, 21), (234, 22), (234, 1), (234, 2)] {
            assert!(!numbers.contains(&other), "{other:?}");
        }
        assert!(!plan.files.is_empty() && !plan.links.is_empty(), "libraries and tools as for whole GPUs");

        let b = h.plan_with_mig(&[], &[mig(0, 2, 0)]).expect("plan B");
        let caps: Vec<&str> = b.devices.iter().map(|d| d.path.as_str()).filter(|p| p.contains("caps")).collect();
        assert_eq!(caps, vec!["/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22"]);
        // Both slices and a whole GPU: one parent node, each cap once.
        let both = h.plan_with_mig(&[1], &[mig(0, 1, 0), mig(0, 2, 0), mig(0, 1, 0)]).expect("plan");
        let paths: Vec<&str> = both.devices.iter().map(|d| d.path.as_str()).take(6).collect();
        assert_eq!(
            paths,
            vec![
                "/dev/nvidia2",
                "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap12",
                "/dev/nvidia-caps/nvidia-cap13",
                "/dev/nvidia-caps/nvidia-cap21",
                "/dev/nvidia-caps/nvidia-cap22"
            ]
        );
        assert_eq!(
            both.proc_entries,
            vec!["gpus/0000:3b:00.0", "gpus/0000:1a:00.0", "capabilities/gpu0/mig/gi1", "capabilities/gpu0/mig/gi2"]
        );
    }

    #[test]
    fn mig_plans_fail_clearly_for_devices_the_host_lacks() {
        let t = fake_host();
        let h = host(&t.0);
        let e = h.plan_with_mig(&[], &[mig(7, 1, 0)]).expect_err("no such parent");
        assert_eq!(
            e.to_string(),
            "MIG device MIG-gi1-ci0: its parent GPU index 7 is not on this host (3 GPU(s) found through /proc/driver/nvidia/gpus)"
        );
        let e = h.plan_with_mig(&[], &[mig(0, 3, 0)]).expect_err("no such GPU instance");
        assert_eq!(
            e,
            GpuError::UnknownMigDevice {
                uuid: "MIG-gi3-ci0".into(),
                parent_index: 0,
                gpu_instance_id: 3,
                compute_instance_id: 0,
                path: "/proc/driver/nvidia/capabilities/gpu0/mig/gi3/access".into(),
            }
        );
        assert!(e.to_string().contains("is not on this host"), "{e}");
        let e = h.plan_with_mig(&[], &[mig(0, 1, 1)]).expect_err("no such compute instance");
        assert!(matches!(&e, GpuError::UnknownMigDevice { path, .. } if path.ends_with("gi1/ci1/access")), "{e:?}");
        // A GPU without MIG mode has no GPU instances.
        assert!(matches!(h.plan_with_mig(&[], &[mig(1, 1, 0)]), Err(GpuError::UnknownMigDevice { .. })));
        assert!(matches!(h.plan_with_mig(&[], &[mig(0, -1, 0)]), Err(GpuError::UnknownMigDevice { .. })));
        std::fs::remove_file(t.0.join("dev/nvidia-caps/nvidia-cap13")).expect("rm");
        let e = h.plan_with_mig(&[], &[mig(0, 1, 0)]).expect_err("missing cap node");
        assert_eq!(
            e,
            GpuError::MissingCapNode {
                uuid: "MIG-gi1-ci0".into(),
                path: "/dev/nvidia-caps/nvidia-cap13".into(),
                proc_path: "/proc/driver/nvidia/capabilities/gpu0/mig/gi1/ci0/access".into(),
            }
        );
        assert!(h.plan_with_mig(&[], &[mig(0, 2, 0)]).is_ok(), "the other MIG device is unaffected");
        let empty = TempDir::new();
        let e = host(&empty.0).plan_with_mig(&[], &[mig(0, 1, 0)]).expect_err("no driver");
        assert_eq!(e, GpuError::NoDriver { indices: vec![0], path: "/dev/nvidiactl".into() });
    }

    /// `fake_host` with NVIDIA's CDI spec at `path`, a library only the spec knows about (in a
    /// directory outside the ld cache) and the `/dev/dri` nodes it names.
    fn cdi_host(path: &str, spec: &str) -> TempDir {
        let t = fake_host();
        put(&t.0, path, spec);
        put(&t.0, "/usr/lib64/nvidia/libnvidia-ptxjitcompiler.so.550.54.15", "ELF");
        put(&t.0, "/dev/dri/card1", "");
        put(&t.0, "/dev/dri/renderD128", "");
        t
    }

    const CDI_PATH: &str = "/var/run/cdi/nvidia.yaml";

    fn paths(plan: &GpuPlan) -> Vec<&str> {
        plan.devices.iter().map(|d| d.path.as_str()).collect()
    }

    #[test]
    fn a_cdi_spec_decides_the_libraries_tools_and_control_nodes() {
        let t = cdi_host(CDI_PATH, cdi::FIXTURE);
        let plan = host(&t.0).plan(&[0]).expect("plan");
        assert_eq!(plan.source, PlanSource::Cdi);
        assert_eq!(
            paths(&plan),
            vec!["/dev/nvidia0", "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"],
            "the /dev/dri nodes of a fake tree have no numbers and are left out"
        );
        let lib = |d: &str, n: &str| (PathBuf::from(format!("{d}/{n}")), format!("{LIB_DIR}/{n}"));
        let bin = |d: &str, n: &str| (PathBuf::from(format!("{d}/{n}")), format!("/usr/bin/{n}"));
        let x86 = "/lib/x86_64-linux-gnu";
        assert_eq!(
            plan.files,
            vec![
                lib(x86, "libcuda.so.550.54.15"),
                lib(x86, "libnvidia-ml.so.550.54.15"),
                lib("/usr/lib64/nvidia", "libnvidia-ptxjitcompiler.so.550.54.15"),
                bin("/usr/bin", "nvidia-smi"),
                bin("/usr/bin", "nvidia-persistenced"),
                bin("/usr/local/bin", "nvidia-cuda-mps-control"),
            ],
            "the spec's libraries (not libcudadebugger, which only the ld cache has); its tool, and \
             the tools it does not list from PATH; never firmware or sockets"
        );
        let link = |n: &str, t: &str| (t.to_owned(), format!("{LIB_DIR}/{n}"));
        assert_eq!(
            plan.links,
            vec![
                link("libcuda.so", "libcuda.so.550.54.15"),
                link("libcuda.so.1", "libcuda.so.550.54.15"),
                link("libnvidia-ml.so", "libnvidia-ml.so.550.54.15"),
                link("libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15"),
            ]
        );
        assert_eq!(serde_json::to_value(&plan).expect("json")["source"], "cdi");

        // GPU index 1 is its own device: nothing of device 0 (nvidia0, its dri nodes) or `all`.
        let one = host(&t.0).plan(&[1]).expect("plan");
        assert_eq!(paths(&one)[..2], ["/dev/nvidia2", "/dev/nvidia-modeset"]);
        assert!(!paths(&one).iter().any(|p| *p == "/dev/nvidia0" || p.starts_with("/dev/dri") || p.contains("caps")));

        // Without an ld cache entry, the soname links of the required libraries still exist.
        let no_cache = Host { ldconfig: String::new(), ..host(&t.0) };
        let plan = no_cache.plan(&[0]).expect("plan");
        assert_eq!(plan.links, vec![link("libcuda.so.1", "libcuda.so.550.54.15"), link("libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15")]);
    }

    #[test]
    fn a_cdi_spec_selects_mig_devices_by_uuid_or_by_their_caps() {
        let t = cdi_host(CDI_PATH, cdi::FIXTURE);
        let h = host(&t.0);
        let a = h.plan_with_mig(&[], &[mig(0, 1, 0)]).expect("A, by UUID");
        assert_eq!(a.source, PlanSource::Cdi);
        assert_eq!(paths(&a)[..3], ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]);
        // B has no UUID entry; `0:1` lists exactly its caps.
        let b = h.plan_with_mig(&[], &[mig(0, 2, 0)]).expect("B, by index name");
        assert_eq!(b.source, PlanSource::Cdi);
        let caps: Vec<&str> = paths(&b).into_iter().filter(|p| p.contains("caps")).collect();
        assert_eq!(caps, vec!["/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22"]);
        // A stale entry naming A's UUID with B's caps is not believed: the driver's caps win.
        let stale = cdi::FIXTURE.replace("  name: MIG-gi1-ci0", "  name: MIG-old").replace("  name: \"0:1\"", "  name: MIG-gi1-ci0");
        let t = cdi_host(CDI_PATH, &stale);
        let a = host(&t.0).plan_with_mig(&[], &[mig(0, 1, 0)]).expect("plan");
        assert_eq!(a.source, PlanSource::Discovery);
        assert_eq!(paths(&a)[..3], ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]);
    }

    #[test]
    fn a_stale_broken_or_hostile_cdi_spec_never_widens_the_plan() {
        let discovered = host(&fake_host().0).plan(&[1]).expect("plan");
        let same_as_discovery = |spec: &str, path: &str| {
            let t = cdi_host(path, spec);
            let plan = host(&t.0).plan(&[1]).expect("plan");
            assert_eq!(plan.source, PlanSource::Discovery, "{spec}");
            assert_eq!(plan, discovered, "{spec}");
        };
        // A spec that does not parse, of another kind, or from before the GPUs were renumbered.
        same_as_discovery("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [{name: 0", CDI_PATH);
        same_as_discovery(&cdi::FIXTURE.replace("kind: nvidia.com/gpu", "kind: example.com/gpu"), CDI_PATH);
        same_as_discovery(&cdi::FIXTURE.replace("    - path: /dev/nvidia2\n", "    - path: /dev/nvidia0\n"), CDI_PATH);
        same_as_discovery(&cdi::FIXTURE.replace("  name: \"1\"", "  name: \"7\""), CDI_PATH);
        // The broken spec of the higher-priority directory is not replaced by an older one.
        let t = cdi_host(CDI_PATH, "{not yaml");
        put(&t.0, "/etc/cdi/nvidia.yaml", cdi::FIXTURE);
        assert_eq!(host(&t.0).plan(&[1]).expect("plan").source, PlanSource::Discovery);
        // A JSON spec in /etc/cdi is read.
        let json = serde_json::to_string(&serde_norway::from_str::<serde_json::Value>(cdi::FIXTURE).expect("yaml")).expect("json");
        let t = cdi_host("/etc/cdi/nvidia.json", &json);
        assert_eq!(host(&t.0).plan(&[1]).expect("plan").source, PlanSource::Cdi);

        // Nodes and files the spec may not give are refused one by one.
        let hostile = cdi::FIXTURE
            .replace(
                "  - path: /dev/nvidiactl\n",
                "  - path: /dev/nvidiactl\n  - path: /dev/nvidia-caps/nvidia-cap1\n  - path: /dev/nvidia1\n  - path: /dev/kmsg\n",
            )
            .replace(
                "  - containerPath: /usr/bin/nvidia-smi\n",
                "  - containerPath: /x\n    hostPath: /usr/lib64/nvidia/../../../etc/libshadow.so.1\n  \
                 - containerPath: /y\n    hostPath: /usr/lib64/nvidia/libevil.so.1\n  \
                 - containerPath: /z\n    hostPath: /usr/lib64/nvidia/libgone.so.1\n  \
                 - containerPath: /usr/bin/nvidia-smi\n",
            )
            .replace(
                "    - path: /dev/nvidia0\n    - path: /dev/dri/card1\n",
                "    - path: /dev/nvidia0\n    - path: /dev/dri/../kmsg\n    - path: /dev/dri/card1\n",
            );
        let t = cdi_host(CDI_PATH, &hostile);
        put(&t.0, "/etc/libshadow.so.1", "secret");
        put(&t.0, "/etc/shadow", "secret");
        symlink(&t.0, "/usr/lib64/nvidia/libevil.so.1", "/etc/shadow");
        // A render node that is a link to a real node outside the fake tree.
        std::fs::remove_file(t.0.join("dev/dri/card1")).expect("rm");
        symlink(&t.0, "/dev/dri/card1", "/dev/null");
        let plan = host(&t.0).plan(&[0]).expect("plan");
        assert_eq!(plan.source, PlanSource::Cdi);
        assert_eq!(
            paths(&plan),
            vec!["/dev/nvidia0", "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"],
            "no config cap, other GPU, foreign node, `..` path or linked node from the spec"
        );
        let srcs: Vec<String> = plan.files.iter().map(|(s, _)| s.display().to_string()).collect();
        assert!(srcs.iter().all(|s| !s.starts_with("/etc") && !s.contains("evil") && !s.contains("gone")), "{srcs:?}");
        assert_eq!(srcs.len(), 6, "{srcs:?}");
    }

    #[test]
    fn this_machine_without_nvidia_refuses_gpu_plans() {
        if Path::new("/dev/nvidiactl").exists() {
            eprintln!("SKIPPED: this machine has an NVIDIA driver");
            return;
        }
        let e = Host::read().plan(&[0]).expect_err("no GPUs here");
        assert!(matches!(e, GpuError::NoDriver { .. }), "{e}");
        assert!(gpus_from_nvml().is_none_or(|g| g.is_empty()));
    }
}
