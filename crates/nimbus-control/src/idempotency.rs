//! Idempotency keys: a client repeating a mutating request with the same `Idempotency-Key` gets
//! the first response again instead of a second effect. Scoped per API key, kept 24 hours.
//!
//! Failures are where keys earn their keep, so each path is covered (nimbus-store's idempotency
//! module says how): a request that failed gives its key up, and when even that fails (the
//! database away in a failover) the release is retried in the background until it lands; a
//! claim whose replica died is taken over once that replica's liveness lease (`replica/<id>`,
//! renewed every second, see `spawn_liveness`) runs out; a request whose change committed is
//! never run twice, and a claim taken over from a replica that was only cut off is fenced: that
//! replica's commit is refused.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nimbus_core::auth::Actor;
use nimbus_core::Error;
use nimbus_store::{Claim, IdempotencyScope, StoredResponse};

use crate::Control;

pub const RETENTION_MICROS: i64 = 24 * 3600 * 1_000_000;
/// How long a claim may run before another request may take it over (longer than any request
/// runs: the Lambda dialect's deadline is 30 s).
pub const CLAIM_MICROS: i64 = 60 * 1_000_000;
/// How long a replica counts as alive after its last liveness renewal.
const LIVENESS_MICROS: i64 = 5 * 1_000_000;
const RENEW_EVERY_MICROS: i64 = 1_000_000;

async fn renew_liveness(c: &Control) -> Result<(), Error> {
    let now = c.now();
    c.store()
        .lease_acquire(&nimbus_store::liveness_lease(c.replica_id()), c.replica_id(), now, now.saturating_add(LIVENESS_MICROS))
        .await?;
    c.liveness_renewed().store(now, Ordering::SeqCst);
    Ok(())
}

/// Renews this replica's liveness every second for as long as it runs.
pub fn spawn_liveness(c: Control) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = renew_liveness(&c).await {
                tracing::debug!(error = %e, "renewing this replica's liveness failed");
            }
            tokio::time::sleep(Duration::from_micros(RENEW_EVERY_MICROS as u64)).await;
        }
    })
}

pub async fn claim(c: &Control, actor: &Actor, key: &str, request_hash: &str) -> Result<Claim, Error> {
    let now = c.now();
    // A claim is only as good as its replica's liveness (a claim by a replica without a live
    // lease is taken over), so make sure it is fresh before claiming.
    if now.saturating_sub(c.liveness_renewed().load(Ordering::SeqCst)) > RENEW_EVERY_MICROS {
        renew_liveness(c).await?;
    }
    c.store()
        .idempotency_claim(&actor.key_id, key, request_hash, c.replica_id(), now, now.saturating_add(CLAIM_MICROS), now - RETENTION_MICROS)
        .await
}

/// Stores the answer of an owned claim (the request runs inside the claim, as
/// `nimbus_store::IDEMPOTENCY`, so that its change marks it committed); retried in the
/// background while the database does not take it.
pub async fn complete(c: &Control, claim: &IdempotencyScope, resp: &StoredResponse) -> Result<(), Error> {
    let (c, claim, resp) = (c.clone(), claim.clone(), resp.clone());
    now_or_later("storing an idempotent answer", move || {
        let (c, claim, resp) = (c.clone(), claim.clone(), resp.clone());
        async move { c.store().idempotency_complete(&claim, &resp).await }
    })
    .await
}

/// Gives the claim up; retried in the background while the database does not take it.
pub async fn release(c: &Control, claim: &IdempotencyScope) -> Result<(), Error> {
    let (c, claim) = (c.clone(), claim.clone());
    now_or_later("releasing an idempotency key", move || {
        let (c, claim) = (c.clone(), claim.clone());
        async move { c.store().idempotency_release(&claim).await }
    })
    .await
}

/// Runs `f` once; when the database is unavailable, keeps retrying it in the background
/// (`retry`) and reports success, since the outcome no longer depends on the caller.
async fn now_or_later<F, Fut>(what: &'static str, f: F) -> Result<(), Error>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    match f().await {
        Err(Error::Unavailable { .. }) => {
            tokio::spawn(retry(what, f));
            Ok(())
        }
        r => r,
    }
}

/// Retries `f` every 250 ms for up to 10 minutes while the database is unavailable.
async fn retry<F, Fut>(what: &'static str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    for _ in 0..2400 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match f().await {
            Err(Error::Unavailable { .. }) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                return;
            }
            Ok(()) => return,
        }
    }
    tracing::warn!("{what}: the database stayed unavailable; the claim expires on its own");
}
