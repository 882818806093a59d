//! GPU health: what the agent's observations of one GPU (NVML's Xid events, ECC, retired pages
//! and row remaps, hardware throttling, a GPU that fell off the bus) mean for the instances on
//! it and for placing new ones, and what clears them.
//!
//! Each Xid is acted on by the immediate-action bucket of NVIDIA's Xid catalog
//! (<https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>): `RESTART_APP` is
//! the tenant's program's problem and leaves the GPU in service; `RESET_GPU` takes the GPU out
//! until it was reset; `RESTART_BM` until the host rebooted; `CONTACT_SUPPORT` until the GPU
//! was serviced (it comes back with a new UUID) or an operator clears it on the host.
//!
//! Pure: the agent keeps a [`GpuState`] per GPU (persisted in its data dir), feeds it
//! [`Signals`] on every report and sends the resulting [`Condition`]; the server takes GPUs out
//! of placement and marks their instances `unhealthy` by it.

use serde::{Deserialize, Serialize};

/// How usable a GPU is, from best to worst (the order is the severity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    #[default]
    Ok,
    /// Works, but an operator should look (hardware slowdown, a high corrected-error rate).
    Degraded,
    /// Its instance keeps running, but nothing new is placed on it; it is reset once idle
    /// (a row remap or page retirement waiting for a reset to take effect).
    Drain,
    /// Unusable until reset: its instance is `unhealthy`; the agent resets it once idle.
    ResetRequired,
    /// Unusable until the host reboots.
    RebootRequired,
    /// Unusable until serviced: a new GPU (new UUID) or an operator's clear on the host.
    ServiceRequired,
}

impl Condition {
    pub const ALL: [Condition; 6] = [
        Condition::Ok,
        Condition::Degraded,
        Condition::Drain,
        Condition::ResetRequired,
        Condition::RebootRequired,
        Condition::ServiceRequired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Ok => "ok",
            Condition::Degraded => "degraded",
            Condition::Drain => "drain",
            Condition::ResetRequired => "reset_required",
            Condition::RebootRequired => "reboot_required",
            Condition::ServiceRequired => "service_required",
        }
    }

    pub fn parse(s: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// New instances may be placed on it.
    pub fn placeable(self) -> bool {
        self <= Condition::Degraded
    }

    /// An instance using it cannot rely on it now.
    pub fn fails_instance(self) -> bool {
        self >= Condition::ResetRequired
    }

    /// A reset of the idle GPU ends it.
    pub fn cleared_by_reset(self) -> bool {
        matches!(self, Condition::Drain | Condition::ResetRequired)
    }
}

/// The condition an Xid puts its GPU in, by the immediate action of NVIDIA's catalog, and
/// what it means. Xids not listed are taken out of placement (`Drain`) rather than ignored:
/// the instance keeps its GPU, an operator sees the code.
pub fn xid_condition(xid: u64) -> (Condition, &'static str) {
    use Condition as C;
    match xid {
        13 => (C::Ok, "graphics engine exception (the application's fault)"),
        31 => (C::Ok, "GPU memory page fault (the application's fault)"),
        43 => (C::Ok, "GPU stopped processing the application's channel (the application's fault)"),
        45 => (C::Ok, "preemptive cleanup after an application's error"),
        8 | 68 | 69 | 109 => (C::Ok, "engine error in one application's context (restart the application)"),
        94 => (C::Ok, "contained ECC error: only the application was affected"),
        63 => (C::Drain, "ECC page retirement or row remap recorded: takes effect at the next reset"),
        92 => (C::Degraded, "high single-bit ECC error rate"),
        48 => (C::ResetRequired, "double-bit ECC error"),
        95 => (C::ResetRequired, "uncontained ECC error"),
        46 | 61 | 62 => (C::ResetRequired, "GPU stopped processing or an internal micro-controller halted"),
        74 | 149 => (C::ResetRequired, "NVLink error"),
        119 | 120 => (C::ResetRequired, "GSP firmware error or timeout"),
        140 => (C::ResetRequired, "unrecovered ECC error"),
        79 => (C::RebootRequired, "GPU has fallen off the bus"),
        143 => (C::RebootRequired, "GPU initialisation failed"),
        64 => (C::ServiceRequired, "ECC page retirement or row remapping failed"),
        _ => (C::Drain, "Xid outside Nimbus's table (see NVIDIA's Xid catalog)"),
    }
}

/// One look at one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Signals {
    pub index: i64,
    pub uuid: String,
    /// NVML answers that the GPU is lost (fallen off the bus).
    #[serde(default)]
    pub lost: bool,
    /// Xid events since the previous look.
    #[serde(default)]
    pub xids: Vec<u64>,
    /// Retired pages waiting for a reset to take effect.
    #[serde(default)]
    pub retired_pages_pending: bool,
    /// Rows waiting for a reset to be remapped.
    #[serde(default)]
    pub remap_pending: bool,
    /// A row remap failed: the memory has an uncorrectable row.
    #[serde(default)]
    pub remap_failed: bool,
    /// Uncorrected ECC errors since the driver loaded (volatile; a reset zeroes them).
    #[serde(default)]
    pub uncorrected_volatile: u64,
    /// Hardware slowdowns active now (`hw_slowdown`, `hw_thermal_slowdown`, `hw_power_brake`).
    #[serde(default)]
    pub throttle: Vec<String>,
    /// Processes using it now (compute and graphics); `None`: unknown.
    #[serde(default)]
    pub processes: Option<u32>,
    /// MIG mode is on: its MIG devices, not the GPU, are what instances get.
    #[serde(default)]
    pub mig_mode: bool,
}

/// What the agent remembers of one GPU between looks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuState {
    pub uuid: String,
    /// The part set by events (Xids, falling off the bus), which only what its bucket allows
    /// clears.
    pub sticky: Condition,
    pub sticky_reasons: Vec<String>,
    /// The boot (`/proc/sys/kernel/random/boot_id`) the sticky condition was seen in.
    pub boot_id: String,
    /// Used by an instance since it was last checked idle (and reset, where allowed): it is
    /// not placed again until then.
    pub dirty: bool,
}

/// A GPU's health as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub condition: Condition,
    pub reasons: Vec<String>,
}

impl GpuState {
    /// A GPU seen for the first time, or with a new UUID (replaced): dirty until checked,
    /// since the agent cannot know who used it before.
    pub fn new(uuid: &str, boot_id: &str) -> GpuState {
        GpuState { uuid: uuid.to_owned(), boot_id: boot_id.to_owned(), dirty: true, ..GpuState::default() }
    }

    fn raise(&mut self, c: Condition, reason: String) {
        self.sticky = self.sticky.max(c);
        if c > Condition::Ok && !self.sticky_reasons.contains(&reason) {
            // Bounded: a GPU spewing one Xid a second must not grow the state file forever.
            if self.sticky_reasons.len() >= 16 {
                self.sticky_reasons.remove(0);
            }
            self.sticky_reasons.push(reason);
        }
    }

    /// Takes in one look and says where the GPU stands.
    pub fn observe(&mut self, s: &Signals, boot_id: &str) -> Assessment {
        if s.uuid != self.uuid && !s.uuid.is_empty() {
            // Another GPU in this slot: whatever was wrong was wrong with the old one.
            *self = GpuState::new(&s.uuid, boot_id);
        }
        if self.boot_id != boot_id {
            // A reboot resets every GPU; it does not repair one that needs service.
            if self.sticky < Condition::ServiceRequired {
                self.sticky = Condition::Ok;
                self.sticky_reasons.clear();
            }
            self.boot_id = boot_id.to_owned();
        }
        for &x in &s.xids {
            let (c, what) = xid_condition(x);
            self.raise(c, format!("Xid {x}: {what}"));
        }
        if s.lost {
            self.raise(Condition::RebootRequired, "NVML: the GPU is lost (fallen off the bus)".to_owned());
        }
        if s.remap_failed {
            self.raise(Condition::ServiceRequired, "row remapping failed".to_owned());
        }
        // The rest describes now, not an event: it clears itself when the GPU recovers.
        let mut condition = self.sticky;
        let mut reasons = self.sticky_reasons.clone();
        let mut now = |c: Condition, r: String| {
            condition = condition.max(c);
            reasons.push(r);
        };
        if s.uncorrected_volatile > 0 {
            now(Condition::ResetRequired, format!("{} uncorrected ECC errors since the driver loaded", s.uncorrected_volatile));
        }
        if s.remap_pending {
            now(Condition::Drain, "rows waiting for a reset to be remapped".to_owned());
        }
        if s.retired_pages_pending {
            now(Condition::Drain, "retired pages waiting for a reset".to_owned());
        }
        if !s.throttle.is_empty() {
            now(Condition::Degraded, format!("hardware slowdown: {}", s.throttle.join(", ")));
        }
        Assessment { condition, reasons }
    }

    /// The idle GPU was reset: what a reset clears is gone, and it is clean.
    pub fn reset_done(&mut self) {
        if self.sticky.cleared_by_reset() {
            self.sticky = Condition::Ok;
            self.sticky_reasons.clear();
        }
        self.dirty = false;
    }

    /// An operator cleared it (after servicing it in place).
    pub fn clear(&mut self) {
        self.sticky = Condition::Ok;
        self.sticky_reasons.clear();
    }
}

/// What to do with an idle GPU (one no instance of the host holds) after a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    Nothing,
    /// Processes still use it: wait (its previous tenant's processes are not gone yet).
    Wait,
    /// Reset it, then [`GpuState::reset_done`].
    Reset,
    /// Resets are off on this host: being idle is the check, mark it clean.
    MarkClean,
}

/// Whether an idle GPU needs a reset, and whether it may have one now. `resets` is the host's
/// policy (an operator can turn GPU resets off).
pub fn idle_action(state: &GpuState, a: &Assessment, processes: Option<u32>, resets: bool) -> IdleAction {
    let wants = state.dirty || a.condition.cleared_by_reset();
    if !wants {
        return IdleAction::Nothing;
    }
    if processes != Some(0) {
        return IdleAction::Wait;
    }
    if resets {
        IdleAction::Reset
    } else if state.dirty {
        IdleAction::MarkClean
    } else {
        IdleAction::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(xids: &[u64]) -> Signals {
        Signals { index: 0, uuid: "GPU-a".into(), xids: xids.to_vec(), processes: Some(0), ..Signals::default() }
    }

    fn clean() -> GpuState {
        GpuState { dirty: false, ..GpuState::new("GPU-a", "boot1") }
    }

    #[test]
    fn application_xids_leave_the_gpu_in_service() {
        let mut s = clean();
        let a = s.observe(&sig(&[13, 31, 43, 94]), "boot1");
        assert_eq!(a.condition, Condition::Ok);
        assert!(a.reasons.is_empty());
    }

    #[test]
    fn each_bucket_has_its_condition_and_what_clears_it() {
        // RESET_GPU: out of service, a reset clears it.
        let mut s = clean();
        let a = s.observe(&sig(&[48]), "boot1");
        assert_eq!(a.condition, Condition::ResetRequired);
        assert!(a.condition.fails_instance() && !a.condition.placeable());
        assert_eq!(s.observe(&sig(&[]), "boot1").condition, Condition::ResetRequired, "sticky across looks");
        s.reset_done();
        assert_eq!(s.observe(&sig(&[]), "boot1").condition, Condition::Ok);

        // RESTART_BM: a reset does not clear it, a reboot does.
        let mut s = clean();
        assert_eq!(s.observe(&sig(&[79]), "boot1").condition, Condition::RebootRequired);
        s.reset_done();
        assert_eq!(s.observe(&sig(&[]), "boot1").condition, Condition::RebootRequired);
        assert_eq!(s.observe(&sig(&[]), "boot2").condition, Condition::Ok);

        // CONTACT_SUPPORT: neither clears it; a new GPU (UUID) or an operator does.
        let mut s = clean();
        assert_eq!(s.observe(&sig(&[64]), "boot1").condition, Condition::ServiceRequired);
        s.reset_done();
        assert_eq!(s.observe(&sig(&[]), "boot2").condition, Condition::ServiceRequired);
        let replaced = Signals { uuid: "GPU-b".into(), ..sig(&[]) };
        assert_eq!(s.observe(&replaced, "boot2").condition, Condition::Ok);
        assert!(s.dirty, "a replaced GPU is checked before use");
        let mut s = clean();
        s.observe(&sig(&[64]), "boot1");
        s.clear();
        assert_eq!(s.observe(&sig(&[]), "boot1").condition, Condition::Ok);

        // Unknown Xids drain rather than being ignored.
        assert_eq!(clean().observe(&sig(&[999]), "boot1").condition, Condition::Drain);
    }

    #[test]
    fn current_signals_clear_themselves() {
        let mut s = clean();
        let lost = Signals { lost: true, ..sig(&[]) };
        assert_eq!(s.observe(&lost, "boot1").condition, Condition::RebootRequired);
        let mut s = clean();
        let hot = Signals { throttle: vec!["hw_thermal_slowdown".into()], ..sig(&[]) };
        let a = s.observe(&hot, "boot1");
        assert_eq!(a.condition, Condition::Degraded);
        assert!(a.condition.placeable() && !a.condition.fails_instance());
        assert!(a.reasons[0].contains("hw_thermal_slowdown"));
        assert_eq!(s.observe(&sig(&[]), "boot1").condition, Condition::Ok);
        let dbe = Signals { uncorrected_volatile: 2, ..sig(&[]) };
        assert_eq!(s.observe(&dbe, "boot1").condition, Condition::ResetRequired);
        let pending = Signals { remap_pending: true, ..sig(&[]) };
        assert_eq!(s.observe(&pending, "boot1").condition, Condition::Drain);
        let failed = Signals { remap_failed: true, ..sig(&[]) };
        assert_eq!(s.observe(&failed, "boot1").condition, Condition::ServiceRequired);
    }

    #[test]
    fn idle_gpus_are_reset_only_once_their_processes_are_gone() {
        let mut s = GpuState::new("GPU-a", "boot1");
        let a = s.observe(&sig(&[]), "boot1");
        assert_eq!(idle_action(&s, &a, Some(1), true), IdleAction::Wait, "a previous tenant's process still runs");
        assert_eq!(idle_action(&s, &a, None, true), IdleAction::Wait, "unknown is not idle");
        assert_eq!(idle_action(&s, &a, Some(0), true), IdleAction::Reset);
        assert_eq!(idle_action(&s, &a, Some(0), false), IdleAction::MarkClean, "resets off: idle is the check");
        s.reset_done();
        assert_eq!(idle_action(&s, &a, Some(0), true), IdleAction::Nothing);
        let a = s.observe(&sig(&[48]), "boot1");
        assert_eq!(idle_action(&s, &a, Some(0), true), IdleAction::Reset, "a reset is what clears it");
        assert_eq!(idle_action(&s, &a, Some(0), false), IdleAction::Nothing, "resets off: it stays out");
        let a = s.observe(&sig(&[79]), "boot1");
        s.reset_done();
        assert_eq!(idle_action(&s, &a, Some(0), true), IdleAction::Nothing, "a reset cannot help a lost GPU");
    }

    #[test]
    fn reasons_are_bounded() {
        let mut s = clean();
        for x in 1000..1100 {
            s.observe(&sig(&[x]), "boot1");
        }
        assert_eq!(s.sticky_reasons.len(), 16, "the latest 16");
        assert!(s.sticky_reasons[15].starts_with("Xid 1099"));
    }

    #[test]
    fn conditions_round_trip() {
        for c in Condition::ALL {
            assert_eq!(Condition::parse(c.as_str()), Some(c));
        }
        assert_eq!(Condition::parse("fine"), None);
    }
}
