//! Console sign-in: an API key (or an operator's one-use login link) exchanged for a session
//! whose secret lives in an HttpOnly cookie. A tenant session acts exactly as its key does: the
//! dialects authenticate the session secret through [`crate::auth::authenticate`], which
//! resolves it to the key's actor with the key's permissions as they are now (a key revoked or
//! narrowed takes its sessions with it). Sessions last [`SESSION_MICROS`] at most, never past
//! their key's expiry, and end at sign-out.
//!
//! A request with a session cookie is resolved here once, from the database, by the API's
//! session layer; the actor then goes into the API-key cache, so the same request's extractors
//! find it there instead of reading the session again. A session secret presented as a bearer
//! token is therefore trusted for as long as a key is ([`crate::auth::CACHE_TTL`]) after a
//! sign-out or revocation made through another replica.

use nimbus_core::auth::{hash_secret, new_secret, Actor};
use nimbus_core::Error;
use nimbus_store::{ConsoleSession, NewEvent, Store};

use crate::Control;

/// Session secrets start so; the rest is random (as API keys').
pub const SESSION_PREFIX: &str = "nbs_";
/// Operator login links' secrets start so.
pub const LINK_PREFIX: &str = "nbl_";
/// The longest a console session lasts: a working day.
pub const SESSION_MICROS: i64 = 12 * 3600 * 1_000_000;

/// A session just made: the cookie's secret (shown once, to the browser) and the CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// A live session: whose it is, and the token its mutating requests must echo.
#[derive(Debug, Clone)]
pub struct Session {
    /// `None` for an operator session.
    pub actor: Option<Actor>,
    pub csrf: String,
    pub expires_at: i64,
}

impl Session {
    pub fn is_operator(&self) -> bool {
        self.actor.is_none()
    }
}

async fn start(c: &Control, actor: Option<&Actor>, key_expiry: Option<i64>) -> Result<NewSession, Error> {
    let now = c.now();
    let expires_at = key_expiry.map_or(now + SESSION_MICROS, |e| e.min(now + SESSION_MICROS));
    let secret = new_secret(SESSION_PREFIX);
    let csrf = nimbus_core::ids::random_hex_id();
    let row = ConsoleSession { api_key_id: actor.map(|a| a.key_id.clone()), operator: actor.is_none(), csrf: csrf.clone(), expires_at };
    let mut tx = c.store().begin().await?;
    Store::console_session_insert_in_txn(&mut tx, &secret.hash, &row, now).await?;
    match actor {
        Some(a) => crate::emit(&mut tx, a, "console.signed_in", "api_key", a.key_id.as_str(), serde_json::json!({}), now).await?,
        None => {
            let e = NewEvent {
                org_id: None,
                kind: "console.operator_signed_in",
                resource_type: "console",
                resource_id: "operator",
                actor_key_id: None,
                payload: serde_json::json!({}),
                now,
            };
            Store::event_append_in_txn(&mut tx, e).await?
        }
    }
    Store::commit(tx).await?;
    Ok(NewSession { secret: secret.plain, csrf, expires_at })
}

/// Signs in with an API key (never with another session's secret).
pub async fn sign_in(c: &Control, api_key: &str) -> Result<(NewSession, Actor), Error> {
    if api_key.starts_with(SESSION_PREFIX) || api_key.starts_with(LINK_PREFIX) {
        return Err(Error::Unauthenticated);
    }
    let actor = crate::auth::authenticate(c, api_key).await?;
    let expiry = c.store().api_key_live_by_id(&actor.key_id).await?.ok_or(Error::Unauthenticated)?.expires_at;
    let s = start(c, Some(&actor), expiry).await?;
    Ok((s, actor))
}

/// The live session behind a cookie's secret.
pub async fn session(c: &Control, secret: &str) -> Result<Session, Error> {
    if !secret.starts_with(SESSION_PREFIX) || secret.len() > 256 {
        return Err(Error::Unauthenticated);
    }
    let now = c.now();
    let hash = hash_secret(secret);
    let row = c.store().console_session_get(&hash, now).await?.ok_or(Error::Unauthenticated)?;
    let actor = match &row.api_key_id {
        Some(id) => {
            let key = c.store().api_key_live_by_id(id).await?.ok_or(Error::Unauthenticated)?;
            if key.expires_at.is_some_and(|e| e <= now) {
                return Err(Error::Unauthenticated);
            }
            let actor = Actor::of_key(key);
            c.inner.auth_cache.put(hash, actor.clone(), now, Some(row.expires_at));
            Some(actor)
        }
        None if row.operator => None,
        None => return Err(Error::Unauthenticated),
    };
    Ok(Session { actor, csrf: row.csrf, expires_at: row.expires_at })
}

/// Ends the session (idempotent).
pub async fn sign_out(c: &Control, secret: &str) -> Result<(), Error> {
    c.store().console_session_delete(&hash_secret(secret)).await?;
    // As a revocation does: nothing this process cached still lets the session in.
    c.inner.auth_cache.clear();
    Ok(())
}

/// A one-use operator login link's secret, valid for `ttl_micros` (`nimbus admin console-link`).
pub async fn operator_link_create(c: &Control, ttl_micros: i64) -> Result<String, Error> {
    let secret = new_secret(LINK_PREFIX);
    c.store().console_link_insert(&secret.hash, c.now().saturating_add(ttl_micros)).await?;
    Ok(secret.plain)
}

/// Uses an operator login link up and starts an operator session.
pub async fn operator_sign_in(c: &Control, link: &str) -> Result<NewSession, Error> {
    if !link.starts_with(LINK_PREFIX) || link.len() > 256 || !c.store().console_link_take(&hash_secret(link), c.now()).await? {
        return Err(Error::Unauthenticated);
    }
    start(c, None, None).await
}
