//! Service accounts: named principals of an organization. Their keys are rows of `api_keys`
//! (see `orgs.rs`), whose permissions are read through the account.

use nimbus_core::auth::Permissions;
use nimbus_core::ids::*;
use nimbus_core::model::ServiceAccount;
use nimbus_core::Error;

use crate::rows;
use crate::{db_err, unique_err, Conn, Store};

const COLS: &str = "id, org_id, name, description, permissions, created_at, deleted_at";

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountChange<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub permissions: Option<Permissions>,
}

impl Store {
    /// Inserts a service account; a live one of the same name in the org is `AlreadyExists`.
    pub async fn service_account_insert_in_txn(tx: &mut Conn, sa: &ServiceAccount) -> Result<(), Error> {
        sqlx::query(&format!("INSERT INTO service_accounts ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(sa.id.as_str())
            .bind(sa.org_id.as_str())
            .bind(&sa.name)
            .bind(&sa.description)
            .bind(sa.permissions.bits())
            .bind(sa.created_at)
            .bind(sa.deleted_at)
            .execute(tx)
            .await
            .map_err(unique_err("service account", &sa.name))?;
        Ok(())
    }

    /// The org's live service accounts, oldest first.
    pub async fn service_account_list_by_org(&self, org: &OrgId) -> Result<Vec<ServiceAccount>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM service_accounts WHERE org_id = $1 AND deleted_at IS NULL ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing service accounts"))?
            .iter()
            .map(rows::service_account)
            .collect()
    }

    /// How many live service accounts `org` has, on a given connection (inside a transaction).
    pub async fn service_account_count_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM service_accounts WHERE org_id = $1 AND deleted_at IS NULL")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting service accounts"))?;
        rows::get(&row, "n")
    }

    /// A live service account of `org` (another org's, or a deleted one, is `None`).
    pub async fn service_account_get(&self, org: &OrgId, id: &ServiceAccountId) -> Result<Option<ServiceAccount>, Error> {
        let mut c = self.reader().await?;
        Self::service_account_get_in(&mut c, org, id).await
    }

    /// [`Store::service_account_get`] on a given connection (inside a transaction).
    pub async fn service_account_get_in(c: &mut Conn, org: &OrgId, id: &ServiceAccountId) -> Result<Option<ServiceAccount>, Error> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM service_accounts WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"))
            .bind(id.as_str())
            .bind(org.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading service account"))?;
        row.as_ref().map(rows::service_account).transpose()
    }

    /// Applies `change` to a live service account of `org`; false when there is none. A new
    /// name taken by another live account is `AlreadyExists`.
    pub async fn service_account_update_in_txn(
        tx: &mut Conn,
        org: &OrgId,
        id: &ServiceAccountId,
        change: &ServiceAccountChange<'_>,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE service_accounts SET name = COALESCE($1, name), description = COALESCE($2, description), \
             permissions = COALESCE($3, permissions) WHERE id = $4 AND org_id = $5 AND deleted_at IS NULL",
        )
        .bind(change.name.map(str::to_owned))
        .bind(change.description.map(str::to_owned))
        .bind(change.permissions.map(Permissions::bits))
        .bind(id.as_str())
        .bind(org.as_str())
        .execute(tx)
        .await
        .map_err(unique_err("service account", change.name.unwrap_or_default()))?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks a live service account of `org` deleted; false when there is none. Its keys are
    /// revoked by the caller in the same transaction
    /// ([`Store::api_key_revoke_by_service_account_in_txn`]).
    pub async fn service_account_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &ServiceAccountId, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE service_accounts SET deleted_at = $1 WHERE id = $2 AND org_id = $3 AND deleted_at IS NULL")
            .bind(now)
            .bind(id.as_str())
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("deleting service account"))?;
        Ok(r.rows_affected() == 1)
    }
}
