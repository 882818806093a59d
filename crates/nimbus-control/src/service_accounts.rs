//! Service accounts (seed 003): named, non-human principals of an organization, each with a set
//! of permissions (ADMIN, CREATE, READ, EDIT, DELETE). Their secret keys are ordinary API keys,
//! so one authentication path serves every dialect.
//!
//! Everything here needs ADMIN, reads included: a service account can be given any permission
//! and minted keys, so managing them is managing who may do what in the organization.
//!
//! A key of a service account acts with the account's permissions *as they are when the key
//! authenticates*: the store reads them through the account. A change to the permissions, or the
//! deletion of the account (which revokes its keys in the same transaction), applies to its keys
//! at once on this replica (the auth cache is cleared) and within [`crate::auth::CACHE_TTL`]
//! (2 s) on every other one.

use nimbus_core::auth::{Actor, Permission, Permissions};
use nimbus_core::ids::{ApiKeyId, ServiceAccountId};
use nimbus_core::model::{ApiKey, ServiceAccount};
use nimbus_core::{validate, Error};
use nimbus_store::{ServiceAccountChange, Store};
use serde_json::json;

use crate::{admin, emit, Control};

/// Most live service accounts one organization may have.
pub const MAX_PER_ORG: i64 = 100;

/// The name given to a service-account key created without one.
pub const DEFAULT_KEY_NAME: &str = "default";

fn parse_id(id: &str) -> Result<ServiceAccountId, Error> {
    ServiceAccountId::parse(id).ok_or_else(|| Error::not_found(ServiceAccountId::KIND, id))
}

fn check_permissions(p: Permissions) -> Result<(), Error> {
    if p.bits() == 0 {
        return Err(Error::invalid("permissions", "at least one permission is required"));
    }
    Ok(())
}

/// A new service account of the caller's organization.
pub async fn create(
    c: &Control,
    actor: &Actor,
    name: &str,
    description: Option<&str>,
    permissions: Permissions,
) -> Result<ServiceAccount, Error> {
    actor.require(Permission::Admin)?;
    validate::service_account_name(name)?;
    let description = description.unwrap_or_default();
    validate::service_account_description(description)?;
    check_permissions(permissions)?;
    let sa = ServiceAccount {
        id: ServiceAccountId::generate(),
        org_id: actor.org_id.clone(),
        name: name.to_owned(),
        description: description.to_owned(),
        permissions,
        created_at: c.now(),
        deleted_at: None,
    };
    let mut tx = c.store().begin().await?;
    // Counted in the write transaction, as the other per-organization quotas are.
    if Store::service_account_count_in(&mut tx, &actor.org_id).await? >= MAX_PER_ORG {
        return Err(Error::QuotaExceeded { message: format!("an organization may have at most {MAX_PER_ORG} service accounts") });
    }
    Store::service_account_insert_in_txn(&mut tx, &sa).await?;
    emit(
        &mut tx,
        actor,
        "service_account.created",
        "service_account",
        sa.id.as_str(),
        json!({"name": sa.name, "permissions": permissions.names()}),
        sa.created_at,
    )
    .await?;
    Store::commit(tx).await?;
    Ok(sa)
}

/// The organization's live service accounts, oldest first.
pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<ServiceAccount>, Error> {
    actor.require(Permission::Admin)?;
    c.store().service_account_list_by_org(&actor.org_id).await
}

/// A live service account of the caller's organization (another organization's is `NotFound`).
pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<ServiceAccount, Error> {
    actor.require(Permission::Admin)?;
    c.store().service_account_get(&actor.org_id, &parse_id(id)?).await?.ok_or_else(|| Error::not_found(ServiceAccountId::KIND, id))
}

/// Renames a service account, changes its description and/or replaces its permissions, in one
/// transaction. New permissions apply to every key of the account (see the module doc for when).
pub async fn update(
    c: &Control,
    actor: &Actor,
    id: &str,
    name: Option<&str>,
    description: Option<&str>,
    permissions: Option<Permissions>,
) -> Result<ServiceAccount, Error> {
    actor.require(Permission::Admin)?;
    let sid = parse_id(id)?;
    if let Some(n) = name {
        validate::service_account_name(n)?;
    }
    if let Some(d) = description {
        validate::service_account_description(d)?;
    }
    if let Some(p) = permissions {
        check_permissions(p)?;
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let change = ServiceAccountChange { name, description, permissions };
    if !Store::service_account_update_in_txn(&mut tx, &actor.org_id, &sid, &change).await? {
        return Err(Error::not_found(ServiceAccountId::KIND, id));
    }
    let sa =
        Store::service_account_get_in(&mut tx, &actor.org_id, &sid).await?.ok_or_else(|| Error::not_found(ServiceAccountId::KIND, id))?;
    emit(
        &mut tx,
        actor,
        "service_account.updated",
        "service_account",
        sid.as_str(),
        json!({"name": name, "description_changed": description.is_some(), "permissions": permissions.map(Permissions::names)}),
        now,
    )
    .await?;
    Store::commit(tx).await?;
    if permissions.is_some() {
        c.inner.auth_cache.clear();
    }
    Ok(sa)
}

/// Deletes a service account and revokes all of its keys, in one transaction; returns the
/// account as it was deleted (with `deleted_at`) and the ids of the keys revoked.
pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<(ServiceAccount, Vec<ApiKeyId>), Error> {
    actor.require(Permission::Admin)?;
    let sid = parse_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let mut sa =
        Store::service_account_get_in(&mut tx, &actor.org_id, &sid).await?.ok_or_else(|| Error::not_found(ServiceAccountId::KIND, id))?;
    if !Store::service_account_delete_in_txn(&mut tx, &actor.org_id, &sid, now).await? {
        return Err(Error::not_found(ServiceAccountId::KIND, id));
    }
    let revoked = Store::api_key_revoke_by_service_account_in_txn(&mut tx, &actor.org_id, &sid, now).await?;
    emit(
        &mut tx,
        actor,
        "service_account.deleted",
        "service_account",
        sid.as_str(),
        json!({"name": sa.name, "revoked_api_keys": revoked.iter().map(ApiKeyId::as_str).collect::<Vec<_>>()}),
        now,
    )
    .await?;
    Store::commit(tx).await?;
    c.inner.auth_cache.clear();
    sa.deleted_at = Some(now);
    Ok((sa, revoked))
}

/// The live (neither revoked nor expired) keys of a service account, oldest first.
pub async fn api_keys_list(c: &Control, actor: &Actor, id: &str) -> Result<Vec<ApiKey>, Error> {
    let sa = get(c, actor, id).await?;
    let now = c.now();
    Ok(c.store()
        .api_key_list_by_service_account(&actor.org_id, &sa.id)
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now))
        .collect())
}

/// Mints a key of a service account; returns it with its secret (shown once). The key acts with
/// the account's permissions, whatever they become.
pub async fn api_key_create(
    c: &Control,
    actor: &Actor,
    id: &str,
    name: Option<&str>,
    expires_at: Option<i64>,
) -> Result<(ApiKey, String), Error> {
    let sa = get(c, actor, id).await?;
    if let Some(n) = name {
        validate::printable_name(n)?;
    }
    if let Some(e) = expires_at {
        if e <= c.now() {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
    }
    let spec = admin::NewKey {
        name: name.unwrap_or(DEFAULT_KEY_NAME),
        permissions: sa.permissions,
        expires_at,
        created_by: Some(&actor.key_id),
        service_account: Some(&sa.id),
        max_live_keys: Some(c.config().quotas.api_keys_per_org),
        ..admin::NewKey::default()
    };
    admin::insert_api_key(c, &actor.org_id, &actor.plan, spec).await
}

/// Revokes one key of a service account (a key of another account, or of none, is `NotFound`
/// here); returns it.
pub async fn api_key_delete(c: &Control, actor: &Actor, id: &str, key_id: &str) -> Result<ApiKey, Error> {
    let sa = get(c, actor, id).await?;
    let kid = ApiKeyId::parse(key_id).ok_or_else(|| Error::not_found(ApiKeyId::KIND, key_id))?;
    let key = c
        .store()
        .api_key_list_by_service_account(&actor.org_id, &sa.id)
        .await?
        .into_iter()
        .find(|k| k.id == kid && k.revoked_at.is_none())
        .ok_or_else(|| Error::not_found(ApiKeyId::KIND, key_id))?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if !Store::api_key_revoke_in_txn(&mut tx, &actor.org_id, &kid, now).await? {
        return Err(Error::not_found(ApiKeyId::KIND, key_id));
    }
    emit(&mut tx, actor, "api_key.revoked", "api_key", kid.as_str(), json!({"name": key.name, "service_account_id": sa.id.as_str()}), now)
        .await?;
    Store::commit(tx).await?;
    c.inner.auth_cache.clear();
    Ok(ApiKey { revoked_at: Some(now), ..key })
}
