//! Native handlers for service accounts and their API keys (all need an ADMIN key; another
//! organization's account is a 404).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use nimbus_api_types::native as w;
use nimbus_control::service_accounts as sa;
use nimbus_core::clock::to_rfc3339;
use nimbus_core::model::ServiceAccount;

use super::account::{expiry, permissions, render_key};
use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::handlers::{ok, query_pairs, NResult};
use super::page;
use crate::auth::perm::Admin;
use crate::ApiState;

fn render(a: &ServiceAccount) -> w::ServiceAccount {
    w::ServiceAccount {
        id: a.id.to_string(),
        name: a.name.clone(),
        description: a.description.clone(),
        permissions: a.permissions.names().into_iter().map(str::to_owned).collect(),
        created_at: to_rfc3339(a.created_at),
        deleted_at: a.deleted_at.map(to_rfc3339),
    }
}

#[utoipa::path(
    get,
    path = "/service-accounts",
    tag = "service-accounts",
    operation_id = "service_accounts_list",
    summary = "List the organization's service accounts (ADMIN)",
    params(("page" = Option<u32>, Query), ("limit" = Option<u32>, Query), ("sort" = Option<String>, Query, description = "created_at or name"),
        ("order" = Option<String>, Query, description = "asc or desc"), ("name" = Option<String>, Query)),
    responses(
        (status = 200, description = "Success", body = w::Envelope<Vec<w::ServiceAccount>>),
        (status = 400, description = "Invalid query", body = w::ErrorEnvelope),
        (status = 403, description = "Not an ADMIN key", body = w::ErrorEnvelope)
    )
)]
pub async fn service_accounts_list(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Admin>,
    RawQuery(raw): RawQuery,
) -> NResult {
    let q = page::parse(&query_pairs(raw)?, page::BY_NAME_SORTS, page::BY_NAME_FILTERS)?;
    let all = sa::list(&s.control, &a).await?;
    let (items, pg) = page::apply_by_name(all, &q, |x| &x.name, |x| x.created_at, |x| x.id.to_string());
    Ok(ok(items.iter().map(render).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/service-accounts",
    tag = "service-accounts",
    operation_id = "service_account_create",
    summary = "Create a service account with permissions (ADMIN)",
    request_body = w::ServiceAccountCreate,
    responses(
        (status = 201, description = "Created", body = w::Envelope<w::ServiceAccount>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 403, description = "Not an ADMIN key, or the quota is reached", body = w::ErrorEnvelope),
        (status = 409, description = "Name taken", body = w::ErrorEnvelope)
    )
)]
pub async fn service_account_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Admin>,
    NativeJson(b): NativeJson<w::ServiceAccountCreate>,
) -> NResult {
    let perms = permissions(&b.permissions)?;
    let created = sa::create(&s.control, &a, &b.name, b.description.as_deref(), perms).await?;
    Ok((StatusCode::CREATED, ok(render(&created), None)).into_response())
}

#[utoipa::path(
    get,
    path = "/service-accounts/{id}",
    tag = "service-accounts",
    operation_id = "service_account_get",
    summary = "Get a service account (ADMIN)",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = w::Envelope<w::ServiceAccount>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn service_account_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(&sa::get(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    patch,
    path = "/service-accounts/{id}",
    tag = "service-accounts",
    operation_id = "service_account_update",
    summary = "Rename a service account, change its description or replace its permissions (ADMIN); its keys follow",
    params(("id" = String, Path)),
    request_body = w::ServiceAccountUpdate,
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::ServiceAccount>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Name taken", body = w::ErrorEnvelope)
    )
)]
pub async fn service_account_update(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Admin>,
    NativePath(id): NativePath<String>,
    NativeJson(b): NativeJson<w::ServiceAccountUpdate>,
) -> NResult {
    let perms = b.permissions.as_deref().map(permissions).transpose()?;
    let updated = sa::update(&s.control, &a, &id, b.name.as_deref(), b.description.as_deref(), perms).await?;
    Ok(ok(render(&updated), None))
}

#[utoipa::path(
    delete,
    path = "/service-accounts/{id}",
    tag = "service-accounts",
    operation_id = "service_account_delete",
    summary = "Delete a service account and revoke all of its API keys (ADMIN)",
    params(("id" = String, Path)),
    responses((status = 200, description = "Deleted", body = w::Envelope<w::ServiceAccount>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn service_account_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    let (deleted, _revoked) = sa::delete(&s.control, &a, &id).await?;
    Ok(ok(render(&deleted), None))
}

#[utoipa::path(
    get,
    path = "/service-accounts/{id}/api-keys",
    tag = "service-accounts",
    operation_id = "service_account_api_keys_list",
    summary = "List a service account's live API keys, never their secrets (ADMIN)",
    params(("id" = String, Path), ("page" = Option<u32>, Query), ("limit" = Option<u32>, Query),
        ("sort" = Option<String>, Query, description = "created_at or name"), ("order" = Option<String>, Query, description = "asc or desc"),
        ("name" = Option<String>, Query)),
    responses(
        (status = 200, description = "Success", body = w::Envelope<Vec<w::ApiKey>>),
        (status = 400, description = "Invalid query", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn service_account_api_keys_list(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Admin>,
    NativePath(id): NativePath<String>,
    RawQuery(raw): RawQuery,
) -> NResult {
    let q = page::parse(&query_pairs(raw)?, page::BY_NAME_SORTS, page::BY_NAME_FILTERS)?;
    let all = sa::api_keys_list(&s.control, &a, &id).await?;
    let (items, pg) = page::apply_by_name(all, &q, |k| &k.name, |k| k.created_at, |k| k.id.to_string());
    Ok(ok(items.iter().map(render_key).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/service-accounts/{id}/api-keys",
    tag = "service-accounts",
    operation_id = "service_account_api_key_create",
    summary = "Create an API key of a service account (ADMIN); it acts with the account's permissions; the secret is shown once",
    params(("id" = String, Path)),
    request_body = w::ServiceAccountKeyCreate,
    responses(
        (status = 201, description = "Created", body = w::Envelope<w::ApiKeyWithSecret>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn service_account_api_key_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Admin>,
    NativePath(id): NativePath<String>,
    NativeJson(b): NativeJson<w::ServiceAccountKeyCreate>,
) -> NResult {
    let expires_at = expiry(&s, b.expires_at.as_deref(), b.expires_in_days)?;
    let (key, secret) = sa::api_key_create(&s.control, &a, &id, b.name.as_deref(), expires_at).await?;
    Ok((StatusCode::CREATED, ok(w::ApiKeyWithSecret { key: render_key(&key), secret }, None)).into_response())
}

#[utoipa::path(
    delete,
    path = "/service-accounts/{id}/api-keys/{key_id}",
    tag = "service-accounts",
    operation_id = "service_account_api_key_delete",
    summary = "Revoke an API key of a service account (ADMIN)",
    params(("id" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, description = "Revoked", body = w::Envelope<w::ApiKey>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn service_account_api_key_delete(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    NativePath((id, key_id)): NativePath<(String, String)>,
) -> NResult {
    Ok(ok(render_key(&sa::api_key_delete(&s.control, &a, &id, &key_id).await?), None))
}
