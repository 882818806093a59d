//! Webhook subscriptions and their delivery log, as tenants see them: create (the secret is
//! returned once), list, get, delete, the deliveries of a webhook, and manual redelivery.
//!
//! Delivery itself (outbox → deliveries → HTTP) is `webhook_delivery`; nothing here waits on a
//! receiver. Settings live in the `[webhooks]` section of the configuration.

use std::net::IpAddr;

use nimbus_core::auth::{new_secret, Actor, Permission};
use nimbus_core::ids::{WebhookDeliveryId, WebhookId};
use nimbus_core::webhook::{self as wh, DeliveryState, Webhook, WebhookDelivery};
use nimbus_core::{ConflictReason, Error};
use nimbus_store::{Redeliver, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{emit, Control};

/// Prefix of generated secrets.
pub const SECRET_PREFIX: &str = "whsec_";
const MAX_URL_LEN: usize = 2048;

/// `[webhooks]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Delay before the first retry of a failed delivery; it doubles with each further failure.
    pub retry_initial_ms: u64,
    /// Longest delay between two attempts.
    pub retry_max_ms: u64,
    /// A delivery still failing this long after its event is given up (state `failed`).
    pub give_up_after_secs: u64,
    /// Per attempt: connect, send, and the receiver's answer.
    pub request_timeout_ms: u64,
    /// Attempts in flight at once, per server.
    pub max_concurrency: usize,
    /// Attempts in flight at once to one webhook, per server, so that one slow receiver cannot
    /// hold every slot.
    pub per_webhook_concurrency: usize,
    /// How often the dispatcher and the sender look for work committed by other replicas
    /// (commits of this process wake them at once).
    pub poll_interval_ms: u64,
    /// Lease of the one replica that fans events out.
    pub dispatch_lease_ms: u64,
    /// On PostgreSQL, an outbox sequence number not yet visible (a transaction still open) is
    /// waited for this long before it is skipped.
    pub gap_grace_ms: u64,
    pub max_per_org: i64,
    /// Allow receivers on loopback, private, link-local and other non-public addresses (see
    /// `egress::forbidden`), whether given literally, as `localhost`, or as a name that resolves
    /// to one. Off by default: a tenant must not make the server probe its own network.
    pub allow_private_targets: bool,
    /// The DNS resolver underneath the egress check; not read from the file. Tests install a
    /// `egress::FakeResolver` here so that a name can point at a loopback receiver while the
    /// real check still runs.
    #[serde(skip)]
    pub resolver: crate::egress::BaseResolver,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            retry_initial_ms: 5_000,
            retry_max_ms: 3_600_000,
            give_up_after_secs: 25 * 3600,
            request_timeout_ms: 10_000,
            max_concurrency: 64,
            per_webhook_concurrency: 8,
            poll_interval_ms: 250,
            dispatch_lease_ms: 5_000,
            gap_grace_ms: 60_000,
            max_per_org: 50,
            allow_private_targets: false,
            resolver: crate::egress::BaseResolver::default(),
        }
    }
}

impl WebhookSettings {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::invalid("config.webhooks", m.to_owned()));
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return bad("retry_initial_ms must be positive and at most retry_max_ms");
        }
        if self.request_timeout_ms == 0 || self.max_concurrency == 0 || self.per_webhook_concurrency == 0 {
            return bad("request_timeout_ms, max_concurrency and per_webhook_concurrency must be positive");
        }
        if self.poll_interval_ms == 0 || self.dispatch_lease_ms < 3 * self.poll_interval_ms {
            return bad("poll_interval_ms must be positive and dispatch_lease_ms at least three poll intervals");
        }
        Ok(())
    }
}

/// An absolute `http` or `https` URL with a host and no credentials. Unless `allow_private`, a
/// literal refused address or a `localhost` name is rejected here, early and with a clear
/// message; names are checked again, on the addresses they resolve to, at each delivery
/// (`egress`), since what a name resolves to can change after creation.
pub fn validate_url(s: &str, allow_private: bool) -> Result<(), Error> {
    let invalid = |m: &str| Err(Error::invalid("url", m.to_owned()));
    if s.len() > MAX_URL_LEN {
        return invalid("must be at most 2048 characters");
    }
    let Ok(u) = reqwest::Url::parse(s) else {
        return invalid("must be an absolute http:// or https:// URL");
    };
    if !matches!(u.scheme(), "http" | "https") {
        return invalid("scheme must be http or https");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return invalid("must not contain credentials; use the signature to authenticate deliveries");
    }
    if u.fragment().is_some() {
        return invalid("must not contain a fragment");
    }
    let host = match u.host_str() {
        None | Some("") => return invalid("must have a host"),
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(),
    };
    // The URL parser has normalized IP literals (IPv6 in brackets, IPv4 in dotted form).
    let private = match host.parse::<IpAddr>() {
        Ok(ip) => crate::egress::forbidden(ip).is_some(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if private && !allow_private {
        return invalid("must not point at a loopback, private, link-local or other non-public address");
    }
    Ok(())
}

pub struct WebhookSpec {
    pub url: String,
    pub events: Vec<String>,
    pub secret: Option<String>,
}

/// Creates a webhook; returns it with its secret (the one time the secret is shown).
pub async fn create(c: &Control, actor: &Actor, spec: WebhookSpec) -> Result<(Webhook, String), Error> {
    actor.require(Permission::Create)?;
    let settings = &c.config().webhooks;
    validate_url(&spec.url, settings.allow_private_targets)?;
    let events = wh::validate_patterns(&spec.events)?;
    let secret = match spec.secret {
        Some(s) => {
            wh::validate_secret(&s)?;
            s
        }
        None => new_secret(SECRET_PREFIX).plain,
    };
    let now = c.now();
    let hook = Webhook { id: WebhookId::generate(), org_id: actor.org_id.clone(), url: spec.url, events, created_at: now, updated_at: now };
    let mut tx = c.store().begin().await?;
    if Store::webhook_count_by_org_in(&mut tx, &actor.org_id).await? >= settings.max_per_org {
        return Err(Error::QuotaExceeded { message: format!("an organization may have at most {} webhooks", settings.max_per_org) });
    }
    Store::webhook_insert_in_txn(&mut tx, &hook, &secret).await?;
    emit(&mut tx, actor, "webhook.created", "webhook", hook.id.as_str(), json!({"url": hook.url, "events": hook.events}), now).await?;
    Store::commit(tx).await?;
    Ok((hook, secret))
}

pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<Webhook>, Error> {
    actor.require(Permission::Read)?;
    c.store().webhook_list_by_org(&actor.org_id).await
}

fn parse_id(id: &str) -> Result<WebhookId, Error> {
    WebhookId::parse(id).ok_or_else(|| Error::not_found(WebhookId::KIND, id))
}

/// A webhook of the caller's organization (another organization's is `NotFound`).
pub async fn get(c: &Control, actor: &Actor, id: &str) -> Result<Webhook, Error> {
    actor.require(Permission::Read)?;
    find(c, actor, id).await
}

/// The webhook, with no permission check: for functions that have checked theirs.
async fn find(c: &Control, actor: &Actor, id: &str) -> Result<Webhook, Error> {
    c.store().webhook_get(&actor.org_id, &parse_id(id)?).await?.ok_or_else(|| Error::not_found(WebhookId::KIND, id))
}

/// Deletes a webhook and its delivery log; returns what was deleted. Attempts in flight finish
/// but are not recorded.
pub async fn delete(c: &Control, actor: &Actor, id: &str) -> Result<Webhook, Error> {
    actor.require(Permission::Delete)?;
    let wid = parse_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hook = Store::webhook_delete_in_txn(&mut tx, &actor.org_id, &wid).await?.ok_or_else(|| Error::not_found(WebhookId::KIND, id))?;
    emit(&mut tx, actor, "webhook.deleted", "webhook", wid.as_str(), json!({"url": hook.url}), now).await?;
    Store::commit(tx).await?;
    Ok(hook)
}

/// Which deliveries of a webhook to list.
#[derive(Debug, Clone)]
pub struct DeliveryQuery {
    pub state: Option<String>,
    pub event_type: Option<String>,
    pub oldest_first: bool,
    pub limit: i64,
    pub offset: i64,
}

/// A page of a webhook's delivery log (newest first by default) and the total matching.
pub async fn deliveries(c: &Control, actor: &Actor, id: &str, q: &DeliveryQuery) -> Result<(Vec<WebhookDelivery>, i64), Error> {
    let hook = get(c, actor, id).await?;
    if let Some(s) = q.state.as_deref() {
        if DeliveryState::parse(s).is_none() {
            return Err(Error::invalid("state", "must be pending, delivered or failed"));
        }
    }
    c.store().webhook_delivery_page(&hook.id, q.state.as_deref(), q.event_type.as_deref(), q.oldest_first, q.limit, q.offset).await
}

/// Sends a delivery again (whatever its state), with retries as for a new one.
pub async fn redeliver(c: &Control, actor: &Actor, id: &str, delivery_id: &str) -> Result<WebhookDelivery, Error> {
    actor.require(Permission::Edit)?;
    let hook = find(c, actor, id).await?;
    let did = WebhookDeliveryId::parse(delivery_id).ok_or_else(|| Error::not_found(WebhookDeliveryId::KIND, delivery_id))?;
    let now = c.now();
    let give_up_at = now.saturating_add(i64::try_from(c.config().webhooks.give_up_after_secs).unwrap_or(i64::MAX / 2_000_000) * 1_000_000);
    let mut tx = c.store().begin().await?;
    match Store::webhook_delivery_redeliver_in_txn(&mut tx, &hook.id, &did, give_up_at, now).await? {
        Redeliver::Queued => {}
        Redeliver::NotFound => return Err(Error::not_found(WebhookDeliveryId::KIND, delivery_id)),
        Redeliver::InFlight => {
            return Err(Error::conflict(
                ConflictReason::InvalidState,
                "an attempt of this delivery is in flight; retry when it has finished",
            ))
        }
    }
    emit(&mut tx, actor, "webhook.redelivery_requested", "webhook", hook.id.as_str(), json!({"delivery_id": did.as_str()}), now).await?;
    Store::commit(tx).await?;
    crate::webhook_delivery::wake_senders();
    c.store().webhook_delivery_get(&hook.id, &did).await?.ok_or_else(|| Error::not_found(WebhookDeliveryId::KIND, delivery_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for ok in ["https://example.com/hook", "http://hooks.example.com:8080/a?b=c", "https://93.184.216.34/x"] {
            assert!(validate_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "http://",
            "file:///etc/passwd",
        ] {
            assert!(validate_url(bad, true).is_err(), "{bad}");
        }
        for private in [
            "http://127.0.0.1:9000/",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://100.64.0.1/",
            "http://[fd00:ec2::254]/",
            "http://[64:ff9b::7f00:1]/",
            "http://224.0.0.1/",
            "http://0.0.0.0/",
            "http://2130706433/",
        ] {
            assert!(validate_url(private, false).is_err(), "{private}");
            assert!(validate_url(private, true).is_ok(), "{private} allowed when configured");
        }
        assert!(validate_url(&format!("https://example.com/{}", "a".repeat(2100)), false).is_err());
    }

    #[test]
    fn settings_defaults_validate() {
        let s = WebhookSettings::default();
        s.validate().expect("defaults are valid");
        assert!(WebhookSettings { retry_max_ms: 1, ..WebhookSettings::default() }.validate().is_err());
        assert!(WebhookSettings { max_concurrency: 0, ..WebhookSettings::default() }.validate().is_err());
        // Retries keep going for at least 24 hours.
        assert!(s.give_up_after_secs >= 24 * 3600);
    }
}
