//! Where an API key is read from: `Authorization: Basic base64(KEY:)` (curl `-u KEY:`),
//! `Authorization: Bearer KEY`, `X-API-Key: KEY` or `x-api-token: KEY`; and `Need`, the
//! permission a route needs, checked before its query or body is parsed.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use base64::Engine as _;
use nimbus_core::auth::Actor;
use nimbus_core::Error;

/// The permissions a route can need, as types (`Need<Create, LambdaError>`).
pub mod perm {
    use nimbus_core::auth::Permission;

    pub trait Perm {
        const PERMISSION: Permission;
    }
    macro_rules! perms {
        ($($name:ident),*) => {$(
            pub struct $name;
            impl Perm for $name {
                const PERMISSION: Permission = Permission::$name;
            }
        )*};
    }
    perms!(Admin, Create, Read, Edit, Delete);
}

/// The route needs permission `P`: checked right after the dialect's actor extractor (which
/// leaves the `Actor` in the request's extensions) and before the query or body is parsed, so that
/// a key without it gets 403 in the dialect's shape `E` whatever it sends, never a validation error
/// about a request it may not make. The domain checks again; this only orders the answers.
/// Placed before the actor extractor it finds no actor and answers 401.
pub struct Need<P, E>(PhantomData<fn() -> (P, E)>);

impl<S: Send + Sync, P: perm::Perm, E: From<Error> + IntoResponse> FromRequestParts<S> for Need<P, E> {
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, E> {
        let actor = parts.extensions.get::<Actor>().ok_or(Error::Unauthenticated)?;
        actor.require(P::PERMISSION)?;
        Ok(Need(PhantomData))
    }
}

/// Leaves the authenticated actor where `Need` finds it.
pub fn remember(parts: &mut Parts, actor: &Actor) {
    parts.extensions.insert(actor.clone());
}

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
    let d = s.limiter.check_actor(&actor, crate::ratelimit::RouteClass::Native);
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
