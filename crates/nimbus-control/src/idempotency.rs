//! Idempotency keys: a client repeating a mutating request with the same `Idempotency-Key` gets
//! the first response again instead of a second effect. Scoped per API key, kept 24 hours.

use nimbus_core::auth::Actor;
use nimbus_core::Error;
use nimbus_store::{Claim, StoredResponse};

use crate::Control;

pub const RETENTION_MICROS: i64 = 24 * 3600 * 1_000_000;

pub async fn claim(c: &Control, actor: &Actor, key: &str, request_hash: &str) -> Result<Claim, Error> {
    let now = c.now();
    c.store().idempotency_claim(&actor.key_id, key, request_hash, now, now - RETENTION_MICROS).await
}

pub async fn complete(c: &Control, actor: &Actor, key: &str, resp: &StoredResponse) -> Result<(), Error> {
    c.store().idempotency_complete(&actor.key_id, key, resp).await
}

pub async fn release(c: &Control, actor: &Actor, key: &str) -> Result<(), Error> {
    c.store().idempotency_release(&actor.key_id, key).await
}
