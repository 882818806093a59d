//! GPU passthrough to QEMU virtual machines with VFIO: everything between "the scheduler gave
//! this VM the GPUs with these NVML bus ids" and "QEMU can open them".
//!
//! This module owns:
//! - the checks: the IOMMU is on ([`iommu_enabled`]), the bus ids are PCI addresses
//!   ([`normalize_bus_id`], NVML's `00000000:17:00.0` becoming sysfs's `0000:17:00.0`);
//! - which devices move: a GPU's whole IOMMU group goes to the guest together, as VFIO requires,
//!   except PCI bridges, which stay on the host ([`group_devices`]);
//! - the hand-over: each device of the group leaves its host driver (`nvidia`,
//!   `snd_hda_intel`, …) for `vfio-pci` through `driver_override`, `unbind` and `drivers_probe`
//!   ([`bind_group`], [`bind_gpus`]), recording what it had as a [`Binding`] that the driver
//!   persists in the instance directory, so that an agent restarted later still knows what to
//!   give back ([`restore`]);
//! - what QEMU needs: its `-device` arguments ([`qemu_args`]) and the `/dev/vfio` nodes it
//!   opens ([`vfio_device_nodes`]), which the VM driver grants to the QEMU process.
//!
//! Every function takes the sysfs root as a parameter (`/sys` in production), so the tests run
//! on fake sysfs trees in a temporary directory; the writes that make the kernel act go through
//! a small internal trait (`Writes`) that the tests replace with a simulated kernel.
//! Nothing here has run on real hardware yet.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The kernel driver that hands PCI devices to user space (QEMU) through `/dev/vfio`.
pub const VFIO_PCI: &str = "vfio-pci";

/// PCI class code (the upper 16 bits of `<dev>/class`) of PCI-to-PCI bridges, which stay on
/// the host even when they share the GPU's IOMMU group.
const PCI_CLASS_BRIDGE_PCI: u32 = 0x0604;

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error(
        "IOMMU is off (no groups under {0}): boot the host with intel_iommu=on / amd_iommu=on (and iommu=pt), \
         with VT-d / AMD-Vi enabled in the firmware, to pass GPUs through to VMs"
    )]
    IommuOff(PathBuf),
    #[error("{0:?} is not a PCI address: expected domain:bus:slot.function in hex, like 0000:17:00.0 or 00000000:17:00.0")]
    BadBusId(String),
    #[error("no PCI device {addr} on this host ({path} is missing)")]
    NoDevice { addr: String, path: PathBuf },
    #[error("{addr} has no IOMMU group although the IOMMU is on ({path} is missing); it cannot be passed through")]
    NoGroup { addr: String, path: PathBuf },
    #[error("{0} is a PCI bridge: bridges stay on the host and cannot be passed through")]
    IsBridge(String),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: unexpected content {content:?}")]
    BadSysfs { path: PathBuf, content: String },
    #[error("the vfio-pci module is not loaded ({0} is missing): run `modprobe vfio-pci` (and list it in /etc/modules-load.d)")]
    NoVfioPci(PathBuf),
    #[error("{addr} did not bind to vfio-pci (its driver now: {now}): {hint}")]
    NotBound { addr: String, now: String, hint: String },
    #[error("{addr} was not given back to {want} (its driver now: {now}): load {want}'s module, or `echo {addr} > /sys/bus/pci/drivers/{want}/bind`")]
    NotRestored { addr: String, want: String, now: String },
    #[error("giving the devices back to their host drivers failed: {}", .0.join("; "))]
    Restore(Vec<String>),
}

/// A device moved to `vfio-pci`, and the driver it had before (`None`: it had none, or it was
/// already on `vfio-pci` when first seen). Persisted by the VM driver (JSON, in the instance
/// directory) and handed back to [`restore`] when the VM terminates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// sysfs form, `0000:17:00.0`.
    pub address: String,
    pub original_driver: Option<String>,
}

/// The writes that make the kernel act (`driver_override`, `unbind`, `drivers_probe`): real
/// file writes in production, a simulated kernel in the tests.
trait Writes {
    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// sysfs attributes: an existing file, written in one `write(2)`, never created.
struct Kernel;

impl Writes for Kernel {
    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        fs::OpenOptions::new().write(true).open(path)?.write_all(data)
    }
}

fn write(w: &mut dyn Writes, path: &Path, data: &[u8]) -> Result<(), VfioError> {
    tracing::debug!(path = %path.display(), data = %String::from_utf8_lossy(data).trim_end(), "vfio: sysfs write");
    w.write(path, data).map_err(|source| VfioError::Write { path: path.to_path_buf(), source })
}

/// Whether the host has an IOMMU on: at least one group under `<sysfs>/kernel/iommu_groups`.
pub fn iommu_enabled(sysfs: &Path) -> bool {
    fs::read_dir(sysfs.join("kernel/iommu_groups")).map(|mut d| d.next().is_some()).unwrap_or(false)
}

fn parse_addr(s: &str) -> Option<(u32, u32, u32, u32)> {
    fn hex(p: &str, min: usize, max: usize) -> Option<u32> {
        if p.len() < min || p.len() > max || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(p, 16).ok()
    }
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, func) = rest.split_once('.')?;
    let (domain, bus, slot, func) = (hex(domain, 4, 8)?, hex(bus, 2, 2)?, hex(slot, 2, 2)?, hex(func, 1, 1)?);
    (slot <= 0x1f && func <= 7).then_some((domain, bus, slot, func))
}

/// A PCI address in sysfs form (`0000:17:00.0`, lower case) from NVML's (`00000000:17:00.0`)
/// or sysfs's own. Strict, because the result is joined into sysfs paths: a hex domain of 4 to
/// 8 digits, 2-digit bus, 2-digit slot (at most 1f), 1-digit function (at most 7), nothing else.
pub fn normalize_bus_id(id: &str) -> Result<String, VfioError> {
    let (domain, bus, slot, func) = parse_addr(id).ok_or_else(|| VfioError::BadBusId(id.to_string()))?;
    Ok(format!("{domain:04x}:{bus:02x}:{slot:02x}.{func:x}"))
}

fn device_dir(sysfs: &Path, addr: &str) -> PathBuf {
    sysfs.join("bus/pci/devices").join(addr)
}

fn drivers_probe(sysfs: &Path) -> PathBuf {
    sysfs.join("bus/pci/drivers_probe")
}

/// The name of the driver `addr` is bound to (the `driver` link's basename), if any.
fn driver_of(sysfs: &Path, addr: &str) -> Result<Option<String>, VfioError> {
    let path = device_dir(sysfs, addr).join("driver");
    match fs::read_link(&path) {
        Ok(target) => match target.file_name().and_then(|n| n.to_str()) {
            Some(name) => Ok(Some(name.to_string())),
            None => Err(VfioError::BadSysfs { content: target.display().to_string(), path }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(VfioError::Read { path, source }),
    }
}

fn is_bridge(sysfs: &Path, addr: &str) -> Result<bool, VfioError> {
    let path = device_dir(sysfs, addr).join("class");
    let text = fs::read_to_string(&path).map_err(|source| VfioError::Read { path: path.clone(), source })?;
    let class = text
        .trim()
        .strip_prefix("0x")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| VfioError::BadSysfs { path, content: text.clone() })?;
    Ok(class >> 8 == PCI_CLASS_BRIDGE_PCI)
}

/// The IOMMU group number of a PCI device (`<dev>/iommu_group`, a link to
/// `…/kernel/iommu_groups/N`). Fails with [`VfioError::IommuOff`] when the IOMMU is off.
pub fn iommu_group(sysfs: &Path, addr: &str) -> Result<u32, VfioError> {
    let addr = normalize_bus_id(addr)?;
    let dev = device_dir(sysfs, &addr);
    if !dev.exists() {
        return Err(VfioError::NoDevice { addr, path: dev });
    }
    let path = dev.join("iommu_group");
    match fs::read_link(&path) {
        Ok(target) => {
            let name = target.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match name.parse::<u32>() {
                Ok(n) if name.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(VfioError::BadSysfs { path, content: target.display().to_string() }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if iommu_enabled(sysfs) {
                Err(VfioError::NoGroup { addr, path })
            } else {
                Err(VfioError::IommuOff(sysfs.join("kernel/iommu_groups")))
            }
        }
        Err(source) => Err(VfioError::Read { path, source }),
    }
}

/// The devices that go to the guest with `addr` (NVML or sysfs form): every device of its IOMMU
/// group (`<sysfs>/kernel/iommu_groups/N/devices/*`) except PCI bridges (class `0x0604xx`),
/// which stay on the host. Sorted, sysfs form; `addr` itself is always one of them.
pub fn group_devices(sysfs: &Path, addr: &str) -> Result<Vec<String>, VfioError> {
    let addr = normalize_bus_id(addr)?;
    let group = iommu_group(sysfs, &addr)?;
    if is_bridge(sysfs, &addr)? {
        return Err(VfioError::IsBridge(addr));
    }
    let dir = sysfs.join("kernel/iommu_groups").join(group.to_string()).join("devices");
    let entries = fs::read_dir(&dir).map_err(|source| VfioError::Read { path: dir.clone(), source })?;
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| VfioError::Read { path: dir.clone(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let member = normalize_bus_id(&name).map_err(|_| VfioError::BadSysfs { path: entry.path(), content: name.clone() })?;
        if is_bridge(sysfs, &member)? {
            tracing::debug!(%addr, bridge = %member, group, "vfio: bridge in the group stays on the host");
            continue;
        }
        devices.push(member);
    }
    devices.sort();
    devices.dedup();
    if !devices.contains(&addr) {
        return Err(VfioError::BadSysfs { path: dir, content: format!("the group's devices do not list {addr}") });
    }
    Ok(devices)
}

/// What one bind call did: every device of the group, and those this call moved (the ones a
/// failure later must give back).
#[derive(Debug)]
struct Bound {
    all: Vec<Binding>,
    changed: Vec<Binding>,
}

/// Moves `addr`'s IOMMU group (see [`group_devices`]) to `vfio-pci`: for each device, writes
/// `vfio-pci` to `driver_override`, its address to `driver/unbind` when it has a driver, and its
/// address to `<sysfs>/bus/pci/drivers_probe`, then checks that `driver` is `vfio-pci`.
///
/// Idempotent: a device already on `vfio-pci` is left alone (nothing written). Its original
/// driver is then taken from `previous` (the bindings persisted by an earlier call, which the
/// caller passes back; `&[]` when there are none), so that the driver recorded the first time is
/// kept; a device that left `vfio-pci` since has its current driver recorded instead.
///
/// Refuses before writing anything when the IOMMU is off or `vfio-pci` is not loaded. When a
/// device does not take `vfio-pci`, the devices this call moved are given back (as [`restore`]
/// does) before the error returns.
pub fn bind_group(sysfs: &Path, addr: &str, previous: &[Binding]) -> Result<Vec<Binding>, VfioError> {
    bind_group_with(&mut Kernel, sysfs, addr, previous).map(|b| b.all)
}

/// [`bind_group`] for the GPUs of a VM (NVML or sysfs bus ids): each group once, the result
/// one list without repeats, in the order the devices were first met. Every id is checked
/// before anything is written; on a later failure, everything this call moved, in every group,
/// is given back.
pub fn bind_gpus(sysfs: &Path, bus_ids: &[String], previous: &[Binding]) -> Result<Vec<Binding>, VfioError> {
    bind_gpus_with(&mut Kernel, sysfs, bus_ids, previous)
}

fn bind_gpus_with(w: &mut dyn Writes, sysfs: &Path, bus_ids: &[String], previous: &[Binding]) -> Result<Vec<Binding>, VfioError> {
    let addrs = bus_ids.iter().map(|id| normalize_bus_id(id)).collect::<Result<Vec<_>, _>>()?;
    let mut all: Vec<Binding> = Vec::new();
    let mut changed: Vec<Binding> = Vec::new();
    for addr in addrs {
        if all.iter().any(|b| b.address == addr) {
            continue;
        }
        let known: Vec<Binding> = previous.iter().chain(all.iter()).cloned().collect();
        match bind_group_with(w, sysfs, &addr, &known) {
            Ok(bound) => {
                changed.extend(bound.changed);
                for b in bound.all {
                    if !all.iter().any(|a| a.address == b.address) {
                        all.push(b);
                    }
                }
            }
            Err(e) => {
                roll_back(w, sysfs, &changed);
                return Err(e);
            }
        }
    }
    Ok(all)
}

fn roll_back(w: &mut dyn Writes, sysfs: &Path, moved: &[Binding]) {
    let reversed: Vec<Binding> = moved.iter().rev().cloned().collect();
    if let Err(e) = restore_with(w, sysfs, &reversed) {
        tracing::warn!(error = %e, "vfio: giving back the devices of a failed bind");
    }
}

fn bind_group_with(w: &mut dyn Writes, sysfs: &Path, addr: &str, previous: &[Binding]) -> Result<Bound, VfioError> {
    let devices = group_devices(sysfs, addr)?;
    let vfio_dir = sysfs.join("bus/pci/drivers").join(VFIO_PCI);
    if !vfio_dir.is_dir() {
        return Err(VfioError::NoVfioPci(vfio_dir));
    }
    let mut bound = Bound { all: Vec::new(), changed: Vec::new() };
    for dev in devices {
        let current = match driver_of(sysfs, &dev) {
            Ok(c) => c,
            Err(e) => {
                roll_back(w, sysfs, &bound.changed);
                return Err(e);
            }
        };
        if current.as_deref() == Some(VFIO_PCI) {
            let original = previous.iter().find(|b| b.address == dev).and_then(|b| b.original_driver.clone());
            bound.all.push(Binding { address: dev, original_driver: original });
            continue;
        }
        let binding = Binding { address: dev.clone(), original_driver: current.clone() };
        if let Err(e) = bind_one(w, sysfs, &dev, current.is_some(), &vfio_dir) {
            bound.changed.push(binding);
            roll_back(w, sysfs, &bound.changed);
            return Err(e);
        }
        tracing::info!(addr = %dev, from = ?current, "vfio: device moved to vfio-pci");
        bound.changed.push(binding.clone());
        bound.all.push(binding);
    }
    Ok(bound)
}

fn bind_one(w: &mut dyn Writes, sysfs: &Path, addr: &str, has_driver: bool, vfio_dir: &Path) -> Result<(), VfioError> {
    let dev = device_dir(sysfs, addr);
    write(w, &dev.join("driver_override"), VFIO_PCI.as_bytes())?;
    if has_driver {
        write(w, &dev.join("driver/unbind"), addr.as_bytes())?;
    }
    write(w, &drivers_probe(sysfs), addr.as_bytes())?;
    let now = driver_of(sysfs, addr)?;
    if now.as_deref() == Some(VFIO_PCI) {
        return Ok(());
    }
    let hint = if vfio_dir.is_dir() {
        "vfio-pci did not take it; see the kernel log (`dmesg`)".to_string()
    } else {
        format!("the vfio-pci module is not loaded ({} is missing): run `modprobe vfio-pci`", vfio_dir.display())
    };
    Err(VfioError::NotBound { addr: addr.to_string(), now: now.unwrap_or_else(|| "none".into()), hint })
}

/// Gives devices back to the host: for each binding, unbinds it from `vfio-pci` (when it is
/// there), clears `driver_override` (writes `"\n"`) and, when it is left without a driver,
/// writes its address to `drivers_probe` so that its own driver (`nvidia`, …) takes it back;
/// then checks that it is on its original driver (when one was recorded).
///
/// Idempotent (a device already given back gets only its `driver_override` cleared again), and
/// a device the host no longer has is skipped. Goes over every binding whatever fails, and
/// reports every failure in one [`VfioError::Restore`].
pub fn restore(sysfs: &Path, bindings: &[Binding]) -> Result<(), VfioError> {
    restore_with(&mut Kernel, sysfs, bindings)
}

fn restore_with(w: &mut dyn Writes, sysfs: &Path, bindings: &[Binding]) -> Result<(), VfioError> {
    let failures: Vec<String> = bindings.iter().filter_map(|b| restore_one(w, sysfs, b).err()).map(|e| e.to_string()).collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(VfioError::Restore(failures))
    }
}

fn restore_one(w: &mut dyn Writes, sysfs: &Path, binding: &Binding) -> Result<(), VfioError> {
    // Read back from the instance directory: checked again before it is joined into a path.
    let addr = normalize_bus_id(&binding.address)?;
    let dev = device_dir(sysfs, &addr);
    if !dev.exists() {
        tracing::warn!(%addr, "vfio: device to give back is gone from the host");
        return Ok(());
    }
    if driver_of(sysfs, &addr)?.as_deref() == Some(VFIO_PCI) {
        write(w, &dev.join("driver/unbind"), addr.as_bytes())?;
    }
    write(w, &dev.join("driver_override"), b"\n")?;
    if driver_of(sysfs, &addr)?.is_none() {
        write(w, &drivers_probe(sysfs), addr.as_bytes())?;
    }
    let now = driver_of(sysfs, &addr)?;
    if let Some(want) = &binding.original_driver {
        if now.as_ref() != Some(want) {
            return Err(VfioError::NotRestored { addr, want: want.clone(), now: now.unwrap_or_else(|| "none".into()) });
        }
    }
    tracing::info!(%addr, to = ?now, "vfio: device given back to the host");
    Ok(())
}

/// QEMU `-device` arguments (q35 machine) for passing `addrs` through: one
/// `pcie-root-port,id=rpN,chassis=N,slot=N` (N from 1) per PCI slot, and its functions behind it:
/// `vfio-pci,host=ADDR,bus=rpN` alone, or for a multi-function device (a GPU and its audio
/// function) `addr=0.0,multifunction=on` on the first function and `addr=0.F` on the others, on
/// the same port. A slot given without its function 0 has its lowest function put at 0.0 in the
/// guest (a guest finds no other function of a slot without one). Slots come in the order they
/// are first met, functions in order; repeats are dropped. The VM driver must not use the ids
/// `rpN` or chassis numbers 1..=N for other ports. Fails on anything that is not a PCI address
/// (it becomes part of a QEMU option string).
pub fn qemu_args(addrs: &[String]) -> Result<Vec<String>, VfioError> {
    let mut slots: Vec<((u32, u32, u32), Vec<u32>)> = Vec::new();
    for a in addrs {
        let (domain, bus, slot, func) = parse_addr(a).ok_or_else(|| VfioError::BadBusId(a.clone()))?;
        let key = (domain, bus, slot);
        match slots.iter_mut().find(|(k, _)| *k == key) {
            Some((_, funcs)) => {
                if !funcs.contains(&func) {
                    funcs.push(func);
                }
            }
            None => slots.push((key, vec![func])),
        }
    }
    let mut args = Vec::new();
    for (i, ((domain, bus, slot), mut funcs)) in slots.into_iter().enumerate() {
        let n = i + 1;
        funcs.sort_unstable();
        args.push("-device".to_string());
        args.push(format!("pcie-root-port,id=rp{n},chassis={n},slot={n}"));
        let multi = funcs.len() > 1;
        for (j, func) in funcs.iter().enumerate() {
            let host = format!("{domain:04x}:{bus:02x}:{slot:02x}.{func:x}");
            let mut dev = format!("vfio-pci,host={host},bus=rp{n}");
            if multi {
                let guest = if j == 0 { 0 } else { *func };
                dev.push_str(&format!(",addr=0.{guest:x}"));
                if guest == 0 {
                    dev.push_str(",multifunction=on");
                }
            }
            args.push("-device".to_string());
            args.push(dev);
        }
    }
    Ok(args)
}

/// The device nodes QEMU opens for `addrs`: `/dev/vfio/vfio` (the container) and
/// `/dev/vfio/<group>` of each IOMMU group, once each, in the order first met.
pub fn vfio_device_nodes(sysfs: &Path, addrs: &[String]) -> Result<Vec<PathBuf>, VfioError> {
    let mut nodes = vec![PathBuf::from("/dev/vfio/vfio")];
    for a in addrs {
        let node = PathBuf::from(format!("/dev/vfio/{}", iommu_group(sysfs, a)?));
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::TempDir;
    use std::collections::HashMap;
    use std::os::unix::fs::symlink;

    const GPU: &str = "0000:17:00.0";
    const AUDIO: &str = "0000:17:00.1";
    const BRIDGE: &str = "0000:16:00.0";

    /// A fake sysfs: devices under `devices/pci0000:00/<addr>`, linked from
    /// `bus/pci/devices/<addr>` and from their group's `devices/`, as the kernel lays it out.
    struct Fake {
        dir: TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let f = Fake { dir: TempDir::new() };
            for d in ["kernel/iommu_groups", "bus/pci/devices", "bus/pci/drivers", "devices/pci0000:00"] {
                fs::create_dir_all(f.root().join(d)).unwrap();
            }
            fs::write(f.root().join("bus/pci/drivers_probe"), "").unwrap();
            f
        }

        fn root(&self) -> &Path {
            &self.dir.0
        }

        fn driver(&self, name: &str) -> &Fake {
            let d = self.root().join("bus/pci/drivers").join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("bind"), "").unwrap();
            fs::write(d.join("unbind"), "").unwrap();
            self
        }

        fn device(&self, addr: &str, class: &str, group: u32, driver: Option<&str>) -> &Fake {
            let real = self.root().join("devices/pci0000:00").join(addr);
            fs::create_dir_all(&real).unwrap();
            fs::write(real.join("class"), format!("{class}\n")).unwrap();
            fs::write(real.join("driver_override"), "(null)\n").unwrap();
            symlink(format!("../../../kernel/iommu_groups/{group}"), real.join("iommu_group")).unwrap();
            symlink(format!("../../../devices/pci0000:00/{addr}"), self.root().join("bus/pci/devices").join(addr)).unwrap();
            let members = self.root().join(format!("kernel/iommu_groups/{group}/devices"));
            fs::create_dir_all(&members).unwrap();
            symlink(format!("../../../../devices/pci0000:00/{addr}"), members.join(addr)).unwrap();
            if let Some(d) = driver {
                self.driver(d);
                symlink(format!("../../../bus/pci/drivers/{d}"), real.join("driver")).unwrap();
            }
            self
        }

        /// A device outside any IOMMU group (the IOMMU off).
        fn device_without_group(&self, addr: &str, driver: &str) -> &Fake {
            let real = self.root().join("devices/pci0000:00").join(addr);
            fs::create_dir_all(&real).unwrap();
            fs::write(real.join("class"), "0x030200\n").unwrap();
            fs::write(real.join("driver_override"), "(null)\n").unwrap();
            symlink(format!("../../../devices/pci0000:00/{addr}"), self.root().join("bus/pci/devices").join(addr)).unwrap();
            self.driver(driver);
            symlink(format!("../../../bus/pci/drivers/{driver}"), real.join("driver")).unwrap();
            self
        }

        /// A GPU (3D controller) and its audio function in group 12 behind a bridge that
        /// shares the group; `nvidia` and `snd_hda_intel` hold them; `vfio-pci` is loaded.
        fn gpu_host() -> Fake {
            let f = Fake::new();
            f.device(BRIDGE, "0x060400", 12, Some("pcieport"))
                .device(GPU, "0x030200", 12, Some("nvidia"))
                .device(AUDIO, "0x040300", 12, Some("snd_hda_intel"))
                .driver(VFIO_PCI);
            f
        }

        fn driver_of(&self, addr: &str) -> Option<String> {
            driver_of(self.root(), addr).unwrap()
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.root().join(rel)).unwrap()
        }

        fn kernel(&self) -> FakeKernel {
            let mut native = HashMap::new();
            native.insert(GPU.to_string(), "nvidia".to_string());
            native.insert(AUDIO.to_string(), "snd_hda_intel".to_string());
            native.insert("0000:65:00.0".to_string(), "nvidia".to_string());
            native.insert("0000:65:00.1".to_string(), "snd_hda_intel".to_string());
            FakeKernel { root: self.root().to_path_buf(), writes: Vec::new(), native, refuse: Vec::new() }
        }
    }

    /// Stands in for the kernel: writes the file (which must exist, as a sysfs attribute does),
    /// records (path relative to the sysfs root, as the code named it; the exact text), and does
    /// what the kernel would: `unbind` removes the device's `driver` link (ENODEV when the device
    /// is not on that driver), `drivers_probe` binds a driverless device to its
    /// `driver_override`, or else its native driver, when that driver is loaded (`vfio-pci` takes
    /// no device listed in `refuse`).
    struct FakeKernel {
        root: PathBuf,
        writes: Vec<(String, String)>,
        native: HashMap<String, String>,
        refuse: Vec<String>,
    }

    impl Writes for FakeKernel {
        fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
            let rel = path.strip_prefix(&self.root).map_err(|_| io::Error::other("write outside sysfs"))?.to_string_lossy().into_owned();
            let text = String::from_utf8(data.to_vec()).map_err(io::Error::other)?;
            let dev = self.root.join("bus/pci/devices").join(&text);
            if rel.ends_with("/unbind") {
                let bound_to = fs::canonicalize(dev.join("driver"))?;
                if bound_to != fs::canonicalize(path.parent().unwrap())? {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
            }
            fs::OpenOptions::new().write(true).truncate(true).open(path)?.write_all(data)?;
            self.writes.push((rel.clone(), text.clone()));
            if rel.ends_with("/unbind") {
                fs::remove_file(dev.join("driver"))?;
            } else if rel == "bus/pci/drivers_probe" && fs::symlink_metadata(dev.join("driver")).is_err() {
                let over = fs::read_to_string(dev.join("driver_override"))?;
                let over = over.trim();
                let want = if over.is_empty() || over == "(null)" { self.native.get(&text).cloned() } else { Some(over.to_string()) };
                if let Some(name) = want {
                    if !(name == VFIO_PCI && self.refuse.contains(&text)) && self.root.join("bus/pci/drivers").join(&name).is_dir() {
                        symlink(format!("../../../bus/pci/drivers/{name}"), dev.join("driver"))?;
                    }
                }
            }
            Ok(())
        }
    }

    fn w(path: &str, text: &str) -> (String, String) {
        (path.to_string(), text.to_string())
    }

    fn binding(addr: &str, driver: Option<&str>) -> Binding {
        Binding { address: addr.to_string(), original_driver: driver.map(String::from) }
    }

    #[test]
    fn bus_ids_from_nvml_and_sysfs_are_normalized() {
        assert_eq!(normalize_bus_id("00000000:17:00.0").unwrap(), "0000:17:00.0");
        assert_eq!(normalize_bus_id("00000000:B1:1F.7").unwrap(), "0000:b1:1f.7");
        assert_eq!(normalize_bus_id("0000:17:00.1").unwrap(), "0000:17:00.1");
        assert_eq!(normalize_bus_id("00010000:e2:00.0").unwrap(), "10000:e2:00.0");
    }

    #[test]
    fn bad_bus_ids_are_rejected() {
        for bad in [
            "",
            "../../x",
            "0000:17:00",
            "0000:17:00.0/../../x",
            "0000:17:00./",
            "0000:17:00.8",
            "0000:17:20.0",
            "000:17:00.0",
            "000000000:17:00.0",
            "0000:017:00.0",
            "0000:17:0.0",
            "0000:17:00.00",
            "+000:17:00.0",
            "0000:+7:00.0",
            " 0000:17:00.0",
            "0000:17:00.0\n",
            "0000:17:00:00.0",
            "0000/17:00.0",
            "0000:17:00.0,romfile=/x",
            "gggg:17:00.0",
        ] {
            match normalize_bus_id(bad) {
                Err(VfioError::BadBusId(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn iommu_off_is_refused_with_what_to_do() {
        let f = Fake::new();
        f.device_without_group(GPU, "nvidia").driver(VFIO_PCI);
        assert!(!iommu_enabled(f.root()));
        let e = group_devices(f.root(), GPU).unwrap_err();
        assert!(matches!(e, VfioError::IommuOff(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("IOMMU is off") && msg.contains("intel_iommu=on") && msg.contains("amd_iommu=on"), "{msg}");
        let mut k = f.kernel();
        assert!(matches!(bind_group_with(&mut k, f.root(), GPU, &[]), Err(VfioError::IommuOff(_))));
        assert!(k.writes.is_empty());
        assert_eq!(f.driver_of(GPU).as_deref(), Some("nvidia"));
        assert!(matches!(vfio_device_nodes(f.root(), &[GPU.to_string()]), Err(VfioError::IommuOff(_))));
        // No groups directory at all reads the same.
        let empty = TempDir::new();
        assert!(!iommu_enabled(&empty.0));
    }

    #[test]
    fn a_device_without_a_group_while_the_iommu_is_on_is_named() {
        let f = Fake::gpu_host();
        f.device_without_group("0000:65:00.0", "nvidia");
        assert!(iommu_enabled(f.root()));
        let e = group_devices(f.root(), "0000:65:00.0").unwrap_err();
        assert!(matches!(e, VfioError::NoGroup { .. }), "{e:?}");
        let e = group_devices(f.root(), "0000:99:00.0").unwrap_err();
        assert!(matches!(e, VfioError::NoDevice { .. }), "{e:?}");
        assert!(matches!(group_devices(f.root(), "../../x"), Err(VfioError::BadBusId(_))));
    }

    #[test]
    fn the_whole_group_moves_except_bridges() {
        let f = Fake::gpu_host();
        assert!(iommu_enabled(f.root()));
        assert_eq!(iommu_group(f.root(), GPU).unwrap(), 12);
        assert_eq!(group_devices(f.root(), "00000000:17:00.0").unwrap(), vec![GPU, AUDIO]);
        assert_eq!(group_devices(f.root(), AUDIO).unwrap(), vec![GPU, AUDIO]);
        assert!(matches!(group_devices(f.root(), BRIDGE), Err(VfioError::IsBridge(a)) if a == BRIDGE));
    }

    #[test]
    fn binding_writes_override_unbind_and_probe_for_each_device() {
        let f = Fake::gpu_host();
        let mut k = f.kernel();
        let bindings = bind_group_with(&mut k, f.root(), "00000000:17:00.0", &[]).unwrap().all;
        assert_eq!(bindings, vec![binding(GPU, Some("nvidia")), binding(AUDIO, Some("snd_hda_intel"))]);
        assert_eq!(
            k.writes,
            vec![
                w("bus/pci/devices/0000:17:00.0/driver_override", "vfio-pci"),
                w("bus/pci/devices/0000:17:00.0/driver/unbind", GPU),
                w("bus/pci/drivers_probe", GPU),
                w("bus/pci/devices/0000:17:00.1/driver_override", "vfio-pci"),
                w("bus/pci/devices/0000:17:00.1/driver/unbind", AUDIO),
                w("bus/pci/drivers_probe", AUDIO),
            ]
        );
        // The unbinds reached the drivers' own files through the `driver` links.
        assert_eq!(f.read("bus/pci/drivers/nvidia/unbind"), GPU);
        assert_eq!(f.read("bus/pci/drivers/snd_hda_intel/unbind"), AUDIO);
        assert_eq!(f.driver_of(GPU).as_deref(), Some(VFIO_PCI));
        assert_eq!(f.driver_of(AUDIO).as_deref(), Some(VFIO_PCI));
        // The bridge was not touched.
        assert_eq!(f.driver_of(BRIDGE).as_deref(), Some("pcieport"));
        assert_eq!(f.read("bus/pci/drivers/pcieport/unbind"), "");
        assert_eq!(f.read(&format!("bus/pci/devices/{BRIDGE}/driver_override")), "(null)\n");
        // What the driver persists, and reads back.
        let json = serde_json::to_string(&bindings).unwrap();
        assert_eq!(
            json,
            r#"[{"address":"0000:17:00.0","original_driver":"nvidia"},{"address":"0000:17:00.1","original_driver":"snd_hda_intel"}]"#
        );
        assert_eq!(serde_json::from_str::<Vec<Binding>>(&json).unwrap(), bindings);
    }

    #[test]
    fn binding_again_writes_nothing_and_keeps_the_first_original_driver() {
        let f = Fake::gpu_host();
        let mut k = f.kernel();
        let first = bind_group_with(&mut k, f.root(), GPU, &[]).unwrap().all;
        let mut k = f.kernel();
        let again = bind_group_with(&mut k, f.root(), GPU, &first).unwrap();
        assert!(k.writes.is_empty(), "{:?}", k.writes);
        assert_eq!(again.all, first);
        assert!(again.changed.is_empty());
        // Without the earlier record the original driver is unknown, not "vfio-pci".
        let mut k = f.kernel();
        assert_eq!(bind_group_with(&mut k, f.root(), GPU, &[]).unwrap().all, vec![binding(GPU, None), binding(AUDIO, None)]);
        assert!(k.writes.is_empty());
    }

    #[test]
    fn a_device_without_a_driver_is_probed_without_an_unbind() {
        let f = Fake::new();
        f.device(GPU, "0x030000", 3, None).driver(VFIO_PCI);
        let mut k = f.kernel();
        let bindings = bind_group_with(&mut k, f.root(), GPU, &[]).unwrap().all;
        assert_eq!(bindings, vec![binding(GPU, None)]);
        assert_eq!(k.writes, vec![w("bus/pci/devices/0000:17:00.0/driver_override", "vfio-pci"), w("bus/pci/drivers_probe", GPU)]);
        assert_eq!(f.driver_of(GPU).as_deref(), Some(VFIO_PCI));
    }

    #[test]
    fn vfio_pci_not_loaded_is_refused_before_any_write() {
        let f = Fake::new();
        f.device(GPU, "0x030200", 12, Some("nvidia")).device(AUDIO, "0x040300", 12, Some("snd_hda_intel"));
        let mut k = f.kernel();
        let e = bind_group_with(&mut k, f.root(), GPU, &[]).unwrap_err();
        assert!(matches!(e, VfioError::NoVfioPci(_)), "{e:?}");
        assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
        assert!(k.writes.is_empty());
        assert_eq!(f.driver_of(GPU).as_deref(), Some("nvidia"));
    }

    #[test]
    fn a_device_vfio_pci_does_not_take_fails_and_the_group_is_given_back() {
        let f = Fake::gpu_host();
        let mut k = f.kernel();
        k.refuse.push(GPU.to_string());
        let e = bind_group_with(&mut k, f.root(), GPU, &[]).unwrap_err();
        match &e {
            VfioError::NotBound { addr, now, .. } => assert_eq!((addr.as_str(), now.as_str()), (GPU, "none")),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("did not bind to vfio-pci"), "{e}");
        assert_eq!(
            k.writes,
            vec![
                w("bus/pci/devices/0000:17:00.0/driver_override", "vfio-pci"),
                w("bus/pci/devices/0000:17:00.0/driver/unbind", GPU),
                w("bus/pci/drivers_probe", GPU),
                // Given back: override cleared, reprobed, nvidia has it again; the audio
                // function was never touched.
                w("bus/pci/devices/0000:17:00.0/driver_override", "\n"),
                w("bus/pci/drivers_probe", GPU),
            ]
        );
        assert_eq!(f.driver_of(GPU).as_deref(), Some("nvidia"));
        assert_eq!(f.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
    }

    #[test]
    fn restore_unbinds_clears_the_override_and_reprobes() {
        let f = Fake::gpu_host();
        let bindings = bind_group_with(&mut f.kernel(), f.root(), GPU, &[]).unwrap().all;
        let mut k = f.kernel();
        restore_with(&mut k, f.root(), &bindings).unwrap();
        assert_eq!(
            k.writes,
            vec![
                w("bus/pci/devices/0000:17:00.0/driver/unbind", GPU),
                w("bus/pci/devices/0000:17:00.0/driver_override", "\n"),
                w("bus/pci/drivers_probe", GPU),
                w("bus/pci/devices/0000:17:00.1/driver/unbind", AUDIO),
                w("bus/pci/devices/0000:17:00.1/driver_override", "\n"),
                w("bus/pci/drivers_probe", AUDIO),
            ]
        );
        assert_eq!(f.read("bus/pci/drivers/vfio-pci/unbind"), AUDIO);
        assert_eq!(f.read(&format!("bus/pci/devices/{GPU}/driver_override")), "\n");
        assert_eq!(f.driver_of(GPU).as_deref(), Some("nvidia"));
        assert_eq!(f.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));

        // Again: nothing to unbind or probe; only the override is cleared again.
        let mut k = f.kernel();
        restore_with(&mut k, f.root(), &bindings).unwrap();
        assert_eq!(
            k.writes,
            vec![w("bus/pci/devices/0000:17:00.0/driver_override", "\n"), w("bus/pci/devices/0000:17:00.1/driver_override", "\n")]
        );
    }

    #[test]
    fn restore_goes_over_every_device_and_reports_every_failure() {
        let f = Fake::gpu_host();
        let mut bindings = bind_group_with(&mut f.kernel(), f.root(), GPU, &[]).unwrap().all;
        // nvidia's module went away meanwhile: the GPU stays driverless.
        fs::remove_dir_all(f.root().join("bus/pci/drivers/nvidia")).unwrap();
        bindings.insert(0, binding("../../etc", Some("nvidia")));
        bindings.push(binding("0000:99:00.0", Some("nvidia"))); // gone from the host: skipped
        let mut k = f.kernel();
        let e = restore_with(&mut k, f.root(), &bindings).unwrap_err();
        let VfioError::Restore(failures) = &e else { panic!("{e:?}") };
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("\"../../etc\" is not a PCI address"), "{}", failures[0]);
        assert!(failures[1].contains("0000:17:00.0 was not given back to nvidia (its driver now: none)"), "{}", failures[1]);
        // The audio function after the failing GPU was still given back.
        assert_eq!(f.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
        assert_eq!(f.driver_of(GPU), None);
        assert!(k.writes.contains(&w("bus/pci/devices/0000:17:00.1/driver_override", "\n")));
        assert!(k.writes.iter().all(|(p, _)| !p.contains("..") && !p.contains("99:00")), "{:?}", k.writes);
    }

    #[test]
    fn bind_gpus_binds_each_group_once_and_gives_everything_back_on_failure() {
        let f = Fake::gpu_host();
        f.device("0000:65:00.0", "0x030200", 40, Some("nvidia")).device("0000:65:00.1", "0x040300", 40, Some("snd_hda_intel"));
        let ids = vec!["00000000:17:00.0".to_string(), "00000000:65:00.0".to_string(), "0000:17:00.1".to_string()];
        let mut k = f.kernel();
        let bindings = bind_gpus_with(&mut k, f.root(), &ids, &[]).unwrap();
        let addrs: Vec<&str> = bindings.iter().map(|b| b.address.as_str()).collect();
        assert_eq!(addrs, vec![GPU, AUDIO, "0000:65:00.0", "0000:65:00.1"]);
        assert_eq!(k.writes.len(), 12);
        assert_eq!(
            vfio_device_nodes(f.root(), &ids).unwrap(),
            vec![PathBuf::from("/dev/vfio/vfio"), PathBuf::from("/dev/vfio/12"), PathBuf::from("/dev/vfio/40")]
        );
        restore_with(&mut f.kernel(), f.root(), &bindings).unwrap();

        assert_eq!(f.driver_of(GPU).as_deref(), Some("nvidia"));

        // A bad id anywhere: refused before anything is written.
        let mut k = f.kernel();
        let bad = vec![GPU.to_string(), "0000:65:00.0,x".to_string()];
        assert!(matches!(bind_gpus_with(&mut k, f.root(), &bad, &[]), Err(VfioError::BadBusId(_))));
        assert!(k.writes.is_empty());

        // The second group fails half-way: it and the first group are given back.
        let mut k = f.kernel();
        k.refuse.push("0000:65:00.1".to_string());
        let e = bind_gpus_with(&mut k, f.root(), &[GPU.to_string(), "0000:65:00.0".to_string()], &[]).unwrap_err();
        assert!(matches!(&e, VfioError::NotBound { addr, .. } if addr == "0000:65:00.1"), "{e:?}");
        assert_eq!(k.writes.iter().filter(|(_, t)| t == "vfio-pci").count(), 4);
        assert_eq!(k.writes.iter().filter(|(_, t)| t == "\n").count(), 4);
        for (addr, driver) in [(GPU, "nvidia"), (AUDIO, "snd_hda_intel"), ("0000:65:00.0", "nvidia"), ("0000:65:00.1", "snd_hda_intel")] {
            assert_eq!(f.driver_of(addr).as_deref(), Some(driver), "{addr}");
        }
    }

    #[test]
    fn qemu_args_for_a_two_function_group() {
        let args = qemu_args(&[GPU.to_string(), AUDIO.to_string()]).unwrap();
        assert_eq!(
            args,
            vec![
                "-device",
                "pcie-root-port,id=rp1,chassis=1,slot=1",
                "-device",
                "vfio-pci,host=0000:17:00.0,bus=rp1,addr=0.0,multifunction=on",
                "-device",
                "vfio-pci,host=0000:17:00.1,bus=rp1,addr=0.1",
            ]
        );
        // Functions are ordered and kept together whatever order they came in; repeats drop.
        assert_eq!(qemu_args(&[AUDIO.to_string(), GPU.to_string(), AUDIO.to_string()]).unwrap(), args);
    }

    #[test]
    fn qemu_args_give_each_gpu_its_own_root_port() {
        let args = qemu_args(&["0000:65:00.0".to_string(), "00000000:17:00.0".to_string()]).unwrap();
        assert_eq!(
            args,
            vec![
                "-device",
                "pcie-root-port,id=rp1,chassis=1,slot=1",
                "-device",
                "vfio-pci,host=0000:65:00.0,bus=rp1",
                "-device",
                "pcie-root-port,id=rp2,chassis=2,slot=2",
                "-device",
                "vfio-pci,host=0000:17:00.0,bus=rp2",
            ]
        );
        // A slot without its function 0 still gets a function 0 in the guest.
        assert_eq!(
            qemu_args(&["0000:17:00.3".to_string(), "0000:17:00.1".to_string()]).unwrap(),
            vec![
                "-device",
                "pcie-root-port,id=rp1,chassis=1,slot=1",
                "-device",
                "vfio-pci,host=0000:17:00.1,bus=rp1,addr=0.0,multifunction=on",
                "-device",
                "vfio-pci,host=0000:17:00.3,bus=rp1,addr=0.3",
            ]
        );
        assert!(qemu_args(&[]).unwrap().is_empty());
        // Nothing can be smuggled into QEMU's option string.
        assert!(matches!(qemu_args(&["0000:17:00.0,romfile=/etc/shadow".to_string()]), Err(VfioError::BadBusId(_))));
    }
}
