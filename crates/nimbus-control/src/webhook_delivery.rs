//! Webhook delivery: the dispatcher turns outbox events into deliveries, the sender makes the
//! HTTP attempts. Both run in the background of every server replica; neither is ever awaited by
//! an API request.
//!
//! ```text
//!  state change ─┬─ commit ──(hint)──▶ dispatcher ── one txn: deliveries + cursor ──▶ sender
//!   + event in   │                     (one replica,    (unique per webhook+event)    (every replica,
//!   the outbox   │                      DB lease)                                      claims rows)
//!                └── other replicas: found by polling every `poll_interval_ms`
//! ```
//!
//! **Dispatcher.** The replica holding the lease in `webhook_dispatch` reads events after its
//! position, maps each to its public type (`nimbus_core::webhook::public_event_type`), inserts
//! one pending delivery per matching webhook of the event's organization, and advances the
//! durable cursor, all in one transaction. The unique `(webhook_id, event_id)` makes a repeated
//! fan-out (after a crash before the cursor moved) insert nothing, so no event is delivered
//! twice because of a restart. On PostgreSQL sequence numbers can commit out of order; a gap
//! below the highest seen number is remembered and re-read until it appears or `gap_grace_ms`
//! passes, and the durable cursor never moves past an open gap.
//!
//! **Sender.** Every replica claims due deliveries with a conditional `UPDATE` that sets a lease
//! (`lease_owner`, and `next_attempt_at` pushed to the lease end), so while a lease is live no
//! other replica sends the same delivery. Attempts run concurrently (at most `max_concurrency`,
//! and `per_webhook_concurrency` per webhook), each with a timeout; results are recorded in
//! batches, conditional on the lease. A 2xx marks the delivery delivered; anything else
//! (a 3xx included: redirects are never followed) schedules a retry with exponential backoff
//! until `give_up_after_secs`.
//!
//! **What the tenant reads.** Requests go through `egress::Egress`, which refuses loopback,
//! private, metadata and other non-public addresses at connect time. The delivery log is the
//! tenant's view of those attempts, so it says only one of a fixed set of things
//! (`CONNECTION_FAILED`, `TIMED_OUT`, "receiver answered HTTP <status>"): a refused address, a
//! closed port, a reset and a failed lookup all read the same, and a status is recorded only
//! when a permitted receiver answered. Otherwise the log would turn webhooks into a port
//! scanner of the server's own network. The precise reason is logged here with `tracing`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use nimbus_core::clock::to_rfc3339;
use nimbus_core::ids::{random_hex_id, WebhookId};
use nimbus_core::model::Event;
use nimbus_core::webhook as wh;
use nimbus_core::Error;
use nimbus_store::{AttemptOutcome, ClaimedDelivery, DispatchLease, NewDelivery, NextStep, Store, WebhookTarget};
use rand::Rng;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use crate::egress::{Egress, EgressError};
use crate::Control;

/// Events read per dispatcher pass.
const BATCH: i64 = 500;
/// Gaps remembered at most; beyond that the oldest are skipped at once.
const MAX_GAPS: usize = 1000;
/// Outcomes written per transaction at most.
const RECORD_BATCH: usize = 256;
/// A receiver's answer body is read (so the connection can be reused) up to this size.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The tenant-visible error of every attempt that got no HTTP answer and did not time out.
pub const CONNECTION_FAILED: &str = "connection failed";
/// The tenant-visible error of an attempt that ran out of `request_timeout_ms`.
pub const TIMED_OUT: &str = "timed out";

static SENDERS: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Wakes the senders of this process (a redelivery was queued). A hint: they also poll.
pub fn wake_senders() {
    SENDERS.notify_waiters();
}

/// The JSON body of a delivery: `{"id", "type", "timestamp", "data"}`. `data` carries
/// `<resource>_id`, the event's own fields (minus internal ones), and for instances the name and
/// the status right after the event.
pub fn event_body(e: &Event, event_type: &str, instance_name: Option<&str>) -> String {
    let mut data = Map::new();
    data.insert(format!("{}_id", e.resource_type), Value::String(e.resource_id.clone()));
    if let Value::Object(p) = &e.payload {
        for (k, v) in p {
            if matches!(k.as_str(), "from" | "host_id") || v.is_null() || data.contains_key(k) {
                continue;
            }
            data.insert(k.clone(), v.clone());
        }
    }
    if e.resource_type == "instance" {
        if !data.contains_key("name") {
            data.insert("name".into(), instance_name.map_or(Value::Null, |n| Value::String(n.to_owned())));
        }
        if let Some(status) = wh::instance_status_after(event_type) {
            data.insert("status".into(), Value::String(status.to_owned()));
        }
        if let Some(from) = e.payload.get("from").and_then(Value::as_str) {
            let native = if from == "active" { "running" } else { from };
            data.insert("previous_status".into(), Value::String(native.to_owned()));
        }
    }
    let mut body = Map::new();
    body.insert("id".into(), Value::String(e.id.to_string()));
    body.insert("type".into(), Value::String(event_type.to_owned()));
    body.insert("timestamp".into(), Value::String(to_rfc3339(e.created_at)));
    body.insert("data".into(), Value::Object(data));
    Value::Object(body).to_string()
}

/// Starts the dispatcher and the sender; one task (aborting it stops both; attempts in flight
/// finish on their own, bounded by the request timeout).
pub fn spawn(c: Control) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut dispatcher = Dispatcher::new();
        let sender = match Sender::new(c.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "webhook sender could not start; webhooks will not be delivered");
                return;
            }
        };
        tokio::join!(dispatcher.run(&c), sender.run());
    })
}

// ---- dispatcher ---------------------------------------------------------------------------

struct Dispatcher {
    owner: String,
    /// End of our lease as we last set it; 0 when not held.
    leased_until: i64,
    /// Highest sequence number fanned out; `None` until read from the durable cursor.
    high: Option<i64>,
    /// Sequence numbers below `high` not seen yet, with when they were first missed.
    gaps: BTreeMap<i64, i64>,
}

impl Dispatcher {
    fn new() -> Self {
        Dispatcher { owner: random_hex_id(), leased_until: 0, high: None, gaps: BTreeMap::new() }
    }

    async fn run(&mut self, c: &Control) {
        let poll = Duration::from_millis(c.config().webhooks.poll_interval_ms);
        loop {
            let hint = nimbus_store::commit_hint().notified();
            tokio::pin!(hint);
            hint.as_mut().enable();
            match self.pass(c).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "webhook dispatch pass failed");
                    // Start again from the durable cursor: nothing in memory is trusted.
                    self.high = None;
                    self.gaps.clear();
                }
            }
            let _ = tokio::time::timeout(poll, hint).await;
        }
    }

    /// One pass; true when there may be more to do at once.
    async fn pass(&mut self, c: &Control) -> Result<bool, Error> {
        let s = &c.config().webhooks;
        let lease = i64::try_from(s.dispatch_lease_ms).unwrap_or(i64::MAX / 2000) * 1000;
        let grace = i64::try_from(s.gap_grace_ms).unwrap_or(i64::MAX / 2000) * 1000;
        let now = c.now();
        let held = self.leased_until > now;
        // Read what is new outside the (on SQLite, single) writer.
        let mut events = Vec::new();
        if let (true, Some(high)) = (held, self.high) {
            events = c.store().event_list_after(high, BATCH).await?;
            if !self.gaps.is_empty() {
                let seqs: Vec<i64> = self.gaps.keys().copied().take(100).collect();
                events.extend(c.store().event_list_seqs(&seqs).await?);
                events.sort_by_key(|e| e.seq);
                events.dedup_by_key(|e| e.seq);
            }
        }
        let gaps_expired = self.gaps.values().any(|first| now - *first >= grace);
        let renew_due = self.leased_until - now < lease / 2;
        if events.is_empty() && !gaps_expired && !renew_due && self.high.is_some() {
            return Ok(false);
        }
        let mut tx = c.store().begin().await?;
        match Store::webhook_dispatch_lease_in_txn(&mut tx, &self.owner, now, now + lease).await? {
            DispatchLease::Elsewhere => {
                self.leased_until = 0;
                self.high = None;
                return Ok(false);
            }
            // Newly ours, or ours but our position was dropped after an error: start from the
            // durable cursor.
            DispatchLease::Acquired { last_seq } | DispatchLease::Renewed { last_seq } if self.high.is_none() || !held => {
                Store::commit_quiet(tx).await?;
                tracing::debug!(owner = %self.owner, last_seq, "webhook dispatcher (re)starts from the durable cursor");
                self.leased_until = now + lease;
                self.high = Some(last_seq);
                self.gaps.clear();
                return Ok(true);
            }
            DispatchLease::Acquired { .. } | DispatchLease::Renewed { .. } => {}
        }
        let Some(high) = self.high else {
            return Err(Error::internal("webhook dispatcher position lost"));
        };
        let inserted = fan_out(c, &mut tx, &events, now).await?;
        // The new position, applied to `self` only once committed.
        let mut gaps = self.gaps.clone();
        let mut new_high = high;
        for e in &events {
            gaps.remove(&e.seq);
            if e.seq > new_high {
                if e.seq - new_high - 1 <= MAX_GAPS as i64 {
                    for missing in new_high + 1..e.seq {
                        gaps.insert(missing, now);
                    }
                }
                new_high = e.seq;
            }
        }
        gaps.retain(|_, first| now - *first < grace);
        while gaps.len() > MAX_GAPS {
            gaps.pop_first();
        }
        let cursor = gaps.keys().next().map_or(new_high, |g| g - 1);
        Store::webhook_dispatch_advance_in_txn(&mut tx, &self.owner, cursor).await?;
        Store::commit_quiet(tx).await?;
        self.leased_until = now + lease;
        self.high = Some(new_high);
        self.gaps = gaps;
        if inserted > 0 {
            wake_senders();
        }
        Ok(events.len() as i64 >= BATCH)
    }
}

/// The webhooks that receive event `e` of type `t`: same organization, created before the
/// event, subscribed to the type.
fn wanting<'a>(targets: &'a [WebhookTarget], e: &'a Event, t: &'a str) -> impl Iterator<Item = &'a WebhookTarget> + 'a {
    targets.iter().filter(move |w| Some(&w.org_id) == e.org_id.as_ref() && w.created_at <= e.created_at && wh::matches_any(&w.events, t))
}

/// Inserts the deliveries of `events` in `tx`; returns how many were new.
async fn fan_out(c: &Control, tx: &mut nimbus_store::Conn, events: &[Event], now: i64) -> Result<usize, Error> {
    let typed: Vec<(&Event, &'static str)> =
        events.iter().filter(|e| e.org_id.is_some()).filter_map(|e| wh::public_event_type(&e.kind, &e.payload).map(|t| (e, t))).collect();
    if typed.is_empty() {
        return Ok(0);
    }
    let mut orgs: Vec<&nimbus_core::ids::OrgId> = typed.iter().filter_map(|(e, _)| e.org_id.as_ref()).collect();
    orgs.sort();
    orgs.dedup();
    let targets = Store::webhook_targets_in(tx, &orgs).await?;
    if targets.is_empty() {
        return Ok(0);
    }
    let mut need_names: Vec<&str> = typed
        .iter()
        .filter(|(e, t)| e.resource_type == "instance" && e.payload.get("name").is_none() && wanting(&targets, e, t).next().is_some())
        .map(|(e, _)| e.resource_id.as_str())
        .collect();
    need_names.sort_unstable();
    need_names.dedup();
    let names: HashMap<String, Option<String>> = Store::instance_names_in(tx, &need_names).await?.into_iter().collect();
    let give_up = i64::try_from(c.config().webhooks.give_up_after_secs).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
    let mut inserted = 0;
    for (e, t) in &typed {
        let mut body = None;
        for w in wanting(&targets, e, t) {
            let org = e.org_id.as_ref().ok_or_else(|| Error::internal("event without organization"))?;
            let body = body.get_or_insert_with(|| {
                let name = names.get(&e.resource_id).and_then(|n| n.as_deref());
                event_body(e, t, name)
            });
            let new =
                NewDelivery { webhook_id: &w.id, org_id: org, event: e, event_type: t, body, give_up_at: e.created_at + give_up, now };
            if Store::webhook_delivery_insert_in_txn(tx, new).await? {
                inserted += 1;
            }
        }
    }
    Ok(inserted)
}

// ---- sender -------------------------------------------------------------------------------

struct Sender {
    c: Control,
    http: Egress,
    slots: Arc<Semaphore>,
    /// Attempts in flight per webhook (this process).
    in_flight: Arc<Mutex<HashMap<WebhookId, usize>>>,
    /// Poked when an attempt finishes and its outcome is recorded.
    progress: Arc<Notify>,
}

impl Sender {
    fn new(c: Control) -> Result<Self, Error> {
        let s = &c.config().webhooks;
        let timeout = Duration::from_millis(s.request_timeout_ms);
        let http = Egress::new(
            reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .timeout(timeout)
                .user_agent(concat!("Nimbus-Webhooks/", env!("CARGO_PKG_VERSION"))),
            s.allow_private_targets,
            &s.resolver,
        )
        .map_err(|e| Error::internal(format!("building the webhook HTTP client: {e}")))?;
        let slots = Arc::new(Semaphore::new(s.max_concurrency));
        Ok(Sender { c, http, slots, in_flight: Arc::default(), progress: Arc::default() })
    }

    async fn run(&self) {
        let (tx, rx) = mpsc::unbounded_channel::<(AttemptOutcome, OwnedSemaphorePermit)>();
        let recorder = record_loop(self.c.clone(), rx, self.in_flight.clone(), self.progress.clone());
        let claimer = async {
            let poll = Duration::from_millis(self.c.config().webhooks.poll_interval_ms);
            loop {
                let woken = SENDERS.notified();
                let progressed = self.progress.notified();
                tokio::pin!(woken, progressed);
                woken.as_mut().enable();
                progressed.as_mut().enable();
                let wait = match self.claim_and_send(&tx).await {
                    Ok(Some(wait)) => wait.min(poll),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook sender pass failed");
                        poll
                    }
                };
                tokio::select! {
                    _ = woken => {}
                    _ = progressed => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        };
        tokio::join!(recorder, claimer);
    }

    /// Claims what is due and starts the attempts. `None`: look again at once; otherwise how long
    /// to wait (at most) before looking again.
    async fn claim_and_send(
        &self,
        results: &mpsc::UnboundedSender<(AttemptOutcome, OwnedSemaphorePermit)>,
    ) -> Result<Option<Duration>, Error> {
        let s = &self.c.config().webhooks;
        let per_webhook = s.per_webhook_concurrency;
        let free = self.slots.available_permits();
        let now = self.c.now();
        let mut started = 0;
        let mut saw_due = false;
        if free > 0 {
            let due = self.c.store().webhook_delivery_due(now, per_webhook as i64, (free * 2) as i64).await?;
            saw_due = !due.is_empty();
            let mut picked = Vec::new();
            {
                let flying = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let mut taken: HashMap<&WebhookId, usize> = HashMap::new();
                for (id, hook) in &due {
                    let n = taken.entry(hook).or_default();
                    if picked.len() < free && flying.get(hook).copied().unwrap_or(0) + *n < per_webhook {
                        *n += 1;
                        picked.push(id.clone());
                    }
                }
            }
            let timeout = i64::try_from(s.request_timeout_ms).unwrap_or(i64::MAX / 2000) * 1000;
            // The lease outlasts the attempt (timeout plus time to record it) by a wide margin.
            let lease_until = now + 2 * timeout + 5_000_000;
            let claimed = self.c.store().webhook_delivery_claim(&picked, &random_hex_id(), now, lease_until).await?;
            for d in claimed {
                let Ok(permit) = self.slots.clone().try_acquire_owned() else { break };
                *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).entry(d.webhook_id.clone()).or_default() += 1;
                started += 1;
                tokio::spawn(attempt(self.c.clone(), self.http.clone(), d, permit, results.clone()));
            }
            if started > 0 && due.len() >= free * 2 {
                return Ok(None);
            }
        }
        let next = self.c.store().webhook_delivery_next_due().await?;
        let now = self.c.now();
        // Something is due but nothing could start (all slots busy, or per-webhook limits): wait
        // for an attempt to finish rather than spin.
        let blocked = started == 0 && (free == 0 || saw_due);
        Ok(Some(match next {
            Some(t) if t <= now => {
                if blocked {
                    Duration::from_millis(s.poll_interval_ms)
                } else {
                    Duration::ZERO
                }
            }
            Some(t) => Duration::from_micros(u64::try_from(t - now).unwrap_or(0)),
            None => Duration::from_millis(s.poll_interval_ms),
        }))
    }
}

/// One HTTP attempt of a claimed delivery; its outcome goes to the recorder.
async fn attempt(
    c: Control,
    http: Egress,
    d: ClaimedDelivery,
    permit: OwnedSemaphorePermit,
    results: mpsc::UnboundedSender<(AttemptOutcome, OwnedSemaphorePermit)>,
) {
    let s = &c.config().webhooks;
    let started_at = c.now();
    let timestamp = started_at.div_euclid(1_000_000);
    let signature = wh::sign(&d.secret, timestamp, d.body.as_bytes());
    let request = http
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-nimbus-webhook-id", d.webhook_id.as_str())
        .header("x-nimbus-event-id", d.event_id.as_str())
        .header("x-nimbus-delivery-id", d.id.as_str())
        .header("x-nimbus-timestamp", timestamp.to_string())
        .header("x-nimbus-signature", signature)
        .body(d.body.clone());
    let sent = http.send(request).await;
    let (status_code, error) = match sent {
        Ok(mut resp) => {
            let status = resp.status();
            // Read (a bounded part of) the answer so the connection can be reused.
            let mut read = 0;
            while let Ok(Some(chunk)) = resp.chunk().await {
                read += chunk.len();
                if read > MAX_ANSWER_BYTES {
                    break;
                }
            }
            // A 3xx is an answer like any other non-2xx: Egress follows no redirect, so the
            // receiver cannot send the attempt on to an address the policy would refuse.
            let err = (!status.is_success()).then(|| format!("receiver answered HTTP {}", status.as_u16()));
            (Some(i64::from(status.as_u16())), err)
        }
        Err(e) => {
            if let Some(r) = e.refused() {
                tracing::warn!(delivery = %d.id, webhook = %d.webhook_id, url = %d.url, refused = %r, "webhook destination refused by the egress policy");
            } else {
                tracing::debug!(delivery = %d.id, url = %d.url, error = %e.chain(), "webhook attempt got no answer");
            }
            (None, Some(describe(&e).to_owned()))
        }
    };
    let finished = c.now();
    let attempt_no = d.attempts + 1;
    let next = if error.is_none() {
        NextStep::Delivered
    } else {
        let failures = u32::try_from(attempt_no).unwrap_or(u32::MAX);
        let base = wh::backoff_ms(failures, s.retry_initial_ms, s.retry_max_ms);
        // ±10 % jitter, so that deliveries that failed together do not retry in lockstep.
        let jittered = (base as f64 * rand::thread_rng().gen_range(0.9..=1.1)) as i64;
        let at = finished + jittered.max(1) * 1000;
        if at > d.give_up_at {
            NextStep::GiveUp
        } else {
            NextStep::RetryAt(at)
        }
    };
    if error.is_some() {
        tracing::debug!(delivery = %d.id, url = %d.url, ?status_code, ?error, ?next, "webhook attempt failed");
    }
    c.telemetry().webhook_attempt(match next {
        NextStep::Delivered => "delivered",
        NextStep::RetryAt(_) => "retry",
        NextStep::GiveUp => "gave_up",
    });
    let outcome = AttemptOutcome {
        id: d.id,
        webhook_id: d.webhook_id,
        lease: d.lease,
        attempt: attempt_no,
        started_at,
        duration_us: finished - started_at,
        status_code,
        error,
        next,
    };
    let _ = results.send((outcome, permit));
}

/// What the tenant reads about an attempt that got no answer: deliberately one of two fixed
/// texts, whatever the cause (see the module documentation). `e.chain()` has the detail, for logs.
fn describe(e: &EgressError) -> &'static str {
    if e.is_timeout() {
        TIMED_OUT
    } else {
        CONNECTION_FAILED
    }
}

/// Writes outcomes in batches; frees the slot of each attempt once its outcome is stored.
async fn record_loop(
    c: Control,
    mut rx: mpsc::UnboundedReceiver<(AttemptOutcome, OwnedSemaphorePermit)>,
    in_flight: Arc<Mutex<HashMap<WebhookId, usize>>>,
    progress: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let outcomes: Vec<AttemptOutcome> = batch.iter().map(|(o, _)| o.clone()).collect();
        if let Err(e) = c.store().webhook_attempts_record(&outcomes, c.now()).await {
            // The leases expire and the deliveries are attempted again: at least once.
            tracing::warn!(error = %e, n = outcomes.len(), "recording webhook attempts failed");
        }
        {
            let mut flying = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for o in &outcomes {
                if let Some(n) = flying.get_mut(&o.webhook_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        flying.remove(&o.webhook_id);
                    }
                }
            }
        }
        drop(batch);
        progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::ids::{EventId, OrgId};
    use serde_json::json;

    fn ev(kind: &str, rtype: &str, payload: Value) -> Event {
        Event {
            seq: 7,
            id: EventId::generate(),
            org_id: Some(OrgId::generate()),
            kind: kind.into(),
            resource_type: rtype.into(),
            resource_id: "0123456789abcdef0123456789abcdef".into(),
            actor_key_id: None,
            payload,
            created_at: 1_769_250_600_000_000,
        }
    }

    /// A closed port, a reset, a failed lookup and a refused address (literal or by name) must
    /// give the tenant the same words, or the delivery log tells them apart.
    #[tokio::test]
    async fn closed_ports_and_refused_addresses_read_the_same() {
        use crate::egress::{BaseResolver, FakeResolver};
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        // Accepts and hangs up at once: a reset or an early close, but a live port.
        let resets = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let reset_port = resets.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = resets.accept().await {
                drop(s);
            }
        });
        let lo = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
        let base = BaseResolver::new(Arc::new(FakeResolver::new().with("receiver.nimbus-test.invalid", &[lo])));
        let client = |allow| Egress::new(reqwest::Client::builder().timeout(Duration::from_secs(5)), allow, &base).expect("client");
        let (open, strict) = (client(true), client(false));
        let mut texts = Vec::new();
        for (c, url, refused) in [
            (&open, format!("http://127.0.0.1:{closed}/"), false),
            (&open, format!("http://receiver.nimbus-test.invalid:{closed}/"), false),
            (&open, format!("http://127.0.0.1:{reset_port}/"), false),
            (&open, "http://unknown.nimbus-test.invalid/".to_owned(), false),
            (&strict, format!("http://127.0.0.1:{closed}/"), true),
            (&strict, format!("http://127.0.0.1:{reset_port}/"), true),
            (&strict, format!("http://receiver.nimbus-test.invalid:{reset_port}/"), true),
            (&strict, "http://[fd00:ec2::254]/".to_owned(), true),
        ] {
            let e = c.send(c.post(&url)).await.expect_err("no answer");
            assert_eq!(e.refused().is_some(), refused, "{url}: {}", e.chain());
            texts.push((url, describe(&e)));
        }
        assert!(texts.iter().all(|(_, t)| *t == CONNECTION_FAILED), "{texts:?}");
    }

    #[test]
    fn bodies_follow_the_seed_shape() {
        let e = ev(
            "instance.created",
            "instance",
            json!({"name": "web-1", "instance_type": "cpu_1x_small", "region": "us-east-1", "host_id": "h"}),
        );
        let b: Value = serde_json::from_str(&event_body(&e, "instance.created", None)).expect("json");
        assert_eq!(b["id"], e.id.as_str());
        assert_eq!(b["type"], "instance.created");
        assert_eq!(b["timestamp"], "2026-01-24T10:30:00.000Z");
        assert_eq!(
            b["data"],
            json!({"instance_id": e.resource_id, "name": "web-1", "status": "booting", "instance_type": "cpu_1x_small", "region": "us-east-1"})
        );
        let e = ev("instance.active", "instance", json!({"from": "restarting", "message": null}));
        let b: Value = serde_json::from_str(&event_body(&e, "instance.restarted", Some("web-1"))).expect("json");
        assert_eq!(b["data"], json!({"instance_id": e.resource_id, "name": "web-1", "status": "running", "previous_status": "restarting"}));
        let e = ev("volume.attached", "volume", json!({"instance_id": "i1", "volume_id": "ignored"}));
        let b: Value = serde_json::from_str(&event_body(&e, "volume.attached", None)).expect("json");
        assert_eq!(b["data"], json!({"volume_id": e.resource_id, "instance_id": "i1"}));
    }
}
