//! Metering: usage intervals opened and closed inside the transactions of the state changes that
//! cause them, so that after a crash at any moment usage is neither lost nor counted twice; the
//! hourly roll-up into the ledger; and usage reports. The rules themselves (what each state
//! bills, how seconds become money) are in `nimbus_core::metering`.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::random_hex_id;
use nimbus_core::instance::InstanceState;
use nimbus_core::metering::{charge, meter_for_instance, pieces, Meter, HOUR_SECONDS};
use nimbus_core::model::{Instance, UsageInterval, Volume};
use nimbus_core::money::Micros;
use nimbus_core::Error;
use nimbus_store::{Conn, LedgerEntry, Store};

use crate::Control;

pub(crate) const CURSOR: &str = "hourly";

fn open(inst_or_vol: (&nimbus_core::ids::OrgId, &str, &str), kind: Meter, sku: &str, quantity: i64, rate: i64, now: i64) -> UsageInterval {
    let (org, resource_type, resource_id) = inst_or_vol;
    UsageInterval {
        id: random_hex_id(),
        org_id: org.clone(),
        resource_type: resource_type.to_owned(),
        resource_id: resource_id.to_owned(),
        kind: kind.as_str().to_owned(),
        sku: sku.to_owned(),
        quantity,
        rate_micros_per_hour: rate,
        started_at: now,
        ended_at: None,
    }
}

/// The interval an instance in `meter` should have open, if any.
fn instance_interval(c: &Control, i: &Instance, meter: Meter, now: i64) -> Option<UsageInterval> {
    let key = (&i.org_id, "instance", i.id.as_str());
    match meter {
        Meter::None => None,
        Meter::Compute => {
            let rate = i.price_micros_per_hour.unwrap_or_else(|| {
                Micros::from_cents(c.config().instance_type(&i.instance_type).map(|t| t.price_cents_per_hour).unwrap_or(0)).0
            });
            Some(open(key, meter, &i.instance_type, 1, rate, now))
        }
        Meter::Storage => {
            let rate = c.config().pricing.storage_gib_hour_micros.saturating_mul(i.resources.disk_gib);
            Some(open(key, meter, "storage", i.resources.disk_gib, rate, now))
        }
    }
}

/// Call in the transaction that moves `i` from `from` to `to` (after the move applied). Public
/// for `nimbus bench metering`, which times it.
pub async fn instance_moved(
    c: &Control,
    tx: &mut Conn,
    i: &Instance,
    from: InstanceState,
    to: InstanceState,
    now: i64,
) -> Result<(), Error> {
    let meter = |s| meter_for_instance(s, i.stop_billing, i.compute_released);
    switch(c, tx, i, meter(from), meter(to), now).await
}

/// Call in the transaction that changes how `old` is billed other than by its state alone (a
/// stop that releases the reservation, a start that claims it again); `new` is it afterwards.
pub(crate) async fn instance_remetered(c: &Control, tx: &mut Conn, old: &Instance, new: &Instance, now: i64) -> Result<(), Error> {
    let a = meter_for_instance(old.state, old.stop_billing, old.compute_released);
    let b = meter_for_instance(new.state, new.stop_billing, new.compute_released);
    switch(c, tx, new, a, b, now).await
}

async fn switch(c: &Control, tx: &mut Conn, i: &Instance, a: Meter, b: Meter, now: i64) -> Result<(), Error> {
    if a == b {
        return Ok(());
    }
    if a != Meter::None {
        Store::usage_close_in_txn(tx, i.id.as_str(), now).await?;
    }
    if let Some(u) = instance_interval(c, i, b, now) {
        Store::usage_open_in_txn(tx, &u).await?;
    }
    Ok(())
}

/// Call in the transaction that gives a stopped instance a new type (its disk size may change).
pub(crate) async fn instance_resized(c: &Control, tx: &mut Conn, resized: &Instance, now: i64) -> Result<(), Error> {
    Store::usage_close_in_txn(tx, resized.id.as_str(), now).await?;
    if let Some(u) = instance_interval(c, resized, meter_for_instance(resized.state, resized.stop_billing, resized.compute_released), now) {
        Store::usage_open_in_txn(tx, &u).await?;
    }
    Ok(())
}

/// Call when a volume is created or resized (re-opens at its size) or deleted (`None`).
pub(crate) async fn volume_changed(c: &Control, tx: &mut Conn, v: &Volume, size_gib: Option<i64>, now: i64) -> Result<(), Error> {
    Store::usage_close_in_txn(tx, v.id.as_str(), now).await?;
    if let Some(gib) = size_gib {
        let rate = c.config().pricing.storage_gib_hour_micros.saturating_mul(gib);
        Store::usage_open_in_txn(tx, &open((&v.org_id, "volume", v.id.as_str()), Meter::Storage, "storage", gib, rate, now)).await?;
    }
    Ok(())
}

/// Moves every completed hour since the last roll-up into the ledger (one row per interval and
/// hour). Idempotent: rows are unique per interval and hour, and the cursor moves in the same
/// transaction. Returns the hour (Unix seconds) it rolled up to.
pub async fn roll_up(c: &Control) -> Result<i64, Error> {
    let now = c.now();
    let cutoff = now.div_euclid(1_000_000);
    let cutoff = cutoff - cutoff.rem_euclid(HOUR_SECONDS);
    let mut tx = c.store().begin().await?;
    let cursor = Store::metering_cursor_in(&mut tx, CURSOR).await?;
    let from = match cursor {
        Some(f) => f,
        // First run: from the hour of the oldest interval still open or ending after "ever".
        None => Store::usage_list_overlapping_in(&mut tx, i64::MIN, cutoff * 1_000_000)
            .await?
            .iter()
            .map(|u| u.started_at.div_euclid(1_000_000))
            .min()
            .map(|s| s - s.rem_euclid(HOUR_SECONDS))
            .unwrap_or(cutoff),
    };
    if from >= cutoff {
        if cursor.is_none() {
            Store::metering_cursor_set_in_txn(&mut tx, CURSOR, cutoff).await?;
            Store::commit(tx).await?;
        }
        return Ok(from);
    }
    for u in Store::usage_list_overlapping_in(&mut tx, from * 1_000_000, cutoff * 1_000_000).await? {
        let end = u.ended_at.unwrap_or(i64::MAX).min(cutoff * 1_000_000);
        for (hour, seconds) in pieces(u.started_at, end).into_iter().filter(|(h, _)| *h >= from) {
            let amount = charge(Micros(u.rate_micros_per_hour), seconds).0;
            let e = LedgerEntry { interval_id: u.id.clone(), hour_start: hour, seconds, amount_micros: amount };
            Store::ledger_insert_in_txn(&mut tx, &u.org_id, &e, now).await?;
        }
    }
    Store::metering_cursor_set_in_txn(&mut tx, CURSOR, cutoff).await?;
    Store::commit(tx).await?;
    Ok(cutoff)
}

/// Whether an hour has completed since the last roll-up (a read, no write lock).
pub async fn roll_up_due(c: &Control) -> Result<bool, Error> {
    let now_s = c.now().div_euclid(1_000_000);
    let cutoff = now_s - now_s.rem_euclid(HOUR_SECONDS);
    let mut r = c.store().reader().await?;
    Ok(Store::metering_cursor_in(&mut r, CURSOR).await?.is_none_or(|f| f < cutoff))
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub resource_type: String,
    pub resource_id: String,
    pub kind: String,
    pub sku: String,
    pub quantity: i64,
    pub rate_micros_per_hour: i64,
    pub seconds: i64,
    pub amount: Micros,
}

/// What the org used in `[from, to)` (µs; `to` is capped at now), per interval. Amounts are
/// the same per-hour pieces the ledger holds, so for hour-aligned periods the two agree exactly.
pub async fn usage(c: &Control, actor: &Actor, from: i64, to: i64) -> Result<Vec<UsageLine>, Error> {
    actor.require(Permission::Read)?;
    usage_of(c, &actor.org_id, from, to).await
}

/// [`usage`] for any org (the spend-limit checks of the control plane itself).
pub(crate) async fn usage_of(c: &Control, org: &nimbus_core::ids::OrgId, from: i64, to: i64) -> Result<Vec<UsageLine>, Error> {
    if to <= from {
        return Err(Error::invalid("end", "must be after start"));
    }
    let now = c.now();
    let to = to.min(now);
    let mut out = Vec::new();
    for u in c.store().usage_list_by_org(org, from, to).await? {
        let (from_s, to_s) = (from.div_euclid(1_000_000), to.div_euclid(1_000_000));
        let (mut seconds, mut amount) = (0, Micros(0));
        // Each hourly piece covers [t, t + secs); only its part inside the period counts.
        let mut t = u.started_at.div_euclid(1_000_000);
        for (_, secs) in pieces(u.started_at, u.ended_at.unwrap_or(now)) {
            let (ps, pe) = (t.max(from_s), (t + secs).min(to_s));
            t += secs;
            if pe > ps {
                seconds += pe - ps;
                amount = Micros(amount.0 + charge(Micros(u.rate_micros_per_hour), pe - ps).0);
            }
        }
        if seconds > 0 {
            out.push(UsageLine {
                resource_type: u.resource_type,
                resource_id: u.resource_id,
                kind: u.kind,
                sku: u.sku,
                quantity: u.quantity,
                rate_micros_per_hour: u.rate_micros_per_hour,
                seconds,
                amount,
            });
        }
    }
    Ok(out)
}
