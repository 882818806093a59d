//! The reads and writes behind the region's private network: who is a member of an org's
//! network (its instances' private addresses, on every host), and which hosts must hear when
//! that changes.

use nimbus_core::ids::{HostId, OrgId};

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
            .fetch_all(self.r())
            .await
            .map_err(db_err("listing network members"))?;
            for r in &rows {
                out.push((org.clone(), crate::rows::get(r, "private_ip")?));
            }
        }
        Ok(out)
    }

    /// Hosts that run (or keep) an instance of `org`: those whose filters name its members.
    pub async fn network_hosts_of_org_in(c: &mut Conn, org: &OrgId) -> Result<Vec<HostId>, Error> {
        let rows =
            sqlx::query("SELECT DISTINCT host_id FROM instances WHERE org_id = $1 AND host_id IS NOT NULL AND state <> 'terminated'")
                .bind(org.as_str())
                .fetch_all(&mut *c)
                .await
                .map_err(db_err("listing hosts of an org"))?;
        let mut out: Vec<HostId> = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(HostId::from_trusted(crate::rows::get::<String>(r, "host_id")?));
        }
        out.sort();
        Ok(out)
    }

    /// Bumps the desired generation of every host in `hosts` (sorted: hosts are locked in id
    /// order only, so concurrent bumps cannot deadlock).
    pub async fn network_bump_hosts_in_txn(tx: &mut Conn, hosts: &[HostId]) -> Result<(), Error> {
        for h in hosts {
            Self::host_bump_generation_in_txn(tx, h).await?;
        }
        Ok(())
    }
}
