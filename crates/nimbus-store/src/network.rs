//! The reads and writes behind the region's private network: who is a member of an org's
//! network (its instances' private addresses, on every host), and which hosts must hear when
//! that changes.

use nimbus_core::ids::{HostId, InstanceId, OrgId};

use nimbus_core::Error;

use crate::{db_err, Conn, Store};

/// The states in which an instance holds its private address as a member of its org's network:
/// from launch until it is asked to terminate (a stopped instance keeps its address).
const MEMBER_STATES: &str = "state NOT IN ('terminating', 'terminated')";

impl Store {
    /// `(org, private address)` of every member instance of `orgs` in `region`, ordered.
    pub async fn network_members(&self, region: &str, orgs: &[OrgId]) -> Result<Vec<(OrgId, String)>, Error> {
        let mut out = Vec::new();
        // One query per org keeps the statement portable (no array binds on SQLite); a host
        // serves a handful of orgs.
        for org in orgs {
            let rows = sqlx::query(&format!(
                "SELECT private_ip FROM instances WHERE org_id = $1 AND region = $2 AND private_ip IS NOT NULL AND {MEMBER_STATES} \
                 ORDER BY private_ip"
            ))
            .bind(org.as_str())
            .bind(region)
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing network members"))?;
            for r in &rows {
                out.push((org.clone(), crate::rows::get(r, "private_ip")?));
            }
        }
        Ok(out)
    }

    /// Hosts that run (or keep) an instance of `org`, or serve one of its VPNs: those whose
    /// filters (or gateways) name its members. In id order.
    pub async fn network_hosts_of_org_in(c: &mut Conn, org: &OrgId) -> Result<Vec<HostId>, Error> {
        let mut out = Self::host_ids_with_org_instances_in(&mut *c, org).await?;
        let rows = sqlx::query("SELECT DISTINCT host_id FROM vpns WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing the org's VPN hosts"))?;
        for r in &rows {
            out.push(HostId::from_trusted(crate::rows::get::<String>(r, "host_id")?));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Host ports in use on `host` by live instances: SSH forwards and opened forwards.
    pub async fn network_used_ports_in(c: &mut Conn, host: &HostId) -> Result<Vec<i64>, Error> {
        let mut used = Self::instance_ssh_ports_on_host_in(&mut *c, host).await?;
        let rows = sqlx::query(
            "SELECT f.external_port FROM port_forwards f JOIN instances i ON i.id = f.instance_id \
             WHERE f.host_id = $1 AND i.state <> 'terminated'",
        )
        .bind(host.as_str())
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("listing forwarded ports"))?;
        for r in &rows {
            used.push(crate::rows::get(r, "external_port")?);
        }
        Ok(used)
    }

    /// `(instance, external port, internal port)` of the forwards of `host`'s live instances.
    pub async fn network_forwards_by_host(&self, host: &HostId) -> Result<Vec<(InstanceId, i64, i64)>, Error> {
        let rows = sqlx::query(
            "SELECT f.instance_id, f.external_port, f.internal_port FROM port_forwards f JOIN instances i ON i.id = f.instance_id \
             WHERE f.host_id = $1 AND i.state <> 'terminated' ORDER BY f.external_port",
        )
        .bind(host.as_str())
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing host forwards"))?;
        Self::forward_rows(&rows)
    }

    /// The same for the given instances (any host): one query per 500 instances, not per
    /// instance (a Voltage Park listing renders every VM of the org).
    pub async fn network_forwards_of(&self, ids: &[InstanceId]) -> Result<Vec<(InstanceId, i64, i64)>, Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT instance_id, external_port, internal_port FROM port_forwards WHERE instance_id IN ({}) \
                 ORDER BY instance_id, external_port",
                crate::placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            out.extend(Self::forward_rows(&q.fetch_all(&self.r()).await.map_err(db_err("listing forwards"))?)?);
        }
        Ok(out)
    }

    fn forward_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(InstanceId, i64, i64)>, Error> {
        rows.iter()
            .map(|r| {
                Ok((
                    InstanceId::from_trusted(crate::rows::get::<String>(r, "instance_id")?),
                    crate::rows::get(r, "external_port")?,
                    crate::rows::get(r, "internal_port")?,
                ))
            })
            .collect()
    }

    /// Opens a forward; `false` when the instance already forwards `internal` (or the host port
    /// was taken meanwhile).
    pub async fn network_forward_insert_in_txn(
        tx: &mut Conn,
        host: &HostId,
        instance: &InstanceId,
        external: i64,
        internal: i64,
        now: i64,
    ) -> Result<bool, Error> {
        // Rows left by an instance that was terminated free its ports for good.
        sqlx::query("DELETE FROM port_forwards WHERE host_id = $1 AND external_port = $2 AND instance_id IN (SELECT id FROM instances WHERE state = 'terminated')")
            .bind(host.as_str())
            .bind(external)
            .execute(&mut *tx)
            .await
            .map_err(db_err("freeing a forwarded port"))?;
        let exists = sqlx::query(
            "SELECT 1 AS x FROM port_forwards WHERE (instance_id = $1 AND internal_port = $2) OR (host_id = $3 AND external_port = $4)",
        )
        .bind(instance.as_str())
        .bind(internal)
        .bind(host.as_str())
        .bind(external)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err("checking forwards"))?;
        if exists.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO port_forwards (host_id, external_port, instance_id, internal_port, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(host.as_str())
        .bind(external)
        .bind(instance.as_str())
        .bind(internal)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("inserting forward"))?;
        Ok(true)
    }

    /// Closes the instance's forward from host port `external`; `false` when it has none.
    pub async fn network_forward_delete_in_txn(tx: &mut Conn, instance: &InstanceId, external: i64) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM port_forwards WHERE instance_id = $1 AND external_port = $2")
            .bind(instance.as_str())
            .bind(external)
            .execute(&mut *tx)
            .await
            .map_err(db_err("deleting forward"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Public addresses of `region` held by live instances.
    pub async fn network_public_used_in(c: &mut Conn, region: &str) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT p.address FROM public_addresses p JOIN instances i ON i.id = p.instance_id WHERE p.region = $1 AND i.state <> 'terminated'",
        )
        .bind(region)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("listing public addresses"))?;
        rows.iter().map(|r| crate::rows::get(r, "address")).collect()
    }

    /// Gives `address` to `instance` (taking it back from a terminated instance if one had it).
    pub async fn network_public_assign_in_txn(
        tx: &mut Conn,
        region: &str,
        address: &str,
        instance: &InstanceId,
        now: i64,
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM public_addresses WHERE region = $1 AND address = $2")
            .bind(region)
            .bind(address)
            .execute(&mut *tx)
            .await
            .map_err(db_err("freeing a public address"))?;
        sqlx::query("INSERT INTO public_addresses (region, address, instance_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(region)
            .bind(address)
            .bind(instance.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err("assigning a public address"))?;
        Ok(())
    }

    /// `(instance, public address)` of `host`'s live instances that have one.
    pub async fn network_public_by_host(&self, host: &HostId) -> Result<Vec<(InstanceId, String)>, Error> {
        let rows = sqlx::query(
            "SELECT p.instance_id, p.address FROM public_addresses p JOIN instances i ON i.id = p.instance_id \
             WHERE i.host_id = $1 AND i.state <> 'terminated'",
        )
        .bind(host.as_str())
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing host public addresses"))?;
        rows.iter()
            .map(|r| Ok((InstanceId::from_trusted(crate::rows::get::<String>(r, "instance_id")?), crate::rows::get(r, "address")?)))
            .collect()
    }

    /// The live nodes of every rental that shares rental `id`'s network: the org's rentals of
    /// the same `sub_order` (a rental without one is a network of its own).
    pub async fn network_rental_peers(&self, id: &str) -> Result<Vec<nimbus_core::model::Instance>, Error> {
        let cols: String = crate::rows::INSTANCE_COLS.split(", ").map(|c| format!("i.{}", c.trim())).collect::<Vec<_>>().join(", ");
        sqlx::query(&format!(
            "SELECT {cols} FROM instances i JOIN rentals r ON r.id = i.rental_id, rentals me \
             WHERE me.id = $1 AND r.org_id = me.org_id AND COALESCE(r.sub_order, r.id) = COALESCE(me.sub_order, me.id) \
             AND i.state <> 'terminated' ORDER BY i.created_at, i.id"
        ))
        .bind(id)
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing rental peers"))?
        .iter()
        .map(crate::rows::instance)
        .collect()
    }
}
