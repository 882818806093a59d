//! What this machine offers: CPU model and count, memory, disk under the data dir. GPUs come
//! from NVML, loaded at run time (not in this build yet: hosts report no GPUs).

use std::path::Path;
use std::process::Command;

use nimbus_proto::Inventory;

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

fn memory_mib() -> i64 {
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

pub fn read(data_dir: &Path) -> Inventory {
    Inventory {
        hostname: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "localhost".into()),
        cpu_model: cpu_model(),
        vcpus: std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1),
        memory_mib: memory_mib(),
        disk_gib: disk_gib(data_dir),
        gpus: Vec::new(),
        driver: "container".into(),
    }
}
