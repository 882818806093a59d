//! Schema migrations: an ordered list of SQL files, each applied once in its own transaction and
//! recorded in `schema_migrations`. On PostgreSQL an advisory lock keeps replicas that start
//! together from racing.

use nimbus_core::Error;
use sqlx::{AnyPool, Row};

use crate::{db_err, Backend};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "org_plan", include_str!("../migrations/0002_org_plan.sql")),
    (3, "idempotency", include_str!("../migrations/0003_idempotency.sql")),
    (4, "storage", include_str!("../migrations/0004_storage.sql")),
    (5, "webhooks", include_str!("../migrations/0005_webhooks.sql")),
    (6, "api_key_expiry", include_str!("../migrations/0006_api_key_expiry.sql")),
    (7, "metrics", include_str!("../migrations/0007_metrics.sql")),
    (8, "vpn", include_str!("../migrations/0008_vpn.sql")),
    (9, "metering", include_str!("../migrations/0009_metering.sql")),
    (10, "spend_limit", include_str!("../migrations/0010_spend_limit.sql")),
    (11, "credits", include_str!("../migrations/0011_credits.sql")),
    (12, "vm_access", include_str!("../migrations/0012_vm_access.sql")),
    (13, "volume_attachments", include_str!("../migrations/0013_volume_attachments.sql")),
    (14, "service_accounts", include_str!("../migrations/0014_service_accounts.sql")),
    (15, "clusters", include_str!("../migrations/0015_clusters.sql")),
    (16, "host_token_limits", include_str!("../migrations/0016_host_token_limits.sql")),
    (17, "host_network", include_str!("../migrations/0017_host_network.sql")),
    (18, "port_forwards", include_str!("../migrations/0018_port_forwards.sql")),
    (19, "public_addresses", include_str!("../migrations/0019_public_addresses.sql")),
    (20, "leases", include_str!("../migrations/0020_leases.sql")),
    (21, "idempotency_owner", include_str!("../migrations/0021_idempotency_owner.sql")),
    (22, "console_sessions", include_str!("../migrations/0022_console_sessions.sql")),
    (23, "gpu_health_mig", include_str!("../migrations/0023_gpu_health_mig.sql")),
    (24, "host_machines", include_str!("../migrations/0024_host_machines.sql")),
];

fn render(sql: &str, backend: Backend) -> String {
    let serial = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    sql.replace("@SERIAL_PK@", serial)
}

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<(), Error> {
    let mut conn = pool.acquire().await.map_err(db_err("acquiring connection for migrations"))?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock(7318001)").execute(&mut *conn).await.map_err(db_err("taking migration lock"))?;
    }
    let result = apply(&mut conn, backend).await;
    if backend == Backend::Postgres {
        let _ = sqlx::query("SELECT pg_advisory_unlock(7318001)").execute(&mut *conn).await;
    }
    result
}

async fn apply(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(db_err("creating schema_migrations"))?;
    let done: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("reading schema_migrations"))?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()
        .map_err(db_err("decoding schema_migrations"))?;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_err("beginning migration"))?;
        let rendered = render(sql, backend);
        sqlx::raw_sql(&rendered).execute(&mut *tx).await.map_err(|e| Error::internal(format!("migration {version} ({name}): {e}")))?;
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, 0)")
            .bind(*version)
            .bind(*name)
            .execute(&mut *tx)
            .await
            .map_err(db_err("recording migration"))?;
        tx.commit().await.map_err(db_err("committing migration"))?;
    }
    Ok(())
}
