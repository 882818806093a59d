//! Idempotency keys: claim, complete, release, and expiry.
//!
//! A request's claim names its replica and lasts until `claim_until`. The change the request
//! makes marks the claim `committed` inside its own transaction (the [`IDEMPOTENCY`] scope read
//! by [`Store::commit`]), so the store always knows whether a claim's effect happened, even
//! when the answer was lost: the replica died before storing it, or the database went away
//! between the commit and the answer. So:
//! - a claim with nothing committed whose replica died (its `replica/<id>` lease ran out) or
//!   that outlived `claim_until` is taken over, and the request runs again, once;
//! - a claim is fenced: its change commits, its answer is stored and its release lands only
//!   while the claim is still the one it made (same replica, same claim time). A replica that
//!   was cut off long enough for its claim to be taken over (the database away in a failover
//!   outlasts its liveness lease) and then tries to commit is refused, so the request's change
//!   is made by exactly one of the two;
//! - a release (the request failed) never deletes a claim whose change committed;
//! - a committed claim without an answer is never run again: the caller is told the outcome is
//!   unknown and must read the resource ([`Claim::Unknown`]).

use nimbus_core::ids::ApiKeyId;
use nimbus_core::Error;

use crate::rows::get;
use crate::{db_err, Store};

/// A stored response to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Base64 of the body bytes.
    pub body_b64: String,
}

/// The outcome of trying to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key and must run inside this scope, then `complete` or `release`
    /// it.
    Owned(IdempotencyScope),
    /// Same key, same request, already answered.
    Replay(StoredResponse),
    /// Same key, same request, still running elsewhere.
    InFlight,
    /// Same key, different request.
    Mismatch,
    /// Same key, same request: its change committed but its answer was lost (its replica
    /// failed before storing it). Running it again could repeat the change.
    Unknown,
}

/// A replica's liveness lease is named this prefix and its replica id.
pub const LIVENESS_PREFIX: &str = "replica/";

/// SQL that is true when the claim in row `t` is abandoned: it outlived its `claim_until`, or
/// the liveness lease of the replica that made it ran out (`now` and `prefix` are placeholders
/// bound to the time and [`LIVENESS_PREFIX`]). The claim and its read-back decide with it.
fn owner_gone(t: &str, now: &str, prefix: &str) -> String {
    format!(
        "({t}.claim_until < {now} OR NOT EXISTS (SELECT 1 FROM leases WHERE leases.name = {prefix} || {t}.claimed_by AND leases.until >= {now}))"
    )
}

/// The liveness lease's name for `replica`.
pub fn liveness_lease(replica: &str) -> String {
    format!("{LIVENESS_PREFIX}{replica}")
}

/// One claim of an idempotency key: set (by the API's middleware) around the request, read by
/// [`Store::commit`] to mark the claim committed in the same transaction. `claimed_by` and
/// `claimed_at` name this claim rather than the key, so a claim that was taken over meanwhile
/// no longer matches (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    pub api_key_id: String,
    pub idem_key: String,
    pub claimed_by: String,
    pub claimed_at: i64,
}

/// `WHERE` of a statement that acts on one claim: `$1`..`$4` are the scope's fields.
const THIS_CLAIM: &str = "api_key_id = $1 AND idem_key = $2 AND claimed_by = $3 AND created_at = $4";

fn bind_claim<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    scope: &'q IdempotencyScope,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&scope.api_key_id).bind(&scope.idem_key).bind(&scope.claimed_by).bind(scope.claimed_at)
}

tokio::task_local! {
    pub static IDEMPOTENCY: IdempotencyScope;
}

/// Marks the scope's claim committed inside `tx` (nothing outside a scope). Fails, so that
/// the transaction is rolled back, when the claim is no longer this one: it was taken over by
/// a retry that runs the request instead.
pub(crate) async fn mark_committed(tx: &mut crate::Conn) -> Result<(), Error> {
    let Ok(scope) = IDEMPOTENCY.try_with(IdempotencyScope::clone) else { return Ok(()) };
    let q = format!("UPDATE idempotency_keys SET committed = 1 WHERE {THIS_CLAIM}");
    let r = bind_claim(sqlx::query(&q), &scope).execute(&mut *tx).await.map_err(db_err("marking an idempotency key committed"))?;
    if r.rows_affected() != 1 {
        return Err(Error::conflict(
            nimbus_core::error::ConflictReason::Concurrent,
            "this request's Idempotency-Key was taken over by a retry while the request ran; its change was not made",
        ));
    }
    Ok(())
}

impl Store {
    /// Claims `(api key, key)` for a request whose hash is `hash`, run by `replica` until
    /// `claim_until` at the latest. A row older than `expired_before` is forgotten and
    /// re-claimed; so is an abandoned one (see the module doc).
    ///
    /// The common case (a fresh key) is one autocommitted statement: an insert that also takes
    /// over an expired or abandoned row, so the claim costs one round trip to the single
    /// writer. The primary key makes a concurrent claim of the same key lose (PostgreSQL) or
    /// wait for us (SQLite's single writer): exactly one request owns it. Only a key that is
    /// already taken is read back, to tell a replay from a mismatch from one still in flight.
    #[allow(clippy::too_many_arguments)]
    pub async fn idempotency_claim(
        &self,
        key: &ApiKeyId,
        idem: &str,
        hash: &str,
        replica: &str,
        now: i64,
        claim_until: i64,
        expired_before: i64,
    ) -> Result<Claim, Error> {
        let claimed = sqlx::query(&format!(
            "INSERT INTO idempotency_keys (api_key_id, idem_key, request_hash, created_at, claimed_by, claim_until, committed) \
             VALUES ($1, $2, $3, $4, $5, $6, 0) \
             ON CONFLICT (api_key_id, idem_key) DO UPDATE SET request_hash = excluded.request_hash, status = NULL, \
             content_type = NULL, body = NULL, created_at = excluded.created_at, claimed_by = excluded.claimed_by, \
             claim_until = excluded.claim_until, committed = 0 \
             WHERE idempotency_keys.created_at < $7 \
             OR (idempotency_keys.status IS NULL AND idempotency_keys.committed = 0 AND idempotency_keys.request_hash = excluded.request_hash \
                 AND {})",
            owner_gone("idempotency_keys", "$4", "$8")
        ))
        .bind(key.as_str())
        .bind(idem)
        .bind(hash)
        .bind(now)
        .bind(replica)
        .bind(claim_until)
        .bind(expired_before)
        .bind(LIVENESS_PREFIX)
        .execute(&self.w())
        .await
        .map_err(db_err("claiming idempotency key"))?;
        if claimed.rows_affected() == 1 {
            return Ok(Claim::Owned(IdempotencyScope {
                api_key_id: key.as_str().to_owned(),
                idem_key: idem.to_owned(),
                claimed_by: replica.to_owned(),
                claimed_at: now,
            }));
        }
        let row = sqlx::query(&format!(
            "SELECT request_hash, status, content_type, body, committed, CASE WHEN {} THEN 1 ELSE 0 END AS owner_gone \
             FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2",
            owner_gone("idempotency_keys", "$3", "$4")
        ))
        .bind(key.as_str())
        .bind(idem)
        .bind(now)
        .bind(LIVENESS_PREFIX)
        .fetch_optional(&self.w())
        .await
        .map_err(db_err("reading idempotency key"))?;
        let Some(r) = row else {
            // Released between our insert and this read: the caller may retry.
            return Ok(Claim::InFlight);
        };
        let stored_hash: String = get(&r, "request_hash")?;
        if stored_hash != hash {
            return Ok(Claim::Mismatch);
        }
        Ok(match get::<Option<i64>>(&r, "status")? {
            None if get::<i64>(&r, "committed")? == 1 && get::<i64>(&r, "owner_gone")? == 1 => Claim::Unknown,
            None => Claim::InFlight,
            Some(st) => Claim::Replay(StoredResponse {
                status: u16::try_from(st).unwrap_or(500),
                content_type: get(&r, "content_type")?,
                body_b64: get::<Option<String>>(&r, "body")?.unwrap_or_default(),
            }),
        })
    }

    /// Stores the response of an owned claim (one autocommitted statement); nothing when the
    /// claim was taken over meanwhile (the request that took it stores its own).
    pub async fn idempotency_complete(&self, claim: &IdempotencyScope, resp: &StoredResponse) -> Result<(), Error> {
        let q = format!("UPDATE idempotency_keys SET status = $5, content_type = $6, body = $7 WHERE {THIS_CLAIM}");
        bind_claim(sqlx::query(&q), claim)
            .bind(i64::from(resp.status))
            .bind(resp.content_type.clone())
            .bind(&resp.body_b64)
            .execute(&self.w())
            .await
            .map_err(db_err("storing idempotent response"))?;
        Ok(())
    }

    /// Gives an owned claim up (the request had no lasting effect: rate limited, failed
    /// inside); never one whose change committed, nor one another request has taken over.
    pub async fn idempotency_release(&self, claim: &IdempotencyScope) -> Result<(), Error> {
        let q = format!("DELETE FROM idempotency_keys WHERE {THIS_CLAIM} AND status IS NULL AND committed = 0");
        bind_claim(sqlx::query(&q), claim).execute(&self.w()).await.map_err(db_err("releasing idempotency key"))?;
        Ok(())
    }
}
