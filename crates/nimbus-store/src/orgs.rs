//! Organizations, API keys and host registration tokens.

use nimbus_core::firewall::FirewallRule;
use nimbus_core::ids::*;
use nimbus_core::model::{ApiKey, Org};
use nimbus_core::Error;

use crate::rows::{self, get, to_json};
use crate::{db_err, unique_err, Conn, Store};

/// The columns of an API key. A key of a service account has the account's permissions: they are
/// read through the account here, so a change to the account applies to its keys at once.
const API_KEY_SELECT: &str = "SELECT k.id, k.org_id, k.name, k.prefix, COALESCE(sa.permissions, k.permissions) AS permissions, \
     k.created_at, k.revoked_at, k.expires_at, k.created_by, k.service_account_id, o.plan FROM api_keys k \
     JOIN orgs o ON o.id = k.org_id LEFT JOIN service_accounts sa ON sa.id = k.service_account_id";

/// A key that authenticates: not revoked, and not of a deleted service account.
const LIVE_KEY: &str = "k.revoked_at IS NULL AND (k.service_account_id IS NULL OR sa.deleted_at IS NULL)";

impl Store {
    pub async fn org_insert_in_txn(tx: &mut Conn, org: &Org, rules: &[FirewallRule]) -> Result<(), Error> {
        sqlx::query("INSERT INTO orgs (id, name, email, global_firewall_rules, created_at, plan) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(org.id.as_str())
            .bind(&org.name)
            .bind(&org.email)
            .bind(to_json(&rules))
            .bind(org.created_at)
            .bind(&org.plan)
            .execute(tx)
            .await
            .map_err(unique_err("organization", &org.name))?;
        Ok(())
    }

    pub async fn org_get_by_name(&self, name: &str) -> Result<Option<Org>, Error> {
        let row = sqlx::query("SELECT id, name, email, plan, created_at, spend_limit_cents, spend_limit_action, spend_limit_reached FROM orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading org"))?;
        row.as_ref().map(rows::org).transpose()
    }

    pub async fn org_get(&self, id: &OrgId) -> Result<Option<Org>, Error> {
        let row = sqlx::query(
            "SELECT id, name, email, plan, created_at, spend_limit_cents, spend_limit_action, spend_limit_reached FROM orgs WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.r())
        .await
        .map_err(db_err("reading org"))?;
        row.as_ref().map(rows::org).transpose()
    }

    pub async fn org_list(&self) -> Result<Vec<Org>, Error> {
        sqlx::query("SELECT id, name, email, plan, created_at, spend_limit_cents, spend_limit_action, spend_limit_reached FROM orgs ORDER BY created_at, id")
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing orgs"))?
            .iter()
            .map(rows::org)
            .collect()
    }

    /// The org's instances generation: any change to any of its instances bumps it.
    pub async fn org_instances_generation(&self, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT instances_generation FROM orgs WHERE id = $1")
            .bind(org.as_str())
            .fetch_one(&self.r())
            .await
            .map_err(db_err("reading instances generation"))?;
        get(&row, "instances_generation")
    }

    pub async fn org_bump_instances_generation_in_txn(tx: &mut Conn, org: &OrgId) -> Result<(), Error> {
        sqlx::query("UPDATE orgs SET instances_generation = instances_generation + 1 WHERE id = $1")
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("bumping instances generation"))?;
        Ok(())
    }

    /// Sets the org's rate-limit plan.
    pub async fn org_set_plan_in_txn(tx: &mut Conn, org: &OrgId, plan: &str) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE orgs SET plan = $1 WHERE id = $2")
            .bind(plan)
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("setting plan"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn org_global_rules(&self, org: &OrgId) -> Result<Vec<FirewallRule>, Error> {
        let row = sqlx::query("SELECT global_firewall_rules FROM orgs WHERE id = $1")
            .bind(org.as_str())
            .fetch_one(&self.r())
            .await
            .map_err(db_err("reading global firewall rules"))?;
        rows::json(&row, "global_firewall_rules")
    }

    pub async fn org_global_rules_in(c: &mut Conn, org: &OrgId) -> Result<Vec<FirewallRule>, Error> {
        let row = sqlx::query("SELECT global_firewall_rules FROM orgs WHERE id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("reading global firewall rules"))?;
        rows::json(&row, "global_firewall_rules")
    }

    pub async fn org_set_global_rules_in_txn(tx: &mut Conn, org: &OrgId, rules: &[FirewallRule]) -> Result<(), Error> {
        sqlx::query("UPDATE orgs SET global_firewall_rules = $1 WHERE id = $2")
            .bind(to_json(&rules))
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("writing global firewall rules"))?;
        Ok(())
    }

    pub async fn api_key_insert_in_txn(tx: &mut Conn, key: &ApiKey, secret_hash: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, org_id, name, prefix, secret_hash, permissions, created_at, expires_at, created_by, service_account_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(key.id.as_str())
        .bind(key.org_id.as_str())
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(secret_hash)
        .bind(key.permissions.bits())
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.created_by.as_ref().map(|k| k.as_str().to_owned()))
        .bind(key.service_account_id.as_ref().map(|k| k.as_str().to_owned()))
        .execute(tx)
        .await
        .map_err(unique_err("api key", &key.name))?;
        Ok(())
    }

    /// Serializes, until the transaction ends, the org's quota-checked creations: on PostgreSQL
    /// (read committed) it takes the org row's lock, so that a count that follows sees every
    /// creation committed before it; on SQLite the write transaction already holds the database's
    /// one write lock (`BEGIN IMMEDIATE`).
    pub async fn org_lock_in_txn(tx: &mut Conn, org: &OrgId) -> Result<(), Error> {
        sqlx::query("UPDATE orgs SET plan = plan WHERE id = $1").bind(org.as_str()).execute(tx).await.map_err(db_err("locking org"))?;
        Ok(())
    }

    /// The org's live keys at `now` (neither revoked nor expired), service accounts' included.
    pub async fn api_key_count_live_by_org_in(c: &mut Conn, org: &OrgId, now: i64) -> Result<i64, Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(org.as_str())
        .bind(now)
        .fetch_one(c)
        .await
        .map_err(db_err("counting api keys"))?;
        get(&row, "n")
    }

    /// The live (not revoked) key with this secret hash.
    pub async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, Error> {
        let row = sqlx::query(&format!("{API_KEY_SELECT} WHERE k.secret_hash = $1 AND {LIVE_KEY}"))
            .bind(secret_hash)
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("looking up api key"))?;
        row.as_ref().map(rows::api_key).transpose()
    }

    /// A live key by id (a console session's), with its current permissions.
    pub async fn api_key_live_by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, Error> {
        let row = sqlx::query(&format!("{API_KEY_SELECT} WHERE k.id = $1 AND {LIVE_KEY}"))
            .bind(id.as_str())
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("looking up api key"))?;
        row.as_ref().map(rows::api_key).transpose()
    }

    pub async fn api_key_list_by_org(&self, org: &OrgId) -> Result<Vec<ApiKey>, Error> {
        sqlx::query(&format!("{API_KEY_SELECT} WHERE k.org_id = $1 ORDER BY k.created_at, k.id"))
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing api keys"))?
            .iter()
            .map(rows::api_key)
            .collect()
    }

    pub async fn org_update_in_txn(tx: &mut Conn, org: &OrgId, name: Option<&str>, email: Option<&str>) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE orgs SET name = COALESCE($1, name), email = COALESCE($2, email) WHERE id = $3")
            .bind(name.map(str::to_owned))
            .bind(email.map(str::to_owned))
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(unique_err("organization", name.unwrap_or_default()))?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets (or with `None` removes) the monthly spend limit and its action; re-arms it.
    pub async fn org_set_spend_limit_in_txn(tx: &mut Conn, org: &OrgId, cents: Option<i64>, action: &str) -> Result<(), Error> {
        sqlx::query("UPDATE orgs SET spend_limit_cents = $1, spend_limit_action = $2, spend_limit_reached = NULL WHERE id = $3")
            .bind(cents)
            .bind(action)
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("setting spend limit"))?;
        Ok(())
    }

    /// Marks the limit reached for `period` unless it already was; true when this call did.
    pub async fn org_mark_spend_limit_reached_in_txn(tx: &mut Conn, org: &OrgId, period: &str) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE orgs SET spend_limit_reached = $1 WHERE id = $2 AND (spend_limit_reached IS NULL OR spend_limit_reached <> $1)",
        )
        .bind(period)
        .bind(org.as_str())
        .execute(tx)
        .await
        .map_err(db_err("marking spend limit"))?;
        Ok(r.rows_affected() == 1)
    }

    /// The keys (live and revoked) of one service account of `org`, oldest first.
    pub async fn api_key_list_by_service_account(&self, org: &OrgId, sa: &ServiceAccountId) -> Result<Vec<ApiKey>, Error> {
        sqlx::query(&format!("{API_KEY_SELECT} WHERE k.org_id = $1 AND k.service_account_id = $2 ORDER BY k.created_at, k.id"))
            .bind(org.as_str())
            .bind(sa.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing service account keys"))?
            .iter()
            .map(rows::api_key)
            .collect()
    }

    /// Revokes every live key of a service account of `org`; returns the revoked keys' ids.
    pub async fn api_key_revoke_by_service_account_in_txn(
        tx: &mut Conn,
        org: &OrgId,
        sa: &ServiceAccountId,
        now: i64,
    ) -> Result<Vec<ApiKeyId>, Error> {
        let ids = sqlx::query("SELECT id FROM api_keys WHERE org_id = $1 AND service_account_id = $2 AND revoked_at IS NULL ORDER BY id")
            .bind(org.as_str())
            .bind(sa.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("listing service account keys"))?
            .iter()
            .map(|r| get::<String>(r, "id").map(ApiKeyId::from_trusted))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE org_id = $2 AND service_account_id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(org.as_str())
            .bind(sa.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("revoking service account keys"))?;
        Ok(ids)
    }

    /// Revokes a key of this org; false when there is no such live key.
    pub async fn api_key_revoke_in_txn(tx: &mut Conn, org: &OrgId, id: &ApiKeyId, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND org_id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(id.as_str())
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("revoking api key"))?;
        Ok(r.rows_affected() == 1)
    }
}
