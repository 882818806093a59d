//! The store: one SQL schema on embedded SQLite (default) or PostgreSQL, behind resource-first
//! methods (`instance_list_by_org`, `ssh_key_insert_in_txn`, …).
//!
//! It owns migrations, connection setup, transactions and the mapping of `sqlx::Error` into
//! `nimbus_core::Error`. It must not know about HTTP or any API dialect.
//!
//! Both backends are reached through `sqlx::Any` with `$N` placeholders (SQLite accepts them
//! natively), so every query is written once. SQLite allows one writer at a time, so on SQLite all
//! write transactions go through a one-connection pool (no `SQLITE_BUSY` upgrades, and "two
//! launches never over-commit" holds trivially); reads use a separate pool. On PostgreSQL both
//! are the same pool and capacity is claimed with conditional `UPDATE`s that re-check the limit
//! under the row lock.

mod clusters;
mod console;
mod events;
mod ha;
mod hosts;
mod idempotency;
mod instances;
mod leases;
mod metrics;
mod migrate;
mod network;
mod ops;
mod orgs;
mod rentals;
mod rows;
mod service_accounts;
mod tenant;
mod usage;
mod volumes;
mod vpns;
mod webhooks;

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nimbus_core::Error;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

pub use console::ConsoleSession;
pub use events::{NewEvent, EVENTS_CHANNEL};
pub use ha::OnNotify;
pub use hosts::{GpuHealthUpdate, HostRegistration, NewHostToken};
pub use idempotency::{liveness_lease, Claim, IdempotencyScope, StoredResponse, IDEMPOTENCY};
pub use instances::{InstanceUpdate, NewInstance};
pub use leases::{Fence, FENCE};
pub use ops::{DbTimings, InstanceCount, OutboxDepth, PoolStats};
pub use service_accounts::ServiceAccountChange;
pub use usage::{Credit, LedgerEntry, LedgerLine, LedgerTransaction};
pub use volumes::AttachOutcome;
pub use webhooks::{commit_hint, AttemptOutcome, ClaimedDelivery, DispatchLease, NewDelivery, NextStep, Redeliver, WebhookTarget};

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;
pub type Conn = sqlx::AnyConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Behind a lock because a PostgreSQL failover swaps them (see `ha`).
    pools: Arc<RwLock<Pools>>,
    /// The database hosts when the URL names several (PostgreSQL).
    ha: Option<Arc<ha::Ha>>,
    url: String,
}

#[derive(Clone)]
struct Pools {
    writer: AnyPool,
    reader: AnyPool,
}

/// `$from, $from+1, …` for `n` values (an `IN (…)` list: SQLite has no array binds).
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Maps a database failure to the domain error, keeping the cause as internal context. A lost
/// race that PostgreSQL resolved by aborting us (deadlock, serialization failure) is a retryable
/// `Conflict`, not an internal error.
///
/// A database that cannot be reached, or that stopped taking writes (a primary going away in a
/// failover), is `Unavailable`: the request may be retried, and nothing in it was committed
/// unless the commit itself was cut off (which an idempotency key covers).
pub(crate) fn db_err(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        let code = e.as_database_error().and_then(|d| d.code().map(|c| c.into_owned()));
        match code.as_deref() {
            Some("40P01") | Some("40001") => {
                Error::conflict(nimbus_core::ConflictReason::Concurrent, "a concurrent change won; retry the request")
            }
            // Connection exceptions, operator intervention (shutdown), read-only transaction.
            Some(c) if c.starts_with("08") || c.starts_with("57P") || c == "25006" => unavailable(context, &e),
            _ if matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)) => {
                unavailable(context, &e)
            }
            _ => Error::internal(format!("{context}: {e}")),
        }
    }
}

fn unavailable(context: &str, e: &sqlx::Error) -> Error {
    tracing::warn!(error = %e, "{context}: the database is unavailable");
    Error::Unavailable { message: "the database is unavailable; retry the request".into() }
}

/// Like [`db_err`], but a unique-constraint violation becomes `AlreadyExists`.
pub(crate) fn unique_err<'a>(kind: &'static str, name: &'a str) -> impl FnOnce(sqlx::Error) -> Error + 'a {
    move |e| {
        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
            Error::AlreadyExists { kind, name: name.to_owned() }
        } else {
            Error::internal(format!("inserting {kind}: {e}"))
        }
    }
}

type PragmaFuture<'c> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>>;

/// Per-connection SQLite settings: WAL so readers never block the writer, NORMAL sync (durable at
/// checkpoints, safe against application crashes), a busy timeout instead of instant errors.
fn pragmas(conn: &mut sqlx::AnyConnection, _: sqlx::pool::PoolConnectionMetadata) -> PragmaFuture<'_> {
    Box::pin(async move {
        for pragma in [
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=10000",
            "PRAGMA foreign_keys=ON",
            "PRAGMA cache_size=-16000",
        ] {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

impl Store {
    /// Opens (creating if needed) the database named by `url` and runs pending migrations.
    /// `sqlite:///path/file.db` or `postgres://user@host:port/db`.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::invalid("database-url", "must start with sqlite: or postgres://"));
        };
        let store = match backend {
            Backend::Sqlite => {
                let opts = AnyConnectOptions::from_str(url)
                    .map_err(|e| Error::invalid("database-url", e.to_string()))?
                    .disable_statement_logging();
                let writer = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(pragmas)
                    .connect_with(opts.clone())
                    .await
                    .map_err(db_err("opening SQLite database"))?;
                // Migrate before opening readers so they see the schema.
                migrate::run(&writer, backend).await?;
                let reader = AnyPoolOptions::new()
                    .max_connections(4)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(pragmas)
                    .connect_with(opts)
                    .await
                    .map_err(db_err("opening SQLite readers"))?;
                Store { backend, pools: Arc::new(RwLock::new(Pools { writer, reader })), ha: None, url: url.to_owned() }
            }
            Backend::Postgres => {
                let urls = ha::split_hosts(url)?;
                let (first, ha) = if urls.len() > 1 {
                    let i = ha::find_primary(&urls, Duration::from_secs(60)).await?;
                    (urls[i].clone(), Some(Arc::new(ha::Ha::new(urls, i))))
                } else {
                    (urls[0].clone(), None)
                };
                let pool = ha::pool(&first, false, ha.is_some()).await?;
                migrate::run(&pool, backend).await?;
                let store = Store { backend, pools: Arc::new(RwLock::new(Pools { writer: pool.clone(), reader: pool })), ha, url: first };
                if store.ha.is_some() {
                    ha::spawn_monitor(store.clone());
                }
                store
            }
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. Every state change goes through one of these, together with
    /// its outbox event.
    ///
    /// Inside a [`FENCE`] scope (a background loop holding a lease), the transaction first
    /// proves the lease is still this holder's, so a paused ex-holder cannot write.
    pub async fn begin(&self) -> Result<Tx, Error> {
        let mut tx = self.begin_unfenced().await?;
        leases::fence_in_txn(&mut tx).await?;
        Ok(tx)
    }

    pub(crate) async fn begin_unfenced(&self) -> Result<Tx, Error> {
        let started = std::time::Instant::now();
        let tx = match self.backend {
            // Take SQLite's write lock up front: a deferred transaction that reads and then
            // writes fails at once (SQLITE_BUSY_SNAPSHOT) when another process (the admin CLI
            // beside a running server) wrote meanwhile, whereas BEGIN IMMEDIATE waits for the
            // lock within busy_timeout.
            Backend::Sqlite => self.w().begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.w().begin().await,
        }
        .map_err(db_err("beginning transaction"))?;
        DbTimings::get().observe("begin", started);
        Ok(tx)
    }

    /// Commits; inside an [`IDEMPOTENCY`] scope the request's claim is marked committed in the
    /// same transaction first.
    pub async fn commit(mut tx: Tx) -> Result<(), Error> {
        idempotency::mark_committed(&mut tx).await?;
        let started = std::time::Instant::now();
        tx.commit().await.map_err(db_err("committing transaction"))?;
        DbTimings::get().observe("commit", started);
        webhooks::committed();
        Ok(())
    }

    /// A connection for several related reads outside a transaction.
    pub async fn reader(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, Error> {
        let started = std::time::Instant::now();
        let c = self.r().acquire().await.map_err(db_err("acquiring read connection"))?;
        DbTimings::get().observe("read_acquire", started);
        Ok(c)
    }

    fn pools(&self) -> Pools {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pool for reads outside a transaction.
    pub(crate) fn r(&self) -> AnyPool {
        self.pools().reader
    }

    /// The pool for writes.
    pub(crate) fn w(&self) -> AnyPool {
        self.pools().writer
    }

    /// Points the store at another PostgreSQL host (a failover); returns the old pool.
    fn swap(&self, pool: AnyPool) -> AnyPool {
        let mut p = self.pools.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut p.writer, pool.clone());
        p.reader = pool;
        old
    }

    pub async fn close(&self) {
        let p = self.pools();
        p.writer.close().await;
        p.reader.close().await;
    }
}
