//! Console sessions and operator login links (migration 0022). Secrets are kept only as
//! their SHA-256; the session row says whose permissions it carries (an API key's, or the
//! operator's) and its CSRF token.

use nimbus_core::ids::ApiKeyId;
use nimbus_core::Error;

use crate::rows::get;
use crate::{db_err, Conn, Store};

/// A console session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The key whose permissions a tenant session carries; `None` for an operator session.
    pub api_key_id: Option<ApiKeyId>,
    pub operator: bool,
    pub csrf: String,
    pub expires_at: i64,
}

impl Store {
    pub async fn console_session_insert_in_txn(tx: &mut Conn, secret_hash: &str, s: &ConsoleSession, now: i64) -> Result<(), Error> {
        // Expired sessions go as new ones come, so the table holds only live ones.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err("forgetting expired console sessions"))?;
        sqlx::query(
            "INSERT INTO console_sessions (secret_hash, api_key_id, operator, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(secret_hash)
        .bind(s.api_key_id.as_ref().map(|k| k.as_str().to_owned()))
        .bind(i64::from(s.operator))
        .bind(&s.csrf)
        .bind(now)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err("storing a console session"))?;
        Ok(())
    }

    /// The live session with this secret hash, if any.
    pub async fn console_session_get(&self, secret_hash: &str, now: i64) -> Result<Option<ConsoleSession>, Error> {
        let row =
            sqlx::query("SELECT api_key_id, operator, csrf, expires_at FROM console_sessions WHERE secret_hash = $1 AND expires_at > $2")
                .bind(secret_hash)
                .bind(now)
                .fetch_optional(&self.r())
                .await
                .map_err(db_err("reading a console session"))?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(ConsoleSession {
            api_key_id: get::<Option<String>>(&r, "api_key_id")?.map(ApiKeyId::from_trusted),
            operator: get::<i64>(&r, "operator")? == 1,
            csrf: get(&r, "csrf")?,
            expires_at: get(&r, "expires_at")?,
        }))
    }

    pub async fn console_session_delete(&self, secret_hash: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM console_sessions WHERE secret_hash = $1")
            .bind(secret_hash)
            .execute(&self.w())
            .await
            .map_err(db_err("ending a console session"))?;
        Ok(())
    }

    pub async fn console_link_insert(&self, secret_hash: &str, expires_at: i64) -> Result<(), Error> {
        sqlx::query("INSERT INTO console_links (secret_hash, expires_at) VALUES ($1, $2)")
            .bind(secret_hash)
            .bind(expires_at)
            .execute(&self.w())
            .await
            .map_err(db_err("storing a console login link"))?;
        Ok(())
    }

    /// Uses a login link up: true when it existed and had not expired (one statement, so two
    /// concurrent uses cannot both succeed).
    pub async fn console_link_take(&self, secret_hash: &str, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM console_links WHERE secret_hash = $1 AND expires_at > $2")
            .bind(secret_hash)
            .bind(now)
            .execute(&self.w())
            .await
            .map_err(db_err("using a console login link"))?;
        Ok(r.rows_affected() == 1)
    }
}
