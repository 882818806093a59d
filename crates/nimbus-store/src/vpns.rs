//! WireGuard VPN gateways.

use nimbus_core::ids::*;
use nimbus_core::model::Vpn;
use nimbus_core::Error;
use sqlx::any::AnyRow;

use crate::rows::get;
use crate::{db_err, unique_err, Conn, Store};

const COLS: &str = "id, org_id, name, region, host_id, tunnel_index, listen_port, gateway_private_key, gateway_public_key, \
    client_public_key, status, message, endpoint, network, created_at";

fn vpn(r: &AnyRow) -> Result<Vpn, Error> {
    Ok(Vpn {
        networks: Vec::new(),
        id: VpnId::from_trusted(get(r, "id")?),
        org_id: OrgId::from_trusted(get(r, "org_id")?),
        name: get(r, "name")?,
        region: get(r, "region")?,
        host_id: HostId::from_trusted(get(r, "host_id")?),
        tunnel_index: get(r, "tunnel_index")?,
        listen_port: get(r, "listen_port")?,
        gateway_private_key: get(r, "gateway_private_key")?,
        gateway_public_key: get(r, "gateway_public_key")?,
        client_public_key: get(r, "client_public_key")?,
        status: get(r, "status")?,
        message: get(r, "message")?,
        endpoint: get(r, "endpoint")?,
        network: get(r, "network")?,
        created_at: get(r, "created_at")?,
    })
}

impl Store {
    pub async fn vpn_insert_in_txn(tx: &mut Conn, v: &Vpn) -> Result<(), Error> {
        sqlx::query(&format!("INSERT INTO vpns ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"))
            .bind(v.id.as_str())
            .bind(v.org_id.as_str())
            .bind(&v.name)
            .bind(&v.region)
            .bind(v.host_id.as_str())
            .bind(v.tunnel_index)
            .bind(v.listen_port)
            .bind(&v.gateway_private_key)
            .bind(&v.gateway_public_key)
            .bind(&v.client_public_key)
            .bind(&v.status)
            .bind(v.message.clone())
            .bind(v.endpoint.clone())
            .bind(v.network.clone())
            .bind(v.created_at)
            .execute(tx)
            .await
            .map_err(unique_err("vpn", &v.name))?;
        Ok(())
    }

    pub async fn vpn_list_by_org(&self, org: &OrgId) -> Result<Vec<Vpn>, Error> {
        let mut c = self.reader().await?;
        sqlx::query(&format!("SELECT {COLS} FROM vpns WHERE org_id = $1 ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing vpns"))?
            .iter()
            .map(vpn)
            .collect()
    }

    pub async fn vpn_list_by_host_in(c: &mut Conn, host: &HostId) -> Result<Vec<Vpn>, Error> {
        sqlx::query(&format!("SELECT {COLS} FROM vpns WHERE host_id = $1 ORDER BY tunnel_index"))
            .bind(host.as_str())
            .fetch_all(c)
            .await
            .map_err(db_err("listing host vpns"))?
            .iter()
            .map(vpn)
            .collect()
    }

    pub async fn vpn_list_by_host(&self, host: &HostId) -> Result<Vec<Vpn>, Error> {
        let mut c = self.reader().await?;
        Self::vpn_list_by_host_in(&mut c, host).await
    }

    /// Tunnel indices in use in `region` (each VPN's tunnel subnet is unique in its region, so
    /// that the private network can route it to its gateway's host).
    pub async fn vpn_indices_in_region_in(c: &mut Conn, region: &str) -> Result<Vec<i64>, Error> {
        let rows = sqlx::query("SELECT tunnel_index FROM vpns WHERE region = $1")
            .bind(region)
            .fetch_all(c)
            .await
            .map_err(db_err("listing vpn tunnels"))?;
        rows.iter().map(|r| get(r, "tunnel_index")).collect()
    }

    /// Every VPN of `region`, for the private network (routes to gateways, client members).
    pub async fn vpn_list_by_region(&self, region: &str) -> Result<Vec<Vpn>, Error> {
        let mut c = self.reader().await?;
        sqlx::query(&format!("SELECT {COLS} FROM vpns WHERE region = $1 ORDER BY tunnel_index, id"))
            .bind(region)
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing region vpns"))?
            .iter()
            .map(vpn)
            .collect()
    }

    pub async fn vpn_count_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM vpns WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting vpns"))?;
        get(&row, "n")
    }

    pub async fn vpn_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &VpnId) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM vpns WHERE id = $1 AND org_id = $2")
            .bind(id.as_str())
            .bind(org.as_str())
            .execute(tx)
            .await
            .map_err(db_err("deleting vpn"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records what the host reports; returns whether anything changed.
    pub async fn vpn_set_status_in_txn(
        tx: &mut Conn,
        id: &VpnId,
        status: &str,
        message: Option<&str>,
        endpoint: Option<&str>,
        network: Option<&str>,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE vpns SET status = $1, message = $2, endpoint = COALESCE($3, endpoint), network = COALESCE($4, network) \
             WHERE id = $5 AND (status <> $1 OR COALESCE(message, '') <> COALESCE($2, '') \
             OR COALESCE(endpoint, '') <> COALESCE($3, endpoint, '') OR COALESCE(network, '') <> COALESCE($4, network, ''))",
        )
        .bind(status)
        .bind(message.map(str::to_owned))
        .bind(endpoint.map(str::to_owned))
        .bind(network.map(str::to_owned))
        .bind(id.as_str())
        .execute(tx)
        .await
        .map_err(db_err("recording vpn status"))?;
        Ok(r.rows_affected() == 1)
    }
}
