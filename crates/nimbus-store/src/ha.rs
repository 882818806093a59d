//! PostgreSQL as several server replicas share it: which of the database hosts is the primary,
//! and wake-ups between replicas.
//!
//! A libpq multi-host URL (`postgres://u@db1:5432,db2:5432/nimbus?target_session_attrs=read-write`)
//! names every node that may be the primary; Patroni (or any manager) decides which one is. sqlx
//! takes one host per pool, so the store keeps a pool to the host that answers as a primary and a
//! monitor that re-checks it twice a second; when it stops being one (killed, or demoted to a
//! standby), the monitor finds the new primary and swaps the pools. Every new connection is
//! checked to be writable (`transaction_read_only` off), so a demoted primary never takes writes
//! through a pooled connection opened before the swap. Nothing here decides who the primary
//! is: that is the database manager's consensus, not ours.
//!
//! Wake-ups go through `LISTEN/NOTIFY` on the primary: `notify` after a commit, and one listener
//! per replica that reconnects (to whichever host is the primary then) when its connection drops,
//! telling its subscriber `*` after every (re)connect, since notifications sent meanwhile are lost.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::Error;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection, Row};

use crate::{db_err, Store};

/// How often the monitor checks that its pool's host is still the primary.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A check or a probe that takes longer than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Splits a libpq URL into one URL per host, in order. A one-host URL comes back as itself
/// (less `target_session_attrs`, which sqlx does not know). Only writable targets make sense for
/// a server, so `target_session_attrs` may be `read-write`, `primary` or `any`.
pub(crate) fn split_hosts(url: &str) -> Result<Vec<String>, Error> {
    let bad = |m: &str| Error::invalid("database-url", m.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("is not a URL"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut kept = Vec::new();
    for kv in query.into_iter().flat_map(|q| q.split('&')).filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("target_session_attrs", v)) => {
                if !matches!(v, "read-write" | "primary" | "any") {
                    return Err(bad("target_session_attrs must be read-write (a server writes)"));
                }
            }
            _ => kept.push(kv),
        }
    }
    let query = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(bad("names an empty host"));
    }
    Ok(hosts.iter().map(|h| format!("{scheme}://{user}{h}{path}{query}")).collect())
}

type CheckFuture<'c> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>>;

/// Refuses a connection to a server that does not take writes (a standby, or a primary being
/// demoted), so the pool never hands one out.
fn writable(conn: &mut sqlx::AnyConnection, _: sqlx::pool::PoolConnectionMetadata) -> CheckFuture<'_> {
    Box::pin(async move {
        let ro: String = sqlx::query("SHOW transaction_read_only").fetch_one(&mut *conn).await?.try_get(0)?;
        if ro == "on" {
            return Err(sqlx::Error::Io(std::io::Error::other("the database host is a read-only standby")));
        }
        Ok(())
    })
}

fn options(url: &str) -> Result<AnyConnectOptions, Error> {
    Ok(AnyConnectOptions::from_str(url).map_err(|e| Error::invalid("database-url", e.to_string()))?.disable_statement_logging())
}

/// A pool to one host; lazy when another host may be the primary, so creating it never blocks.
/// With several hosts (`ha`), a request waits at most 3 s for a connection, then is told to
/// retry (503): a pool whose host died keeps retrying its connect until this timeout, even
/// after the monitor moved to the new primary, so a long wait here is downtime.
pub(crate) async fn pool(url: &str, lazy: bool, ha: bool) -> Result<AnyPool, Error> {
    let o = AnyPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(if ha { 3 } else { 10 })).after_connect(writable);
    if lazy {
        Ok(o.connect_lazy_with(options(url)?))
    } else {
        o.connect_with(options(url)?).await.map_err(db_err("connecting to PostgreSQL"))
    }
}

/// Whether `url`'s host answers as a primary now (one fresh connection, bounded in time).
async fn is_primary(url: &str) -> bool {
    let Ok(opts) = options(url) else { return false };
    let probe = async {
        let mut c = sqlx::AnyConnection::connect_with(&opts).await?;
        let v: i64 =
            sqlx::query("SELECT CAST(CASE WHEN pg_is_in_recovery() THEN 0 ELSE 1 END AS BIGINT)").fetch_one(&mut c).await?.try_get(0)?;
        let _ = c.close().await;
        Ok::<bool, sqlx::Error>(v == 1)
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(true)))
}

/// The first host (in URL order) that is a primary now, waiting up to `wait` for one to appear
/// (a manager still bootstrapping, or promoting a standby).
pub(crate) async fn find_primary(urls: &[String], wait: Duration) -> Result<usize, Error> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        for (i, u) in urls.iter().enumerate() {
            if is_primary(u).await {
                return Ok(i);
            }
        }
        if tokio::time::Instant::now() >= until {
            return Err(Error::Unavailable { message: format!("none of the {} database hosts is a primary", urls.len()) });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The monitor: keeps the store's pool on the current primary (see the module doc).
pub(crate) fn spawn_monitor(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(ha) = store.ha.clone() else { return };
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let pool = store.w();
            let check = sqlx::query("SELECT 1 WHERE NOT pg_is_in_recovery()").fetch_optional(&pool);
            if matches!(tokio::time::timeout(PROBE_TIMEOUT, check).await, Ok(Ok(Some(_)))) {
                continue;
            }
            let now = ha.current();
            let Ok(next) = find_primary(&ha.urls, Duration::ZERO).await else {
                tracing::warn!(host = %ha.host(now), "the database primary does not answer; no other host is a primary yet");
                continue;
            };
            if next == now {
                continue;
            }
            match self::pool(&ha.urls[next], true, true).await {
                Ok(p) => {
                    let old = store.swap(p);
                    ha.set_current(next);
                    tracing::warn!(from = %ha.host(now), to = %ha.host(next), "the database primary moved; the store follows it");
                    tokio::spawn(async move { old.close().await });
                }
                Err(e) => tracing::warn!(error = %e, "opening a pool to the new primary failed"),
            }
        }
    })
}

/// Which host the store's pool points at.
pub(crate) struct Ha {
    pub(crate) urls: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
}

impl Ha {
    pub(crate) fn new(urls: Vec<String>, current: usize) -> Ha {
        Ha { urls, current: current.into() }
    }

    pub(crate) fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_current(&self, i: usize) {
        self.current.store(i, std::sync::atomic::Ordering::SeqCst)
    }

    /// `host:port` of the i-th URL, for logs (never the credentials).
    fn host(&self, i: usize) -> String {
        let u = &self.urls[i];
        let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split(['/', '?']).next().unwrap_or_default().to_owned()
    }
}

/// What a subscriber of [`Store::listen`] is told: a notification's channel and payload, or
/// `("*", "")` after a (re)connect, when anything may have been missed.
pub type OnNotify = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl Store {
    /// Sends `payload` to every replica listening on `channel` (PostgreSQL; nothing on SQLite,
    /// where one process is the whole control plane).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), Error> {
        if self.backend != crate::Backend::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&self.w()).await.map_err(db_err("notifying"))?;
        Ok(())
    }

    /// Listens on `channels` for as long as the store lives (PostgreSQL only; `None` on SQLite).
    pub fn listen(&self, channels: &[&str], on: OnNotify) -> Option<tokio::task::JoinHandle<()>> {
        if self.backend != crate::Backend::Postgres {
            return None;
        }
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let store = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let url = store.primary_url();
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut l) => {
                        if l.listen_all(channels.iter().map(String::as_str)).await.is_ok() {
                            on("*", "");
                            // try_recv says None when the connection dropped.
                            while let Ok(Some(n)) = l.try_recv().await {
                                on(n.channel(), n.payload());
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }

    /// The URL of the host the pool points at now.
    fn primary_url(&self) -> String {
        match &self.ha {
            Some(ha) => ha.urls[ha.current()].clone(),
            None => self.url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_split_per_host() {
        let v = split_hosts("postgres://u:p@db1:5432,db2:5433/nimbus?target_session_attrs=read-write&sslmode=disable").unwrap();
        assert_eq!(v, ["postgres://u:p@db1:5432/nimbus?sslmode=disable", "postgres://u:p@db2:5433/nimbus?sslmode=disable"]);
        assert_eq!(split_hosts("postgresql://h/db").unwrap(), ["postgresql://h/db"]);
        assert_eq!(split_hosts("postgres://a,b").unwrap(), ["postgres://a", "postgres://b"]);
        assert!(split_hosts("postgres://u@a,,b/db").is_err());
        assert!(split_hosts("postgres://a,b/db?target_session_attrs=read-only").is_err());
        let ha = Ha::new(split_hosts("postgres://u:secret@db1:1,db2:2/x").unwrap(), 1);
        assert_eq!(ha.host(1), "db2:2", "logs name the host, never the password");
    }
}
