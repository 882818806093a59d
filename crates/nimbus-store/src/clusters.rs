//! Clusters. Their nodes are instances (`instances.cluster_id`); the row is written in the launch
//! transaction that places the nodes (or alone, when the cluster fails or waits).

use nimbus_core::ids::{InstanceId, OrgId};
use nimbus_core::model::Cluster;
use nimbus_core::Error;
use sqlx::any::AnyRow;

use crate::rows::{get, json, to_json};
use crate::{db_err, Conn, Store};

const COLS: &str = "id, org_id, name, provider, plan, state, operation_status, region_nodes, machine_type, spend_limit_cents, \
    spend_limit_reached, wait_for_capacity, ssh_key_names, creator_id, message, created_at, updated_at, deleted_at";

fn cluster(r: &AnyRow) -> Result<Cluster, Error> {
    Ok(Cluster {
        id: get(r, "id")?,
        org_id: OrgId::from_trusted(get(r, "org_id")?),
        name: get(r, "name")?,
        provider: get(r, "provider")?,
        plan: get(r, "plan")?,
        state: get(r, "state")?,
        operation_status: get(r, "operation_status")?,
        region_nodes: json(r, "region_nodes")?,
        machine_type: get(r, "machine_type")?,
        spend_limit_cents: get(r, "spend_limit_cents")?,
        spend_limit_reached: get(r, "spend_limit_reached")?,
        wait_for_capacity: get::<i64>(r, "wait_for_capacity")? != 0,
        ssh_key_names: json(r, "ssh_key_names")?,
        creator_id: get(r, "creator_id")?,
        message: get(r, "message")?,
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
        deleted_at: get(r, "deleted_at")?,
    })
}

impl Store {
    /// Inserts `c`, or rewrites its state, message and timestamps when it exists (a waiting
    /// cluster placed on a later try).
    pub async fn cluster_upsert_in_txn(tx: &mut Conn, c: &Cluster) -> Result<(), Error> {
        let updated = sqlx::query("UPDATE clusters SET state = $1, operation_status = $2, message = $3, updated_at = $4 WHERE id = $5")
            .bind(&c.state)
            .bind(&c.operation_status)
            .bind(c.message.clone())
            .bind(c.updated_at)
            .bind(&c.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err("updating cluster"))?;
        if updated.rows_affected() == 1 {
            return Ok(());
        }
        sqlx::query(&format!(
            "INSERT INTO clusters ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ))
        .bind(&c.id)
        .bind(c.org_id.as_str())
        .bind(&c.name)
        .bind(&c.provider)
        .bind(&c.plan)
        .bind(&c.state)
        .bind(&c.operation_status)
        .bind(to_json(&c.region_nodes))
        .bind(&c.machine_type)
        .bind(c.spend_limit_cents)
        .bind(c.spend_limit_reached.clone())
        .bind(i64::from(c.wait_for_capacity))
        .bind(to_json(&c.ssh_key_names))
        .bind(&c.creator_id)
        .bind(c.message.clone())
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(c.deleted_at)
        .execute(tx)
        .await
        .map_err(db_err("inserting cluster"))?;
        Ok(())
    }

    /// The org's clusters, oldest first; deleted and failed ones only with `inactive`.
    pub async fn cluster_list(&self, org: &OrgId, inactive: bool) -> Result<Vec<Cluster>, Error> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM clusters WHERE org_id = $1 AND ($2 = 1 OR state NOT IN ('DELETED', 'FAILED')) ORDER BY created_at, id"
        ))
        .bind(org.as_str())
        .bind(i64::from(inactive))
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing clusters"))?
        .iter()
        .map(cluster)
        .collect()
    }

    /// Every cluster that is creating or created, of every org (the reconciler).
    pub async fn cluster_list_live(&self) -> Result<Vec<Cluster>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM clusters WHERE state IN ('CREATING', 'CREATED') ORDER BY created_at, id"))
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing live clusters"))?
            .iter()
            .map(cluster)
            .collect()
    }

    pub async fn cluster_get(&self, org: &OrgId, id: &str) -> Result<Option<Cluster>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM clusters WHERE org_id = $1 AND id = $2"))
            .bind(org.as_str())
            .bind(id)
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading cluster"))?
            .as_ref()
            .map(cluster)
            .transpose()
    }

    /// Whether a cluster that is not deleted or failed has this name in the org.
    pub async fn cluster_name_taken_in(c: &mut Conn, org: &OrgId, name: &str) -> Result<bool, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM clusters WHERE org_id = $1 AND name = $2 AND state NOT IN ('DELETED', 'FAILED')")
            .bind(org.as_str())
            .bind(name)
            .fetch_one(c)
            .await
            .map_err(db_err("checking cluster name"))?;
        Ok(get::<i64>(&row, "n")? > 0)
    }

    /// Moves a cluster from one of `from` to `to` (with its operation status and message);
    /// returns whether it applied.
    pub async fn cluster_set_state_in_txn(
        tx: &mut Conn,
        id: &str,
        from: &[&str],
        to: &str,
        operation_status: &str,
        message: Option<&str>,
        now: i64,
    ) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE clusters SET state = $1, operation_status = $2, message = $3, updated_at = $4, \
             deleted_at = CASE WHEN $1 = 'DELETED' THEN $4 ELSE deleted_at END WHERE id = $5 AND state IN ({})",
            crate::placeholders(6, from.len())
        );
        let mut q = sqlx::query(&sql).bind(to).bind(operation_status).bind(message).bind(now).bind(id);
        for f in from {
            q = q.bind(*f);
        }
        let r = q.execute(tx).await.map_err(db_err("moving cluster"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn cluster_set_spend_limit_in_txn(tx: &mut Conn, org: &OrgId, id: &str, cents: i64, now: i64) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE clusters SET spend_limit_cents = $1, spend_limit_reached = NULL, updated_at = $2 \
             WHERE org_id = $3 AND id = $4 AND state IN ('CREATING', 'CREATED')",
        )
        .bind(cents)
        .bind(now)
        .bind(org.as_str())
        .bind(id)
        .execute(tx)
        .await
        .map_err(db_err("setting cluster spend limit"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn cluster_mark_spend_limit_reached_in_txn(tx: &mut Conn, id: &str, period: &str) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE clusters SET spend_limit_reached = $1 WHERE id = $2 AND (spend_limit_reached IS NULL OR spend_limit_reached <> $1)",
        )
        .bind(period)
        .bind(id)
        .execute(tx)
        .await
        .map_err(db_err("marking cluster spend limit"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Hosts of the cluster's live nodes.
    pub async fn cluster_host_ids(&self, id: &str) -> Result<Vec<nimbus_core::ids::HostId>, Error> {
        sqlx::query("SELECT DISTINCT host_id FROM instances WHERE cluster_id = $1 AND state <> 'terminated' AND host_id IS NOT NULL")
            .bind(id)
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing cluster hosts"))?
            .iter()
            .map(|r| get::<String>(r, "host_id").map(nimbus_core::ids::HostId::from_trusted))
            .collect()
    }

    /// The cluster's live nodes (any org check is the caller's).
    pub async fn cluster_live_nodes(&self, id: &str) -> Result<Vec<nimbus_core::model::Instance>, Error> {
        sqlx::query(&format!(
            "SELECT {} FROM instances WHERE cluster_id = $1 AND state <> 'terminated' ORDER BY created_at, id",
            crate::rows::INSTANCE_COLS
        ))
        .bind(id)
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing cluster nodes"))?
        .iter()
        .map(crate::rows::instance)
        .collect()
    }

    /// Every instance that ever was a node of the cluster (terminated ones too: they were billed).
    pub async fn cluster_node_ids(&self, id: &str) -> Result<Vec<InstanceId>, Error> {
        sqlx::query("SELECT id FROM instances WHERE cluster_id = $1")
            .bind(id)
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing cluster nodes"))?
            .iter()
            .map(|r| get::<String>(r, "id").map(InstanceId::from_trusted))
            .collect()
    }
}
