//! Tenant-owned objects other than instances: SSH keys, file systems, firewall rulesets, and the
//! (global) image catalog. Every tenant read and write is scoped by org id in the SQL itself.

use nimbus_core::firewall::FirewallRule;
use nimbus_core::ids::*;
use nimbus_core::model::{FileSystem, FirewallRuleset, Image, SshKey};
use nimbus_core::Error;
use sqlx::any::AnyRow;

use crate::rows::{self, get, to_json};
use crate::{db_err, unique_err, Conn, Store};

const FS_COLS: &str = "f.id, f.org_id, f.name, f.region, f.mount_point, f.created_at, \
    CASE WHEN EXISTS (SELECT 1 FROM instance_file_systems l WHERE l.file_system_id = f.id) THEN 1 ELSE 0 END AS in_use";

impl Store {
    // ---- SSH keys ----

    pub async fn ssh_key_insert_in_txn(tx: &mut Conn, k: &SshKey) -> Result<(), Error> {
        sqlx::query("INSERT INTO ssh_keys (id, org_id, name, public_key, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(k.id.as_str())
            .bind(k.org_id.as_str())
            .bind(&k.name)
            .bind(&k.public_key)
            .bind(k.created_at)
            .execute(tx)
            .await
            .map_err(unique_err("SSH key", &k.name))?;
        Ok(())
    }

    pub async fn ssh_key_count_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM ssh_keys WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting SSH keys"))?;
        get(&row, "n")
    }

    pub async fn ssh_key_list_by_org(&self, org: &OrgId) -> Result<Vec<SshKey>, Error> {
        sqlx::query("SELECT id, org_id, name, public_key, created_at FROM ssh_keys WHERE org_id = $1 ORDER BY created_at, id")
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing SSH keys"))?
            .iter()
            .map(rows::ssh_key)
            .collect()
    }

    pub async fn ssh_key_get_by_name_in(c: &mut Conn, org: &OrgId, name: &str) -> Result<Option<SshKey>, Error> {
        let row = sqlx::query("SELECT id, org_id, name, public_key, created_at FROM ssh_keys WHERE org_id = $1 AND name = $2")
            .bind(org.as_str())
            .bind(name)
            .fetch_optional(c)
            .await
            .map_err(db_err("reading SSH key"))?;
        row.as_ref().map(rows::ssh_key).transpose()
    }

    pub async fn ssh_key_get_in(c: &mut Conn, org: &OrgId, id: &SshKeyId) -> Result<Option<SshKey>, Error> {
        let row = sqlx::query("SELECT id, org_id, name, public_key, created_at FROM ssh_keys WHERE org_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading SSH key"))?;
        row.as_ref().map(rows::ssh_key).transpose()
    }

    pub async fn ssh_key_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &SshKeyId) -> Result<Option<SshKey>, Error> {
        let row = sqlx::query("SELECT id, org_id, name, public_key, created_at FROM ssh_keys WHERE org_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("reading SSH key"))?;
        let Some(key) = row.as_ref().map(rows::ssh_key).transpose()? else { return Ok(None) };
        sqlx::query("DELETE FROM ssh_keys WHERE org_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("deleting SSH key"))?;
        Ok(Some(key))
    }

    // ---- File systems ----

    pub async fn file_system_insert_in_txn(tx: &mut Conn, f: &FileSystem) -> Result<(), Error> {
        sqlx::query("INSERT INTO file_systems (id, org_id, name, region, mount_point, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(f.id.as_str())
            .bind(f.org_id.as_str())
            .bind(&f.name)
            .bind(&f.region)
            .bind(&f.mount_point)
            .bind(f.created_at)
            .execute(tx)
            .await
            .map_err(unique_err("file system", &f.name))?;
        Ok(())
    }

    pub async fn file_system_count_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM file_systems WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting file systems"))?;
        get(&row, "n")
    }

    pub async fn file_system_list_by_org(&self, org: &OrgId) -> Result<Vec<FileSystem>, Error> {
        sqlx::query(&format!("SELECT {FS_COLS} FROM file_systems f WHERE f.org_id = $1 ORDER BY f.created_at, f.id"))
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing file systems"))?
            .iter()
            .map(rows::file_system)
            .collect()
    }

    pub async fn file_system_get_in(c: &mut Conn, org: &OrgId, id: &FileSystemId) -> Result<Option<FileSystem>, Error> {
        let row = sqlx::query(&format!("SELECT {FS_COLS} FROM file_systems f WHERE f.org_id = $1 AND f.id = $2"))
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading file system"))?;
        row.as_ref().map(rows::file_system).transpose()
    }

    pub async fn file_system_get_by_name_in(c: &mut Conn, org: &OrgId, name: &str) -> Result<Option<FileSystem>, Error> {
        let row = sqlx::query(&format!("SELECT {FS_COLS} FROM file_systems f WHERE f.org_id = $1 AND f.name = $2"))
            .bind(org.as_str())
            .bind(name)
            .fetch_optional(c)
            .await
            .map_err(db_err("reading file system"))?;
        row.as_ref().map(rows::file_system).transpose()
    }

    pub async fn file_system_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &FileSystemId) -> Result<(), Error> {
        sqlx::query("DELETE FROM file_systems WHERE org_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("deleting file system"))?;
        Ok(())
    }

    // ---- Firewall rulesets ----

    async fn ruleset_from_row(c: &mut Conn, row: &AnyRow) -> Result<FirewallRuleset, Error> {
        let id = FirewallRulesetId::from_trusted(get(row, "id")?);
        let ids = sqlx::query(
            "SELECT l.instance_id FROM instance_firewall_rulesets l JOIN instances i ON i.id = l.instance_id \
             WHERE l.ruleset_id = $1 ORDER BY i.created_at, i.id",
        )
        .bind(id.as_str())
        .fetch_all(c)
        .await
        .map_err(db_err("listing ruleset instances"))?
        .iter()
        .map(|r| get::<String>(r, "instance_id").map(InstanceId::from_trusted))
        .collect::<Result<Vec<_>, _>>()?;
        Ok(FirewallRuleset {
            id,
            org_id: OrgId::from_trusted(get(row, "org_id")?),
            name: get(row, "name")?,
            region: get(row, "region")?,
            rules: rows::json(row, "rules")?,
            created_at: get(row, "created_at")?,
            instance_ids: ids,
        })
    }

    pub async fn ruleset_insert_in_txn(tx: &mut Conn, r: &FirewallRuleset) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO firewall_rulesets (id, org_id, name, region, rules, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(r.id.as_str())
        .bind(r.org_id.as_str())
        .bind(&r.name)
        .bind(&r.region)
        .bind(to_json(&r.rules))
        .bind(r.created_at)
        .execute(tx)
        .await
        .map_err(unique_err("firewall ruleset", &r.name))?;
        Ok(())
    }

    pub async fn ruleset_count_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM firewall_rulesets WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting rulesets"))?;
        get(&row, "n")
    }

    pub async fn ruleset_list_by_org(&self, org: &OrgId) -> Result<Vec<FirewallRuleset>, Error> {
        let mut c = self.r().acquire().await.map_err(db_err("acquiring connection"))?;
        Self::ruleset_list_by_org_in(&mut c, org).await
    }

    pub async fn ruleset_list_by_org_in(c: &mut Conn, org: &OrgId) -> Result<Vec<FirewallRuleset>, Error> {
        let rows = sqlx::query(
            "SELECT id, org_id, name, region, rules, created_at FROM firewall_rulesets WHERE org_id = $1 ORDER BY created_at, id",
        )
        .bind(org.as_str())
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("listing rulesets"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(Self::ruleset_from_row(c, r).await?);
        }
        Ok(out)
    }

    pub async fn ruleset_get_in(c: &mut Conn, org: &OrgId, id: &FirewallRulesetId) -> Result<Option<FirewallRuleset>, Error> {
        let row = sqlx::query("SELECT id, org_id, name, region, rules, created_at FROM firewall_rulesets WHERE org_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *c)
            .await
            .map_err(db_err("reading ruleset"))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(Self::ruleset_from_row(c, &r).await?)),
        }
    }

    pub async fn ruleset_update_in_txn(
        tx: &mut Conn,
        org: &OrgId,
        id: &FirewallRulesetId,
        name: &str,
        rules: &[FirewallRule],
        now: i64,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE firewall_rulesets SET name = $1, rules = $2, updated_at = $3 WHERE org_id = $4 AND id = $5")
            .bind(name)
            .bind(to_json(&rules))
            .bind(now)
            .bind(org.as_str())
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(unique_err("firewall ruleset", name))?;
        Ok(())
    }

    pub async fn ruleset_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &FirewallRulesetId) -> Result<(), Error> {
        sqlx::query("DELETE FROM firewall_rulesets WHERE org_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("deleting ruleset"))?;
        Ok(())
    }

    // ---- Images (operator-managed, visible to every org) ----

    /// Inserts or refreshes an image by name; returns its id.
    pub async fn image_upsert_in_txn(tx: &mut Conn, img: &Image) -> Result<ImageId, Error> {
        let row = sqlx::query("SELECT id FROM images WHERE name = $1")
            .bind(&img.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("reading image"))?;
        if let Some(r) = row {
            let id = ImageId::from_trusted(get(&r, "id")?);
            sqlx::query(
                "UPDATE images SET description = $1, family = $2, version = $3, architecture = $4, updated_at = $5 \
                 WHERE id = $6 AND (description <> $1 OR family <> $2 OR version <> $3 OR architecture <> $4)",
            )
            .bind(&img.description)
            .bind(&img.family)
            .bind(&img.version)
            .bind(&img.architecture)
            .bind(img.updated_at)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("updating image"))?;
            return Ok(id);
        }
        sqlx::query(
            "INSERT INTO images (id, name, description, family, version, architecture, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(img.id.as_str())
        .bind(&img.name)
        .bind(&img.description)
        .bind(&img.family)
        .bind(&img.version)
        .bind(&img.architecture)
        .bind(img.created_at)
        .bind(img.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err("inserting image"))?;
        Ok(img.id.clone())
    }

    pub async fn image_list(&self) -> Result<Vec<Image>, Error> {
        sqlx::query("SELECT id, name, description, family, version, architecture, created_at, updated_at FROM images ORDER BY family, name")
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing images"))?
            .iter()
            .map(rows::image)
            .collect()
    }
}
