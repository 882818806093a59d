//! Background reconciliation on the server.
//!
//! Host liveness: a host that has not reported within `agents.host_timeout_ms` is marked down and
//! its running instances become `unhealthy`; its next report brings them back (see `agents`).
//! Among several replicas, one runs the loop at a time: the holder of the `reconciler` lease
//! (see nimbus-store's leases module). Every transaction of its passes, including those of the
//! domain calls a pass makes (a cluster node launched, a spend limit's stop), proves the lease
//! first, so a replica that was paused past its lease and replaced writes nothing. A replica
//! that dies is replaced when its lease runs out (`lease_ttl`); one that shuts down cleanly
//! gives the lease up at once (`release`).

use std::time::Duration;

use nimbus_core::instance::InstanceState;
use nimbus_core::Error;
use nimbus_store::{InstanceUpdate, NewEvent, Store};
use serde_json::json;

use crate::Control;

/// One pass; returns how many instances it marked unhealthy.
pub async fn host_liveness_once(c: &Control) -> Result<usize, Error> {
    let now = c.now();
    let timeout_micros = i64::try_from(c.config().agents.host_timeout_ms).unwrap_or(i64::MAX / 1000) * 1000;
    let mut tx = c.store().begin().await?;
    let down = Store::host_mark_stale_down_in_txn(&mut tx, now - timeout_micros).await?;
    let mut n = 0;
    for host in &down {
        let running = [InstanceState::Booting, InstanceState::Active, InstanceState::Restarting, InstanceState::Starting];
        for (id, org, st) in Store::instance_ids_on_hosts_in_states_in(&mut tx, host, &running).await? {
            if Store::instance_transition_in_txn(&mut tx, &id, st, InstanceState::Unhealthy, &InstanceUpdate::default(), now).await? {
                if let Some(inst) = Store::instance_get_any_in(&mut tx, &id).await? {
                    crate::metering::instance_moved(c, &mut tx, &inst, st, InstanceState::Unhealthy, now).await?;
                }
                Store::event_append_in_txn(
                    &mut tx,
                    NewEvent {
                        org_id: Some(&org),
                        kind: "instance.unhealthy",
                        resource_type: "instance",
                        resource_id: id.as_str(),
                        actor_key_id: None,
                        payload: json!({"reason": "host stopped reporting", "host_id": host.as_str()}),
                        now,
                    },
                )
                .await?;
                Store::org_bump_instances_generation_in_txn(&mut tx, &org).await?;
                n += 1;
            }
        }
        Store::event_append_in_txn(
            &mut tx,
            NewEvent {
                org_id: None,
                kind: "host.down",
                resource_type: "host",
                resource_id: host.as_str(),
                actor_key_id: None,
                payload: json!({}),
                now,
            },
        )
        .await?;
    }
    Store::commit(tx).await?;
    Ok(n)
}

/// The lease the loop runs under.
pub const LEASE: &str = "reconciler";

/// How long a holder's lease lasts past its last renewal: five passes, within 1–15 s. A dead
/// holder's duties wait that long for another replica.
pub fn lease_ttl(every: Duration) -> Duration {
    (every * 5).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// Runs the liveness pass (and the hourly metering roll-up when an hour has passed) forever at
/// the heartbeat interval, while this replica holds the lease.
pub fn spawn(c: Control) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_millis(c.config().agents.heartbeat_interval_ms.max(100));
        let ttl = i64::try_from(lease_ttl(every).as_micros()).unwrap_or(i64::MAX);
        let host_timeout = i64::try_from(c.config().agents.host_timeout_ms).unwrap_or(i64::MAX / 1000).saturating_mul(1000);
        // While held: from when on hosts are judged. Only after this replica has held the lease,
        // with the database answering, for a whole host timeout: reports that failed while the
        // database was away (a failover) or while no replica ran the loop do not make a host
        // "down".
        let mut judge_from: Option<i64> = None;
        loop {
            tokio::time::sleep(every).await;
            let now = c.now();
            let generation = match c.store().lease_acquire(LEASE, c.replica_id(), now, now.saturating_add(ttl)).await {
                Ok(Some(g)) => g,
                Ok(None) => {
                    judge_from = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the reconciler lease failed");
                    judge_from = None;
                    continue;
                }
            };
            let from = *judge_from.get_or_insert_with(|| {
                tracing::info!(replica = c.replica_id(), generation, "this replica runs the reconciler");
                now.saturating_add(host_timeout)
            });
            let fence = nimbus_store::Fence { name: LEASE.into(), holder: c.replica_id().into(), generation, now };
            nimbus_store::FENCE.scope(fence, passes(&c, now >= from)).await;
        }
    })
}

/// Gives the lease up (a clean shutdown), so another replica takes the loop over at once.
pub async fn release(c: &Control) {
    if let Err(e) = c.store().lease_release(LEASE, c.replica_id()).await {
        tracing::debug!(error = %e, "releasing the reconciler lease failed");
    }
}

async fn passes(c: &Control, judge_hosts: bool) {
    if judge_hosts {
        if let Err(e) = host_liveness_once(c).await {
            tracing::warn!(error = %e, "host liveness pass failed");
        }
    }
    if let Err(e) = crate::billing::enforce_spend_limits(c).await {
        tracing::warn!(error = %e, "spend-limit pass failed");
    }
    if let Err(e) = crate::clusters::reconcile_once(c).await {
        tracing::warn!(error = %e, "cluster pass failed");
    }
    // Cheap when the last hour is already rolled up (the cursor is read first).
    if crate::metering::roll_up_due(c).await.unwrap_or(false) {
        if let Err(e) = crate::metering::roll_up(c).await {
            tracing::warn!(error = %e, "metering roll-up failed");
        }
    }
}
