//! Metering rules: which instance states are billed and how, and how an interval of use turns
//! into money. Pure; the control plane opens and closes intervals in the same transaction as the
//! state change that causes them, and every figure (usage, hourly transactions, invoices) is
//! computed from intervals with [`pieces`] and [`charge`], so they agree to the micro-dollar.

use crate::instance::InstanceState;
use crate::money::Micros;

/// What an instance in a state is billed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    None,
    /// The instance type's hourly price (it includes the type's disk).
    Compute,
    /// Only its disk, per GiB-hour: it keeps its disk but no processor.
    Storage,
}

impl Meter {
    pub fn as_str(self) -> &'static str {
        match self {
            Meter::None => "none",
            Meter::Compute => "compute",
            Meter::Storage => "storage",
        }
    }
}

/// Billed while it runs (or is being restarted, which a customer asked for and keeps the
/// machine); disk-only while stopped or on its way there and back; nothing while it is being
/// created, while its host is lost (`unhealthy`: not the customer's doing), or once it is going.
pub fn meter_for(s: InstanceState) -> Meter {
    use InstanceState as S;
    match s {
        S::Active | S::Restarting => Meter::Compute,
        S::Stopping | S::Stopped | S::Starting => Meter::Storage,
        S::Pending | S::Booting | S::Unhealthy | S::Terminating | S::Terminated => Meter::None,
    }
}

/// What a stopped instance that keeps its host reservation (processors, memory, GPUs) costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopBilling {
    /// Its disk only (the Lambda and native dialects).
    #[default]
    Storage,
    /// The full price, as the reservation is still held (Voltage Park's stop; its
    /// "disassociated" stop releases the reservation and bills the disk only).
    Reserved,
}

impl StopBilling {
    pub fn as_str(self) -> &'static str {
        match self {
            StopBilling::Storage => "storage",
            StopBilling::Reserved => "reserved",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "reserved" {
            StopBilling::Reserved
        } else {
            StopBilling::Storage
        }
    }
}

/// [`meter_for`] for one instance: a stop that keeps a reservation billed at the full price
/// (`Reserved`) is `Compute`; once the reservation is released it is the disk only.
pub fn meter_for_instance(s: InstanceState, billing: StopBilling, compute_released: bool) -> Meter {
    match meter_for(s) {
        Meter::Storage if billing == StopBilling::Reserved && !compute_released => Meter::Compute,
        m => m,
    }
}

pub const HOUR_SECONDS: i64 = 3_600;

/// Splits `[start, end)` (µs) into per-hour pieces `(hour start in Unix seconds, whole seconds)`.
/// Both ends are truncated to whole seconds first, and hour boundaries are whole seconds, so
/// the pieces of an interval always add up to its whole seconds: per-second granularity.
pub fn pieces(start_us: i64, end_us: i64) -> Vec<(i64, i64)> {
    let (s, e) = (start_us.div_euclid(1_000_000), end_us.div_euclid(1_000_000));
    let mut out = Vec::new();
    let mut t = s;
    while t < e {
        let hour = t - t.rem_euclid(HOUR_SECONDS);
        let next = (hour + HOUR_SECONDS).min(e);
        out.push((hour, next - t));
        t = next;
    }
    out
}

/// The charge for `seconds` at `rate` per hour, rounded down to the micro-dollar.
pub fn charge(rate_per_hour: Micros, seconds: i64) -> Micros {
    Micros::per_hour_for_seconds(rate_per_hour, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_hours_and_keep_every_second() {
        let h = 3_600_000_000i64;
        // 00:59:30.7 → 02:00:10.2 : 29 s (30.7 truncated to 30), a whole hour, 10 s.
        let p = pieces(h - 29_300_000, 2 * h + 10_200_000);
        assert_eq!(p, vec![(0, 30), (3600, 3600), (7200, 10)]);
        assert_eq!(p.iter().map(|x| x.1).sum::<i64>(), (2 * h + 10_200_000) / 1_000_000 - (h - 29_300_000) / 1_000_000);
        assert!(pieces(5_000_000, 5_900_000).is_empty(), "under one second: nothing");
        assert!(pieces(9, 3).is_empty());
    }

    #[test]
    fn states_meter_as_documented() {
        assert_eq!(meter_for(InstanceState::Active), Meter::Compute);
        assert_eq!(meter_for(InstanceState::Restarting), Meter::Compute);
        assert_eq!(meter_for(InstanceState::Stopped), Meter::Storage);
        assert_eq!(meter_for(InstanceState::Booting), Meter::None);
        assert_eq!(meter_for(InstanceState::Unhealthy), Meter::None);
        assert_eq!(meter_for_instance(InstanceState::Stopped, StopBilling::Reserved, false), Meter::Compute);
        assert_eq!(meter_for_instance(InstanceState::Stopped, StopBilling::Reserved, true), Meter::Storage);
        assert_eq!(meter_for_instance(InstanceState::Stopped, StopBilling::Storage, false), Meter::Storage);
        assert_eq!(meter_for_instance(InstanceState::Booting, StopBilling::Reserved, false), Meter::None);
        assert_eq!(charge(Micros::from_cents(249), 1800), Micros(1_245_000));
        assert_eq!(charge(Micros(7), 1), Micros(0), "rounded down per piece");
    }
}
