//! Where an API key is read from: `Authorization: Basic base64(KEY:)` (curl `-u KEY:`),
//! `Authorization: Bearer KEY`, `X-API-Key: KEY` or `x-api-token: KEY`.

use axum::http::HeaderMap;
use base64::Engine as _;

/// The presented secret, if any header carries one.
pub fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Some(rest.to_owned());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
            let s = String::from_utf8(decoded).ok()?;
            // The key is the user name; the password is empty (curl -u KEY:), but a client that
            // puts the key in the password with an empty user works too.
            let (user, pass) = s.split_once(':').unwrap_or((&s, ""));
            let key = if user.is_empty() { pass } else { user };
            return (!key.is_empty()).then(|| key.to_owned());
        }
        return None;
    }
    for h in ["x-api-key", "x-api-token"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            if !v.trim().is_empty() {
                return Some(v.trim().to_owned());
            }
        }
    }
    None
}

/// The caller of a plan-limited dialect (native-style rate limits: Voltage Park, clusters): the
/// presented key authenticated and its org's plan budget checked.
pub async fn plan_limited_actor(headers: &HeaderMap, s: &crate::ApiState) -> Result<nimbus_core::auth::Actor, nimbus_core::Error> {
    let secret = presented_key(headers).ok_or(nimbus_core::Error::Unauthenticated)?;
    let actor = nimbus_control::auth::authenticate(&s.control, &secret).await?;
    let d = s.limiter.check_plan(&actor.key_id, crate::ratelimit::RouteClass::Native, &actor.plan);
    if !d.allowed {
        return Err(nimbus_core::Error::RateLimited { retry_after: d.retry_after });
    }
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, v.parse().expect("header"));
        m
    }

    #[test]
    fn every_scheme() {
        let b = base64::engine::general_purpose::STANDARD.encode("secret:");
        assert_eq!(presented_key(&h("authorization", &format!("Basic {b}"))).as_deref(), Some("secret"));
        assert_eq!(presented_key(&h("authorization", "Bearer secret")).as_deref(), Some("secret"));
        assert_eq!(presented_key(&h("authorization", "bearer  secret ")).as_deref(), Some("secret"));
        assert_eq!(presented_key(&h("x-api-key", "secret")).as_deref(), Some("secret"));
        assert_eq!(presented_key(&h("x-api-token", "secret")).as_deref(), Some("secret"));
        assert_eq!(presented_key(&h("authorization", "Digest x")), None);
        assert_eq!(presented_key(&h("authorization", "Basic !!!")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
