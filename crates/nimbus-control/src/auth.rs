//! Authentication of tenant API keys (and of console sessions, which act as their key).
//!
//! Keys are looked up by the SHA-256 of the presented secret. A short in-process cache (2 s) keeps
//! hot paths off the database; revocation through this process clears it at once, and another
//! replica's revocation takes effect within the TTL.
//!
//! A key of a service account authenticates with the service account's permissions as they are
//! when the key is looked up (the store reads them through the account). So a change to a
//! service account's permissions, or its deletion, applies to its keys at once on the replica
//! that made it (which clears this cache) and within [`CACHE_TTL`] on every other replica.

use std::collections::HashMap;
use std::sync::Mutex;

use nimbus_core::auth::{hash_secret, Actor};
use nimbus_core::Error;

use crate::Control;

/// How long an authenticated key is trusted without reading the store again: the most a
/// revocation, or a change of a service account's permissions, made through another replica
/// takes to apply here.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
const TTL_MICROS: i64 = CACHE_TTL.as_micros() as i64;
const MAX_ENTRIES: usize = 10_000;

/// The actor, when it was cached, and when its key expires.
type Cached = (Actor, i64, Option<i64>);

#[derive(Default)]
pub(crate) struct AuthCache {
    map: Mutex<HashMap<String, Cached>>,
}

impl AuthCache {
    fn get(&self, hash: &str, now: i64) -> Option<Actor> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(hash).filter(|(_, at, exp)| now - at < TTL_MICROS && exp.is_none_or(|e| now < e)).map(|(a, _, _)| a.clone())
    }

    pub(crate) fn put(&self, hash: String, actor: Actor, now: i64, expires_at: Option<i64>) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, (_, at, _)| now - *at < TTL_MICROS);
        }
        m.insert(hash, (actor, now, expires_at));
    }

    pub(crate) fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The actor for a presented API key secret, or `Unauthenticated`.
pub async fn authenticate(c: &Control, secret: &str) -> Result<Actor, Error> {
    if secret.is_empty() || secret.len() > 256 {
        return Err(Error::Unauthenticated);
    }
    let hash = hash_secret(secret);
    let now = c.now();
    if let Some(a) = c.inner.auth_cache.get(&hash, now) {
        return Ok(a);
    }
    // A console session acts as its key (`console::session` caches it here, as a key is).
    if secret.starts_with(crate::console::SESSION_PREFIX) {
        return crate::console::session(c, secret).await?.actor.ok_or(Error::Unauthenticated);
    }
    let key = c.store().api_key_by_hash(&hash).await?.ok_or(Error::Unauthenticated)?;
    if key.expires_at.is_some_and(|e| e <= now) {
        return Err(Error::Unauthenticated);
    }
    let expires_at = key.expires_at;
    let actor = Actor::of_key(key);
    c.inner.auth_cache.put(hash, actor.clone(), now, expires_at);
    Ok(actor)
}
