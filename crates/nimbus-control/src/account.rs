//! The caller's own organization: its profile, its usage against its quotas, and its API keys.
//!
//! Keys minted here are bounded by the key that mints them: a key can never create (or revoke)
//! a key with a permission it does not itself hold, so no chain of keys escalates.

use nimbus_core::auth::{Actor, Permission, Permissions};
use nimbus_core::ids::ApiKeyId;
use nimbus_core::model::{ApiKey, Org};
use nimbus_core::Error;
use nimbus_store::Store;
use serde_json::json;

use crate::{admin, emit, Control};

pub async fn get(c: &Control, actor: &Actor) -> Result<Org, Error> {
    actor.require(Permission::Read)?;
    c.store().org_get(&actor.org_id).await?.ok_or_else(|| Error::not_found("organization", actor.org_id.as_str()))
}

fn check_email(e: &str) -> Result<(), Error> {
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("email", "must be an email address"))
    }
}

/// A spend limit to set: `(cents, action)`, cents `None` removing the limit.
pub type SpendLimit = (Option<i64>, String);

/// Renames the organization, changes its contact email and/or its spend limit (ADMIN), in one
/// transaction.
pub async fn update(c: &Control, actor: &Actor, name: Option<&str>, email: Option<&str>, spend: Option<SpendLimit>) -> Result<Org, Error> {
    actor.require(Permission::Admin)?;
    if let Some((cents, action)) = &spend {
        crate::billing::check_spend_limit(*cents, action)?;
    }
    if let Some(n) = name {
        if n.is_empty() || n.chars().count() > 64 || n.chars().any(char::is_control) {
            return Err(Error::invalid("name", "must be 1 to 64 printable characters"));
        }
    }
    if let Some(e) = email {
        check_email(e)?;
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    Store::org_update_in_txn(&mut tx, &actor.org_id, name, email).await?;
    if let Some((cents, action)) = &spend {
        Store::org_set_spend_limit_in_txn(&mut tx, &actor.org_id, *cents, action).await?;
    }
    let limit = spend.as_ref().map(|(c, a)| json!({"cents": c, "action": a}));
    emit(
        &mut tx,
        actor,
        "account.updated",
        "organization",
        actor.org_id.as_str(),
        json!({"name": name, "email": email, "spend_limit": limit}),
        now,
    )
    .await?;
    Store::commit(tx).await?;
    get(c, actor).await
}

/// One quota: what the organization uses and may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub resource: &'static str,
    pub used: i64,
    pub limit: i64,
    pub unit: &'static str,
}

/// Usage against every quota enforced at create time.
pub async fn quota(c: &Control, actor: &Actor) -> Result<Vec<QuotaUsage>, Error> {
    actor.require(Permission::Read)?;
    let q = &c.config().quotas;
    let org = &actor.org_id;
    let mut r = c.store().reader().await?;
    let instances = Store::instance_count_live_by_org_in(&mut r, org).await?;
    let ssh_keys = Store::ssh_key_count_in(&mut r, org).await?;
    let file_systems = Store::file_system_count_in(&mut r, org).await?;
    let rulesets = Store::ruleset_count_in(&mut r, org).await?;
    let (volumes, volume_gib) = Store::volume_usage_in(&mut r, org).await?;
    let snapshots = Store::snapshot_count_in(&mut r, org).await?;
    let api_keys = Store::api_key_count_live_by_org_in(&mut r, org, c.now()).await?;
    let u = |resource, used, limit, unit| QuotaUsage { resource, used, limit, unit };
    Ok(vec![
        u("instances", instances, q.instances_per_org, "count"),
        u("ssh_keys", ssh_keys, q.ssh_keys_per_org, "count"),
        u("file_systems", file_systems, q.file_systems_per_org, "count"),
        u("firewall_rulesets", rulesets, q.firewall_rulesets_per_org, "count"),
        u("volumes", volumes, q.volumes_per_org, "count"),
        u("volume_storage", volume_gib, q.volume_gib_per_org, "GiB"),
        u("snapshots", snapshots, q.snapshots_per_org, "count"),
        u("api_keys", api_keys, q.api_keys_per_org, "count"),
    ])
}

/// The organization's live keys (never their secrets).
pub async fn api_keys_list(c: &Control, actor: &Actor) -> Result<Vec<ApiKey>, Error> {
    actor.require(Permission::Read)?;
    let now = c.now();
    Ok(c.store()
        .api_key_list_by_org(&actor.org_id)
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now))
        .collect())
}

/// Mints a key for the caller's organization, at most as powerful as the caller's own key.
/// Returns the key and its secret (shown once).
pub async fn api_key_create(
    c: &Control,
    actor: &Actor,
    name: &str,
    permissions: Permissions,
    expires_at: Option<i64>,
) -> Result<(ApiKey, String), Error> {
    actor.require(Permission::Create)?;
    if !actor.permissions.covers(permissions) {
        return Err(Error::Forbidden {
            message: format!(
                "a key cannot grant more than it has: this key holds {}, the new key asks for {}",
                actor.permissions.names().join(","),
                permissions.names().join(",")
            ),
        });
    }
    if let Some(e) = expires_at {
        if e <= c.now() {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
    }
    let spec = admin::NewKey {
        name,
        permissions,
        expires_at,
        created_by: Some(&actor.key_id),
        max_live_keys: Some(c.config().quotas.api_keys_per_org),
        ..admin::NewKey::default()
    };
    admin::insert_api_key(c, &actor.org_id, &actor.plan, spec).await
}

/// Revokes a key of the organization; the caller's key must cover the target's permissions.
pub async fn api_key_delete(c: &Control, actor: &Actor, id: &str) -> Result<ApiKey, Error> {
    actor.require(Permission::Delete)?;
    let kid = ApiKeyId::parse(id).ok_or_else(|| Error::not_found("api key", id))?;
    let key = c
        .store()
        .api_key_list_by_org(&actor.org_id)
        .await?
        .into_iter()
        .find(|k| k.id == kid && k.revoked_at.is_none())
        .ok_or_else(|| Error::not_found("api key", id))?;
    if !actor.permissions.covers(key.permissions) {
        return Err(Error::Forbidden { message: "a key cannot revoke a key with permissions it does not hold".to_owned() });
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if !Store::api_key_revoke_in_txn(&mut tx, &actor.org_id, &kid, now).await? {
        return Err(Error::not_found("api key", id));
    }
    emit(&mut tx, actor, "api_key.revoked", "api_key", kid.as_str(), json!({"name": key.name}), now).await?;
    Store::commit(tx).await?;
    c.inner.auth_cache.clear();
    Ok(key)
}
