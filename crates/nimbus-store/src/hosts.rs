//! Hosts: registration, inventory, liveness, and the capacity ledger the scheduler claims from.

use nimbus_core::catalog::{Machine, Resources};
use nimbus_core::ids::*;
use nimbus_core::model::{Gpu, Host};
use nimbus_core::Error;
use sqlx::any::AnyRow;

use crate::rows::{self, get};
use crate::{db_err, Conn, Store};

/// A host token to insert (its secret only as a hash).
pub struct NewHostToken<'a> {
    pub id: &'a HostTokenId,
    pub region: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a str,
    pub created_at: i64,
    pub uses: i64,
    pub expires_at: i64,
    pub host: Option<&'a HostId>,
}

/// What an agent presents when it registers, and what the registration does with it.
///
/// `host: None` enrols a new host (`token_id`, `region` and `secret_hash` are required).
/// `host: Some` refreshes that host's inventory; with `secret_hash` it also takes the host over
/// (a re-enrolment: new secret, machine id and token), without it the host keeps its secret.
pub struct HostRegistration<'a> {
    pub host: Option<&'a HostId>,
    pub token_id: Option<&'a HostTokenId>,
    pub region: &'a str,
    pub machine_id: &'a str,
    pub name: &'a str,
    pub driver: &'a str,
    pub cpu_model: &'a str,
    pub total: Resources,
    pub gpus: &'a [Gpu],
    pub secret_hash: Option<&'a str>,
    /// Where clients reach this host's forwarded ports.
    pub public_ip: Option<&'a str>,
    /// Its underlay address and instance subnet, validated by the caller.
    pub network: Option<(&'a str, &'a str)>,
    /// What kinds of instance it can run; empty: containers only.
    pub machines: &'a [Machine],
    pub now: i64,
}

/// One GPU's reported health (`Store::host_gpu_health_in_txn`).
pub struct GpuHealthUpdate<'a> {
    pub index: i64,
    pub uuid: &'a str,
    pub condition: nimbus_core::gpu_health::Condition,
    pub reasons: &'a [String],
    pub clean: bool,
    pub applied_generation: i64,
    pub now: i64,
}

/// The SQL list of the health values a GPU is placed in (`Condition::placeable`).
fn placeable_health() -> String {
    nimbus_core::gpu_health::Condition::ALL
        .iter()
        .filter(|c| c.placeable())
        .map(|c| format!("'{}'", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL condition on a `hosts` row that it runs `m` instances (`Host::runs`). The column holds
/// a JSON array of machine names (migration 0024); `[]` means containers only.
fn runs_sql(m: Machine) -> &'static str {
    match m {
        Machine::Container => "(machines = '[]' OR machines LIKE '%\"container\"%')",
        Machine::Vm => "machines LIKE '%\"vm\"%'",
    }
}

const HOST_COLS: &str = "id, name, region, driver, cpu_model, vcpus_total, memory_mib_total, disk_gib_total, \
    vcpus_used, memory_mib_used, disk_gib_used, status, last_seen_at, desired_generation, created_at, public_ip, underlay, instance_subnet, machines";

impl Store {
    /// Registers a new host, or refreshes (and with a new secret, takes over) an existing one,
    /// keeping its id, its capacity ledger and its GPU assignments. Returns the host id. Who may
    /// do which is the caller's decision (`control::agents::register`); this only writes it.
    pub async fn host_register_in_txn(tx: &mut Conn, r: &HostRegistration<'_>) -> Result<HostId, Error> {
        let machines = serde_json::to_string(r.machines).map_err(|e| Error::internal(format!("encoding host machines: {e}")))?;
        let id = match r.host {
            Some(id) => {
                let q = sqlx::query(
                    "UPDATE hosts SET name = $1, driver = $2, cpu_model = $3, vcpus_total = $4, memory_mib_total = $5, \
                     disk_gib_total = $6, secret_hash = COALESCE($7, secret_hash), status = 'up', last_seen_at = $8, \
                     desired_generation = desired_generation + 1, public_ip = $10, machine_id = $11, \
                     token_id = COALESCE($12, token_id), underlay = $13, instance_subnet = $14, machines = $15 WHERE id = $9",
                )
                .bind(r.name)
                .bind(r.driver)
                .bind(r.cpu_model)
                .bind(r.total.vcpus)
                .bind(r.total.memory_mib)
                .bind(r.total.disk_gib)
                .bind(r.secret_hash)
                .bind(r.now)
                .bind(id.as_str())
                .bind(r.public_ip)
                .bind(r.machine_id)
                .bind(r.token_id.map(HostTokenId::as_str))
                .bind(r.network.map(|n| n.0))
                .bind(r.network.map(|n| n.1))
                .bind(&machines);
                let done = q.execute(&mut *tx).await.map_err(db_err("updating host"))?;
                if done.rows_affected() != 1 {
                    return Err(Error::not_found("host", id.as_str()));
                }
                id.clone()
            }
            None => {
                let (Some(token_id), Some(secret_hash)) = (r.token_id, r.secret_hash) else {
                    return Err(Error::internal("a new host needs a token and a secret"));
                };
                let id = HostId::generate();
                sqlx::query(
                    "INSERT INTO hosts (id, name, region, token_id, machine_id, secret_hash, driver, cpu_model, \
                     vcpus_total, memory_mib_total, disk_gib_total, status, last_seen_at, created_at, public_ip, \
                     underlay, instance_subnet, machines) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'up', $12, $12, $13, $14, $15, $16)",
                )
                .bind(id.as_str())
                .bind(r.name)
                .bind(r.region)
                .bind(token_id.as_str())
                .bind(r.machine_id)
                .bind(secret_hash)
                .bind(r.driver)
                .bind(r.cpu_model)
                .bind(r.total.vcpus)
                .bind(r.total.memory_mib)
                .bind(r.total.disk_gib)
                .bind(r.now)
                .bind(r.public_ip)
                .bind(r.network.map(|n| n.0))
                .bind(r.network.map(|n| n.1))
                .bind(&machines)
                .execute(&mut *tx)
                .await
                .map_err(db_err("inserting host"))?;
                id
            }
        };
        // GPUs: refresh what the agent sees; a GPU that vanished is dropped only if nobody holds it.
        let idxs: Vec<i64> = r.gpus.iter().map(|g| g.index).collect();
        for g in r.gpus {
            let updated = sqlx::query("UPDATE host_gpus SET model = $1, memory_mib = $2, uuid = $3 WHERE host_id = $4 AND idx = $5")
                .bind(&g.model)
                .bind(g.memory_mib)
                .bind(&g.uuid)
                .bind(id.as_str())
                .bind(g.index)
                .execute(&mut *tx)
                .await
                .map_err(db_err("updating gpu"))?;
            if updated.rows_affected() == 0 {
                // A GPU the server has not seen is clean only once its agent says so.
                sqlx::query("INSERT INTO host_gpus (host_id, idx, model, memory_mib, uuid, clean) VALUES ($1, $2, $3, $4, $5, 0)")
                    .bind(id.as_str())
                    .bind(g.index)
                    .bind(&g.model)
                    .bind(g.memory_mib)
                    .bind(&g.uuid)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("inserting gpu"))?;
            }
            for m in &g.mig_devices {
                let updated = sqlx::query(
                    "UPDATE host_mig_devices SET parent_idx = $1, profile = $2, memory_mib = $3, gpu_instance_id = $4, \
                     compute_instance_id = $5 WHERE host_id = $6 AND uuid = $7",
                )
                .bind(g.index)
                .bind(&m.profile)
                .bind(m.memory_mib)
                .bind(m.gpu_instance_id)
                .bind(m.compute_instance_id)
                .bind(id.as_str())
                .bind(&m.uuid)
                .execute(&mut *tx)
                .await
                .map_err(db_err("updating mig device"))?;
                if updated.rows_affected() == 0 {
                    sqlx::query(&format!("INSERT INTO host_mig_devices ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)", rows::MIG_COLS))
                        .bind(id.as_str())
                        .bind(&m.uuid)
                        .bind(g.index)
                        .bind(&m.profile)
                        .bind(m.memory_mib)
                        .bind(m.gpu_instance_id)
                        .bind(m.compute_instance_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err("inserting mig device"))?;
                }
            }
        }
        let gpus = Self::host_gpus_in(&mut *tx, &id).await?;
        for g in gpus.iter().filter(|g| !idxs.contains(&g.index) && g.instance_id.is_none()) {
            sqlx::query("DELETE FROM host_gpus WHERE host_id = $1 AND idx = $2")
                .bind(id.as_str())
                .bind(g.index)
                .execute(&mut *tx)
                .await
                .map_err(db_err("removing gpu"))?;
        }
        // MIG devices the operator destroyed go, unless an instance still holds one (it keeps
        // it on the books until it is gone; nothing new is placed there).
        let reported: Vec<&str> = r.gpus.iter().flat_map(|g| g.mig_devices.iter().map(|m| m.uuid.as_str())).collect();
        for g in &gpus {
            for m in g.mig_devices.iter().filter(|m| !reported.contains(&m.uuid.as_str()) && m.instance_id.is_none()) {
                sqlx::query("DELETE FROM host_mig_devices WHERE host_id = $1 AND uuid = $2")
                    .bind(id.as_str())
                    .bind(&m.uuid)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("removing mig device"))?;
            }
        }
        Ok(id)
    }

    async fn host_gpus_in(c: &mut Conn, host: &HostId) -> Result<Vec<Gpu>, Error> {
        let gpus = sqlx::query(&format!("SELECT {} FROM host_gpus WHERE host_id = $1 ORDER BY idx", rows::GPU_COLS))
            .bind(host.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing gpus"))?;
        let migs = sqlx::query(&format!("SELECT {} FROM host_mig_devices WHERE host_id = $1 ORDER BY parent_idx, uuid", rows::MIG_COLS))
            .bind(host.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing mig devices"))?;
        let mut by_host = Self::gpus_by_host(&gpus, &migs)?;
        Ok(by_host.remove(host.as_str()).unwrap_or_default())
    }

    /// GPU rows (with their MIG devices) grouped by host id.
    fn gpus_by_host(gpu_rows: &[AnyRow], mig_rows: &[AnyRow]) -> Result<std::collections::HashMap<String, Vec<Gpu>>, Error> {
        let mut by_host: std::collections::HashMap<String, Vec<Gpu>> = std::collections::HashMap::new();
        for g in gpu_rows {
            by_host.entry(get(g, "host_id")?).or_default().push(rows::gpu(g)?);
        }
        for m in mig_rows {
            let host: String = get(m, "host_id")?;
            let parent: i64 = get(m, "parent_idx")?;
            if let Some(g) = by_host.get_mut(&host).and_then(|gs| gs.iter_mut().find(|g| g.index == parent)) {
                g.mig_devices.push(rows::mig_device(m)?);
            }
        }
        Ok(by_host)
    }

    /// The host whose agent credential hashes to `secret_hash`.
    pub async fn host_id_by_secret(&self, secret_hash: &str) -> Result<Option<HostId>, Error> {
        let row = sqlx::query("SELECT id FROM hosts WHERE secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("looking up host credential"))?;
        row.map(|r| get::<String>(&r, "id").map(HostId::from_trusted)).transpose()
    }

    /// The host registered for this machine id, whichever token enrolled it.
    pub async fn host_id_by_machine_in(c: &mut Conn, machine_id: &str) -> Result<Option<HostId>, Error> {
        let row = sqlx::query("SELECT id FROM hosts WHERE machine_id = $1 ORDER BY created_at, id")
            .bind(machine_id)
            .fetch_optional(c)
            .await
            .map_err(db_err("looking up host by machine id"))?;
        row.map(|r| get::<String>(&r, "id").map(HostId::from_trusted)).transpose()
    }

    /// `(host id, machine id, region)` of the host whose agent credential hashes to `secret_hash`.
    pub async fn host_identity_by_secret_in(c: &mut Conn, secret_hash: &str) -> Result<Option<(HostId, String, String)>, Error> {
        let row = sqlx::query("SELECT id, machine_id, region FROM hosts WHERE secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(c)
            .await
            .map_err(db_err("looking up host credential"))?;
        row.map(|r| Ok((HostId::from_trusted(get(&r, "id")?), get(&r, "machine_id")?, get(&r, "region")?))).transpose()
    }

    /// Replaces a host's secret with `unusable_hash` (the hash of a secret nobody was given), so
    /// its current credential stops working. Returns false when there is no such host.
    pub async fn host_revoke_secret_in_txn(tx: &mut Conn, host: &HostId, unusable_hash: &str) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE hosts SET secret_hash = $1 WHERE id = $2")
            .bind(unusable_hash)
            .bind(host.as_str())
            .execute(tx)
            .await
            .map_err(db_err("revoking host secret"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Inserts a host token: `uses` registrations until `expires_at` (µs), and for a re-enrolment
    /// token the one host it may take over.
    pub async fn host_token_insert_in_txn(tx: &mut Conn, t: &NewHostToken<'_>) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO host_tokens (id, region, prefix, secret_hash, created_at, uses_left, expires_at, host_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t.id.as_str())
        .bind(t.region)
        .bind(t.prefix)
        .bind(t.secret_hash)
        .bind(t.created_at)
        .bind(t.uses)
        .bind(t.expires_at)
        .bind(t.host.map(HostId::as_str))
        .execute(tx)
        .await
        .map_err(db_err("inserting host token"))?;
        Ok(())
    }

    /// `(token id, region, host it re-enrols)` of the host token with this hash, if it is usable
    /// at `now`: not revoked, not expired, a use left. A read only; registration spends the use
    /// with `host_token_consume_in_txn`.
    pub async fn host_token_usable_in(
        c: &mut Conn,
        secret_hash: &str,
        now: i64,
    ) -> Result<Option<(HostTokenId, String, Option<HostId>)>, Error> {
        let row = sqlx::query(
            "SELECT id, region, host_id FROM host_tokens \
             WHERE secret_hash = $1 AND revoked_at IS NULL AND uses_left > 0 AND expires_at > $2",
        )
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(c)
        .await
        .map_err(db_err("looking up host token"))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let host: Option<String> = get(&r, "host_id")?;
                Ok(Some((HostTokenId::from_trusted(get(&r, "id")?), get(&r, "region")?, host.map(HostId::from_trusted))))
            }
        }
    }

    /// Spends one use of a host token, if it is still usable at `now`. The condition is in the
    /// `UPDATE` itself, so of concurrent registrations with a token's last use exactly one sees
    /// `true` (SQLite: one writer; PostgreSQL: the row lock, and the re-check after it).
    pub async fn host_token_consume_in_txn(tx: &mut Conn, id: &HostTokenId, now: i64) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE host_tokens SET uses_left = uses_left - 1 \
             WHERE id = $1 AND revoked_at IS NULL AND uses_left > 0 AND expires_at > $2",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(tx)
        .await
        .map_err(db_err("spending a host token use"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Attaches GPUs to host rows with one query for all of them (the launch path reads every host
    /// of a region, so one query per host would dominate its cost).
    async fn hosts_with_gpus(c: &mut Conn, rows: Vec<AnyRow>) -> Result<Vec<Host>, Error> {
        let gpu_rows = sqlx::query(&format!("SELECT {} FROM host_gpus ORDER BY host_id, idx", rows::GPU_COLS))
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing gpus"))?;
        let mig_rows = sqlx::query(&format!("SELECT {} FROM host_mig_devices ORDER BY host_id, parent_idx, uuid", rows::MIG_COLS))
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("listing mig devices"))?;
        let mut by_host = Self::gpus_by_host(&gpu_rows, &mig_rows)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = get(row, "id")?;
            let gpus = by_host.remove(&id).unwrap_or_default();
            out.push(rows::host(row, gpus)?);
        }
        Ok(out)
    }

    pub async fn host_get(&self, id: &HostId) -> Result<Option<Host>, Error> {
        let mut c = self.r().acquire().await.map_err(db_err("acquiring connection"))?;
        let rows = sqlx::query(&format!("SELECT {HOST_COLS} FROM hosts WHERE id = $1"))
            .bind(id.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db_err("reading host"))?;
        Ok(Self::hosts_with_gpus(&mut c, rows).await?.pop())
    }

    /// All hosts, with their GPUs. `region` filters; `up_only` keeps hosts that are heartbeating.
    pub async fn host_list(&self, region: Option<&str>, up_only: bool) -> Result<Vec<Host>, Error> {
        let mut c = self.r().acquire().await.map_err(db_err("acquiring connection"))?;
        Self::host_list_in(&mut c, region, up_only).await
    }

    pub async fn host_list_in(c: &mut Conn, region: Option<&str>, up_only: bool) -> Result<Vec<Host>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {HOST_COLS} FROM hosts WHERE ($1 = '' OR region = $1) AND ($2 = 0 OR status = 'up') ORDER BY created_at, id"
        ))
        .bind(region.unwrap_or(""))
        .bind(i64::from(up_only))
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("listing hosts"))?;
        Self::hosts_with_gpus(c, rows).await
    }

    /// Claims capacity on a host. The `UPDATE`s re-check the limits themselves, so on PostgreSQL two
    /// concurrent claims serialize on the row locks and the loser sees `false`, never an
    /// over-commit. The claim runs in a savepoint: when a later step fails (a GPU taken
    /// meanwhile), the earlier steps are undone and the caller's transaction stays usable.
    /// `machine` is re-checked too: a host that re-registered without VMs since it was read
    /// takes no VM.
    pub async fn host_claim_in_txn(
        tx: &mut Conn,
        host: &HostId,
        machine: Machine,
        want: &Resources,
        gpu_indices: &[i64],
        mig_devices: &[String],
        instance: &InstanceId,
    ) -> Result<bool, Error> {
        let mut sp = sqlx::Connection::begin(&mut *tx).await.map_err(db_err("opening claim savepoint"))?;
        let r = sqlx::query(&format!(
            "UPDATE hosts SET vcpus_used = vcpus_used + $1, memory_mib_used = memory_mib_used + $2, \
             disk_gib_used = disk_gib_used + $3, desired_generation = desired_generation + 1 \
             WHERE id = $4 AND status = 'up' AND vcpus_used + $1 <= vcpus_total \
             AND memory_mib_used + $2 <= memory_mib_total AND disk_gib_used + $3 <= disk_gib_total AND {}",
            runs_sql(machine)
        ))
        .bind(want.vcpus)
        .bind(want.memory_mib)
        .bind(want.disk_gib)
        .bind(host.as_str())
        .execute(&mut *sp)
        .await
        .map_err(db_err("claiming host capacity"))?;
        if r.rows_affected() != 1 {
            sp.rollback().await.map_err(db_err("rolling back claim"))?;
            return Ok(false);
        }
        for idx in gpu_indices {
            // Re-checks what made the scheduler choose it: a report may have found it unhealthy,
            // or a release made it unchecked, since the hosts were read.
            let r = sqlx::query(&format!(
                "UPDATE host_gpus SET instance_id = $1 WHERE host_id = $2 AND idx = $3 AND instance_id IS NULL AND clean = 1 \
                 AND health IN ({}) AND NOT EXISTS (SELECT 1 FROM host_mig_devices m WHERE m.host_id = $2 AND m.parent_idx = $3)",
                placeable_health()
            ))
            .bind(instance.as_str())
            .bind(host.as_str())
            .bind(*idx)
            .execute(&mut *sp)
            .await
            .map_err(db_err("claiming gpu"))?;
            if r.rows_affected() != 1 {
                sp.rollback().await.map_err(db_err("rolling back claim"))?;
                return Ok(false);
            }
        }
        for uuid in mig_devices {
            let r = sqlx::query(&format!(
                "UPDATE host_mig_devices SET instance_id = $1 WHERE host_id = $2 AND uuid = $3 AND instance_id IS NULL \
                 AND EXISTS (SELECT 1 FROM host_gpus g WHERE g.host_id = $2 AND g.idx = host_mig_devices.parent_idx AND g.health IN ({}))",
                placeable_health()
            ))
            .bind(instance.as_str())
            .bind(host.as_str())
            .bind(uuid)
            .execute(&mut *sp)
            .await
            .map_err(db_err("claiming mig device"))?;
            if r.rows_affected() != 1 {
                sp.rollback().await.map_err(db_err("rolling back claim"))?;
                return Ok(false);
            }
        }
        sp.commit().await.map_err(db_err("releasing claim savepoint"))?;
        Ok(true)
    }

    /// Returns an instance's capacity and GPUs to its host. `same_tenant`: they go straight back
    /// to the same instance in this transaction (a resize), so they count as checked for it
    /// (while held, its agent reports them unchecked); the caller marks the ones it does not
    /// take back unchecked (`host_gpus_mark_unchecked_in_txn`).
    pub async fn host_release_in_txn(
        tx: &mut Conn,
        host: &HostId,
        res: &Resources,
        instance: &InstanceId,
        same_tenant: bool,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE hosts SET vcpus_used = vcpus_used - $1, memory_mib_used = memory_mib_used - $2, \
             disk_gib_used = disk_gib_used - $3 WHERE id = $4",
        )
        .bind(res.vcpus)
        .bind(res.memory_mib)
        .bind(res.disk_gib)
        .bind(host.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err("releasing host capacity"))?;
        // Its GPUs go to the next tenant only once its agent checked them idle at (or after)
        // this generation (see migration 0023).
        sqlx::query(
            "UPDATE host_gpus SET instance_id = NULL, clean = CASE WHEN $3 = 1 THEN 1 ELSE 0 END, \
             released_generation = (SELECT desired_generation FROM hosts WHERE id = $1) WHERE host_id = $1 AND instance_id = $2",
        )
        .bind(host.as_str())
        .bind(instance.as_str())
        .bind(i64::from(same_tenant))
        .execute(&mut *tx)
        .await
        .map_err(db_err("releasing gpus"))?;
        sqlx::query("UPDATE host_mig_devices SET instance_id = NULL WHERE host_id = $1 AND instance_id = $2")
            .bind(host.as_str())
            .bind(instance.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing mig devices"))?;
        Ok(())
    }

    /// GPUs an instance let go without a release (a resize that kept fewer of them) must be
    /// checked by the host's agent before their next tenant, as a release makes them.
    pub async fn host_gpus_mark_unchecked_in_txn(tx: &mut Conn, host: &HostId, indices: &[i64]) -> Result<(), Error> {
        for idx in indices {
            sqlx::query(
                "UPDATE host_gpus SET clean = 0, released_generation = (SELECT desired_generation FROM hosts WHERE id = $1) \
                 WHERE host_id = $1 AND idx = $2 AND instance_id IS NULL",
            )
            .bind(host.as_str())
            .bind(*idx)
            .execute(&mut *tx)
            .await
            .map_err(db_err("marking a gpu unchecked"))?;
        }
        Ok(())
    }

    /// The free GPUs of a host whose agent does not check GPUs (protocol 1) are clean.
    pub async fn host_gpus_mark_clean_in_txn(tx: &mut Conn, host: &HostId) -> Result<(), Error> {
        sqlx::query("UPDATE host_gpus SET clean = 1 WHERE host_id = $1 AND instance_id IS NULL AND clean = 0")
            .bind(host.as_str())
            .execute(tx)
            .await
            .map_err(db_err("marking gpus clean"))?;
        Ok(())
    }

    /// Records what an agent reported of one GPU's health (matched by index and UUID, so a
    /// report about a GPU since replaced changes nothing). `clean` is taken only from a report
    /// that applied the generation the GPU was released at. True when anything changed.
    pub async fn host_gpu_health_in_txn(tx: &mut Conn, host: &HostId, u: &GpuHealthUpdate<'_>) -> Result<bool, Error> {
        let reasons = serde_json::to_string(u.reasons).map_err(|e| Error::internal(e.to_string()))?;
        let r = sqlx::query(
            "UPDATE host_gpus SET health_since = CASE WHEN health = $1 THEN health_since ELSE $2 END, health = $1, \
             health_reasons = $3, clean = CASE WHEN $4 = 0 THEN 0 WHEN released_generation <= $5 THEN 1 ELSE clean END \
             WHERE host_id = $6 AND idx = $7 AND uuid = $8 AND (health <> $1 OR health_reasons <> $3 OR clean <> $4)",
        )
        .bind(u.condition.as_str())
        .bind(u.now)
        .bind(&reasons)
        .bind(i64::from(u.clean))
        .bind(u.applied_generation)
        .bind(host.as_str())
        .bind(u.index)
        .bind(u.uuid)
        .execute(&mut *tx)
        .await
        .map_err(db_err("recording gpu health"))?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn host_bump_generation_in_txn(tx: &mut Conn, host: &HostId) -> Result<(), Error> {
        sqlx::query("UPDATE hosts SET desired_generation = desired_generation + 1 WHERE id = $1")
            .bind(host.as_str())
            .execute(tx)
            .await
            .map_err(db_err("bumping host generation"))?;
        Ok(())
    }

    /// Records a heartbeat. Returns true when the host was down and is now up again.
    pub async fn host_seen_in_txn(tx: &mut Conn, host: &HostId, now: i64) -> Result<bool, Error> {
        let was_down = sqlx::query("UPDATE hosts SET status = 'up' WHERE id = $1 AND status = 'down'")
            .bind(host.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("marking host up"))?
            .rows_affected()
            == 1;
        sqlx::query("UPDATE hosts SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(host.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("recording heartbeat"))?;
        Ok(was_down)
    }

    /// Marks hosts not seen since `cutoff` as down; returns their ids.
    pub async fn host_mark_stale_down_in_txn(tx: &mut Conn, cutoff: i64) -> Result<Vec<HostId>, Error> {
        let rows = sqlx::query("SELECT id FROM hosts WHERE status = 'up' AND last_seen_at < $1")
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("finding stale hosts"))?;
        let mut ids = Vec::new();
        for r in rows {
            let id = HostId::from_trusted(get(&r, "id")?);
            sqlx::query("UPDATE hosts SET status = 'down' WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err("marking host down"))?;
            ids.push(id);
        }
        Ok(ids)
    }

    pub async fn host_desired_generation(&self, host: &HostId) -> Result<i64, Error> {
        let mut c = self.r().acquire().await.map_err(db_err("acquiring connection"))?;
        Self::host_desired_generation_in(&mut c, host).await
    }

    pub async fn host_desired_generation_in(c: &mut Conn, host: &HostId) -> Result<i64, Error> {
        let row = sqlx::query("SELECT desired_generation FROM hosts WHERE id = $1")
            .bind(host.as_str())
            .fetch_optional(c)
            .await
            .map_err(db_err("reading host generation"))?
            .ok_or_else(|| Error::not_found("host", host.as_str()))?;
        get(&row, "desired_generation")
    }
}
