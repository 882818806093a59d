//! Idempotency keys: claim, complete, release, and expiry.

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
    /// This request owns the key and must run, then `complete` or `release` it.
    Owned,
    /// Same key, same request, already answered.
    Replay(StoredResponse),
    /// Same key, same request, still running elsewhere.
    InFlight,
    /// Same key, different request.
    Mismatch,
}

impl Store {
    /// Claims `(api key, key)` for a request whose hash is `hash`. A row older than
    /// `expired_before` is forgotten and re-claimed.
    ///
    /// The common case (a fresh key) is one autocommitted statement: an insert that also takes
    /// over an expired row, so the claim costs one round trip to the single writer. The primary
    /// key makes a concurrent claim of the same key lose (PostgreSQL) or wait for us (SQLite's
    /// single writer): exactly one request owns it. Only a key that is already taken is read
    /// back, to tell a replay from a mismatch from one still in flight.
    pub async fn idempotency_claim(&self, key: &ApiKeyId, idem: &str, hash: &str, now: i64, expired_before: i64) -> Result<Claim, Error> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (api_key_id, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (api_key_id, idem_key) DO UPDATE SET request_hash = excluded.request_hash, status = NULL, \
             content_type = NULL, body = NULL, created_at = excluded.created_at WHERE idempotency_keys.created_at < $5",
        )
        .bind(key.as_str())
        .bind(idem)
        .bind(hash)
        .bind(now)
        .bind(expired_before)
        .execute(&self.w())
        .await
        .map_err(db_err("claiming idempotency key"))?;
        if claimed.rows_affected() == 1 {
            return Ok(Claim::Owned);
        }
        let row =
            sqlx::query("SELECT request_hash, status, content_type, body FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2")
                .bind(key.as_str())
                .bind(idem)
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
            None => Claim::InFlight,
            Some(st) => Claim::Replay(StoredResponse {
                status: u16::try_from(st).unwrap_or(500),
                content_type: get(&r, "content_type")?,
                body_b64: get::<Option<String>>(&r, "body")?.unwrap_or_default(),
            }),
        })
    }

    /// Stores the response of an owned key (one autocommitted statement).
    pub async fn idempotency_complete(&self, key: &ApiKeyId, idem: &str, resp: &StoredResponse) -> Result<(), Error> {
        sqlx::query("UPDATE idempotency_keys SET status = $1, content_type = $2, body = $3 WHERE api_key_id = $4 AND idem_key = $5")
            .bind(i64::from(resp.status))
            .bind(resp.content_type.clone())
            .bind(&resp.body_b64)
            .bind(key.as_str())
            .bind(idem)
            .execute(&self.w())
            .await
            .map_err(db_err("storing idempotent response"))?;
        Ok(())
    }

    /// Gives an owned key up (the request had no lasting effect: rate limited, failed inside).
    pub async fn idempotency_release(&self, key: &ApiKeyId, idem: &str) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2 AND status IS NULL")
            .bind(key.as_str())
            .bind(idem)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing idempotency key"))?;
        Store::commit(tx).await
    }
}
