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
    /// Claims `(api key, key)` for a request whose hash is `hash`. Rows older than `expired_before`
    /// are forgotten first.
    pub async fn idempotency_claim(&self, key: &ApiKeyId, idem: &str, hash: &str, now: i64, expired_before: i64) -> Result<Claim, Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2 AND created_at < $3")
            .bind(key.as_str())
            .bind(idem)
            .bind(expired_before)
            .execute(&mut *tx)
            .await
            .map_err(db_err("expiring idempotency key"))?;
        let row =
            sqlx::query("SELECT request_hash, status, content_type, body FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2")
                .bind(key.as_str())
                .bind(idem)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("reading idempotency key"))?;
        let claim = match row {
            Some(r) => {
                let stored_hash: String = get(&r, "request_hash")?;
                if stored_hash != hash {
                    Claim::Mismatch
                } else {
                    match get::<Option<i64>>(&r, "status")? {
                        None => Claim::InFlight,
                        Some(st) => Claim::Replay(StoredResponse {
                            status: u16::try_from(st).unwrap_or(500),
                            content_type: get(&r, "content_type")?,
                            body_b64: get::<Option<String>>(&r, "body")?.unwrap_or_default(),
                        }),
                    }
                }
            }
            None => {
                // The primary key makes a concurrent claim of the same key fail here (PostgreSQL)
                // or wait for us (SQLite's single writer): exactly one request owns it.
                let inserted =
                    sqlx::query("INSERT INTO idempotency_keys (api_key_id, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(key.as_str())
                        .bind(idem)
                        .bind(hash)
                        .bind(now)
                        .execute(&mut *tx)
                        .await;
                match inserted {
                    Ok(_) => Claim::Owned,
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => Claim::InFlight,
                    Err(e) => return Err(db_err("claiming idempotency key")(e)),
                }
            }
        };
        Store::commit(tx).await?;
        Ok(claim)
    }

    /// Stores the response of an owned key.
    pub async fn idempotency_complete(&self, key: &ApiKeyId, idem: &str, resp: &StoredResponse) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE idempotency_keys SET status = $1, content_type = $2, body = $3 WHERE api_key_id = $4 AND idem_key = $5")
            .bind(i64::from(resp.status))
            .bind(resp.content_type.clone())
            .bind(&resp.body_b64)
            .bind(key.as_str())
            .bind(idem)
            .execute(&mut *tx)
            .await
            .map_err(db_err("storing idempotent response"))?;
        Store::commit(tx).await
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
