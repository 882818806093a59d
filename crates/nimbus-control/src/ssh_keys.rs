//! Tenant SSH keys: add an existing public key or generate an ed25519 pair (the private key is
//! returned once and never stored), list, delete. Names are unique per org; at most
//! `quotas.ssh_keys_per_org` keys.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::SshKeyId;
use nimbus_core::model::SshKey;
use nimbus_core::{validate, Error};
use nimbus_store::Store;
use serde_json::json;

use crate::{emit, Control};

/// Adds a key; returns it and, when generated, the private key.
pub async fn add(c: &Control, actor: &Actor, name: &str, public_key: Option<&str>) -> Result<(SshKey, Option<String>), Error> {
    actor.require(Permission::Create)?;
    validate::printable_name(name)?;
    let (public, private) = match public_key {
        Some(pk) => {
            validate::ssh_public_key(pk)?;
            (pk.trim().to_owned(), None)
        }
        None => {
            let (public, private) = validate::generate_ssh_keypair(name)?;
            (public, Some(private))
        }
    };
    let now = c.now();
    let key = SshKey { id: SshKeyId::generate(), org_id: actor.org_id.clone(), name: name.to_owned(), public_key: public, created_at: now };
    let mut tx = c.store().begin().await?;
    let limit = c.config().quotas.ssh_keys_per_org;
    if Store::ssh_key_count_in(&mut tx, &actor.org_id).await? >= limit {
        return Err(Error::QuotaExceeded { message: format!("an organization may have at most {limit} SSH keys") });
    }
    Store::ssh_key_insert_in_txn(&mut tx, &key).await?;
    emit(&mut tx, actor, "ssh_key.created", "ssh_key", key.id.as_str(), json!({"name": key.name, "generated": private.is_some()}), now)
        .await?;
    Store::commit(tx).await?;
    Ok((key, private))
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<SshKey>, Error> {
    list_for(c, actor, Permission::Read).await
}

/// [`list`] for an action that needs `p` (choosing the keys of a new instance needs CREATE, not
/// READ), so that a key holding just that permission can do it.
pub async fn list_for(c: &Control, actor: &Actor, p: Permission) -> Result<Vec<SshKey>, Error> {
    actor.require(p)?;
    c.store().ssh_key_list_by_org(&actor.org_id).await
}

pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<(), Error> {
    actor.require(Permission::Delete)?;
    let kid = SshKeyId::parse(id).ok_or_else(|| Error::not_found("SSH key", id))?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let key = Store::ssh_key_delete_in_txn(&mut tx, &actor.org_id, &kid).await?.ok_or_else(|| Error::not_found("SSH key", id))?;
    emit(&mut tx, actor, "ssh_key.deleted", "ssh_key", kid.as_str(), json!({"name": key.name}), now).await?;
    Store::commit(tx).await
}
