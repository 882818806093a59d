//! Volumes and snapshots: inserts, tenant-scoped reads, and conditional updates (attach only on
//! the volume's host, grow only, delete only when detached) so a racing request loses cleanly
//! instead of overwriting. A volume's attachments live in `volume_attachments` (one row per
//! instance) and are read with the volume.

use nimbus_core::ids::*;
use nimbus_core::model::{Snapshot, SnapshotState, Volume, VolumeAttachment, VolumeHostState};
use nimbus_core::Error;

use crate::rows::{self, SNAPSHOT_COLS, VOLUME_COLS};
use crate::{db_err, unique_err, Conn, Store};

/// How an attach went (`Store::volume_attach_in_txn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutcome {
    Attached,
    /// It is attached to this instance already.
    AlreadyAttached,
    /// An exclusive attach found it attached to this other instance.
    AttachedElsewhere(InstanceId),
    /// Its data lives on another host than the instance's.
    OtherHost,
    /// The volume is gone.
    Gone,
}

impl Store {
    pub async fn volume_insert_in_txn(tx: &mut Conn, v: &Volume) -> Result<(), Error> {
        let (state, message) = host_state_cols(&v.host_state);
        sqlx::query(&format!("INSERT INTO volumes ({VOLUME_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"))
            .bind(v.id.as_str())
            .bind(v.org_id.as_str())
            .bind(&v.name)
            .bind(v.display_name.clone())
            .bind(&v.region)
            .bind(v.size_gib)
            .bind(v.host_id.as_ref().map(|h| h.as_str().to_owned()))
            .bind(v.source_snapshot_id.as_ref().map(|s| s.as_str().to_owned()))
            .bind(state)
            .bind(message)
            .bind(v.used_bytes)
            .bind(v.created_at)
            .bind(v.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(unique_err("volume", &v.name))?;
        for a in &v.attachments {
            sqlx::query("INSERT INTO volume_attachments (volume_id, instance_id, mounted, created_at) VALUES ($1, $2, $3, $4)")
                .bind(v.id.as_str())
                .bind(a.instance_id.as_str())
                .bind(i64::from(a.mounted))
                .bind(a.created_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err("inserting volume attachment"))?;
        }
        Ok(())
    }

    /// Reads the attachments of `volumes` (rows chosen by `filter`, a condition on `v`, the
    /// volumes table, with `$1` bound to `arg`) into them.
    async fn volume_attachments_fill(c: &mut Conn, volumes: &mut [Volume], filter: &str, arg: &str) -> Result<(), Error> {
        if volumes.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(&format!(
            "SELECT a.volume_id, a.instance_id, a.mounted, a.created_at FROM volume_attachments a \
             JOIN volumes v ON v.id = a.volume_id WHERE {filter} ORDER BY a.created_at, a.instance_id"
        ))
        .bind(arg.to_owned())
        .fetch_all(c)
        .await
        .map_err(db_err("reading volume attachments"))?;
        for r in &rows {
            let vid: String = rows::get(r, "volume_id")?;
            let Some(v) = volumes.iter_mut().find(|v| v.id.as_str() == vid) else { continue };
            v.attachments.push(VolumeAttachment {
                instance_id: InstanceId::from_trusted(rows::get(r, "instance_id")?),
                mounted: rows::get::<i64>(r, "mounted")? != 0,
                created_at: rows::get(r, "created_at")?,
            });
        }
        Ok(())
    }

    pub async fn volume_list_by_org(&self, org: &OrgId) -> Result<Vec<Volume>, Error> {
        let mut c = self.reader().await?;
        let mut out = sqlx::query(&format!("SELECT {VOLUME_COLS} FROM volumes WHERE org_id = $1 ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing volumes"))?
            .iter()
            .map(rows::volume)
            .collect::<Result<Vec<_>, _>>()?;
        Self::volume_attachments_fill(&mut c, &mut out, "v.org_id = $1", org.as_str()).await?;
        Ok(out)
    }

    pub async fn volume_get_in(c: &mut Conn, org: &OrgId, id: &VolumeId) -> Result<Option<Volume>, Error> {
        let row = sqlx::query(&format!("SELECT {VOLUME_COLS} FROM volumes WHERE org_id = $1 AND id = $2"))
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *c)
            .await
            .map_err(db_err("reading volume"))?;
        let Some(v) = row.as_ref().map(rows::volume).transpose()? else { return Ok(None) };
        let mut one = [v];
        Self::volume_attachments_fill(c, &mut one, "v.id = $1", id.as_str()).await?;
        let [v] = one;
        Ok(Some(v))
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
        let mut out = sqlx::query(&format!("SELECT {VOLUME_COLS} FROM volumes WHERE host_id = $1 ORDER BY id"))
            .bind(host.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing host volumes"))?
            .iter()
            .map(rows::volume)
            .collect::<Result<Vec<_>, _>>()?;
        Self::volume_attachments_fill(c, &mut out, "v.host_id = $1", host.as_str()).await?;
        Ok(out)
    }

    pub async fn volume_list_by_host(&self, host: &HostId) -> Result<Vec<Volume>, Error> {
        let mut c = self.reader().await?;
        Self::volume_list_by_host_in(&mut c, host).await
    }

    /// Attaches a volume to `instance` on `host`: places it there when it has no host yet, and
    /// refuses when its data lives on another host. `exclusive` also refuses when it is attached
    /// to any other instance (the native API's one-instance attach). The volume row is updated
    /// first, which locks it, so racing attaches and deletes of one volume take turns and each
    /// sees what the other committed.
    pub async fn volume_attach_in_txn(
        tx: &mut Conn,
        id: &VolumeId,
        instance: &InstanceId,
        host: &HostId,
        exclusive: bool,
        now: i64,
    ) -> Result<AttachOutcome, Error> {
        let r = sqlx::query("UPDATE volumes SET host_id = $1, updated_at = $2 WHERE id = $3 AND (host_id IS NULL OR host_id = $1)")
            .bind(host.as_str())
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("attaching volume"))?;
        if r.rows_affected() != 1 {
            let exists = sqlx::query("SELECT id FROM volumes WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("reading volume"))?
                .is_some();
            return Ok(if exists { AttachOutcome::OtherHost } else { AttachOutcome::Gone });
        }
        let current: Vec<String> =
            sqlx::query("SELECT instance_id FROM volume_attachments WHERE volume_id = $1 ORDER BY created_at, instance_id")
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err("reading volume attachments"))?
                .iter()
                .map(|r| rows::get::<String>(r, "instance_id"))
                .collect::<Result<_, _>>()?;
        if current.iter().any(|i| i == instance.as_str()) {
            return Ok(AttachOutcome::AlreadyAttached);
        }
        if let (true, Some(other)) = (exclusive, current.first()) {
            return Ok(AttachOutcome::AttachedElsewhere(InstanceId::from_trusted(other.clone())));
        }
        sqlx::query("INSERT INTO volume_attachments (volume_id, instance_id, mounted, created_at) VALUES ($1, $2, 0, $3)")
            .bind(id.as_str())
            .bind(instance.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err("attaching volume"))?;
        Ok(AttachOutcome::Attached)
    }

    /// Detaches a volume from one instance; false when it was not attached there.
    pub async fn volume_detach_in_txn(tx: &mut Conn, id: &VolumeId, instance: &InstanceId, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM volume_attachments WHERE volume_id = $1 AND instance_id = $2")
            .bind(id.as_str())
            .bind(instance.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("detaching volume"))?;
        if r.rows_affected() == 1 {
            Self::volume_touch_in_txn(tx, id, now).await?;
        }
        Ok(r.rows_affected() == 1)
    }

    async fn volume_touch_in_txn(tx: &mut Conn, id: &VolumeId, now: i64) -> Result<(), Error> {
        sqlx::query("UPDATE volumes SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("updating volume"))?;
        Ok(())
    }

    /// Detaches every volume of a terminated instance; the volumes stay on the host.
    pub async fn volume_detach_all_in_txn(tx: &mut Conn, instance: &InstanceId, now: i64) -> Result<Vec<VolumeId>, Error> {
        let rows = sqlx::query("SELECT volume_id FROM volume_attachments WHERE instance_id = $1 ORDER BY volume_id")
            .bind(instance.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("listing instance volumes"))?;
        let ids: Vec<VolumeId> =
            rows.iter().map(|r| rows::get::<String>(r, "volume_id").map(VolumeId::from_trusted)).collect::<Result<_, _>>()?;
        for id in &ids {
            Self::volume_detach_in_txn(tx, id, instance, now).await?;
        }
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

    /// Sets the display name (`None` clears it).
    pub async fn volume_rename_in_txn(tx: &mut Conn, id: &VolumeId, display_name: Option<&str>, now: i64) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE volumes SET display_name = $1, updated_at = $2 WHERE id = $3")
            .bind(display_name.map(str::to_owned))
            .bind(now)
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("renaming volume"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes a volume of `org` that is attached nowhere. The row is locked first (as attach
    /// does), so the check sees any attachment committed meanwhile.
    pub async fn volume_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &VolumeId) -> Result<bool, Error> {
        sqlx::query("UPDATE volumes SET updated_at = updated_at WHERE id = $1 AND org_id = $2")
            .bind(id.as_str())
            .bind(org.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("locking volume"))?;
        let r = sqlx::query(
            "DELETE FROM volumes WHERE id = $1 AND org_id = $2 AND NOT EXISTS (SELECT 1 FROM volume_attachments WHERE volume_id = $1)",
        )
        .bind(id.as_str())
        .bind(org.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err("deleting volume"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records whether the host reports the volume mounted inside `instance`; returns whether
    /// it changed.
    pub async fn volume_set_mounted_in_txn(tx: &mut Conn, id: &VolumeId, instance: &InstanceId, mounted: bool) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE volume_attachments SET mounted = $1 WHERE volume_id = $2 AND instance_id = $3 AND mounted <> $1")
            .bind(i64::from(mounted))
            .bind(id.as_str())
            .bind(instance.as_str())
            .execute(tx)
            .await
            .map_err(db_err("recording volume mount"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records what the host reports of the volume itself: its state, and the bytes in use
    /// when it measured them (`None` keeps the last measurement).
    pub async fn volume_set_host_report_in_txn(
        tx: &mut Conn,
        id: &VolumeId,
        state: &VolumeHostState,
        used_bytes: Option<i64>,
    ) -> Result<bool, Error> {
        let (state, message) = host_state_cols(state);
        let r = sqlx::query("UPDATE volumes SET host_state = $1, host_message = $2, used_bytes = COALESCE($3, used_bytes) WHERE id = $4")
            .bind(state)
            .bind(message)
            .bind(used_bytes)
            .bind(id.as_str())
            .execute(tx)
            .await
            .map_err(db_err("recording volume report"))?;
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
            "SELECT (SELECT COUNT(*) FROM volumes WHERE source_snapshot_id = $1 AND host_id IS NOT NULL AND host_state <> 'ready') \
             + (SELECT COUNT(*) FROM instances WHERE source_snapshot_id = $1 AND state IN ('pending', 'booting')) AS n",
        )
        .bind(id.as_str())
        .fetch_one(c)
        .await
        .map_err(db_err("checking snapshot use"))?;
        Ok(rows::get::<i64>(&row, "n")? > 0)
    }
}

fn host_state_cols(s: &VolumeHostState) -> (&'static str, Option<String>) {
    match s {
        VolumeHostState::Unreported => ("unreported", None),
        VolumeHostState::Ready => ("ready", None),
        VolumeHostState::Failed(m) => ("failed", Some(m.clone())),
    }
}
