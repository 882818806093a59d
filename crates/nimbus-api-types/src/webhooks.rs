//! Native API (`/v1/webhooks`) wire types: subscriptions and their delivery log. The envelope and
//! error shapes are those of `native`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// Where deliveries are POSTed: an absolute `http://` or `https://` URL.
    pub url: String,
    /// Event types (`instance.created`, …), resource wildcards (`instance.*`, `volume.*`,
    /// `snapshot.*`) or `*` for all. At least one.
    pub events: Vec<String>,
    /// Key of the HMAC signature, 16 to 256 printable characters. Generated (and returned once)
    /// when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// Only in the response that created the webhook; never returned again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookAttempt {
    /// 1 for the first attempt.
    pub attempt: i64,
    pub started_at: String,
    pub duration_ms: f64,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why the attempt failed (non-2xx answer, timeout, connection error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending` (will be attempted at `next_attempt_at`), `delivered` (a 2xx answer) or `failed`
    /// (retries exhausted).
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When pending: the next attempt (while an attempt is in flight, the latest time it is
    /// retried should this server die).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Retries stop after this time.
    pub give_up_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Every attempt, oldest first.
    pub history: Vec<WebhookAttempt>,
}
