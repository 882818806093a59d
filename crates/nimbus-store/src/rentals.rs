//! Bare-metal rentals. Their nodes are instances (`instances.rental_id`); a rental row is
//! inserted in the launch transaction that claims its hosts.

use nimbus_core::ids::OrgId;
use nimbus_core::model::Rental;
use nimbus_core::Error;
use sqlx::any::AnyRow;

use crate::rows::{get, json, to_json};
use crate::{db_err, Conn, Store};

const COLS: &str = "id, org_id, name, region, network_type, sub_order, storage_id, tags, node_count, gpus_per_node, \
    created_at, updated_at, terminated_at";

fn rental(r: &AnyRow) -> Result<Rental, Error> {
    Ok(Rental {
        id: get(r, "id")?,
        org_id: OrgId::from_trusted(get(r, "org_id")?),
        name: get(r, "name")?,
        region: get(r, "region")?,
        network_type: get(r, "network_type")?,
        sub_order: get(r, "sub_order")?,
        storage_id: get(r, "storage_id")?,
        tags: json(r, "tags")?,
        node_count: get(r, "node_count")?,
        gpus_per_node: get(r, "gpus_per_node")?,
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
        terminated_at: get(r, "terminated_at")?,
    })
}

impl Store {
    pub async fn rental_insert_in_txn(tx: &mut Conn, r: &Rental) -> Result<(), Error> {
        sqlx::query(&format!("INSERT INTO rentals ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"))
            .bind(&r.id)
            .bind(r.org_id.as_str())
            .bind(&r.name)
            .bind(&r.region)
            .bind(&r.network_type)
            .bind(r.sub_order.clone())
            .bind(r.storage_id.clone())
            .bind(to_json(&r.tags))
            .bind(r.node_count)
            .bind(r.gpus_per_node)
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(r.terminated_at)
            .execute(tx)
            .await
            .map_err(db_err("inserting rental"))?;
        Ok(())
    }

    /// The org's rentals that are not terminated, oldest first.
    pub async fn rental_list(&self, org: &OrgId) -> Result<Vec<Rental>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM rentals WHERE org_id = $1 AND terminated_at IS NULL ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing rentals"))?
            .iter()
            .map(rental)
            .collect()
    }

    /// One live rental of the org.
    pub async fn rental_get(&self, org: &OrgId, id: &str) -> Result<Option<Rental>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM rentals WHERE org_id = $1 AND id = $2 AND terminated_at IS NULL"))
            .bind(org.as_str())
            .bind(id)
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading rental"))?
            .as_ref()
            .map(rental)
            .transpose()
    }

    /// Renames and/or re-tags a live rental; returns whether it exists.
    pub async fn rental_update_in_txn(
        tx: &mut Conn,
        org: &OrgId,
        id: &str,
        name: Option<&str>,
        tags: Option<&[String]>,
        now: i64,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE rentals SET name = COALESCE($1, name), tags = COALESCE($2, tags), updated_at = $3 \
             WHERE org_id = $4 AND id = $5 AND terminated_at IS NULL",
        )
        .bind(name)
        .bind(tags.map(|t| to_json(&t)))
        .bind(now)
        .bind(org.as_str())
        .bind(id)
        .execute(tx)
        .await
        .map_err(db_err("updating rental"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn rental_terminate_in_txn(tx: &mut Conn, org: &OrgId, id: &str, now: i64) -> Result<bool, Error> {
        let r =
            sqlx::query("UPDATE rentals SET terminated_at = $1, updated_at = $1 WHERE org_id = $2 AND id = $3 AND terminated_at IS NULL")
                .bind(now)
                .bind(org.as_str())
                .bind(id)
                .execute(tx)
                .await
                .map_err(db_err("terminating rental"))?;
        Ok(r.rows_affected() == 1)
    }
}
