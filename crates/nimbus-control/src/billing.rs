//! Invoices and estimates, read from the metering ledger and the open usage intervals.
//!
//! An invoice covers one calendar month (UTC) and lists the ledger's hourly charges summed per
//! SKU and kind. It is `open` while hours of its month are still to be rolled up, then `final`.
//! Balances run from the organization's first charge: what it owed at the start of the month,
//! the month's charges, and what it owes at the end (payments and credits are not modelled yet).

use chrono::{Datelike, TimeZone, Utc};
use nimbus_core::auth::{Actor, Permission};
use nimbus_core::metering::charge;
use nimbus_core::money::Micros;
use nimbus_core::Error;
use nimbus_store::LedgerLine;
use sha2::{Digest, Sha256};

use crate::{metering, Control};

#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: String,
    /// `YYYY-MM`.
    pub period: String,
    pub period_start: i64,
    pub period_end: i64,
    /// `open` or `final`.
    pub status: &'static str,
    pub lines: Vec<LedgerLine>,
    pub total: Micros,
    /// Credits granted in the month.
    pub credits: Micros,
    pub balance_start: Micros,
    pub balance_end: Micros,
}

fn month_start_of(y: i32, m: u32) -> i64 {
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().map(|t| t.timestamp_micros()).unwrap_or(0)
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
    }
}

fn ym(t: i64) -> (i32, u32) {
    let d = Utc.timestamp_micros(t).single().unwrap_or_default();
    (d.year(), d.month())
}

/// The end of the month that contains `t` (µs).
pub fn month_end(t: i64) -> i64 {
    let (y, m) = ym(t);
    let (ny, nm) = next_month(y, m);
    month_start_of(ny, nm)
}

fn invoice_id(org: &str, period: &str) -> String {
    hex::encode(&Sha256::digest(format!("nimbus-invoice\0{org}\0{period}").as_bytes())[..16])
}

async fn credits_between(c: &Control, actor: &Actor, from: i64, to: i64) -> Result<Micros, Error> {
    Ok(Micros(c.store().credit_list(&actor.org_id, from, to).await?.iter().map(|x| x.amount_micros).sum()))
}

/// What the org owed at `t` (µs): charges of the hours before it minus credits granted before it.
async fn balance_before(c: &Control, actor: &Actor, t: i64) -> Result<Micros, Error> {
    let charges = c.store().ledger_span(&actor.org_id, t / 1_000_000).await?.0;
    Ok(Micros(charges - credits_between(c, actor, i64::MIN / 2, t).await?.0))
}

/// Every month from the first charge to the current one, newest first.
pub async fn invoices(c: &Control, actor: &Actor) -> Result<Vec<Invoice>, Error> {
    actor.require(Permission::Read)?;
    let now = c.now();
    let Some(first_hour) = c.store().ledger_span(&actor.org_id, i64::MAX).await?.1 else { return Ok(Vec::new()) };
    let rolled = {
        let mut r = c.store().reader().await?;
        nimbus_store::Store::metering_cursor_in(&mut r, "hourly").await?.unwrap_or(0)
    };
    let (mut y, mut m) = ym(first_hour * 1_000_000);
    let (ny, nm) = ym(now);
    let mut out = Vec::new();
    loop {
        let (start, end) = (month_start_of(y, m), {
            let (a, b) = next_month(y, m);
            month_start_of(a, b)
        });
        let (s_s, e_s) = (start / 1_000_000, end / 1_000_000);
        let lines = c.store().ledger_lines(&actor.org_id, s_s, e_s).await?;
        let total = Micros(lines.iter().map(|l| l.amount_micros).sum());
        let credits = credits_between(c, actor, start, end).await?;
        let before = balance_before(c, actor, start).await?;
        let period = format!("{y:04}-{m:02}");
        out.push(Invoice {
            id: invoice_id(actor.org_id.as_str(), &period),
            period,
            period_start: start,
            period_end: end,
            status: if rolled >= e_s { "final" } else { "open" },
            lines,
            total,
            credits,
            balance_start: before,
            balance_end: Micros(before.0 + total.0 - credits.0),
        });
        if (y, m) >= (ny, nm) {
            break;
        }
        (y, m) = next_month(y, m);
    }
    out.reverse();
    Ok(out)
}

pub async fn invoice(c: &Control, actor: &Actor, id: &str) -> Result<Invoice, Error> {
    invoices(c, actor).await?.into_iter().find(|i| i.id == id).ok_or_else(|| Error::not_found("invoice", id))
}

#[derive(Debug, Clone)]
pub struct Estimate {
    /// The proposed instance type × hours, when asked.
    pub proposed: Option<(String, i64, Micros)>,
    pub month_to_date: Micros,
    /// What what is running (or stored) now costs from now to the end of the month.
    pub current_to_month_end: Micros,
    pub projected_month_total: Micros,
    pub month_end: i64,
}

pub async fn estimate(c: &Control, actor: &Actor, instance_type: Option<&str>, hours: Option<i64>) -> Result<Estimate, Error> {
    actor.require(Permission::Read)?;
    let proposed = match (instance_type, hours) {
        (None, None) => None,
        (Some(t), h) => {
            let h = h.unwrap_or(1);
            if !(1..=24 * 366).contains(&h) {
                return Err(Error::invalid("hours", "must be between 1 and 8784"));
            }
            let it = c.config().instance_type(t).ok_or_else(|| Error::invalid("instance_type", format!("unknown instance type {t:?}")))?;
            Some((it.name.clone(), h, charge(Micros::from_cents(it.price_cents_per_hour), h * 3600)))
        }
        (None, Some(_)) => return Err(Error::invalid("instance_type", "required with hours")),
    };
    let now = c.now();
    let end = month_end(now);
    let (y, m) = ym(now);
    let start = month_start_of(y, m);
    let mtd = Micros(metering::usage(c, actor, start, now).await?.iter().map(|l| l.amount.0).sum());
    let open = c.store().usage_list_by_org(&actor.org_id, now, now + 1).await?;
    let remaining = (end - now).div_euclid(1_000_000);
    let ahead = Micros(open.iter().filter(|u| u.ended_at.is_none()).map(|u| charge(Micros(u.rate_micros_per_hour), remaining).0).sum());
    Ok(Estimate {
        proposed,
        month_to_date: mtd,
        current_to_month_end: ahead,
        projected_month_total: Micros(mtd.0 + ahead.0),
        month_end: end,
    })
}

/// The month `now` falls in, `YYYY-MM` (spend limits are per month).
pub(crate) fn current_period(now: i64) -> String {
    let (y, m) = ym(now);
    format!("{y:04}-{m:02}")
}

/// Month-to-date spend of the resources `ids` of `org` (a cluster's nodes), from the same
/// figures as the org's usage.
pub(crate) async fn month_spend_of(c: &Control, org: &nimbus_core::ids::OrgId, ids: &[String]) -> Result<Micros, Error> {
    let now = c.now();
    let (y, m) = ym(now);
    let start = month_start_of(y, m);
    if now <= start {
        return Ok(Micros(0));
    }
    let lines = metering::usage_of(c, org, start, now).await?;
    Ok(Micros(lines.iter().filter(|l| ids.contains(&l.resource_id)).map(|l| l.amount.0).sum()))
}

/// Month-to-date spend of `org` and what its open intervals add until the end of the month.
pub(crate) async fn month_projection(c: &Control, org: &nimbus_core::ids::OrgId) -> Result<(Micros, Micros), Error> {
    let now = c.now();
    let (y, m) = ym(now);
    let mtd = Micros(metering::usage_of(c, org, month_start_of(y, m), now).await?.iter().map(|l| l.amount.0).sum());
    let remaining = (month_end(now) - now).div_euclid(1_000_000);
    let open = c.store().usage_list_by_org(org, now, now + 1).await?;
    let ahead = Micros(open.iter().filter(|u| u.ended_at.is_none()).map(|u| charge(Micros(u.rate_micros_per_hour), remaining).0).sum());
    Ok((mtd, ahead))
}

/// Validates a spend limit: cents in range (or `None`), action `stop` or `notify`.
pub(crate) fn check_spend_limit(cents: Option<i64>, action: &str) -> Result<(), Error> {
    if cents.is_some_and(|v| !(1..=1_000_000_000_000).contains(&v)) {
        return Err(Error::invalid("spend_limit_cents", "must be between 1 and 1,000,000,000,000 (0 removes the limit)"));
    }
    if !matches!(action, "stop" | "notify") {
        return Err(Error::invalid("spend_limit_action", "must be stop or notify"));
    }
    Ok(())
}

/// Refuses a launch whose projected month (what is spent, what runs to month end, and the new
/// instances to month end) would pass the organization's spend limit.
pub(crate) async fn check_launch(
    c: &Control,
    org: &nimbus_core::ids::OrgId,
    price_cents_per_hour: i64,
    quantity: i64,
) -> Result<(), Error> {
    let Some(o) = c.store().org_get(org).await? else { return Ok(()) };
    let Some(limit) = o.spend_limit_cents else { return Ok(()) };
    let (mtd, ahead) = month_projection(c, org).await?;
    let remaining = (month_end(c.now()) - c.now()).div_euclid(1_000_000);
    let new = Micros(charge(Micros::from_cents(price_cents_per_hour), remaining).0.saturating_mul(quantity));
    let projected = Micros(mtd.0 + ahead.0 + new.0);
    if projected > Micros::from_cents(limit) {
        return Err(Error::QuotaExceeded {
            message: format!(
                "spend limit: this launch would bring the month's projected spend to {projected} USD (spent {mtd}, running to month end {ahead}, this launch {new}), over the limit of {} USD",
                Micros::from_cents(limit)
            ),
        });
    }
    Ok(())
}

/// Acts on organizations whose month-to-date spend reached their limit, once per month: an
/// event (`billing.spend_limit_reached`) always, and with action `stop` their running
/// instances are stopped. Returns how many organizations it acted on.
pub async fn enforce_spend_limits(c: &Control) -> Result<usize, Error> {
    let now = c.now();
    let (y, m) = ym(now);
    let period = format!("{y:04}-{m:02}");
    let mut acted = 0;
    for o in c.store().org_list().await? {
        let Some(limit) = o.spend_limit_cents else { continue };
        if o.spend_limit_reached.as_deref() == Some(period.as_str()) {
            continue;
        }
        let (mtd, _) = month_projection(c, &o.id).await?;
        if mtd < Micros::from_cents(limit) {
            continue;
        }
        let instances = c.store().instance_list_by_org(&o.id).await?;
        let running: Vec<&nimbus_core::model::Instance> = instances
            .iter()
            .filter(|i| i.state == nimbus_core::instance::InstanceState::Active && o.spend_limit_action == "stop")
            .collect();
        let mut tx = c.store().begin().await?;
        let mut hosts: Vec<nimbus_core::ids::HostId> = running.iter().filter_map(|i| i.host_id.clone()).collect();
        hosts.sort();
        hosts.dedup();
        for h in &hosts {
            nimbus_store::Store::host_bump_generation_in_txn(&mut tx, h).await?;
        }
        if !nimbus_store::Store::org_mark_spend_limit_reached_in_txn(&mut tx, &o.id, &period).await? {
            continue;
        }
        let mut stopped = Vec::new();
        for i in running {
            use nimbus_core::instance::InstanceState as S;
            let moved = nimbus_store::Store::instance_transition_in_txn(
                &mut tx,
                &i.id,
                S::Active,
                S::Stopping,
                &nimbus_store::InstanceUpdate::default(),
                now,
            )
            .await?;
            if moved {
                metering::instance_moved(c, &mut tx, i, S::Active, S::Stopping, now).await?;
                stopped.push(i.id.to_string());
            }
        }
        nimbus_store::Store::org_bump_instances_generation_in_txn(&mut tx, &o.id).await?;
        nimbus_store::Store::event_append_in_txn(
            &mut tx,
            nimbus_store::NewEvent {
                org_id: Some(&o.id),
                kind: "billing.spend_limit_reached",
                resource_type: "organization",
                resource_id: o.id.as_str(),
                actor_key_id: None,
                payload: serde_json::json!({"limit_cents": limit, "spent_micros": mtd.0, "period": period, "action": o.spend_limit_action, "stopped": stopped}),
                now,
            },
        )
        .await?;
        nimbus_store::Store::commit(tx).await?;
        for h in &hosts {
            c.hosts().wake(h);
        }
        acted += 1;
    }
    Ok(acted)
}

/// The organization's hourly rate now: what its open usage intervals cost per hour.
pub async fn hourly_rate(c: &Control, actor: &Actor) -> Result<Micros, Error> {
    actor.require(Permission::Read)?;
    let now = c.now();
    let open = c.store().usage_list_by_org(&actor.org_id, now, now + 1).await?;
    Ok(Micros(open.iter().filter(|u| u.ended_at.is_none()).map(|u| u.rate_micros_per_hour).sum()))
}

/// What one GiB of storage costs per hour (READ, like every price the tenant APIs show).
pub async fn storage_hourly_rate(c: &Control, actor: &Actor) -> Result<Micros, Error> {
    actor.require(Permission::Read)?;
    Ok(Micros(c.config().pricing.storage_gib_hour_micros))
}

/// Hourly charges of `[from, to)` (µs, hour-aligned by the ledger), newest first.
pub async fn transactions(c: &Control, actor: &Actor, from: i64, to: i64) -> Result<Vec<nimbus_store::LedgerTransaction>, Error> {
    actor.require(Permission::Read)?;
    c.store().ledger_transactions(&actor.org_id, from.div_euclid(1_000_000), to.div_euclid(1_000_000)).await
}

/// Credits granted in `[from, to)` (µs), oldest first.
pub async fn credits(c: &Control, actor: &Actor, from: i64, to: i64) -> Result<Vec<nimbus_store::Credit>, Error> {
    actor.require(Permission::Read)?;
    c.store().credit_list(&actor.org_id, from, to).await
}

/// One month's charges and credits with the balance before it, its change, and the balance after.
pub async fn month_report(
    c: &Control,
    actor: &Actor,
    year: i32,
    month: u32,
) -> Result<(Vec<nimbus_store::LedgerTransaction>, Vec<nimbus_store::Credit>, Micros, Micros, Micros), Error> {
    actor.require(Permission::Read)?;
    if !(1..=12).contains(&month) || !(2000..=2200).contains(&year) {
        return Err(Error::invalid("month", "must be a month 1–12 of a year 2000–2200"));
    }
    let start = month_start_of(year, month);
    let (ny, nm) = next_month(year, month);
    let end = month_start_of(ny, nm);
    let txs = transactions(c, actor, start, end).await?;
    let granted = credits(c, actor, start, end).await?;
    let before = balance_before(c, actor, start).await?;
    let delta = Micros(txs.iter().map(|t| t.amount_micros).sum::<i64>() - granted.iter().map(|g| g.amount_micros).sum::<i64>());
    Ok((txs, granted, before, delta, Micros(before.0 + delta.0)))
}
