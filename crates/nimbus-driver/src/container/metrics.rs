//! Resource-use sampling of running containers: CPU time and memory from the instance's cgroup,
//! traffic from the host end of its veth, disk from its writable layer, GPU utilization and
//! memory from NVML. Counters are cumulative in the kernel; the sampler keeps the previous
//! reading per instance and reports rates over the interval.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Cumulative counters of one instance at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub at: Instant,
    pub cpu_usec: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Rates between two readings: `(cpu millicores, rx B/s, tx B/s)`. Counters that went backwards
/// (the instance restarted and its cgroup or veth is new) count as zero rather than negative.
pub fn rates(prev: &Reading, cur: &Reading) -> (i64, i64, i64) {
    let dt = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    if dt <= 0.0 {
        return (0, 0, 0);
    }
    let per_sec = |a: u64, b: u64| (b.saturating_sub(a) as f64 / dt).round() as i64;
    let cpu_millicores = (cur.cpu_usec.saturating_sub(prev.cpu_usec) as f64 / 1_000.0 / dt).round() as i64;
    (cpu_millicores, per_sec(prev.rx_bytes, cur.rx_bytes), per_sec(prev.tx_bytes, cur.tx_bytes))
}

/// Bytes allocated under `dir` (like `du -s`), not following symlinks or crossing mounts.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else { return 0 };
    let dev = root.dev();
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() && m.dev() == dev {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Per-instance state between samples: the last counters, and the disk size, which is costly
/// to walk and so measured at most every `DISK_EVERY`.
#[derive(Default)]
pub struct Sampler {
    last: HashMap<String, Reading>,
    disk: HashMap<String, (Instant, u64)>,
}

const DISK_EVERY: Duration = Duration::from_secs(30);

impl Sampler {
    /// Records `cur` and returns the rates since the previous reading (`None` the first time).
    pub fn observe(&mut self, id: &str, cur: Reading) -> Option<(i64, i64, i64)> {
        let out = self.last.get(id).map(|p| rates(p, &cur));
        self.last.insert(id.to_owned(), cur);
        out
    }

    pub fn disk(&mut self, id: &str, upper: &Path, now: Instant) -> u64 {
        match self.disk.get(id) {
            Some((at, v)) if now.saturating_duration_since(*at) < DISK_EVERY => *v,
            _ => {
                let v = disk_bytes(upper);
                self.disk.insert(id.to_owned(), (now, v));
                v
            }
        }
    }

    /// Forgets instances that no longer run.
    pub fn retain(&mut self, live: &[String]) {
        self.last.retain(|k, _| live.contains(k));
        self.disk.retain(|k, _| live.contains(k));
    }
}

/// Mean utilization (per mille) and used memory (bytes) of the given GPUs, via NVML loaded at
/// run time; `None` without NVML or GPUs.
pub fn gpu_usage(nvml: Option<&nvml_wrapper::Nvml>, indices: &[i64]) -> (Option<i64>, Option<i64>) {
    let Some(nvml) = nvml else { return (None, None) };
    if indices.is_empty() {
        return (None, None);
    }
    let (mut util, mut mem, mut n) = (0i64, 0i64, 0i64);
    for &i in indices {
        let Ok(idx) = u32::try_from(i) else { continue };
        let Ok(d) = nvml.device_by_index(idx) else { continue };
        if let Ok(u) = d.utilization_rates() {
            util += i64::from(u.gpu) * 10;
            n += 1;
        }
        if let Ok(m) = d.memory_info() {
            mem += i64::try_from(m.used).unwrap_or(i64::MAX);
        }
    }
    if n == 0 {
        return (None, None);
    }
    (Some(util / n), Some(mem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_the_interval_and_never_negative() {
        let t0 = Instant::now();
        let a = Reading { at: t0, cpu_usec: 1_000_000, rx_bytes: 100, tx_bytes: 0 };
        let b = Reading { at: t0 + Duration::from_secs(2), cpu_usec: 4_000_000, rx_bytes: 2_100, tx_bytes: 500 };
        assert_eq!(rates(&a, &b), (1_500, 1_000, 250), "3 s of CPU in 2 s is 1.5 cores");
        let reset = Reading { at: t0 + Duration::from_secs(3), cpu_usec: 10, rx_bytes: 0, tx_bytes: 0 };
        assert_eq!(rates(&b, &reset), (0, 0, 0));
        let mut s = Sampler::default();
        assert_eq!(s.observe("i", a), None, "the first reading only primes");
        assert_eq!(s.observe("i", b), Some((1_500, 1_000, 250)));
        s.retain(&[]);
        assert_eq!(s.observe("i", b), None);
    }

    #[test]
    fn disk_bytes_counts_allocated_blocks() {
        let d = std::env::temp_dir().join(format!("nimbus-disk-bytes-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), vec![7u8; 256 * 1024]).unwrap();
        let n = disk_bytes(&d);
        std::fs::remove_dir_all(&d).unwrap();
        assert!(n >= 256 * 1024, "{n}");
        assert!(n < 1024 * 1024, "{n}");
    }
}
