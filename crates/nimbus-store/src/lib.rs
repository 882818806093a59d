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
mod events;
mod hosts;
mod idempotency;
mod instances;
mod metrics;
mod migrate;
mod network;
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
use std::time::Duration;

use nimbus_core::Error;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

pub use events::NewEvent;
pub use hosts::{HostRegistration, NewHostToken};
pub use idempotency::{Claim, StoredResponse};
pub use instances::{InstanceUpdate, NewInstance};
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
pub(crate) fn db_err(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        let code = e.as_database_error().and_then(|d| d.code().map(|c| c.into_owned()));
        match code.as_deref() {
            Some("40P01") | Some("40001") => {
                Error::conflict(nimbus_core::ConflictReason::Concurrent, "a concurrent change won; retry the request")
            }
            _ => Error::internal(format!("{context}: {e}")),
        }
    }
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
        let opts = AnyConnectOptions::from_str(url).map_err(|e| Error::invalid("database-url", e.to_string()))?.disable_statement_logging();
        let store = match backend {
            Backend::Sqlite => {
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
                Store { backend, writer, reader }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(db_err("connecting to PostgreSQL"))?;
                migrate::run(&pool, backend).await?;
                Store { backend, writer: pool.clone(), reader: pool }
            }
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. Every state change goes through one of these, together with
    /// its outbox event.
    pub async fn begin(&self) -> Result<Tx, Error> {
        match self.backend {
            // Take SQLite's write lock up front: a deferred transaction that reads and then
            // writes fails at once (SQLITE_BUSY_SNAPSHOT) when another process (the admin CLI
            // beside a running server) wrote meanwhile, whereas BEGIN IMMEDIATE waits for the
            // lock within busy_timeout.
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
        .map_err(db_err("beginning transaction"))
    }

    pub async fn commit(tx: Tx) -> Result<(), Error> {
        tx.commit().await.map_err(db_err("committing transaction"))?;
        webhooks::committed();
        Ok(())
    }

    /// A connection for several related reads outside a transaction.
    pub async fn reader(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, Error> {
        self.reader.acquire().await.map_err(db_err("acquiring read connection"))
    }

    /// The pool for reads outside a transaction.
    pub(crate) fn r(&self) -> &AnyPool {
        &self.reader
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}
