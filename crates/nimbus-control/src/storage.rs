//! Persistent file systems (Lambda's "filesystems"): named per org and region, mounted into
//! instances at `/lambda/nfs/<name>` by default. They outlive instances; deleting one that a live
//! instance mounts is refused. The host-side directories are created by the agent's driver.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::FileSystemId;
use nimbus_core::model::FileSystem;
use nimbus_core::{validate, ConflictReason, Error};
use nimbus_store::Store;
use serde_json::json;

use crate::{emit, Control};

pub async fn create(c: &Control, actor: &Actor, name: &str, region: &str) -> Result<FileSystem, Error> {
    actor.require(Permission::Create)?;
    validate::file_system_name(name)?;
    c.require_region("region", region)?;
    let now = c.now();
    let fs = FileSystem {
        id: FileSystemId::generate(),
        org_id: actor.org_id.clone(),
        name: name.to_owned(),
        region: region.to_owned(),
        mount_point: format!("/lambda/nfs/{name}"),
        created_at: now,
        in_use: false,
    };
    let mut tx = c.store().begin().await?;
    let limit = c.config().quotas.file_systems_per_org;
    if Store::file_system_count_in(&mut tx, &actor.org_id).await? >= limit {
        return Err(Error::QuotaExceeded { message: format!("an organization may have at most {limit} file systems") });
    }
    Store::file_system_insert_in_txn(&mut tx, &fs).await?;
    emit(&mut tx, actor, "file_system.created", "file_system", fs.id.as_str(), json!({"name": name, "region": region}), now).await?;
    Store::commit(tx).await?;
    Ok(fs)
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<FileSystem>, Error> {
    list_for(c, actor, Permission::Read).await
}

/// [`list`] for an action that needs `p` (rendering the file systems an instance that was just
/// changed mounts, say), so that a key holding just that permission can do it.
pub async fn list_for(c: &Control, actor: &Actor, p: Permission) -> Result<Vec<FileSystem>, Error> {
    actor.require(p)?;
    c.store().file_system_list_by_org(&actor.org_id).await
}

pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<FileSystemId, Error> {
    actor.require(Permission::Delete)?;
    let fid = FileSystemId::parse(id).ok_or_else(|| Error::not_found("file system", id))?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let fs = Store::file_system_get_in(&mut tx, &actor.org_id, &fid).await?.ok_or_else(|| Error::not_found("file system", id))?;
    if fs.in_use {
        return Err(Error::conflict(ConflictReason::FileSystemInUse, format!("file system {} is mounted by an instance", fs.name)));
    }
    Store::file_system_delete_in_txn(&mut tx, &actor.org_id, &fid).await?;
    emit(&mut tx, actor, "file_system.deleted", "file_system", fid.as_str(), json!({"name": fs.name}), now).await?;
    Store::commit(tx).await?;
    Ok(fid)
}
