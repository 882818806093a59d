//! Volumes and snapshots: inserts, tenant-scoped reads, and conditional updates (attach only
//! when unattached and on the right host, grow only, delete only when detached) so a racing
//! request loses cleanly instead of overwriting.

use nimbus_core::ids::*;
use nimbus_core::model::{Snapshot, SnapshotState, Volume};
use nimbus_core::Error;

use crate::rows::{self, SNAPSHOT_COLS, VOLUME_COLS};
use crate::{db_err, unique_err, Conn, Store};

impl Store {
    pub async fn volume_insert_in_txn(tx: &mut Conn, v: &Volume) -> Result<(), Error> {
        sqlx::query(&format!("INSERT INTO volumes ({VOLUME_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
            .bind(v.id.as_str())
            .bind(v.org_id.as_str())
            .bind(&v.name)
            .bind(&v.region)
            .bind(v.size_gib)
            .bind(v.host_id.as_ref().map(|h| h.as_str().to_owned()))
            .bind(v.instance_id.as_ref().map(|i| i.as_str().to_owned()))
            .bind(v.source_snapshot_id.as_ref().map(|s| s.as_str().to_owned()))
            .bind(i64::from(v.mounted))
            .bind(v.created_at)
            .bind(v.updated_at)
            .execute(tx)
            .await
            .map_err(unique_err("volume", &v.name))?;
        Ok(())
    }

    pub async fn volume_list_by_org(&self, org: &OrgId) -> Result<Vec<Volume>, Error> {
        let mut c = self.reader().await?;
        sqlx::query(&format!("SELECT {VOLUME_COLS} FROM volumes WHERE org_id = $1 ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing volumes"))?
            .iter()
            .map(rows::volume)
            .collect()
    }

    pub async fn volume_get_in(c: &mut Conn, org: &OrgId, id: &VolumeId) -> Result<Option<Volume>, Error> {
        let row = sqlx::query(&format!("SELECT {VOLUME_COLS} FROM volumes WHERE org_id = $1 AND id = $2"))
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading volume"))?;
        row.as_ref().map(rows::volume).transpose()
    }

    pub async fn volume_get(&self, org: &OrgId, id: &VolumeId) -> Result<Option<Volume>, Error> {
        let mut c = self.reader().await?;
        Self::volume_get_in(&mut c, org, id).await
    }

    /// `(number of volumes, total GiB)` of an org.
    pub async fn volume_usage_in(c: &mut Conn, org: &OrgId) -> Result<(i64, i64), Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size_gib), 0) AS BIGINT) AS gib FROM volumes WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting volumes"))?;
        Ok((rows::get(&row, "n")?, rows::get(&row, "gib")?))
    }

    pub async fn volume_list_by_host_in(c: &mut Conn, host: &HostId) -> Result<Vec<Volume>, Error> {
        sqlx::query(&format!("SELECT {VOLUME_COLS} FROM volumes WHERE host_id = $1 ORDER BY id"))
            .bind(host.as_str())
            .fetch_all(c)
            .await
            .map_err(db_err("listing host volumes"))?
            .iter()
            .map(rows::volume)
            .collect()
    }

    pub async fn volume_list_by_host(&self, host: &HostId) -> Result<Vec<Volume>, Error> {
        let mut c = self.reader().await?;
        Self::volume_list_by_host_in(&mut c, host).await
    }

    /// Attaches when the volume is unattached and either not materialized yet or on `host`.
    pub async fn volume_attach_in_txn(tx: &mut Conn, id: &VolumeId, instance: &InstanceId, host: &HostId, now: i64) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE volumes SET instance_id = $1, host_id = $2, mounted = 0, updated_at = $3 \
             WHERE id = $4 AND instance_id IS NULL AND (host_id IS NULL OR host_id = $2)",
        )
        .bind(instance.as_str())
        .bind(host.as_str())
        .bind(now)
        .bind(id.as_str())
        .execute(tx)
        .await
        .map_err(db_err("attaching volume"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn volume_detach_in_txn(tx: &mut Conn, id: &VolumeId, instance: &InstanceId, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE volumes SET instance_id = NULL, mounted = 0, updated_at = $1 WHERE id = $2 AND instance_id = $3")
            .bind(now)
            .bind(id.as_str())
            .bind(instance.as_str())
            .execute(tx)
            .await
            .map_err(db_err("detaching volume"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Detaches every volume of a terminated instance; the volumes stay on the host.
    pub async fn volume_detach_all_in_txn(tx: &mut Conn, instance: &InstanceId, now: i64) -> Result<Vec<VolumeId>, Error> {
        let rows = sqlx::query("SELECT id FROM volumes WHERE instance_id = $1 ORDER BY id")
            .bind(instance.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("listing instance volumes"))?;
        let ids: Vec<VolumeId> = rows.iter().map(|r| rows::get::<String>(r, "id").map(VolumeId::from_trusted)).collect::<Result<_, _>>()?;
        sqlx::query("UPDATE volumes SET instance_id = NULL, mounted = 0, updated_at = $1 WHERE instance_id = $2")
            .bind(now)
            .bind(instance.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("detaching instance volumes"))?;
        Ok(ids)
    }

    /// Grows a volume; never shrinks.
    pub async fn volume_grow_in_txn(tx: &mut Conn, id: &VolumeId, size_gib: i64, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE volumes SET size_gib = $1, updated_at = $2 WHERE id = $3 AND size_gib < $1")
            .bind(size_gib)
            .bind(now)
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("growing volume"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes a detached volume of `org`.
    pub async fn volume_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &VolumeId) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM volumes WHERE id = $1 AND org_id = $2 AND instance_id IS NULL")
            .bind(id.as_str())
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("deleting volume"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records what the host reports; returns whether it changed.
    pub async fn volume_set_mounted_in_txn(tx: &mut Conn, id: &VolumeId, mounted: bool) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE volumes SET mounted = $1 WHERE id = $2 AND mounted <> $1")
            .bind(i64::from(mounted))
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("recording volume mount"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn snapshot_insert_in_txn(tx: &mut Conn, s: &Snapshot) -> Result<(), Error> {
        sqlx::query(&format!("INSERT INTO snapshots ({SNAPSHOT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"))
            .bind(s.id.as_str())
            .bind(s.org_id.as_str())
            .bind(&s.name)
            .bind(&s.region)
            .bind(s.host_id.as_str())
            .bind(s.source_type.as_str())
            .bind(&s.source_id)
            .bind(s.size_gib)
            .bind(s.state.as_str())
            .bind(s.size_bytes)
            .bind(s.message.clone())
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(tx)
            .await
            .map_err(unique_err("snapshot", &s.name))?;
        Ok(())
    }

    pub async fn snapshot_list_by_org(&self, org: &OrgId) -> Result<Vec<Snapshot>, Error> {
        let mut c = self.reader().await?;
        sqlx::query(&format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE org_id = $1 ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing snapshots"))?
            .iter()
            .map(rows::snapshot)
            .collect()
    }

    pub async fn snapshot_get_in(c: &mut Conn, org: &OrgId, id: &SnapshotId) -> Result<Option<Snapshot>, Error> {
        let row = sqlx::query(&format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE org_id = $1 AND id = $2"))
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading snapshot"))?;
        row.as_ref().map(rows::snapshot).transpose()
    }

    pub async fn snapshot_get(&self, org: &OrgId, id: &SnapshotId) -> Result<Option<Snapshot>, Error> {
        let mut c = self.reader().await?;
        Self::snapshot_get_in(&mut c, org, id).await
    }

    pub async fn snapshot_count_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting snapshots"))?;
        rows::get(&row, "n")
    }

    pub async fn snapshot_list_by_host_in(c: &mut Conn, host: &HostId) -> Result<Vec<Snapshot>, Error> {
        sqlx::query(&format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE host_id = $1 ORDER BY id"))
            .bind(host.as_str())
            .fetch_all(c)
            .await
            .map_err(db_err("listing host snapshots"))?
            .iter()
            .map(rows::snapshot)
            .collect()
    }

    pub async fn snapshot_list_by_host(&self, host: &HostId) -> Result<Vec<Snapshot>, Error> {
        let mut c = self.reader().await?;
        Self::snapshot_list_by_host_in(&mut c, host).await
    }

    /// Finishes a `creating` snapshot as `available` or `failed`.
    pub async fn snapshot_finish_in_txn(
        tx: &mut Conn,
        id: &SnapshotId,
        state: SnapshotState,
        size_bytes: i64,
        message: Option<&str>,
        now: i64,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE snapshots SET state = $1, size_bytes = $2, message = $3, updated_at = $4 WHERE id = $5 AND state = 'creating'",
        )
        .bind(state.as_str())
        .bind(size_bytes)
        .bind(message.map(str::to_owned))
        .bind(now)
        .bind(id.as_str())
        .execute(tx)
        .await
        .map_err(db_err("finishing snapshot"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn snapshot_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &SnapshotId) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM snapshots WHERE id = $1 AND org_id = $2")
            .bind(id.as_str())
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("deleting snapshot"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether a volume or a live instance still waits to be filled from the snapshot.
    pub async fn snapshot_in_use_in(c: &mut Conn, id: &SnapshotId) -> Result<bool, Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM volumes WHERE source_snapshot_id = $1 AND mounted = 0 AND instance_id IS NULL AND host_id IS NOT NULL) \
             + (SELECT COUNT(*) FROM instances WHERE source_snapshot_id = $1 AND state IN ('pending', 'booting')) AS n",
        )
        .bind(id.as_str())
        .fetch_one(c)
        .await
        .map_err(db_err("checking snapshot use"))?;
        Ok(rows::get::<i64>(&row, "n")? > 0)
    }
}
