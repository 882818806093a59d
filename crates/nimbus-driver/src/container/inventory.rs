//! What this machine offers: CPU model and count, memory, disk under the data dir, and GPUs from
//! NVML. NVML (`libnvidia-ml.so.1`, shipped with the NVIDIA driver) is loaded at run time, so the
//! agent builds and runs on machines without GPUs, where it simply reports none.

use std::path::Path;
use std::process::Command;

use nimbus_proto::{GpuInfo, Inventory};

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

/// The GPUs NVML sees, by index; empty (with the reason logged) when NVML cannot be loaded.
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
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else { continue };
        out.push(GpuInfo {
            index: i64::from(i),
            model: d.name().unwrap_or_else(|_| "unknown GPU".into()),
            memory_mib: d.memory_info().map(|m| (m.total / (1024 * 1024)) as i64).unwrap_or(0),
            uuid: d.uuid().unwrap_or_default(),
            mig_devices: Vec::new(),
        });
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
