//! Instances: insert, read, and state changes that are conditional on the current state, so a
//! stale writer (an old agent report, a racing API call) never overwrites a newer decision.

use nimbus_core::ids::*;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::Instance;
use nimbus_core::Error;

use crate::rows::{self, to_json, INSTANCE_COLS};
use crate::{db_err, Conn, Store};

pub struct NewInstance<'a> {
    pub instance: &'a Instance,
}

/// A runtime change: the new state plus, when known, addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceUpdate {
    pub ip: Option<String>,
    pub private_ip: Option<String>,
}

impl Store {
    pub async fn instance_insert_in_txn(tx: &mut Conn, n: NewInstance<'_>) -> Result<(), Error> {
        let i = n.instance;
        sqlx::query(&format!(
            "INSERT INTO instances ({INSTANCE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)"
        ))
        .bind(i.id.as_str())
        .bind(i.org_id.as_str())
        .bind(i.name.clone())
        .bind(&i.hostname)
        .bind(i.state.as_str())
        .bind(&i.region)
        .bind(&i.instance_type)
        .bind(i.host_id.as_ref().map(|h| h.as_str().to_owned()))
        .bind(i.resources.vcpus)
        .bind(i.resources.memory_mib)
        .bind(i.resources.disk_gib)
        .bind(to_json(&i.gpu_indices))
        .bind(i.image_id.as_str())
        .bind(to_json(&i.ssh_key_names))
        .bind(to_json(&i.ssh_public_keys))
        .bind(i.user_data.clone())
        .bind(to_json(&i.tags))
        .bind(to_json(&i.file_system_mounts))
        .bind(to_json(&i.firewall_ruleset_ids))
        .bind(i.ip.clone())
        .bind(i.private_ip.clone())
        .bind(i.restart_generation)
        .bind(i.generation)
        .bind(i.created_at)
        .bind(i.updated_at)
        .bind(i.terminated_at)
        .bind(i.source_snapshot_id.as_ref().map(|s| s.as_str().to_owned()))
        .bind(i.ssh_port)
        .bind(i.stop_billing.as_str())
        .bind(i64::from(i.compute_released))
        .bind(i.rental_id.clone())
        .bind(i.price_micros_per_hour)
        .bind(i.cluster_id.clone())
        .execute(&mut *tx)
        .await
        .map_err(db_err("inserting instance"))?;
        for m in &i.file_system_mounts {
            sqlx::query("INSERT INTO instance_file_systems (instance_id, file_system_id) VALUES ($1, $2)")
                .bind(i.id.as_str())
                .bind(m.file_system_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err("linking file system"))?;
        }
        for r in &i.firewall_ruleset_ids {
            sqlx::query("INSERT INTO instance_firewall_rulesets (instance_id, ruleset_id) VALUES ($1, $2)")
                .bind(i.id.as_str())
                .bind(r.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err("linking firewall ruleset"))?;
        }
        Ok(())
    }

    /// One instance of one org (any state, terminated included).
    pub async fn instance_get(&self, org: &OrgId, id: &InstanceId) -> Result<Option<Instance>, Error> {
        let row = sqlx::query(&format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = $1 AND org_id = $2"))
            .bind(id.as_str())
            .bind(org.as_str())
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading instance"))?;
        row.as_ref().map(rows::instance).transpose()
    }

    /// One instance by id, whatever its org; for the agent protocol and reconcilers only.
    pub async fn instance_get_any_in(c: &mut Conn, id: &InstanceId) -> Result<Option<Instance>, Error> {
        let row = sqlx::query(&format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading instance"))?;
        row.as_ref().map(rows::instance).transpose()
    }

    /// The org's instances that are not terminated, oldest first.
    pub async fn instance_list_by_org(&self, org: &OrgId) -> Result<Vec<Instance>, Error> {
        sqlx::query(&format!("SELECT {INSTANCE_COLS} FROM instances WHERE org_id = $1 AND state <> 'terminated' ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing instances"))?
            .iter()
            .map(rows::instance)
            .collect()
    }

    /// Every org's instances that count against its quota (as `instance_count_live_by_org_in`
    /// counts them), in one query; orgs with none are absent.
    pub async fn instance_count_live_per_org(&self) -> Result<std::collections::HashMap<OrgId, i64>, Error> {
        sqlx::query("SELECT org_id, COUNT(*) AS n FROM instances WHERE state <> 'terminated' GROUP BY org_id")
            .fetch_all(&self.r())
            .await
            .map_err(db_err("counting instances"))?
            .iter()
            .map(|r| Ok((OrgId::from_trusted(rows::get(r, "org_id")?), rows::get(r, "n")?)))
            .collect()
    }

    pub async fn instance_count_live_by_org_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE org_id = $1 AND state <> 'terminated'")
            .bind(org.as_str())
            .fetch_one(c)
            .await
            .map_err(db_err("counting instances"))?;
        rows::get(&row, "n")
    }

    /// Instances placed on a host that are not terminated: the host's desired state.
    pub async fn instance_list_by_host(&self, host: &HostId) -> Result<Vec<Instance>, Error> {
        let mut c = self.r().acquire().await.map_err(db_err("acquiring connection"))?;
        Self::instance_list_by_host_in(&mut c, host).await
    }

    pub async fn instance_list_by_host_in(c: &mut Conn, host: &HostId) -> Result<Vec<Instance>, Error> {
        sqlx::query(&format!("SELECT {INSTANCE_COLS} FROM instances WHERE host_id = $1 AND state <> 'terminated' ORDER BY created_at, id"))
            .bind(host.as_str())
            .fetch_all(c)
            .await
            .map_err(db_err("listing host instances"))?
            .iter()
            .map(rows::instance)
            .collect()
    }

    /// Moves an instance to `to` if it is currently in `from`; addresses are set when given.
    /// Returns whether the update applied (false: someone else changed it first).
    pub async fn instance_transition_in_txn(
        tx: &mut Conn,
        id: &InstanceId,
        from: InstanceState,
        to: InstanceState,
        update: &InstanceUpdate,
        now: i64,
    ) -> Result<bool, Error> {
        from.check_transition(to)?;
        let r = sqlx::query(
            "UPDATE instances SET state = $1, ip = COALESCE($2, ip), private_ip = COALESCE($3, private_ip), \
             generation = generation + 1, updated_at = $4, terminated_at = CASE WHEN $1 = 'terminated' THEN $4 ELSE terminated_at END \
             WHERE id = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(update.ip.clone())
        .bind(update.private_ip.clone())
        .bind(now)
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err("updating instance state"))?;
        if r.rows_affected() == 1 && to == InstanceState::Terminated {
            for table in ["instance_file_systems", "instance_firewall_rulesets"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE instance_id = $1"))
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("unlinking instance"))?;
            }
        }
        Ok(r.rows_affected() == 1)
    }

    /// Sets addresses without a state change (an agent learning them after the fact).
    pub async fn instance_set_addresses_in_txn(tx: &mut Conn, id: &InstanceId, u: &InstanceUpdate, now: i64) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE instances SET ip = COALESCE($1, ip), private_ip = COALESCE($2, private_ip), generation = generation + 1, \
             updated_at = $3 WHERE id = $4 AND (COALESCE($1, ip) IS DISTINCT FROM ip OR COALESCE($2, private_ip) IS DISTINCT FROM private_ip)",
        )
        .bind(u.ip.clone())
        .bind(u.private_ip.clone())
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err("updating instance addresses"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn instance_set_name_in_txn(
        tx: &mut Conn,
        org: &OrgId,
        id: &InstanceId,
        name: Option<&str>,
        now: i64,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE instances SET name = $1, generation = generation + 1, updated_at = $2 WHERE id = $3 AND org_id = $4 AND state <> 'terminated'",
        )
        .bind(name.map(str::to_owned))
        .bind(now)
        .bind(id.as_str())
        .bind(org.as_str())
        .execute(tx)
        .await
        .map_err(db_err("renaming instance"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn instance_set_tags_in_txn(
        tx: &mut Conn,
        org: &OrgId,
        id: &InstanceId,
        tags: &[(String, String)],
        now: i64,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE instances SET tags = $1, generation = generation + 1, updated_at = $2 WHERE id = $3 AND org_id = $4 AND state <> 'terminated'",
        )
        .bind(to_json(&tags))
        .bind(now)
        .bind(id.as_str())
        .bind(org.as_str())
        .execute(tx)
        .await
        .map_err(db_err("tagging instance"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Asks the host to restart the instance: state `restarting` and a new restart generation the
    /// agent acts on once.
    pub async fn instance_request_restart_in_txn(tx: &mut Conn, id: &InstanceId, from: InstanceState, now: i64) -> Result<bool, Error> {
        from.check_transition(InstanceState::Restarting)?;
        let r = sqlx::query(
            "UPDATE instances SET state = 'restarting', restart_generation = restart_generation + 1, generation = generation + 1, \
             updated_at = $1 WHERE id = $2 AND state = $3",
        )
        .bind(now)
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(tx)
        .await
        .map_err(db_err("requesting restart"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives a stopped instance a new type: resources and GPUs (claimed by the caller on the same
    /// host in the same transaction). Only applies while the instance is still `stopped`.
    pub async fn instance_set_type_in_txn(
        tx: &mut Conn,
        id: &InstanceId,
        instance_type: &str,
        res: &nimbus_core::catalog::Resources,
        gpu_indices: &[i64],
        now: i64,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE instances SET instance_type = $1, vcpus = $2, memory_mib = $3, disk_gib = $4, gpu_indices = $5, \
             generation = generation + 1, updated_at = $6 WHERE id = $7 AND state = 'stopped'",
        )
        .bind(instance_type)
        .bind(res.vcpus)
        .bind(res.memory_mib)
        .bind(res.disk_gib)
        .bind(to_json(&gpu_indices))
        .bind(now)
        .bind(id.as_str())
        .execute(tx)
        .await
        .map_err(db_err("resizing instance"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets whether a stopping or stopped instance holds its processors, memory and GPUs
    /// (`released` false) and which GPUs it holds. Returns whether it applied.
    pub async fn instance_set_released_in_txn(
        tx: &mut Conn,
        id: &InstanceId,
        released: bool,
        gpu_indices: &[i64],
        now: i64,
    ) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE instances SET compute_released = $1, gpu_indices = $2, generation = generation + 1, updated_at = $3 \
             WHERE id = $4 AND state IN ('stopping', 'stopped', 'starting', 'active')",
        )
        .bind(i64::from(released))
        .bind(to_json(&gpu_indices))
        .bind(now)
        .bind(id.as_str())
        .execute(tx)
        .await
        .map_err(db_err("releasing instance compute"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Host ports forwarded to live instances of `host`.
    pub async fn instance_ssh_ports_on_host_in(c: &mut Conn, host: &HostId) -> Result<Vec<i64>, Error> {
        sqlx::query("SELECT ssh_port FROM instances WHERE host_id = $1 AND state <> 'terminated' AND ssh_port IS NOT NULL")
            .bind(host.as_str())
            .fetch_all(c)
            .await
            .map_err(db_err("listing forwarded ports"))?
            .iter()
            .map(|r| rows::get(r, "ssh_port"))
            .collect()
    }

    /// Hosts that run live instances of `org`, in id order.
    pub async fn host_ids_with_org_instances_in(c: &mut Conn, org: &OrgId) -> Result<Vec<HostId>, Error> {
        let rows = sqlx::query(
            "SELECT DISTINCT host_id FROM instances WHERE org_id = $1 AND state <> 'terminated' AND host_id IS NOT NULL ORDER BY host_id",
        )
        .bind(org.as_str())
        .fetch_all(c)
        .await
        .map_err(db_err("listing the org's hosts"))?;
        rows.iter().map(|r| rows::get::<String>(r, "host_id").map(HostId::from_trusted)).collect()
    }

    /// Non-terminated instances on the given hosts in one of `states`.
    pub async fn instance_ids_on_hosts_in_states_in(
        c: &mut Conn,
        host: &HostId,
        states: &[InstanceState],
    ) -> Result<Vec<(InstanceId, OrgId, InstanceState)>, Error> {
        let rows = sqlx::query("SELECT id, org_id, state FROM instances WHERE host_id = $1 AND state <> 'terminated'")
            .bind(host.as_str())
            .fetch_all(c)
            .await
            .map_err(db_err("listing host instances"))?;
        let mut out = Vec::new();
        for r in rows {
            let st: String = rows::get(&r, "state")?;
            let st = InstanceState::parse(&st).ok_or_else(|| Error::internal(format!("bad state {st}")))?;
            if states.contains(&st) {
                out.push((InstanceId::from_trusted(rows::get(&r, "id")?), OrgId::from_trusted(rows::get(&r, "org_id")?), st));
            }
        }
        Ok(out)
    }
}
