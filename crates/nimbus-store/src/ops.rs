//! What an operator's scraper reads of the database: counts that `/metrics` turns into gauges
//! at scrape time, and the store's own timings (transaction begin, which includes waiting for a
//! pooled connection, and commit) with its pools' occupancy.
//!
//! Counts are grouped in SQL so that a scrape costs a few small queries however many instances
//! there are.

use std::time::{Duration, Instant};

use nimbus_core::Error;
use prometheus::{HistogramOpts, HistogramVec};

use crate::rows::get;
use crate::{db_err, Store};

/// Instances not yet terminated, by state and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCount {
    pub state: String,
    pub instance_type: String,
    pub count: i64,
}

/// The webhook outbox: deliveries still to make, and when the oldest of them was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    pub pending: i64,
    pub oldest_pending_created_at: Option<i64>,
}

/// One pool's occupancy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub pool: &'static str,
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The store's latency histograms; registered by whoever serves `/metrics`. One per process
/// (a commit has no store at hand): tests that run several servers in one process share it.
#[derive(Clone)]
pub struct DbTimings {
    pub seconds: HistogramVec,
}

impl DbTimings {
    pub fn get() -> &'static DbTimings {
        static T: std::sync::OnceLock<DbTimings> = std::sync::OnceLock::new();
        T.get_or_init(DbTimings::new)
    }

    fn new() -> DbTimings {
        let opts = HistogramOpts::new(
            "nimbus_db_operation_seconds",
            "Database operations by kind: begin (waiting for a pooled connection, then BEGIN), commit, read_acquire.",
        )
        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        // Static names and labels: construction cannot fail.
        let seconds = HistogramVec::new(opts, &["op"]).unwrap_or_else(|e| panic!("nimbus_db_operation_seconds: {e}"));
        DbTimings { seconds }
    }

    pub(crate) fn observe(&self, op: &str, started: Instant) {
        self.seconds.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    }
}

impl Store {
    /// The writer's and the reader's pool (one and the same on PostgreSQL).
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let p = self.pools();
        let stats = |pool: &'static str, a: &sqlx::AnyPool| PoolStats {
            pool,
            size: a.size(),
            idle: u32::try_from(a.num_idle()).unwrap_or(u32::MAX),
            max: a.options().get_max_connections(),
        };
        match self.backend {
            crate::Backend::Sqlite => vec![stats("writer", &p.writer), stats("reader", &p.reader)],
            crate::Backend::Postgres => vec![stats("shared", &p.writer)],
        }
    }

    /// One round trip to the database on a reader connection (acquire included).
    pub async fn ping(&self) -> Result<Duration, Error> {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&self.r()).await.map_err(db_err("pinging the database"))?;
        Ok(t.elapsed())
    }

    pub async fn ops_instance_counts(&self) -> Result<Vec<InstanceCount>, Error> {
        let rows = sqlx::query(
            "SELECT state, instance_type, COUNT(*) AS n FROM instances WHERE state <> 'terminated' GROUP BY state, instance_type",
        )
        .fetch_all(&self.r())
        .await
        .map_err(db_err("counting instances"))?;
        rows.iter()
            .map(|r| Ok(InstanceCount { state: get(r, "state")?, instance_type: get(r, "instance_type")?, count: get(r, "n")? }))
            .collect()
    }

    pub async fn ops_outbox_depth(&self) -> Result<OutboxDepth, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_deliveries WHERE state = 'pending'")
            .fetch_one(&self.r())
            .await
            .map_err(db_err("measuring the webhook outbox"))?;
        Ok(OutboxDepth { pending: get(&row, "n")?, oldest_pending_created_at: get(&row, "oldest")? })
    }

    /// The Unix second up to which metering has rolled usage into the ledger, if ever.
    pub async fn ops_metering_cursor(&self, name: &str) -> Result<Option<i64>, Error> {
        let mut c = self.reader().await?;
        Store::metering_cursor_in(&mut c, name).await
    }
}
