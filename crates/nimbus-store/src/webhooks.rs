//! Webhooks: subscriptions, the delivery log, the dispatcher's durable cursor and lease over the
//! outbox, and the sender's claims on due deliveries.
//!
//! Every claim and every change of a delivery is a conditional `UPDATE`, so several server
//! replicas on one PostgreSQL never both send a delivery while a lease is live, and a stale
//! sender never overwrites a newer outcome.

use std::sync::LazyLock;

use nimbus_core::ids::*;
use nimbus_core::model::Event;
use nimbus_core::webhook::{DeliveryState, Webhook, WebhookAttempt, WebhookDelivery};
use nimbus_core::Error;
use sqlx::any::AnyRow;
use tokio::sync::Notify;

use crate::rows::{self, get, json, to_json};
use crate::{db_err, placeholders, Conn, Store};

static COMMITS: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Woken (all waiters) after every committed write transaction of this process: the webhook
/// dispatcher waits on it so that an event is fanned out milliseconds after its commit. A hint
/// only: commits by other processes are found by polling.
pub fn commit_hint() -> &'static Notify {
    &COMMITS
}

pub(crate) fn committed() {
    COMMITS.notify_waiters();
}

const WEBHOOK_COLS: &str = "id, org_id, url, events, created_at, updated_at";
const DELIVERY_COLS: &str = "id, webhook_id, event_id, event_type, state, attempts, last_status, last_error, next_attempt_at, \
                             give_up_at, created_at, updated_at, delivered_at";

fn webhook(r: &AnyRow) -> Result<Webhook, Error> {
    Ok(Webhook {
        id: WebhookId::from_trusted(get(r, "id")?),
        org_id: OrgId::from_trusted(get(r, "org_id")?),
        url: get(r, "url")?,
        events: json(r, "events")?,
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
    })
}

fn delivery(r: &AnyRow) -> Result<WebhookDelivery, Error> {
    let state: String = get(r, "state")?;
    Ok(WebhookDelivery {
        id: WebhookDeliveryId::from_trusted(get(r, "id")?),
        webhook_id: WebhookId::from_trusted(get(r, "webhook_id")?),
        event_id: EventId::from_trusted(get(r, "event_id")?),
        event_type: get(r, "event_type")?,
        state: DeliveryState::parse(&state).ok_or_else(|| Error::internal(format!("unknown delivery state {state:?}")))?,
        attempts: get(r, "attempts")?,
        last_status_code: get(r, "last_status")?,
        last_error: get(r, "last_error")?,
        next_attempt_at: get(r, "next_attempt_at")?,
        give_up_at: get(r, "give_up_at")?,
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
        delivered_at: get(r, "delivered_at")?,
        history: Vec::new(),
    })
}

/// A webhook as the dispatcher needs it to match events.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub events: Vec<String>,
    pub created_at: i64,
}

pub struct NewDelivery<'a> {
    pub webhook_id: &'a WebhookId,
    pub org_id: &'a OrgId,
    pub event: &'a Event,
    pub event_type: &'a str,
    pub body: &'a str,
    pub give_up_at: i64,
    pub now: i64,
}

/// What the dispatcher's lease call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchLease {
    /// Still ours since the last call: in-memory progress is valid (`last_seq` is the durable
    /// cursor, for a dispatcher that lost its position).
    Renewed { last_seq: i64 },
    /// Newly ours: continue from the durable cursor.
    Acquired { last_seq: i64 },
    /// Another replica dispatches.
    Elsewhere,
}

/// A delivery claimed for one attempt, with what sending it needs.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: WebhookDeliveryId,
    pub webhook_id: WebhookId,
    pub event_id: EventId,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// Attempts recorded before this one.
    pub attempts: i64,
    pub give_up_at: i64,
    pub event_created_at: i64,
    /// The claim token: recording the outcome requires it to still hold the row.
    pub lease: String,
}

/// The result of one attempt and what follows it.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub id: WebhookDeliveryId,
    pub webhook_id: WebhookId,
    /// The claim token the attempt ran under.
    pub lease: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub started_at: i64,
    pub duration_us: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub next: NextStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(i64),
    GiveUp,
}

/// Why a redelivery did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeliver {
    Queued,
    NotFound,
    InFlight,
}

impl Store {
    /// Commits without the commit hint: the webhook machinery's own bookkeeping (fan-out,
    /// claims, attempt records) must not wake the dispatcher.
    pub async fn commit_quiet(tx: crate::Tx) -> Result<(), Error> {
        tx.commit().await.map_err(db_err("committing transaction"))
    }

    // ---- subscriptions -------------------------------------------------------------------

    pub async fn webhook_insert_in_txn(tx: &mut Conn, w: &Webhook, secret: &str) -> Result<(), Error> {
        sqlx::query("INSERT INTO webhooks (id, org_id, url, events, secret, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(w.id.as_str())
            .bind(w.org_id.as_str())
            .bind(&w.url)
            .bind(to_json(&w.events))
            .bind(secret)
            .bind(w.created_at)
            .bind(w.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err("inserting webhook"))?;
        Ok(())
    }

    pub async fn webhook_count_by_org_in(c: &mut Conn, org: &OrgId) -> Result<i64, Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_one(&mut *c)
            .await
            .map_err(db_err("counting webhooks"))
    }

    pub async fn webhook_list_by_org(&self, org: &OrgId) -> Result<Vec<Webhook>, Error> {
        sqlx::query(&format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE org_id = $1 ORDER BY created_at, id"))
            .bind(org.as_str())
            .fetch_all(&self.r())
            .await
            .map_err(db_err("listing webhooks"))?
            .iter()
            .map(webhook)
            .collect()
    }

    pub async fn webhook_get(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, Error> {
        sqlx::query(&format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1 AND org_id = $2"))
            .bind(id.as_str())
            .bind(org.as_str())
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading webhook"))?
            .as_ref()
            .map(webhook)
            .transpose()
    }

    /// Deletes a webhook of `org` with its delivery log; returns it, or `None` when there is none.
    pub async fn webhook_delete_in_txn(tx: &mut Conn, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, Error> {
        let row = sqlx::query(&format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1 AND org_id = $2"))
            .bind(id.as_str())
            .bind(org.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("reading webhook"))?;
        let Some(row) = row else { return Ok(None) };
        for sql in [
            "DELETE FROM webhook_attempts WHERE webhook_id = $1",
            "DELETE FROM webhook_deliveries WHERE webhook_id = $1",
            "DELETE FROM webhooks WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id.as_str()).execute(&mut *tx).await.map_err(db_err("deleting webhook"))?;
        }
        webhook(&row).map(Some)
    }

    // ---- delivery log --------------------------------------------------------------------

    /// One page of a webhook's deliveries, newest first unless `oldest_first`, optionally only
    /// those in `state` and/or of `event_type`, each with its attempts; plus the total count.
    pub async fn webhook_delivery_page(
        &self,
        webhook: &WebhookId,
        state: Option<&str>,
        event_type: Option<&str>,
        oldest_first: bool,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<WebhookDelivery>, i64), Error> {
        let filter = "webhook_id = $1 AND ($2 = '' OR state = $2) AND ($3 = '' OR event_type = $3)";
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM webhook_deliveries WHERE {filter}"))
            .bind(webhook.as_str())
            .bind(state.unwrap_or(""))
            .bind(event_type.unwrap_or(""))
            .fetch_one(&self.r())
            .await
            .map_err(db_err("counting webhook deliveries"))?;
        let dir = if oldest_first { "ASC" } else { "DESC" };
        let mut list: Vec<WebhookDelivery> = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE {filter} ORDER BY created_at {dir}, event_seq {dir}, id {dir} LIMIT $4 OFFSET $5"
        ))
        .bind(webhook.as_str())
        .bind(state.unwrap_or(""))
        .bind(event_type.unwrap_or(""))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing webhook deliveries"))?
        .iter()
        .map(delivery)
        .collect::<Result<_, _>>()?;
        self.attach_attempts(&mut list).await?;
        Ok((list, total))
    }

    pub async fn webhook_delivery_get(&self, webhook: &WebhookId, id: &WebhookDeliveryId) -> Result<Option<WebhookDelivery>, Error> {
        let row = sqlx::query(&format!("SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2"))
            .bind(id.as_str())
            .bind(webhook.as_str())
            .fetch_optional(&self.r())
            .await
            .map_err(db_err("reading webhook delivery"))?;
        let Some(row) = row else { return Ok(None) };
        let mut list = vec![delivery(&row)?];
        self.attach_attempts(&mut list).await?;
        Ok(list.pop())
    }

    async fn attach_attempts(&self, list: &mut [WebhookDelivery]) -> Result<(), Error> {
        if list.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT delivery_id, attempt, started_at, duration_us, status, error FROM webhook_attempts \
             WHERE delivery_id IN ({}) ORDER BY attempt",
            placeholders(1, list.len())
        );
        let mut q = sqlx::query(&sql);
        for d in list.iter() {
            q = q.bind(d.id.as_str());
        }
        for r in q.fetch_all(&self.r()).await.map_err(db_err("listing webhook attempts"))? {
            let id: String = get(&r, "delivery_id")?;
            if let Some(d) = list.iter_mut().find(|d| d.id.as_str() == id) {
                d.history.push(WebhookAttempt {
                    attempt: get(&r, "attempt")?,
                    started_at: get(&r, "started_at")?,
                    duration_us: get(&r, "duration_us")?,
                    status_code: get(&r, "status")?,
                    error: get(&r, "error")?,
                });
            }
        }
        Ok(())
    }

    /// Makes a delivery due now again (whatever its state), retrying until `give_up_at`. Refused
    /// while an attempt holds a live lease on it.
    pub async fn webhook_delivery_redeliver_in_txn(
        tx: &mut Conn,
        webhook: &WebhookId,
        id: &WebhookDeliveryId,
        give_up_at: i64,
        now: i64,
    ) -> Result<Redeliver, Error> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, give_up_at = $2, lease_owner = NULL, updated_at = $1 \
             WHERE id = $3 AND webhook_id = $4 AND (lease_owner IS NULL OR next_attempt_at < $1)",
        )
        .bind(now)
        .bind(give_up_at)
        .bind(id.as_str())
        .bind(webhook.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err("requeueing webhook delivery"))?
        .rows_affected();
        if done == 1 {
            return Ok(Redeliver::Queued);
        }
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2")
            .bind(id.as_str())
            .bind(webhook.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("reading webhook delivery"))?;
        Ok(if exists.is_some() { Redeliver::InFlight } else { Redeliver::NotFound })
    }

    // ---- dispatcher ----------------------------------------------------------------------

    /// Renews this replica's dispatch lease, or takes it when free or expired.
    pub async fn webhook_dispatch_lease_in_txn(tx: &mut Conn, owner: &str, now: i64, until: i64) -> Result<DispatchLease, Error> {
        let renewed = sqlx::query("UPDATE webhook_dispatch SET lease_until = $1 WHERE id = 1 AND owner = $2 AND lease_until >= $3")
            .bind(until)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err("renewing webhook dispatch lease"))?
            .rows_affected();
        let taken = if renewed == 1 {
            0
        } else {
            sqlx::query("UPDATE webhook_dispatch SET owner = $1, lease_until = $2 WHERE id = 1 AND (owner IS NULL OR lease_until < $3)")
                .bind(owner)
                .bind(until)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err("taking webhook dispatch lease"))?
                .rows_affected()
        };
        if renewed == 0 && taken == 0 {
            return Ok(DispatchLease::Elsewhere);
        }
        let last_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM webhook_dispatch WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err("reading webhook dispatch cursor"))?;
        Ok(if renewed == 1 { DispatchLease::Renewed { last_seq } } else { DispatchLease::Acquired { last_seq } })
    }

    /// Moves the durable cursor: every event with `seq <= last_seq` has been fanned out.
    pub async fn webhook_dispatch_advance_in_txn(tx: &mut Conn, owner: &str, last_seq: i64) -> Result<(), Error> {
        sqlx::query("UPDATE webhook_dispatch SET last_seq = $1 WHERE id = 1 AND owner = $2 AND last_seq < $1")
            .bind(last_seq)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("advancing webhook dispatch cursor"))?;
        Ok(())
    }

    /// Gives the dispatch lease up (shutdown), so another replica takes over at once.
    pub async fn webhook_dispatch_release(&self, owner: &str) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE webhook_dispatch SET owner = NULL, lease_until = 0 WHERE id = 1 AND owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing webhook dispatch lease"))?;
        Store::commit_quiet(tx).await
    }

    /// Outbox events with `seq > after`, oldest first (all organizations).
    pub async fn event_list_after(&self, after: i64, limit: i64) -> Result<Vec<Event>, Error> {
        sqlx::query(
            "SELECT seq, id, org_id, kind, resource_type, resource_id, actor_key_id, payload, created_at FROM events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.r())
        .await
        .map_err(db_err("reading outbox"))?
        .iter()
        .map(rows::event)
        .collect()
    }

    /// The outbox events among `seqs` that exist (now).
    pub async fn event_list_seqs(&self, seqs: &[i64]) -> Result<Vec<Event>, Error> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT seq, id, org_id, kind, resource_type, resource_id, actor_key_id, payload, created_at FROM events \
             WHERE seq IN ({}) ORDER BY seq",
            placeholders(1, seqs.len())
        );
        let mut q = sqlx::query(&sql);
        for s in seqs {
            q = q.bind(*s);
        }
        q.fetch_all(&self.r()).await.map_err(db_err("reading outbox"))?.iter().map(rows::event).collect()
    }

    /// The webhooks of these organizations.
    pub async fn webhook_targets_in(c: &mut Conn, orgs: &[&OrgId]) -> Result<Vec<WebhookTarget>, Error> {
        if orgs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT id, org_id, events, created_at FROM webhooks WHERE org_id IN ({})", placeholders(1, orgs.len()));
        let mut q = sqlx::query(&sql);
        for o in orgs {
            q = q.bind(o.as_str());
        }
        q.fetch_all(&mut *c)
            .await
            .map_err(db_err("listing webhook targets"))?
            .iter()
            .map(|r| {
                Ok(WebhookTarget {
                    id: WebhookId::from_trusted(get(r, "id")?),
                    org_id: OrgId::from_trusted(get(r, "org_id")?),
                    events: json(r, "events")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }

    /// `(id, name)` of these instances (whatever their organization).
    pub async fn instance_names_in(c: &mut Conn, ids: &[&str]) -> Result<Vec<(String, Option<String>)>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT id, name FROM instances WHERE id IN ({})", placeholders(1, ids.len()));
        let mut q = sqlx::query(&sql);
        for i in ids {
            q = q.bind(*i);
        }
        q.fetch_all(&mut *c).await.map_err(db_err("reading instance names"))?.iter().map(|r| Ok((get(r, "id")?, get(r, "name")?))).collect()
    }

    /// Inserts a pending delivery, due now; false when this webhook already has one for this
    /// event (a fan-out done twice).
    pub async fn webhook_delivery_insert_in_txn(tx: &mut Conn, d: NewDelivery<'_>) -> Result<bool, Error> {
        let n = sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event_id, event_seq, event_type, body, state, attempts, \
             next_attempt_at, give_up_at, event_created_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9, $10, $8, $8) ON CONFLICT (webhook_id, event_id) DO NOTHING",
        )
        .bind(WebhookDeliveryId::generate().as_str().to_owned())
        .bind(d.webhook_id.as_str())
        .bind(d.org_id.as_str())
        .bind(d.event.id.as_str())
        .bind(d.event.seq)
        .bind(d.event_type)
        .bind(d.body)
        .bind(d.now)
        .bind(d.give_up_at)
        .bind(d.event.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err("inserting webhook delivery"))?
        .rows_affected();
        Ok(n == 1)
    }

    // ---- sender --------------------------------------------------------------------------

    /// Due deliveries, oldest due first, at most `per_webhook` of any one webhook (so one slow
    /// receiver cannot take every sending slot).
    pub async fn webhook_delivery_due(&self, now: i64, per_webhook: i64, limit: i64) -> Result<Vec<(WebhookDeliveryId, WebhookId)>, Error> {
        sqlx::query(
            "SELECT id, webhook_id FROM (SELECT id, webhook_id, next_attempt_at, \
             ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, id) AS rn \
             FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1) due \
             WHERE rn <= $2 ORDER BY next_attempt_at, id LIMIT $3",
        )
        .bind(now)
        .bind(per_webhook)
        .bind(limit)
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing due webhook deliveries"))?
        .iter()
        .map(|r| Ok((WebhookDeliveryId::from_trusted(get(r, "id")?), WebhookId::from_trusted(get(r, "webhook_id")?))))
        .collect()
    }

    /// When the next pending delivery is due, if any.
    pub async fn webhook_delivery_next_due(&self) -> Result<Option<i64>, Error> {
        sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'")
            .fetch_one(&self.r())
            .await
            .map_err(db_err("reading next webhook delivery"))
    }

    /// Leases those of `ids` that are still due to `lease` until `lease_until` and returns them.
    /// The `UPDATE` re-checks due-ness under the row lock, so of two replicas claiming the same
    /// row only one gets it.
    pub async fn webhook_delivery_claim(
        &self,
        ids: &[WebhookDeliveryId],
        lease: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<ClaimedDelivery>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_owner = $1, next_attempt_at = $2, updated_at = $3 \
             WHERE state = 'pending' AND next_attempt_at <= $3 AND id IN ({})",
            placeholders(4, ids.len())
        );
        let mut q = sqlx::query(&sql).bind(lease).bind(lease_until).bind(now);
        for id in ids {
            q = q.bind(id.as_str());
        }
        let n = q.execute(&mut *tx).await.map_err(db_err("claiming webhook deliveries"))?.rows_affected();
        let mut out = Vec::new();
        if n > 0 {
            let sql = format!(
                "SELECT d.id, d.webhook_id, d.event_id, d.body, d.attempts, d.give_up_at, d.event_created_at, w.url, w.secret \
                 FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE d.lease_owner = $1 AND d.id IN ({})",
                placeholders(2, ids.len())
            );
            let mut q = sqlx::query(&sql).bind(lease);
            for id in ids {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(&mut *tx).await.map_err(db_err("reading claimed webhook deliveries"))? {
                out.push(ClaimedDelivery {
                    id: WebhookDeliveryId::from_trusted(get(&r, "id")?),
                    webhook_id: WebhookId::from_trusted(get(&r, "webhook_id")?),
                    event_id: EventId::from_trusted(get(&r, "event_id")?),
                    url: get(&r, "url")?,
                    secret: get(&r, "secret")?,
                    body: get(&r, "body")?,
                    attempts: get(&r, "attempts")?,
                    give_up_at: get(&r, "give_up_at")?,
                    event_created_at: get(&r, "event_created_at")?,
                    lease: lease.to_owned(),
                });
            }
        }
        Store::commit_quiet(tx).await?;
        Ok(out)
    }

    /// Records attempts and their consequences, each only if its lease still holds (a
    /// redelivery or a deletion meanwhile wins).
    pub async fn webhook_attempts_record(&self, outcomes: &[AttemptOutcome], now: i64) -> Result<(), Error> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for o in outcomes {
            let (state, next, delivered_at) = match o.next {
                NextStep::Delivered => (DeliveryState::Delivered, None, Some(now)),
                NextStep::RetryAt(t) => (DeliveryState::Pending, Some(t), None),
                NextStep::GiveUp => (DeliveryState::Failed, None, None),
            };
            let n = sqlx::query(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, last_status = $2, last_error = $3, \
                 next_attempt_at = $4, lease_owner = NULL, updated_at = $5, delivered_at = COALESCE($6, delivered_at) \
                 WHERE id = $7 AND lease_owner = $8",
            )
            .bind(state.as_str())
            .bind(o.status_code)
            .bind(o.error.clone())
            .bind(next)
            .bind(now)
            .bind(delivered_at)
            .bind(o.id.as_str())
            .bind(&o.lease)
            .execute(&mut *tx)
            .await
            .map_err(db_err("recording webhook attempt"))?
            .rows_affected();
            if n == 1 {
                sqlx::query(
                    "INSERT INTO webhook_attempts (delivery_id, webhook_id, attempt, started_at, duration_us, status, error) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (delivery_id, attempt) DO NOTHING",
                )
                .bind(o.id.as_str())
                .bind(o.webhook_id.as_str())
                .bind(o.attempt)
                .bind(o.started_at)
                .bind(o.duration_us)
                .bind(o.status_code)
                .bind(o.error.clone())
                .execute(&mut *tx)
                .await
                .map_err(db_err("recording webhook attempt"))?;
            }
        }
        Store::commit_quiet(tx).await
    }
}
