//! The outbox. Every state change appends one event in the same transaction; readers (audit
//! log, later webhooks and metrics) page through it by sequence number.

use nimbus_core::ids::*;
use nimbus_core::model::Event;
use nimbus_core::Error;

use crate::rows::{self, to_json};
use crate::{db_err, Conn, Store};

pub struct NewEvent<'a> {
    pub org_id: Option<&'a OrgId>,
    pub kind: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub actor_key_id: Option<&'a ApiKeyId>,
    pub payload: serde_json::Value,
    pub now: i64,
}

/// The `LISTEN` channel that hears of committed events (PostgreSQL).
pub const EVENTS_CHANNEL: &str = "nimbus_events";

impl Store {
    pub async fn event_append_in_txn(tx: &mut Conn, e: NewEvent<'_>) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO events (id, org_id, kind, resource_type, resource_id, actor_key_id, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(EventId::generate().as_str().to_owned())
        .bind(e.org_id.map(|o| o.as_str().to_owned()))
        .bind(e.kind)
        .bind(e.resource_type)
        .bind(e.resource_id)
        .bind(e.actor_key_id.map(|k| k.as_str().to_owned()))
        .bind(to_json(&e.payload))
        .bind(e.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("appending event"))?;
        // Delivered at commit (and once per transaction: PostgreSQL folds equal notifications),
        // so the replica dispatching webhooks hears of events committed through any other.
        if tx.backend_name() == "PostgreSQL" {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(EVENTS_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(db_err("notifying of an event"))?;
        }
        Ok(())
    }

    /// Events of one org with `seq > after_seq`, oldest first, optionally limited to a time window
    /// (inclusive) and a resource type.
    pub async fn event_list_by_org(
        &self,
        org: &OrgId,
        after_seq: i64,
        start: Option<i64>,
        end: Option<i64>,
        resource_type: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, Error> {
        sqlx::query(
            "SELECT seq, id, org_id, kind, resource_type, resource_id, actor_key_id, payload, created_at FROM events \
             WHERE org_id = $1 AND seq > $2 AND created_at >= $3 AND created_at <= $4 \
             AND ($5 = '' OR resource_type = $5) ORDER BY seq LIMIT $6",
        )
        .bind(org.as_str())
        .bind(after_seq)
        .bind(start.unwrap_or(i64::MIN))
        .bind(end.unwrap_or(i64::MAX))
        .bind(resource_type.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.r())
        .await
        .map_err(db_err("listing events"))?
        .iter()
        .map(rows::event)
        .collect()
    }
}
