//! Webhooks in the domain: the public event types a tenant can subscribe to, how outbox kinds map
//! onto them, subscription patterns, the signature, the retry schedule and the records of the
//! delivery log. Pure functions only; the store keeps the rows and `nimbus-control` runs the
//! dispatcher and the sender.
//!
//! ```text
//! delivery state:   pending ──2xx──▶ delivered
//!                      │  ▲
//!     non-2xx, timeout │  │ retry after backoff (while before give_up_at)
//!                      ▼  │
//!                   (pending, next_attempt_at later) ──past give_up_at──▶ failed
//!   manual redelivery: delivered | failed | pending ──▶ pending (due now, new give-up time)
//! ```

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::error::Error;
use crate::ids::{EventId, OrgId, WebhookDeliveryId, WebhookId};

/// Every event type a webhook can receive, in documentation order.
pub const EVENT_TYPES: &[&str] = &[
    "instance.created",
    "instance.started",
    "instance.stopped",
    "instance.restarted",
    "instance.terminated",
    "instance.failed",
    "volume.created",
    "volume.attached",
    "volume.detached",
    "volume.resized",
    "volume.deleted",
    "snapshot.created",
    "snapshot.completed",
    "snapshot.failed",
    "snapshot.deleted",
    "billing.spend_limit_reached",
];

/// Resource prefixes that may be subscribed to with a `prefix.*` wildcard.
const RESOURCES: &[&str] = &["instance", "volume", "snapshot", "billing"];

/// Most patterns one webhook may list.
pub const MAX_PATTERNS: usize = 50;

/// Secrets chosen by the tenant must be at least this long.
pub const MIN_SECRET_LEN: usize = 16;
pub const MAX_SECRET_LEN: usize = 256;

/// The public type of an outbox event, or `None` when webhooks do not carry it (requests such as
/// `instance.stop_requested`, host events, SSH keys, …).
///
/// Instance kinds are lifecycle transitions (`instance.<new state>`, with the old state in the
/// payload's `from`): `active` is `started` when it ends a boot or a start and `restarted` when it
/// ends a restart; an instance coming back from `unhealthy` is not announced again. `unhealthy`
/// is `failed`. Volume and snapshot kinds are already public and pass through unchanged.
pub fn public_event_type(kind: &str, payload: &Value) -> Option<&'static str> {
    let from = payload.get("from").and_then(Value::as_str);
    let t = match kind {
        "instance.created" => "instance.created",
        "instance.active" => match from {
            Some("booting" | "starting") => "instance.started",
            Some("restarting") => "instance.restarted",
            _ => return None,
        },
        "instance.stopped" => "instance.stopped",
        "instance.terminated" => "instance.terminated",
        "instance.unhealthy" => "instance.failed",
        k if k.starts_with("volume.") || k.starts_with("snapshot.") || k.starts_with("billing.") => {
            return EVENT_TYPES.iter().copied().find(|t| *t == k)
        }
        _ => return None,
    };
    Some(t)
}

/// The native status of an instance right after an event of type `t` (native names: `running`
/// for active).
pub fn instance_status_after(t: &str) -> Option<&'static str> {
    Some(match t {
        "instance.created" => "booting",
        "instance.started" | "instance.restarted" => "running",
        "instance.stopped" => "stopped",
        "instance.terminated" => "terminated",
        "instance.failed" => "unhealthy",
        _ => return None,
    })
}

/// Checks a webhook's `events` list: each entry is an event type, `instance.*`-style wildcard or
/// `*`. Returns the list without duplicates, in the order given.
pub fn validate_patterns(events: &[String]) -> Result<Vec<String>, Error> {
    if events.is_empty() {
        return Err(Error::invalid("events", "at least one event type is required"));
    }
    if events.len() > MAX_PATTERNS {
        return Err(Error::invalid("events", format!("at most {MAX_PATTERNS} entries")));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let ok = e == "*" || EVENT_TYPES.contains(&e.as_str()) || e.strip_suffix(".*").is_some_and(|r| RESOURCES.contains(&r));
        if !ok {
            return Err(Error::invalid("events", format!("unknown event type {e:?}")));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// What `validate_patterns` accepts, for error details.
pub fn allowed_patterns() -> Vec<String> {
    let mut v = vec!["*".to_owned()];
    v.extend(RESOURCES.iter().map(|r| format!("{r}.*")));
    v.extend(EVENT_TYPES.iter().map(|t| (*t).to_owned()));
    v
}

pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

pub fn matches_any(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, event_type))
}

/// A tenant-chosen secret: 16 to 256 printable ASCII characters.
pub fn validate_secret(s: &str) -> Result<(), Error> {
    if s.len() < MIN_SECRET_LEN || s.len() > MAX_SECRET_LEN {
        return Err(Error::invalid("secret", format!("must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters")));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid("secret", "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// `X-Nimbus-Signature`: `sha256=` and the lowercase hex HMAC-SHA256, keyed with the secret, of
/// `"<timestamp>.<raw body>"`, where `timestamp` is the `X-Nimbus-Timestamp` header (Unix
/// seconds). Signing the timestamp lets receivers refuse replays of old deliveries.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delay before retry number `failures` (1 after the first failed attempt): `initial` doubling
/// each time, never above `cap`. Milliseconds.
pub fn backoff_ms(failures: u32, initial_ms: u64, cap_ms: u64) -> u64 {
    let shift = failures.saturating_sub(1).min(40);
    initial_ms.saturating_mul(1u64 << shift).min(cap_ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Failed].into_iter().find(|d| d.as_str() == s)
    }
}

/// A subscription (its secret is never part of this record).
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAttempt {
    pub attempt: i64,
    pub started_at: i64,
    pub duration_us: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

/// One event's delivery to one webhook, with its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    pub id: WebhookDeliveryId,
    pub webhook_id: WebhookId,
    pub event_id: EventId,
    pub event_type: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only). While an attempt is in flight this is the
    /// end of its lease: the time another replica may retry if this one died.
    pub next_attempt_at: Option<i64>,
    pub give_up_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
    pub history: Vec<WebhookAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outbox_kinds_map_to_public_types() {
        let none = json!({});
        let cases: &[(&str, Value, Option<&str>)] = &[
            ("instance.created", none.clone(), Some("instance.created")),
            ("instance.active", json!({"from": "booting"}), Some("instance.started")),
            ("instance.active", json!({"from": "starting"}), Some("instance.started")),
            ("instance.active", json!({"from": "restarting"}), Some("instance.restarted")),
            ("instance.active", json!({"from": "unhealthy"}), None),
            ("instance.active", none.clone(), None),
            ("instance.stopped", json!({"from": "stopping"}), Some("instance.stopped")),
            ("instance.terminated", none.clone(), Some("instance.terminated")),
            ("instance.unhealthy", json!({"reason": "host stopped reporting"}), Some("instance.failed")),
            ("instance.stop_requested", none.clone(), None),
            ("instance.restart_requested", none.clone(), None),
            ("instance.updated", none.clone(), None),
            ("volume.created", none.clone(), Some("volume.created")),
            ("volume.resized", none.clone(), Some("volume.resized")),
            ("volume.attach_requested", none.clone(), None),
            ("snapshot.completed", none.clone(), Some("snapshot.completed")),
            ("snapshot.failed", none.clone(), Some("snapshot.failed")),
            ("ssh_key.created", none.clone(), None),
            ("host.down", none.clone(), None),
            ("webhook.created", none, None),
        ];
        for (kind, payload, want) in cases {
            assert_eq!(public_event_type(kind, payload), *want, "{kind} {payload}");
        }
        for t in EVENT_TYPES {
            if t.starts_with("instance.") {
                assert!(instance_status_after(t).is_some(), "{t}");
            }
        }
    }

    #[test]
    fn patterns_validate_dedupe_and_match() {
        let v = |l: &[&str]| validate_patterns(&l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(v(&["instance.*", "volume.created", "instance.*"]).expect("valid"), vec!["instance.*", "volume.created"]);
        assert!(v(&["*"]).is_ok());
        for bad in [&[][..], &["instance.exploded"], &["foo.*"], &["instance"], &["**"], &["*.created"]] {
            assert!(v(bad).is_err(), "{bad:?}");
        }
        let p = vec!["instance.*".to_owned(), "snapshot.failed".to_owned()];
        assert!(matches_any(&p, "instance.started"));
        assert!(matches_any(&p, "snapshot.failed"));
        assert!(!matches_any(&p, "snapshot.created"));
        assert!(!matches_any(&p, "volume.created"));
        assert!(matches_any(&["*".to_owned()], "volume.deleted"));
        assert!(allowed_patterns().iter().all(|a| v(&[a.as_str()]).is_ok()));
    }

    #[test]
    fn secrets_need_sixteen_printable_characters() {
        assert!(validate_secret("0123456789abcdef").is_ok());
        assert!(validate_secret("short").is_err());
        assert!(validate_secret("0123456789abcde f").is_err());
        assert!(validate_secret(&"x".repeat(257)).is_err());
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let sig = sign("whsec_test_secret_0001", 1_700_000_000, br#"{"id":"e1"}"#);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert_eq!(sig, sign("whsec_test_secret_0001", 1_700_000_000, br#"{"id":"e1"}"#));
        assert_ne!(sig, sign("whsec_test_secret_0001", 1_700_000_001, br#"{"id":"e1"}"#), "the timestamp is signed");
        assert_ne!(sig, sign("whsec_test_secret_0002", 1_700_000_000, br#"{"id":"e1"}"#));
        // hmac.new(b"key", b"1.x", hashlib.sha256).hexdigest() in Python.
        assert_eq!(sign("key", 1, b"x"), "sha256=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec");
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let d: Vec<u64> = (1..=6).map(|n| backoff_ms(n, 5_000, 60_000)).collect();
        assert_eq!(d, vec![5_000, 10_000, 20_000, 40_000, 60_000, 60_000]);
        assert_eq!(backoff_ms(200, 5_000, 3_600_000), 3_600_000);
        assert_eq!(backoff_ms(0, 5, 100), 5);
    }
}
