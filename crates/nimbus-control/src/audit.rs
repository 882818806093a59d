//! The audit log: the org's outbox events, oldest first, paged by an opaque token (the last
//! sequence number seen), filtered by time window and resource type.

use base64::Engine as _;
use nimbus_core::auth::{Actor, Permission};
use nimbus_core::model::Event;
use nimbus_core::Error;

use crate::Control;

pub const PAGE_SIZE: i64 = 100;

pub struct AuditQuery<'a> {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub page_token: Option<&'a str>,
    pub resource_type: Option<&'a str>,
}

fn decode_token(t: &str) -> Result<i64, Error> {
    let bad = || Error::invalid("page_token", "is not a page token returned by this API");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    s.strip_prefix("seq:").and_then(|n| n.parse::<i64>().ok()).filter(|n| *n >= 0).ok_or_else(bad)
}

fn encode_token(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

/// A page of events and the token for the next page (`None` at the end).
pub async fn list(c: &Control, actor: &Actor, q: AuditQuery<'_>) -> Result<(Vec<Event>, Option<String>), Error> {
    actor.require(Permission::Read)?;
    if let (Some(s), Some(e)) = (q.start, q.end) {
        if s > e {
            return Err(Error::invalid("start", "must not be after end"));
        }
    }
    let after = q.page_token.map(decode_token).transpose()?.unwrap_or(0);
    let mut events = c.store().event_list_by_org(&actor.org_id, after, q.start, q.end, q.resource_type, PAGE_SIZE + 1).await?;
    let next = if events.len() as i64 > PAGE_SIZE {
        events.truncate(PAGE_SIZE as usize);
        events.last().map(|e| encode_token(e.seq))
    } else {
        None
    };
    Ok((events, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip_and_reject_junk() {
        assert_eq!(decode_token(&encode_token(42)).ok(), Some(42));
        assert!(decode_token("nope!").is_err());
        assert!(decode_token(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("seq:-1")).is_err());
    }
}
