//! Native handlers for the caller's account: profile, quotas and API keys.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use nimbus_api_types::native as w;
use nimbus_control::account;
use nimbus_core::auth::Permissions;
use nimbus_core::clock::{parse_rfc3339, to_rfc3339};
use nimbus_core::model::{ApiKey, Org};
use nimbus_core::Error;

use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::handlers::{ok, query_pairs, NResult};
use super::page;
use crate::auth::perm::{Admin, Create, Read};
use crate::ApiState;

fn render_account(s: &ApiState, o: &Org) -> w::Account {
    let plan = s.control.config().rate_limits.plans.get(&o.plan);
    w::Account {
        id: o.id.to_string(),
        name: o.name.clone(),
        email: o.email.clone(),
        plan: o.plan.clone(),
        rate_limit: plan.map(|p| w::RateLimitPlan { requests_per_hour: u64::from(p.per_hour), burst: p.burst }),
        spend_limit_cents: o.spend_limit_cents,
        spend_limit_action: o.spend_limit_action.clone(),
        created_at: to_rfc3339(o.created_at),
    }
}

pub(super) fn render_key(k: &ApiKey) -> w::ApiKey {
    w::ApiKey {
        id: k.id.to_string(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        permissions: k.permissions.names().into_iter().map(str::to_owned).collect(),
        created_at: to_rfc3339(k.created_at),
        expires_at: k.expires_at.map(to_rfc3339),
        created_by: k.created_by.as_ref().map(ToString::to_string),
        service_account_id: k.service_account_id.as_ref().map(ToString::to_string),
    }
}

/// A permission list of a request body (at least one).
pub(super) fn permissions(names: &[String]) -> Result<Permissions, Error> {
    if names.is_empty() {
        return Err(Error::invalid("permissions", "at least one permission is required"));
    }
    Permissions::parse_list(&names.join(","))
}

/// A key's expiry from `expires_at` (RFC 3339) or `expires_in_days` (1 to 3650), not both.
pub(super) fn expiry(s: &ApiState, at: Option<&str>, in_days: Option<i64>) -> Result<Option<i64>, Error> {
    match (at, in_days) {
        (Some(_), Some(_)) => Err(Error::InvalidRequest { message: "give expires_at or expires_in_days, not both".into() }),
        (Some(t), None) => {
            Ok(Some(parse_rfc3339(t).ok_or_else(|| Error::invalid("expires_at", "must be an RFC 3339 time such as 2030-01-01T00:00:00Z"))?))
        }
        (None, Some(d)) if (1..=3650).contains(&d) => Ok(Some(s.control.now() + d * 86_400_000_000)),
        (None, Some(_)) => Err(Error::invalid("expires_in_days", "must be between 1 and 3650")),
        (None, None) => Ok(None),
    }
}

#[utoipa::path(
    get,
    path = "/account",
    tag = "account",
    operation_id = "account_get",
    summary = "The caller's organization, its plan and rate limit",
    responses((status = 200, description = "Success", body = w::Envelope<w::Account>), (status = 401, description = "Invalid API key", body = w::ErrorEnvelope))
)]
pub async fn account_get(State(s): State<ApiState>, NativeActor(a): NativeActor) -> NResult {
    Ok(ok(render_account(&s, &account::get(&s.control, &a).await?), None))
}

#[utoipa::path(
    patch,
    path = "/account",
    tag = "account",
    operation_id = "account_update",
    summary = "Rename the organization or change its email (ADMIN)",
    request_body = w::AccountUpdate,
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::Account>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 403, description = "Not an ADMIN key", body = w::ErrorEnvelope),
        (status = 409, description = "Name taken", body = w::ErrorEnvelope)
    )
)]
pub async fn account_update(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Admin>,
    NativeJson(b): NativeJson<w::AccountUpdate>,
) -> NResult {
    let spend = if b.spend_limit_cents.is_some() || b.spend_limit_action.is_some() {
        let cur = account::get(&s.control, &a).await?;
        let cents = match b.spend_limit_cents {
            Some(0) => None,
            Some(v) => Some(v),
            None => cur.spend_limit_cents,
        };
        Some((cents, b.spend_limit_action.unwrap_or(cur.spend_limit_action)))
    } else {
        None
    };
    let o = account::update(&s.control, &a, b.name.as_deref(), b.email.as_deref(), spend).await?;
    Ok(ok(render_account(&s, &o), None))
}

#[utoipa::path(
    get,
    path = "/account/quota",
    tag = "account",
    operation_id = "account_quota",
    summary = "Usage against every quota (enforced at create)",
    responses((status = 200, description = "Success", body = w::Envelope<Vec<w::Quota>>))
)]
pub async fn account_quota(State(s): State<ApiState>, NativeActor(a): NativeActor) -> NResult {
    let q = account::quota(&s.control, &a).await?;
    let out: Vec<w::Quota> = q
        .into_iter()
        .map(|u| w::Quota { resource: u.resource.to_owned(), used: u.used, limit: u.limit, unit: u.unit.to_owned() })
        .collect();
    Ok(ok(out, None))
}

#[utoipa::path(
    get,
    path = "/account/api-keys",
    tag = "account",
    operation_id = "api_keys_list",
    summary = "The organization's live API keys (never their secrets)",
    params(("page" = Option<u32>, Query), ("limit" = Option<u32>, Query), ("sort" = Option<String>, Query, description = "created_at or name"),
        ("order" = Option<String>, Query, description = "asc or desc"), ("name" = Option<String>, Query)),
    responses((status = 200, description = "Success", body = w::Envelope<Vec<w::ApiKey>>), (status = 400, description = "Invalid query", body = w::ErrorEnvelope))
)]
pub async fn api_keys_list(State(s): State<ApiState>, NativeActor(a): NativeActor, _: Needs<Read>, RawQuery(raw): RawQuery) -> NResult {
    let q = page::parse(&query_pairs(raw)?, page::BY_NAME_SORTS, page::BY_NAME_FILTERS)?;
    let all = account::api_keys_list(&s.control, &a).await?;
    let (items, pg) = page::apply_by_name(all, &q, |k| &k.name, |k| k.created_at, |k| k.id.to_string());
    Ok(ok(items.iter().map(render_key).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/account/api-keys",
    tag = "account",
    operation_id = "api_key_create",
    summary = "Create an API key (at most the calling key's permissions; optional expiry); the secret is shown once",
    request_body = w::ApiKeyCreate,
    responses(
        (status = 201, description = "Created", body = w::Envelope<w::ApiKeyWithSecret>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 403, description = "Asks for more than the calling key has", body = w::ErrorEnvelope)
    )
)]
pub async fn api_key_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(b): NativeJson<w::ApiKeyCreate>,
) -> NResult {
    let perms = permissions(&b.permissions)?;
    let expires_at = expiry(&s, b.expires_at.as_deref(), b.expires_in_days)?;
    let (key, secret) = account::api_key_create(&s.control, &a, &b.name, perms, expires_at).await?;
    Ok((StatusCode::CREATED, ok(w::ApiKeyWithSecret { key: render_key(&key), secret }, None)).into_response())
}

#[utoipa::path(
    delete,
    path = "/account/api-keys/{id}",
    tag = "account",
    operation_id = "api_key_delete",
    summary = "Revoke an API key (the calling key must hold every permission of the revoked one)",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Revoked", body = w::Envelope<w::ApiKey>),
        (status = 403, description = "Target holds more than the calling key", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn api_key_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_key(&account::api_key_delete(&s.control, &a, &id).await?), None))
}
