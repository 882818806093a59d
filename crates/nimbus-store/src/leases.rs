//! Leases: one holder of a named background duty at a time among server replicas, expiring, and
//! fenced by a generation.
//!
//! `lease_acquire` renews the caller's live lease or takes a free or expired one (the generation
//! grows by one at each change of holder). A holder then runs its work inside a [`FENCE`] scope,
//! and every transaction [`Store::begin`] opens there starts with a conditional `UPDATE` of the
//! lease row that matches only the holder's (holder, generation) with time left. On PostgreSQL
//! that statement takes the row's lock: a takeover's `UPDATE` waits for the fenced transaction to
//! end, and a transaction that starts after a takeover committed matches nothing and fails. So
//! an ex-holder that was paused (GC, SIGSTOP, a slow disk) past its lease and woke up writes
//! nothing, however late it wakes. On SQLite the one-writer lock gives the same order.

use nimbus_core::{ConflictReason, Error};
use sqlx::Row;

use crate::{db_err, Conn, Store};

/// The lease a task's transactions must prove (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub holder: String,
    pub generation: i64,
    /// The clock the lease is judged by (µs): the holder's view of "now" when it began the work.
    pub now: i64,
}

tokio::task_local! {
    /// Set around a lease holder's work; read by [`Store::begin`].
    pub static FENCE: Fence;
}

pub(crate) async fn fence_in_txn(tx: &mut Conn) -> Result<(), Error> {
    let Ok(f) = FENCE.try_with(Fence::clone) else { return Ok(()) };
    let n = sqlx::query("UPDATE leases SET until = until WHERE name = $1 AND holder = $2 AND generation = $3 AND until >= $4")
        .bind(&f.name)
        .bind(&f.holder)
        .bind(f.generation)
        .bind(f.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("proving the lease"))?
        .rows_affected();
    if n == 1 {
        Ok(())
    } else {
        Err(Error::conflict(ConflictReason::Concurrent, format!("the {} lease is no longer this replica's", f.name)))
    }
}

impl Store {
    /// Renews `holder`'s live lease on `name` until `until`, or takes it when it is free or
    /// expired at `now`. The generation when held, `None` while another holder's is live.
    pub async fn lease_acquire(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<Option<i64>, Error> {
        let mut tx = self.begin_unfenced().await?;
        let renewed = sqlx::query("UPDATE leases SET until = $1 WHERE name = $2 AND holder = $3 AND until >= $4 RETURNING generation")
            .bind(until)
            .bind(name)
            .bind(holder)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("renewing a lease"))?;
        let row = match renewed {
            Some(r) => Some(r),
            None => {
                sqlx::query("INSERT INTO leases (name, holder, generation, until) VALUES ($1, NULL, 0, 0) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("creating a lease"))?;
                sqlx::query(
                    "UPDATE leases SET holder = $1, generation = generation + 1, until = $2 \
                     WHERE name = $3 AND (holder IS NULL OR until < $4) RETURNING generation",
                )
                .bind(holder)
                .bind(until)
                .bind(name)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("taking a lease"))?
            }
        };
        tx.commit().await.map_err(db_err("committing lease transaction"))?;
        row.map(|r| r.try_get(0)).transpose().map_err(db_err("reading a lease"))
    }

    /// Gives `holder`'s lease up (a clean shutdown), so another replica takes it at once.
    pub async fn lease_release(&self, name: &str, holder: &str) -> Result<(), Error> {
        sqlx::query("UPDATE leases SET holder = NULL, until = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.w())
            .await
            .map_err(db_err("releasing a lease"))?;
        Ok(())
    }

    /// The lease's holder and generation (for tests and operators).
    pub async fn lease_get(&self, name: &str) -> Result<Option<(Option<String>, i64, i64)>, Error> {
        let row = sqlx::query("SELECT holder, generation, until FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading a lease"))?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose().map_err(db_err("reading a lease"))
    }
}
