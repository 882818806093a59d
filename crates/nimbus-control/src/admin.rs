//! Operator actions: organizations, API keys, host tokens (limited uses, an expiry) and host
//! re-enrolment. Reached from the `nimbus admin` CLI, never from a tenant API key.

use nimbus_core::auth::{hash_secret, new_secret, Permissions};
use nimbus_core::firewall::default_global_rules;
use nimbus_core::ids::*;
use nimbus_core::model::{ApiKey, Org};
use nimbus_core::Error;
use nimbus_store::{NewEvent, NewHostToken, Store};
use serde_json::json;

use crate::Control;

pub const API_KEY_PREFIX: &str = "nmb_";
pub const HOST_TOKEN_PREFIX: &str = "nmbh_";

fn check_org_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("name", "must be 1 to 64 letters, digits, '-', '_' or '.'"))
    }
}

pub async fn org_create(c: &Control, name: &str, email: Option<&str>) -> Result<Org, Error> {
    check_org_name(name)?;
    let email = email.map(str::to_owned).unwrap_or_else(|| format!("admin@{name}.nimbus.local"));
    if email.len() > 254 || !email.contains('@') {
        return Err(Error::invalid("email", "must be an email address"));
    }
    let org = Org {
        id: OrgId::generate(),
        name: name.to_owned(),
        email,
        plan: "professional".to_owned(),
        created_at: c.now(),
        spend_limit_cents: None,
        spend_limit_action: "notify".to_owned(),
        spend_limit_reached: None,
    };
    let mut tx = c.store().begin().await?;
    Store::org_insert_in_txn(&mut tx, &org, &default_global_rules()).await?;
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: Some(&org.id),
            kind: "organization.created",
            resource_type: "organization",
            resource_id: org.id.as_str(),
            actor_key_id: None,
            payload: json!({"name": org.name}),
            now: org.created_at,
        },
    )
    .await?;
    Store::commit(tx).await?;
    Ok(org)
}

/// Finds an org by id or by name.
pub async fn org_find(c: &Control, name_or_id: &str) -> Result<Org, Error> {
    if let Some(id) = OrgId::parse(name_or_id) {
        if let Some(o) = c.store().org_get(&id).await? {
            return Ok(o);
        }
    }
    c.store().org_get_by_name(name_or_id).await?.ok_or_else(|| Error::not_found("organization", name_or_id))
}

/// Creates an API key and returns it with its secret, which is not stored and cannot be shown
/// again. `secret` lets `nimbus dev --api-key` choose the exact key.
pub async fn api_key_create(
    c: &Control,
    org: &Org,
    name: &str,
    permissions: Permissions,
    secret: Option<&str>,
) -> Result<(ApiKey, String), Error> {
    insert_api_key(c, &org.id, &org.plan, NewKey { name, permissions, secret, ..NewKey::default() }).await
}

/// What a new key is: its name and permissions, and optionally its exact secret (operators
/// only), expiry, the key that creates it, and the service account it belongs to.
#[derive(Default)]
pub(crate) struct NewKey<'a> {
    pub name: &'a str,
    pub permissions: Permissions,
    pub secret: Option<&'a str>,
    pub expires_at: Option<i64>,
    pub created_by: Option<&'a ApiKeyId>,
    /// The key acts with this service account's permissions (read through the account when it
    /// authenticates; `permissions` records what they were at creation). The account must be
    /// live when the key is inserted: this is checked in the inserting transaction, so a key
    /// never outlives a concurrent deletion of its account.
    pub service_account: Option<&'a ServiceAccountId>,
    /// The most live keys the org may hold, checked in the inserting transaction (tenants'
    /// creations; `None` for operators').
    pub max_live_keys: Option<i64>,
}

/// The one way a key is minted, for operators (above), tenants (`account`) and service
/// accounts (`service_accounts`).
pub(crate) async fn insert_api_key(c: &Control, org_id: &OrgId, plan: &str, k: NewKey<'_>) -> Result<(ApiKey, String), Error> {
    let NewKey { name, permissions, secret, expires_at, created_by, service_account, max_live_keys } = k;
    if name.is_empty() || name.chars().count() > 64 {
        return Err(Error::invalid("name", "must be 1 to 64 characters"));
    }
    let (plain, hash, prefix) = match secret {
        Some(s) => {
            if s.len() < 16 || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) || s.contains(':') {
                return Err(Error::invalid("api-key", "must be 16 to 256 printable characters without ':'"));
            }
            (s.to_owned(), hash_secret(s), s.chars().take(12).collect())
        }
        None => {
            let s = new_secret(API_KEY_PREFIX);
            (s.plain, s.hash, s.prefix)
        }
    };
    let key = ApiKey {
        id: ApiKeyId::generate(),
        org_id: org_id.clone(),
        plan: plan.to_owned(),
        name: name.to_owned(),
        prefix,
        permissions,
        created_at: c.now(),
        revoked_at: None,
        expires_at,
        created_by: created_by.cloned(),
        service_account_id: service_account.cloned(),
    };
    let mut tx = c.store().begin().await?;
    if let Some(max) = max_live_keys {
        Store::org_lock_in_txn(&mut tx, org_id).await?;
        if Store::api_key_count_live_by_org_in(&mut tx, org_id, key.created_at).await? >= max {
            return Err(Error::QuotaExceeded {
                message: format!("an organization may have at most {max} live API keys; revoke one first"),
            });
        }
    }
    if let Some(sa) = service_account {
        if Store::service_account_get_in(&mut tx, org_id, sa).await?.is_none() {
            return Err(Error::not_found(ServiceAccountId::KIND, sa.as_str()));
        }
    }
    Store::api_key_insert_in_txn(&mut tx, &key, &hash).await?;
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: Some(org_id),
            kind: "api_key.created",
            resource_type: "api_key",
            resource_id: key.id.as_str(),
            actor_key_id: created_by,
            payload: json!({"name": key.name, "prefix": key.prefix, "permissions": permissions.names(), "expires_at": expires_at,
                "service_account_id": service_account.map(ServiceAccountId::as_str)}),
            now: key.created_at,
        },
    )
    .await?;
    Store::commit(tx).await?;
    Ok((key, plain))
}

/// Whether a key with this exact secret already exists (for idempotent `nimbus dev --api-key`).
pub async fn api_key_exists(c: &Control, secret: &str) -> Result<bool, Error> {
    Ok(c.store().api_key_by_hash(&hash_secret(secret)).await?.is_some())
}

pub async fn api_key_revoke(c: &Control, org: &Org, id: &str) -> Result<(), Error> {
    let id = ApiKeyId::parse(id).ok_or_else(|| Error::not_found("api key", id))?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    if !Store::api_key_revoke_in_txn(&mut tx, &org.id, &id, now).await? {
        return Err(Error::not_found("api key", id.as_str()));
    }
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: Some(&org.id),
            kind: "api_key.revoked",
            resource_type: "api_key",
            resource_id: id.as_str(),
            actor_key_id: None,
            payload: json!({}),
            now,
        },
    )
    .await?;
    Store::commit(tx).await?;
    c.inner.auth_cache.clear();
    Ok(())
}

/// What a host token allows: `uses` registrations of new hosts within `ttl_secs` of its
/// creation. The defaults (one use, one hour) fit "enrol this machine now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTokenLimits {
    pub uses: i64,
    pub ttl_secs: i64,
}

impl Default for HostTokenLimits {
    fn default() -> Self {
        HostTokenLimits { uses: 1, ttl_secs: 3600 }
    }
}

const HOST_TOKEN_MAX_USES: i64 = 10_000;
const HOST_TOKEN_MAX_TTL_SECS: i64 = 365 * 86_400;

/// A minted host token; `secret` is shown once and stored hashed.
#[derive(Debug, Clone)]
pub struct MintedHostToken {
    pub id: HostTokenId,
    pub secret: String,
    pub region: String,
    pub uses: i64,
    /// µs since the Unix epoch.
    pub expires_at: i64,
    /// For a re-enrolment token, the host it takes over.
    pub host_id: Option<HostId>,
}

/// Creates a host registration token for a region with the default limits (one use, one hour);
/// returns the secret (shown once).
pub async fn host_token_create(c: &Control, region: &str) -> Result<String, Error> {
    Ok(host_token_create_with(c, region, HostTokenLimits::default()).await?.secret)
}

/// Creates a host registration token for a region with these limits.
pub async fn host_token_create_with(c: &Control, region: &str, limits: HostTokenLimits) -> Result<MintedHostToken, Error> {
    c.require_region("region", region)?;
    mint_host_token(c, region, limits, None).await
}

async fn mint_host_token(c: &Control, region: &str, limits: HostTokenLimits, host: Option<&HostId>) -> Result<MintedHostToken, Error> {
    let mut tx = c.store().begin().await?;
    let t = mint_host_token_in_txn(c, &mut tx, region, limits, host).await?;
    Store::commit(tx).await?;
    Ok(t)
}

async fn mint_host_token_in_txn(
    c: &Control,
    tx: &mut nimbus_store::Conn,
    region: &str,
    limits: HostTokenLimits,
    host: Option<&HostId>,
) -> Result<MintedHostToken, Error> {
    if !(1..=HOST_TOKEN_MAX_USES).contains(&limits.uses) {
        return Err(Error::invalid("uses", format!("must be 1 to {HOST_TOKEN_MAX_USES}")));
    }
    if !(1..=HOST_TOKEN_MAX_TTL_SECS).contains(&limits.ttl_secs) {
        return Err(Error::invalid("ttl", "must be between 1 second and 365 days"));
    }
    let s = new_secret(HOST_TOKEN_PREFIX);
    let id = HostTokenId::generate();
    let now = c.now();
    let expires_at = now.saturating_add(limits.ttl_secs.saturating_mul(1_000_000));
    let t = NewHostToken { id: &id, region, prefix: &s.prefix, secret_hash: &s.hash, created_at: now, uses: limits.uses, expires_at, host };
    Store::host_token_insert_in_txn(tx, &t).await?;
    Ok(MintedHostToken { id, secret: s.plain, region: region.to_owned(), uses: limits.uses, expires_at, host_id: host.cloned() })
}

/// Re-enrols a host whose agent lost its secret (or whose secret may have leaked): revokes the
/// host's current secret, so its agent stops being answered, and mints a one-use token that
/// takes over exactly this host (whatever machine id its agent presents, as long as no other
/// host has it). The host keeps its id, capacity and instances. `host` is a host id, or a name
/// that exactly one host has.
pub async fn host_reenrol(c: &Control, host: &str, ttl_secs: i64) -> Result<MintedHostToken, Error> {
    let h = match HostId::parse(host) {
        Some(id) => c.store().host_get(&id).await?,
        None => None,
    };
    let h = match h {
        Some(h) => h,
        None => {
            let mut named: Vec<_> = c.store().host_list(None, false).await?.into_iter().filter(|h| h.name == host).collect();
            match (named.pop(), named.is_empty()) {
                (Some(h), true) => h,
                (Some(_), false) => return Err(Error::invalid("host", format!("several hosts are named {host:?}; give the host id"))),
                (None, _) => return Err(Error::not_found("host", host)),
            }
        }
    };
    let unusable = new_secret(crate::agents::HOST_SECRET_PREFIX).hash;
    let mut tx = c.store().begin().await?;
    if !Store::host_revoke_secret_in_txn(&mut tx, &h.id, &unusable).await? {
        return Err(Error::not_found("host", h.id.as_str()));
    }
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: None,
            kind: "host.reenrolment_started",
            resource_type: "host",
            resource_id: h.id.as_str(),
            actor_key_id: None,
            payload: json!({"name": h.name, "region": h.region}),
            now: c.now(),
        },
    )
    .await?;
    let t = mint_host_token_in_txn(c, &mut tx, &h.region, HostTokenLimits { uses: 1, ttl_secs }, Some(&h.id)).await?;
    Store::commit(tx).await?;
    Ok(t)
}

/// Parses a token lifetime: a number with a unit, `s`, `m`, `h` or `d` (`90s`, `30m`, `24h`,
/// `7d`); a bare number is seconds. Returns seconds.
pub fn parse_ttl(s: &str) -> Result<i64, Error> {
    let bad = || Error::invalid("ttl", format!("{s:?} is not a duration like 30m, 24h or 7d"));
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, ch)| !ch.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Sets an org's rate-limit plan (one of the configured plans).
pub async fn org_set_plan(c: &Control, org: &Org, plan: &str) -> Result<(), Error> {
    if !c.config().rate_limits.plans.contains_key(plan) {
        let known: Vec<&String> = c.config().rate_limits.plans.keys().collect();
        return Err(Error::invalid("plan", format!("{plan:?} is not a configured plan ({known:?})")));
    }
    let mut tx = c.store().begin().await?;
    Store::org_set_plan_in_txn(&mut tx, &org.id, plan).await?;
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: Some(&org.id),
            kind: "organization.plan_changed",
            resource_type: "organization",
            resource_id: org.id.as_str(),
            actor_key_id: None,
            payload: json!({"plan": plan}),
            now: c.now(),
        },
    )
    .await?;
    Store::commit(tx).await?;
    c.inner.auth_cache.clear();
    Ok(())
}

/// Grants `org` a credit (US cents): an append-only ledger entry that lowers its balance.
pub async fn org_credit(c: &Control, org: &Org, cents: i64, reason: &str) -> Result<nimbus_store::Credit, Error> {
    if !(1..=100_000_000_000).contains(&cents) {
        return Err(Error::invalid("cents", "must be between 1 and 100,000,000,000"));
    }
    if reason.trim().is_empty() || reason.chars().count() > 200 {
        return Err(Error::invalid("reason", "must be 1 to 200 characters"));
    }
    let now = c.now();
    let credit = nimbus_store::Credit {
        id: nimbus_core::ids::random_hex_id(),
        amount_micros: nimbus_core::money::Micros::from_cents(cents).0,
        reason: reason.trim().to_owned(),
        created_at: now,
    };
    let mut tx = c.store().begin().await?;
    Store::credit_insert_in_txn(&mut tx, &org.id, &credit).await?;
    Store::event_append_in_txn(
        &mut tx,
        NewEvent {
            org_id: Some(&org.id),
            kind: "billing.credit_granted",
            resource_type: "organization",
            resource_id: org.id.as_str(),
            actor_key_id: None,
            payload: json!({"amount_micros": credit.amount_micros, "reason": credit.reason}),
            now,
        },
    )
    .await?;
    Store::commit(tx).await?;
    Ok(credit)
}

/// Every registered host with its capacity and GPUs (`nimbus admin hosts`, the operator console).
pub async fn hosts(c: &Control) -> Result<Vec<nimbus_core::model::Host>, Error> {
    c.store().host_list(None, false).await
}

/// Every organization with its instances that hold capacity now, against the per-org quota.
pub async fn orgs_with_usage(c: &Control) -> Result<Vec<(Org, i64)>, Error> {
    let live = c.store().instance_count_live_per_org().await?;
    Ok(c.store()
        .org_list()
        .await?
        .into_iter()
        .map(|o| {
            let n = live.get(&o.id).copied().unwrap_or(0);
            (o, n)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("24h").unwrap(), 86_400);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("45").unwrap(), 45);
        for bad in ["", "h", "1w", "-1h", "1.5h", "1h30m", "99999999999999999999d", "9223372036854775807d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
