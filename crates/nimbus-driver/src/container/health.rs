//! What the container driver sees of its GPUs' health (`Driver::gpu_signals`) and how it
//! resets an idle one: NVML for Xid events (a watcher thread on NVML's event set, since an Xid
//! is an event, not a state), lost GPUs, pending page retirements, uncorrected ECC counts,
//! hardware slowdowns and running processes; `nvidia-smi` for row remapping (NVML's call for it
//! has no safe wrapper in nvml-wrapper, and this workspace has no `unsafe`) and for the reset
//! itself (`nvidia-smi --gpu-reset`, which refuses a GPU that is in use).
//!
//! What the signals mean is decided elsewhere (`nimbus_core::gpu_health`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nimbus_core::gpu_health::Signals;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

/// Xids seen by the watcher and not yet handed out, by GPU UUID.
#[derive(Default)]
pub struct XidWatch {
    pending: Mutex<BTreeMap<String, Vec<u64>>>,
    started: OnceLock<()>,
}

impl XidWatch {
    /// Starts the watcher thread once (it lives as long as the process); a host without NVML,
    /// or whose GPUs do not deliver Xid events, logs why and watches nothing.
    pub fn ensure_started(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            let me = self.clone();
            let spawned = std::thread::Builder::new().name("nvml-xid".into()).spawn(move || me.watch());
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the NVML Xid watcher");
            }
        });
    }

    fn watch(&self) {
        let Ok(nvml) = Nvml::init() else { return };
        let Ok(count) = nvml.device_count() else { return };
        let mut set = match nvml.create_event_set() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "NVML event sets unavailable: Xid errors are not watched");
                return;
            }
        };
        for i in 0..count {
            let Ok(d) = nvml.device_by_index(i) else { continue };
            set = match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => s,
                Err(e) => {
                    // The set is released on failure; start a new one for the other GPUs.
                    tracing::warn!(gpu = i, error = %e.error, "this GPU delivers no Xid events");
                    match nvml.create_event_set() {
                        Ok(s) => s,
                        Err(_) => return,
                    }
                }
            };
        }
        loop {
            match set.wait(1_000) {
                Ok(ev) => {
                    let xid = match ev.event_data {
                        Some(XidError::Value(x)) => x,
                        // An Xid NVML could not decode: still an Xid, which drains the GPU.
                        Some(XidError::Unknown) | None => u64::MAX,
                    };
                    let uuid = ev.device.uuid().unwrap_or_default();
                    tracing::warn!(uuid = %uuid, xid, "GPU Xid event");
                    self.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(uuid).or_default().push(xid);
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for NVML events failed; Xid errors are no longer watched");
                    return;
                }
            }
        }
    }

    fn take(&self, uuid: &str) -> Vec<u64> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(uuid).unwrap_or_default()
    }
}

/// The hardware slowdowns a GPU is under, by name (software clock policies are not health).
pub fn throttle_names(r: ThrottleReasons) -> Vec<String> {
    [
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake"),
    ]
    .into_iter()
    .filter(|(bit, _)| r.contains(*bit))
    .map(|(_, n)| n.to_owned())
    .collect()
}

/// Row-remapping state by GPU UUID, from `nvidia-smi --query-remapped-rows=gpu_uuid,
/// remapped_rows.pending,remapped_rows.failure --format=csv,noheader`: `(pending, failed)`.
pub fn parse_remapped_rows(csv: &str) -> BTreeMap<String, (bool, bool)> {
    let yes = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "yes" | "1" | "true");
    csv.lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let uuid = f.next()?.trim();
            let (pending, failed) = (f.next()?, f.next()?);
            uuid.starts_with("GPU-").then(|| (uuid.to_owned(), (yes(pending), yes(failed))))
        })
        .collect()
}

fn remapped_rows() -> BTreeMap<String, (bool, bool)> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-remapped-rows=gpu_uuid,remapped_rows.pending,remapped_rows.failure", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_remapped_rows(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// One look at every GPU (blocking; run it off the async threads).
pub fn signals(nvml: &Nvml, xids: &XidWatch) -> Vec<Signals> {
    let Ok(count) = nvml.device_count() else { return Vec::new() };
    let remaps = remapped_rows();
    let mut out = Vec::new();
    for i in 0..count {
        let index = i64::from(i);
        let d = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(NvmlError::GpuLost) => {
                out.push(Signals { index, lost: true, processes: None, ..Signals::default() });
                continue;
            }
            Err(e) => {
                tracing::debug!(gpu = i, error = %e, "GPU not readable this time");
                continue;
            }
        };
        let uuid = d.uuid().unwrap_or_default();
        let lost = matches!(d.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu), Err(NvmlError::GpuLost));
        let processes = match (d.running_compute_processes_count(), d.running_graphics_processes_count()) {
            (Ok(c), Ok(g)) => Some(c + g),
            (Ok(c), Err(NvmlError::NotSupported)) => Some(c),
            _ => None,
        };
        let (remap_pending, remap_failed) = remaps.get(&uuid).copied().unwrap_or((false, false));
        out.push(Signals {
            index,
            xids: xids.take(&uuid),
            lost,
            retired_pages_pending: d.are_pages_pending_retired().unwrap_or(false),
            remap_pending,
            remap_failed,
            uncorrected_volatile: d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile).unwrap_or(0),
            throttle: d.current_throttle_reasons().map(throttle_names).unwrap_or_default(),
            processes,
            mig_mode: d.mig_mode().is_ok_and(|m| m.current == 1),
            uuid,
        });
    }
    out
}

/// Resets GPU `index` with `nvidia-smi --gpu-reset` (which itself refuses a GPU in use).
pub async fn reset(index: i64) -> Result<(), String> {
    let run = tokio::process::Command::new("nvidia-smi").args(["--gpu-reset", "-i", &index.to_string()]).output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!("nvidia-smi --gpu-reset: {}", String::from_utf8_lossy(&o.stdout).trim())),
        Ok(Err(e)) => Err(format!("nvidia-smi: {e}")),
        Err(_) => Err("nvidia-smi --gpu-reset did not finish in 60 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remapped_rows_parse() {
        let csv = "GPU-1f2e, No, No\nGPU-aa, Yes, No\nGPU-bb, No, Yes\n[N/A], x, y\ngarbage\n";
        let m = parse_remapped_rows(csv);
        assert_eq!(m.len(), 3);
        assert_eq!(m["GPU-1f2e"], (false, false));
        assert_eq!(m["GPU-aa"], (true, false));
        assert_eq!(m["GPU-bb"], (false, true));
    }

    #[test]
    fn only_hardware_slowdowns_count() {
        assert_eq!(throttle_names(ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::SW_THERMAL_SLOWDOWN), ["hw_thermal_slowdown"]);
        assert!(throttle_names(ThrottleReasons::GPU_IDLE).is_empty());
    }
}
