//! Wake-up hints for agents long-polling on their desired state. A hint carries no data: the
//! woken agent re-reads the store. Losing a hint only costs latency, because long-polls time
//! out and re-check.
//!
//! With several replicas on one PostgreSQL, an agent may long-poll a replica other than the one
//! that committed the change, so every wake is also sent to the other replicas through
//! `NOTIFY` (`spawn_replica_wakeups`): host ids, batched, tagged with the sending replica so it
//! skips its own. A replica whose listener reconnects wakes all its long-polls once, since what
//! was sent meanwhile is lost. Committed events reach the webhook dispatcher the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use nimbus_core::ids::HostId;
use tokio::sync::{mpsc, Notify};

use crate::Control;

/// The `LISTEN` channel for host wake-ups.
const HOSTS_CHANNEL: &str = "nimbus_hosts";
/// NOTIFY payloads must stay under 8,000 bytes; host ids are ~30.
const MAX_PAYLOAD: usize = 7_000;

#[derive(Default)]
pub struct HostNotifier {
    map: Mutex<HashMap<HostId, Arc<Notify>>>,
    /// Where wakes go to reach the other replicas, once `spawn_replica_wakeups` ran.
    remote: OnceLock<mpsc::UnboundedSender<HostId>>,
}

impl HostNotifier {
    pub fn handle(&self, host: &HostId) -> Arc<Notify> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(host.clone()).or_default().clone()
    }

    /// Wakes `host`'s long-poll on this replica and on every other one.
    pub fn wake(&self, host: &HostId) {
        self.wake_local(host);
        if let Some(tx) = self.remote.get() {
            let _ = tx.send(host.clone());
        }
    }

    fn wake_local(&self, host: &HostId) {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get(host) {
            n.notify_waiters();
        }
    }

    pub(crate) fn wake_all_local(&self) {
        for n in self.map.lock().unwrap_or_else(|p| p.into_inner()).values() {
            n.notify_waiters();
        }
    }
}

/// Payloads of one batch of host ids, each under the NOTIFY limit: `replica|id,id,…`.
fn payloads(replica: &str, hosts: &BTreeSet<HostId>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for h in hosts {
        if !cur.is_empty() && cur.len() + h.as_str().len() + 1 > MAX_PAYLOAD {
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur.push_str(replica);
            cur.push('|');
        } else {
            cur.push(',');
        }
        cur.push_str(h.as_str());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Starts this replica's half of the cross-replica wake-ups (PostgreSQL; nothing on SQLite): a
/// sender that batches every wake into `NOTIFY`s, and a listener that wakes the long-polls and
/// the webhook dispatcher of this replica.
pub fn spawn_replica_wakeups(c: &Control) -> Vec<tokio::task::JoinHandle<()>> {
    let store = c.store().clone();
    let replica = c.replica_id().to_owned();
    let listener = {
        let c = c.clone();
        let me = replica.clone();
        store.listen(
            &[HOSTS_CHANNEL, nimbus_store::EVENTS_CHANNEL],
            Arc::new(move |channel: &str, payload: &str| match channel {
                HOSTS_CHANNEL => {
                    let Some((from, ids)) = payload.split_once('|') else { return };
                    if from == me {
                        return;
                    }
                    for id in ids.split(',') {
                        c.hosts().wake_local(&HostId::from_trusted(id.to_owned()));
                    }
                }
                "*" => {
                    c.hosts().wake_all_local();
                    nimbus_store::commit_hint().notify_waiters();
                }
                _ => nimbus_store::commit_hint().notify_waiters(),
            }),
        )
    };
    let Some(listener) = listener else { return Vec::new() };
    let (tx, mut rx) = mpsc::unbounded_channel::<HostId>();
    if c.hosts().remote.set(tx).is_err() {
        listener.abort();
        return Vec::new();
    }
    let sender = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = BTreeSet::from([first]);
            while let Ok(h) = rx.try_recv() {
                batch.insert(h);
            }
            for p in payloads(&replica, &batch) {
                if let Err(e) = store.notify(HOSTS_CHANNEL, &p).await {
                    // The other replicas' long-polls time out and re-check.
                    tracing::debug!(error = %e, "sending a wake-up to the other replicas failed");
                }
            }
        }
    });
    vec![listener, sender]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_notify_limit_and_carry_every_host() {
        let hosts: BTreeSet<HostId> = (0..1000).map(|i| HostId::from_trusted(format!("host_{i:026}"))).collect();
        let ps = payloads("r1", &hosts);
        assert!(ps.len() > 1, "1,000 ids need several payloads");
        let mut seen = BTreeSet::new();
        for p in &ps {
            assert!(p.len() <= MAX_PAYLOAD + 40, "{}", p.len());
            let (from, ids) = p.split_once('|').unwrap();
            assert_eq!(from, "r1");
            seen.extend(ids.split(',').map(|s| HostId::from_trusted(s.to_owned())));
        }
        assert_eq!(seen, hosts);
        assert!(payloads("r1", &BTreeSet::new()).is_empty());
    }
}
