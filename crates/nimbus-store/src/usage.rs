//! Usage intervals and the hourly ledger.

use nimbus_core::ids::OrgId;
use nimbus_core::model::UsageInterval;
use nimbus_core::Error;
use sqlx::any::AnyRow;

use crate::rows::get;
use crate::{db_err, Conn, Store};

const COLS: &str = "id, org_id, resource_type, resource_id, kind, sku, quantity, rate_micros_per_hour, started_at, ended_at";

fn interval(r: &AnyRow) -> Result<UsageInterval, Error> {
    Ok(UsageInterval {
        id: get(r, "id")?,
        org_id: OrgId::from_trusted(get(r, "org_id")?),
        resource_type: get(r, "resource_type")?,
        resource_id: get(r, "resource_id")?,
        kind: get(r, "kind")?,
        sku: get(r, "sku")?,
        quantity: get(r, "quantity")?,
        rate_micros_per_hour: get(r, "rate_micros_per_hour")?,
        started_at: get(r, "started_at")?,
        ended_at: get(r, "ended_at")?,
    })
}

/// One hourly charge of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub interval_id: String,
    pub hour_start: i64,
    pub seconds: i64,
    pub amount_micros: i64,
}

impl Store {
    pub async fn usage_open_in_txn(tx: &mut Conn, u: &UsageInterval) -> Result<(), Error> {
        sqlx::query(&format!("INSERT INTO usage_intervals ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
            .bind(&u.id)
            .bind(u.org_id.as_str())
            .bind(&u.resource_type)
            .bind(&u.resource_id)
            .bind(&u.kind)
            .bind(&u.sku)
            .bind(u.quantity)
            .bind(u.rate_micros_per_hour)
            .bind(u.started_at)
            .bind(u.ended_at)
            .execute(tx)
            .await
            .map_err(db_err("opening usage interval"))?;
        Ok(())
    }

    /// Closes every open interval of a resource at `now`.
    pub async fn usage_close_in_txn(tx: &mut Conn, resource_id: &str, now: i64) -> Result<u64, Error> {
        let r = sqlx::query("UPDATE usage_intervals SET ended_at = $1 WHERE resource_id = $2 AND ended_at IS NULL")
            .bind(now)
            .bind(resource_id)
            .execute(tx)
            .await
            .map_err(db_err("closing usage interval"))?;
        Ok(r.rows_affected())
    }

    /// Intervals of `org` that overlap `[from, to)` (µs).
    pub async fn usage_list_by_org(&self, org: &OrgId, from: i64, to: i64) -> Result<Vec<UsageInterval>, Error> {
        let mut c = self.reader().await?;
        sqlx::query(&format!(
            "SELECT {COLS} FROM usage_intervals WHERE org_id = $1 AND started_at < $2 AND (ended_at IS NULL OR ended_at > $3) ORDER BY started_at, id"
        ))
        .bind(org.as_str())
        .bind(to)
        .bind(from)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("listing usage"))?
        .iter()
        .map(interval)
        .collect()
    }

    /// Every interval (all orgs) that overlaps `[from, to)` (µs): the roll-up's input.
    pub async fn usage_list_overlapping_in(c: &mut Conn, from: i64, to: i64) -> Result<Vec<UsageInterval>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM usage_intervals WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2)"))
            .bind(to)
            .bind(from)
            .fetch_all(c)
            .await
            .map_err(db_err("listing usage for roll-up"))?
            .iter()
            .map(interval)
            .collect()
    }

    pub async fn ledger_insert_in_txn(tx: &mut Conn, org: &OrgId, e: &LedgerEntry, now: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO ledger_entries (id, org_id, interval_id, hour_start, seconds, amount_micros, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (interval_id, hour_start) DO NOTHING",
        )
        .bind(nimbus_core::ids::random_hex_id())
        .bind(org.as_str())
        .bind(&e.interval_id)
        .bind(e.hour_start)
        .bind(e.seconds)
        .bind(e.amount_micros)
        .bind(now)
        .execute(tx)
        .await
        .map_err(db_err("appending to the ledger"))?;
        Ok(())
    }

    /// Ledger rows of `org` for hours in `[from_s, to_s)` (Unix seconds).
    pub async fn ledger_list_by_org(&self, org: &OrgId, from_s: i64, to_s: i64) -> Result<Vec<LedgerEntry>, Error> {
        let mut c = self.reader().await?;
        let rows = sqlx::query(
            "SELECT interval_id, hour_start, seconds, amount_micros FROM ledger_entries WHERE org_id = $1 AND hour_start >= $2 AND hour_start < $3 \
             ORDER BY hour_start, interval_id",
        )
        .bind(org.as_str())
        .bind(from_s)
        .bind(to_s)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("reading the ledger"))?;
        rows.iter()
            .map(|r| {
                Ok(LedgerEntry {
                    interval_id: get(r, "interval_id")?,
                    hour_start: get(r, "hour_start")?,
                    seconds: get(r, "seconds")?,
                    amount_micros: get(r, "amount_micros")?,
                })
            })
            .collect()
    }

    pub async fn metering_cursor_in(c: &mut Conn, name: &str) -> Result<Option<i64>, Error> {
        let row = sqlx::query("SELECT rolled_until FROM metering_cursor WHERE name = $1")
            .bind(name)
            .fetch_optional(c)
            .await
            .map_err(db_err("reading metering cursor"))?;
        row.as_ref().map(|r| get(r, "rolled_until")).transpose()
    }

    pub async fn metering_cursor_set_in_txn(tx: &mut Conn, name: &str, until: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO metering_cursor (name, rolled_until) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET rolled_until = excluded.rolled_until",
        )
        .bind(name)
        .bind(until)
        .execute(tx)
        .await
        .map_err(db_err("advancing metering cursor"))?;
        Ok(())
    }
}

/// Ledger totals for one SKU and kind over a period (an invoice line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerLine {
    pub sku: String,
    pub kind: String,
    pub seconds: i64,
    pub amount_micros: i64,
}

impl Store {
    /// Ledger rows of `org` for hours in `[from_s, to_s)`, summed per SKU and kind.
    pub async fn ledger_lines(&self, org: &OrgId, from_s: i64, to_s: i64) -> Result<Vec<LedgerLine>, Error> {
        let mut c = self.reader().await?;
        let rows = sqlx::query(
            "SELECT u.sku AS sku, u.kind AS kind, CAST(SUM(l.seconds) AS BIGINT) AS seconds, CAST(SUM(l.amount_micros) AS BIGINT) AS amount \
             FROM ledger_entries l JOIN usage_intervals u ON u.id = l.interval_id \
             WHERE l.org_id = $1 AND l.hour_start >= $2 AND l.hour_start < $3 GROUP BY u.sku, u.kind ORDER BY u.sku, u.kind",
        )
        .bind(org.as_str())
        .bind(from_s)
        .bind(to_s)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("summing the ledger"))?;
        rows.iter()
            .map(|r| {
                Ok(LedgerLine { sku: get(r, "sku")?, kind: get(r, "kind")?, seconds: get(r, "seconds")?, amount_micros: get(r, "amount")? })
            })
            .collect()
    }

    /// Sum of `org`'s ledger before `to_s`, and the first hour it has (Unix seconds).
    pub async fn ledger_span(&self, org: &OrgId, to_s: i64) -> Result<(i64, Option<i64>), Error> {
        let mut c = self.reader().await?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) AS total, MIN(hour_start) AS first FROM ledger_entries \
             WHERE org_id = $1 AND hour_start < $2",
        )
        .bind(org.as_str())
        .bind(to_s)
        .fetch_one(&mut *c)
        .await
        .map_err(db_err("summing the ledger"))?;
        Ok((get(&row, "total")?, get(&row, "first")?))
    }
}

/// One hourly charge with what it was for: the Voltage Park dialect's "transaction".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTransaction {
    pub id: String,
    pub hour_start: i64,
    pub amount_micros: i64,
    pub created_at: i64,
    pub resource_type: String,
    pub resource_id: String,
    /// The instance's own creation and termination (µs), when the resource is an instance.
    pub instance_created_at: Option<i64>,
    pub instance_terminated_at: Option<i64>,
}

impl Store {
    /// Ledger rows of `org` for hours in `[from_s, to_s)`, newest first, with their resource.
    pub async fn ledger_transactions(&self, org: &OrgId, from_s: i64, to_s: i64) -> Result<Vec<LedgerTransaction>, Error> {
        let mut c = self.reader().await?;
        let rows = sqlx::query(
            "SELECT l.id AS id, l.hour_start AS hour_start, l.amount_micros AS amount, l.created_at AS created_at, \
             u.resource_type AS resource_type, u.resource_id AS resource_id, i.created_at AS i_created, i.terminated_at AS i_terminated \
             FROM ledger_entries l JOIN usage_intervals u ON u.id = l.interval_id LEFT JOIN instances i ON i.id = u.resource_id \
             WHERE l.org_id = $1 AND l.hour_start >= $2 AND l.hour_start < $3 ORDER BY l.hour_start DESC, l.id",
        )
        .bind(org.as_str())
        .bind(from_s)
        .bind(to_s)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("reading transactions"))?;
        rows.iter()
            .map(|r| {
                Ok(LedgerTransaction {
                    id: get(r, "id")?,
                    hour_start: get(r, "hour_start")?,
                    amount_micros: get(r, "amount")?,
                    created_at: get(r, "created_at")?,
                    resource_type: get(r, "resource_type")?,
                    resource_id: get(r, "resource_id")?,
                    instance_created_at: get(r, "i_created")?,
                    instance_terminated_at: get(r, "i_terminated")?,
                })
            })
            .collect()
    }
}

/// A credit granted to an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    pub id: String,
    pub amount_micros: i64,
    pub reason: String,
    pub created_at: i64,
}

impl Store {
    pub async fn credit_insert_in_txn(tx: &mut Conn, org: &OrgId, c: &Credit) -> Result<(), Error> {
        sqlx::query("INSERT INTO ledger_credits (id, org_id, amount_micros, reason, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&c.id)
            .bind(org.as_str())
            .bind(c.amount_micros)
            .bind(&c.reason)
            .bind(c.created_at)
            .execute(tx)
            .await
            .map_err(db_err("granting credit"))?;
        Ok(())
    }

    /// Credits of `org` granted in `[from, to)` (µs), oldest first.
    pub async fn credit_list(&self, org: &OrgId, from: i64, to: i64) -> Result<Vec<Credit>, Error> {
        let mut c = self.reader().await?;
        let rows = sqlx::query(
            "SELECT id, amount_micros, reason, created_at FROM ledger_credits WHERE org_id = $1 AND created_at >= $2 AND created_at < $3 ORDER BY created_at, id",
        )
        .bind(org.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("reading credits"))?;
        rows.iter()
            .map(|r| {
                Ok(Credit {
                    id: get(r, "id")?,
                    amount_micros: get(r, "amount_micros")?,
                    reason: get(r, "reason")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }
}
