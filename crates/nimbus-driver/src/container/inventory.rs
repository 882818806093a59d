//! What this machine offers: CPU model and count, memory, disk under the data dir, and GPUs from
//! NVML with the MIG devices an operator created on them. NVML (`libnvidia-ml.so.1`, shipped with
//! the NVIDIA driver) is loaded at run time, so the agent builds and runs on machines without
//! GPUs, where it simply reports none.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use nimbus_proto::{GpuInfo, Inventory, MigInfo};

use super::gpu;

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// This process runs as root (containers need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Total memory of the machine in MiB.
pub fn memory_mib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<i64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Size of the file system holding `dir`, in GiB (`df`, to stay free of unsafe statvfs calls).
fn disk_gib(dir: &Path) -> i64 {
    Command::new("df")
        .args(["-k", "--output=size"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse::<i64>().ok()))
        .map(|kb| kb / (1024 * 1024))
        .unwrap_or(0)
}

/// `NVML_DEVICE_MIG_ENABLE`: MIG mode is on.
const MIG_ENABLED: u32 = 1;

/// The GPUs NVML sees, by index, each with its MIG devices; empty (with the reason logged) when
/// NVML cannot be loaded.
pub fn gpus() -> Vec<GpuInfo> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(reason = %e, "NVML not available: this host reports no GPUs");
            return Vec::new();
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut out = Vec::new();
    // `nvidia-smi -q -x`, read once and only when some GPU is in MIG mode.
    let mut smi: Option<BTreeMap<String, Vec<SmiMig>>> = None;
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else { continue };
        let uuid = d.uuid().unwrap_or_default();
        let mut mig_devices = Vec::new();
        if d.mig_mode().is_ok_and(|m| m.current == MIG_ENABLED) {
            let nvml_migs: Vec<NvmlMig> = (0..d.mig_device_count().unwrap_or(0))
                .filter_map(|k| {
                    // Unused slots up to the maximum count answer NotFound.
                    let m = d.mig_device_by_index(k).ok()?;
                    Some(NvmlMig {
                        index: k,
                        uuid: m.uuid().ok()?,
                        name: m.name().unwrap_or_default(),
                        memory_mib: m.memory_info().map(|mi| (mi.total / (1024 * 1024)) as i64).ok(),
                    })
                })
                .collect();
            if !nvml_migs.is_empty() {
                let smi = smi.get_or_insert_with(|| parse_smi_mig(&nvidia_smi_xml()));
                let fenceable = d.minor_number().map(|minor| gpu::mig_instances(Path::new("/"), minor)).unwrap_or_default();
                mig_devices = match_mig(&uuid, nvml_migs, smi.get(&uuid).map(Vec::as_slice).unwrap_or_default(), &fenceable);
            }
        }
        out.push(GpuInfo {
            index: i64::from(i),
            model: d.name().unwrap_or_else(|_| "unknown GPU".into()),
            memory_mib: d.memory_info().map(|m| (m.total / (1024 * 1024)) as i64).unwrap_or(0),
            uuid,
            mig_devices,
            pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
        });
    }
    out
}

/// `nvidia-smi -q -x`, or nothing (logged) when it does not run.
fn nvidia_smi_xml() -> String {
    match Command::new("nvidia-smi").args(["-q", "-x"]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            tracing::warn!(status = %o.status, "nvidia-smi -q -x failed: MIG devices are not reported");
            String::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "nvidia-smi not run: MIG devices are not reported");
            String::new()
        }
    }
}

/// A MIG device as NVML enumerates it on its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlMig {
    /// Its index on the parent (`nvmlDeviceGetMigDeviceHandleByIndex`).
    pub index: u32,
    pub uuid: String,
    /// `NVIDIA H200 MIG 1g.18gb`.
    pub name: String,
    pub memory_mib: Option<i64>,
}

/// A MIG device as `nvidia-smi -q -x` lists it under its parent GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmiMig {
    pub index: u32,
    pub gpu_instance_id: i64,
    pub compute_instance_id: i64,
    pub memory_mib: Option<i64>,
}

/// The MIG profile in a MIG device's name: `NVIDIA H200 MIG 1g.18gb` → `1g.18gb`
/// (`1g.10gb+me` keeps its media extension); the whole name when it has no ` MIG ` part.
pub fn mig_profile(name: &str) -> String {
    name.rsplit_once(" MIG ").map_or(name, |(_, p)| p).trim().to_owned()
}

/// The MIG devices of `gpu_uuid` with their GPU and compute instance ids. nvidia-smi lists a MIG
/// device by the same index NVML enumerates it with (it walks
/// `nvmlDeviceGetMigDeviceHandleByIndex` too), under its parent's UUID, so that pair is the key;
/// the device is reported only when nvidia-smi's memory size agrees with NVML's (a repartition
/// between the two reads would shift indices), its ids are unique on the GPU, and the driver has
/// the capability entries of those ids (`fenceable`, [`gpu::mig_instances`]), without which an
/// instance could not be fenced to it. Anything else is left out, with the reason logged.
pub fn match_mig(gpu_uuid: &str, nvml: Vec<NvmlMig>, smi: &[SmiMig], fenceable: &[(i64, i64)]) -> Vec<MigInfo> {
    let mut out: Vec<MigInfo> = Vec::new();
    for m in nvml {
        let found: Vec<&SmiMig> = smi.iter().filter(|s| s.index == m.index).collect();
        let reason = match found.as_slice() {
            [] => Some("nvidia-smi does not list it".to_owned()),
            [s] => match (s.memory_mib, m.memory_mib) {
                // nvidia-smi prints whole MiB; allow its rounding.
                (Some(a), Some(b)) if (a - b).abs() > 1 => Some(format!("nvidia-smi says {a} MiB, NVML {b} MiB")),
                _ if smi
                    .iter()
                    .filter(|o| (o.gpu_instance_id, o.compute_instance_id) == (s.gpu_instance_id, s.compute_instance_id))
                    .count()
                    > 1 =>
                {
                    Some("nvidia-smi lists its ids twice".to_owned())
                }
                _ if !fenceable.contains(&(s.gpu_instance_id, s.compute_instance_id)) => Some(format!(
                    "no /proc/driver/nvidia/capabilities entry for GPU instance {} compute instance {}",
                    s.gpu_instance_id, s.compute_instance_id
                )),
                _ => None,
            },
            _ => Some("nvidia-smi lists its index twice".to_owned()),
        };
        match (reason, found.first()) {
            (None, Some(s)) => out.push(MigInfo {
                uuid: m.uuid,
                profile: mig_profile(&m.name),
                memory_mib: m.memory_mib.or(s.memory_mib).unwrap_or(0),
                gpu_instance_id: s.gpu_instance_id,
                compute_instance_id: s.compute_instance_id,
            }),
            (reason, _) => tracing::warn!(
                gpu = gpu_uuid,
                mig = %m.uuid,
                index = m.index,
                reason = reason.as_deref().unwrap_or("unknown"),
                "MIG device left out of the inventory: its GPU/compute instance ids are not known for certain"
            ),
        }
    }
    out
}

/// One element of an XML document: its name, its child elements and its own text.
#[derive(Debug, Default)]
struct Element {
    name: String,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn text_of(&self, path: &[&str]) -> Option<&str> {
        let mut e = self;
        for p in path {
            e = e.child(p)?;
        }
        Some(e.text.trim())
    }
}

/// The elements of `xml`, enough for nvidia-smi's output (no entities, CDATA or namespaces
/// matter there); `None` when tags do not nest.
fn parse_xml(xml: &str) -> Option<Element> {
    let mut stack = vec![Element::default()];
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        let text = &rest[..lt];
        stack.last_mut()?.text.push_str(text);
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<!--") {
            rest = r.split_once("-->")?.1;
            continue;
        }
        let gt = rest.find('>')?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let done = stack.pop()?;
            if done.name != name.trim() || stack.is_empty() {
                return None;
            }
            stack.last_mut()?.children.push(done);
            continue;
        }
        let (tag, empty) = match tag.strip_suffix('/') {
            Some(t) => (t, true),
            None => (tag, false),
        };
        let name = tag.split_whitespace().next()?.to_owned();
        let e = Element { name, ..Element::default() };
        if empty {
            stack.last_mut()?.children.push(e);
        } else {
            stack.push(e);
        }
    }
    (stack.len() == 1).then(|| stack.pop()).flatten()
}

/// The MIG devices `nvidia-smi -q -x` lists, by their parent GPU's UUID. Devices whose ids do
/// not parse are left out (so never given to anyone); unparseable output gives none.
pub fn parse_smi_mig(xml: &str) -> BTreeMap<String, Vec<SmiMig>> {
    let mut out = BTreeMap::new();
    let Some(doc) = parse_xml(xml) else {
        if !xml.trim().is_empty() {
            tracing::warn!("nvidia-smi -q -x output does not parse: MIG devices are not reported");
        }
        return out;
    };
    let Some(log) = doc.child("nvidia_smi_log") else { return out };
    for g in log.children.iter().filter(|c| c.name == "gpu") {
        let Some(uuid) = g.text_of(&["uuid"]).filter(|u| !u.is_empty()) else { continue };
        let migs: Vec<SmiMig> = g
            .child("mig_devices")
            .map(|d| {
                d.children
                    .iter()
                    .filter(|c| c.name == "mig_device")
                    .filter_map(|m| {
                        Some(SmiMig {
                            index: m.text_of(&["index"])?.parse().ok()?,
                            gpu_instance_id: m.text_of(&["gpu_instance_id"])?.parse().ok()?,
                            compute_instance_id: m.text_of(&["compute_instance_id"])?.parse().ok()?,
                            memory_mib: m
                                .text_of(&["fb_memory_usage", "total"])
                                .and_then(|t| t.strip_suffix("MiB"))
                                .and_then(|t| t.trim().parse().ok()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(uuid.to_owned(), migs);
    }
    out
}

pub fn read(data_dir: &Path) -> Inventory {
    Inventory {
        hostname: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "localhost".into()),
        cpu_model: cpu_model(),
        vcpus: std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1),
        memory_mib: memory_mib(),
        disk_gib: disk_gib(data_dir),
        gpus: gpus(),
        driver: "container".into(),
        public_ip: None,
        network: None,
        machines: vec![nimbus_proto::Machine::Container],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nvidia-smi -q -x` of a host with a MIG-mode H200 (two 1g.18gb devices, GPU instances 1
    /// and 2) and a GPU without MIG, cut to the parts around what is read (the layout of driver
    /// 550's `nvsmi_device_v12.dtd`).
    const SMI_XML: &str = r#"<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
	<timestamp>Mon Jun  3 10:00:00 2024</timestamp>
	<driver_version>550.54.15</driver_version>
	<attached_gpus>2</attached_gpus>
	<gpu id="00000000:1A:00.0">
		<product_name>NVIDIA H200</product_name>
		<mig_mode>
			<current_mig>Enabled</current_mig>
			<pending_mig>Enabled</pending_mig>
		</mig_mode>
		<mig_devices>
			<mig_device>
				<index>0</index>
				<gpu_instance_id>1</gpu_instance_id>
				<compute_instance_id>0</compute_instance_id>
				<device_attributes>
					<shared>
						<multiprocessor_count>16</multiprocessor_count>
					</shared>
				</device_attributes>
				<fb_memory_usage>
					<total>16384 MiB</total>
					<reserved>0 MiB</reserved>
					<used>12 MiB</used>
				</fb_memory_usage>
				<bar1_memory_usage>
					<total>32767 MiB</total>
				</bar1_memory_usage>
			</mig_device>
			<mig_device>
				<index>1</index>
				<gpu_instance_id>2</gpu_instance_id>
				<compute_instance_id>0</compute_instance_id>
				<fb_memory_usage>
					<total>16384 MiB</total>
				</fb_memory_usage>
			</mig_device>
			<mig_device>
				<index>2</index>
				<gpu_instance_id>N/A</gpu_instance_id>
				<compute_instance_id>0</compute_instance_id>
			</mig_device>
		</mig_devices>
		<uuid>GPU-aaaaaaaa-0000-0000-0000-000000000000</uuid>
		<minor_number>0</minor_number>
		<processes>
			<process_info>
				<gpu_instance_id>1</gpu_instance_id>
				<compute_instance_id>0</compute_instance_id>
				<pid>4242</pid>
			</process_info>
		</processes>
	</gpu>
	<gpu id="00000000:3B:00.0">
		<product_name>NVIDIA H200</product_name>
		<mig_mode>
			<current_mig>Disabled</current_mig>
		</mig_mode>
		<mig_devices>
			None
		</mig_devices>
		<uuid>GPU-bbbbbbbb-0000-0000-0000-000000000000</uuid>
		<minor_number>1</minor_number>
	</gpu>
</nvidia_smi_log>
"#;

    const PARENT: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000000";

    fn nvml(index: u32, memory_mib: i64) -> NvmlMig {
        NvmlMig { index, uuid: format!("MIG-{index}"), name: "NVIDIA H200 MIG 1g.18gb".into(), memory_mib: Some(memory_mib) }
    }

    #[test]
    fn nvidia_smi_xml_gives_each_gpus_mig_ids() {
        let m = parse_smi_mig(SMI_XML);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[PARENT],
            vec![
                SmiMig { index: 0, gpu_instance_id: 1, compute_instance_id: 0, memory_mib: Some(16384) },
                SmiMig { index: 1, gpu_instance_id: 2, compute_instance_id: 0, memory_mib: Some(16384) },
            ],
            "the device whose ids do not parse is left out; processes' ids are not MIG devices"
        );
        assert!(m["GPU-bbbbbbbb-0000-0000-0000-000000000000"].is_empty());
        assert!(parse_smi_mig("").is_empty());
        assert!(parse_smi_mig("<nvidia_smi_log><gpu><uuid>x</uuid></nvidia_smi_log>").is_empty(), "tags that do not nest");
        assert!(parse_smi_mig(&SMI_XML[..SMI_XML.len() / 2]).is_empty(), "truncated output");
    }

    #[test]
    fn mig_profiles_come_from_the_device_name() {
        assert_eq!(mig_profile("NVIDIA H200 MIG 1g.18gb"), "1g.18gb");
        assert_eq!(mig_profile("NVIDIA A100-SXM4-40GB MIG 1g.5gb+me"), "1g.5gb+me");
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3"), "NVIDIA H100 80GB HBM3");
    }

    #[test]
    fn mig_devices_are_matched_by_parent_and_index_and_left_out_when_uncertain() {
        let smi = parse_smi_mig(SMI_XML);
        let smi = &smi[PARENT];
        let both = [(1, 0), (2, 0)];
        let got = match_mig(PARENT, vec![nvml(0, 16384), nvml(1, 16384)], smi, &both);
        assert_eq!(
            got,
            vec![
                MigInfo { uuid: "MIG-0".into(), profile: "1g.18gb".into(), memory_mib: 16384, gpu_instance_id: 1, compute_instance_id: 0 },
                MigInfo { uuid: "MIG-1".into(), profile: "1g.18gb".into(), memory_mib: 16384, gpu_instance_id: 2, compute_instance_id: 0 },
            ]
        );
        // nvidia-smi's whole MiB may be one off NVML's.
        assert_eq!(match_mig(PARENT, vec![nvml(0, 16383)], smi, &both).len(), 1);
        // Sizes that disagree mean the two reads saw different partitionings.
        assert!(match_mig(PARENT, vec![nvml(0, 40448)], smi, &both).is_empty());
        // Index 2's ids did not parse; index 5 is not listed at all.
        assert!(match_mig(PARENT, vec![nvml(2, 16384), nvml(5, 16384)], smi, &both).is_empty());
        // Without the driver's capability entries an instance could not be fenced to it.
        let got = match_mig(PARENT, vec![nvml(0, 16384), nvml(1, 16384)], smi, &[(2, 0)]);
        assert_eq!(got.iter().map(|m| m.uuid.as_str()).collect::<Vec<_>>(), vec!["MIG-1"]);
        // Ids listed twice (or an index listed twice) are ambiguous.
        let dup = [smi[0].clone(), SmiMig { index: 1, ..smi[0].clone() }];
        assert!(match_mig(PARENT, vec![nvml(0, 16384), nvml(1, 16384)], &dup, &both).is_empty());
        let twice = [smi[0].clone(), smi[0].clone()];
        assert!(match_mig(PARENT, vec![nvml(0, 16384)], &twice, &both).is_empty());
        assert!(match_mig(PARENT, vec![nvml(0, 16384)], &[], &both).is_empty());
    }

    #[test]
    fn reads_this_machine() {
        let inv = read(Path::new("/"));
        assert!(inv.vcpus >= 1 && inv.memory_mib > 0 && inv.disk_gib > 0, "{inv:?}");
        // Without an NVIDIA driver NVML does not load and no GPU is invented.
        if !Path::new("/dev/nvidiactl").exists() {
            assert!(inv.gpus.is_empty());
        }
    }
}
