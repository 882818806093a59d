//! Native webhook handlers: subscriptions (`/v1/webhooks`) and their delivery log. Extract, call
//! one `nimbus_control::webhooks` function, render.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_api_types::native as n;
use nimbus_api_types::native::ErrorDetails;
use nimbus_api_types::webhooks as w;
use nimbus_control::webhooks;
use nimbus_core::clock::to_rfc3339;
use nimbus_core::webhook::{allowed_patterns, Webhook, WebhookDelivery};
use nimbus_core::Error;

use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::handlers::{ok, query_pairs};
use super::{page, NativeError};
use crate::auth::perm::{Create, Read};
use crate::ApiState;

type NResult = Result<Response, NativeError>;

fn render(h: &Webhook, secret: Option<String>) -> w::Webhook {
    w::Webhook {
        id: h.id.to_string(),
        url: h.url.clone(),
        events: h.events.clone(),
        secret,
        created_at: to_rfc3339(h.created_at),
        updated_at: to_rfc3339(h.updated_at),
    }
}

fn status_code(c: Option<i64>) -> Option<u16> {
    c.and_then(|c| u16::try_from(c).ok())
}

fn render_delivery(d: &WebhookDelivery) -> w::WebhookDelivery {
    w::WebhookDelivery {
        id: d.id.to_string(),
        webhook_id: d.webhook_id.to_string(),
        event_id: d.event_id.to_string(),
        event_type: d.event_type.clone(),
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        last_status_code: status_code(d.last_status_code),
        last_error: d.last_error.clone(),
        next_attempt_at: d.next_attempt_at.map(to_rfc3339),
        give_up_at: to_rfc3339(d.give_up_at),
        delivered_at: d.delivered_at.map(to_rfc3339),
        created_at: to_rfc3339(d.created_at),
        updated_at: to_rfc3339(d.updated_at),
        history: d
            .history
            .iter()
            .map(|a| w::WebhookAttempt {
                attempt: a.attempt,
                started_at: to_rfc3339(a.started_at),
                duration_ms: a.duration_us as f64 / 1000.0,
                status_code: status_code(a.status_code),
                error: a.error.clone(),
            })
            .collect(),
    }
}

/// An invalid `events` list also says what would have been accepted.
fn with_event_types(e: Error) -> NativeError {
    match &e {
        Error::InvalidValue { label, .. } if label == "events" => NativeError {
            error: e,
            details: Some(ErrorDetails { field: Some("events".into()), value: None, allowed_values: Some(allowed_patterns()) }),
        },
        _ => e.into(),
    }
}

#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    operation_id = "webhooks_list",
    summary = "List webhooks (paginated; sortable by created_at or url; filterable by url)",
    params(
        ("page" = Option<u32>, Query, description = "From 1"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20"),
        ("sort" = Option<String>, Query, description = "created_at or url"),
        ("order" = Option<String>, Query, description = "asc or desc"),
        ("url" = Option<String>, Query)
    ),
    responses(
        (status = 200, description = "Success", body = n::Envelope<Vec<w::Webhook>>),
        (status = 400, description = "Invalid query", body = n::ErrorEnvelope),
        (status = 401, description = "Invalid API key", body = n::ErrorEnvelope)
    )
)]
pub async fn webhooks_list(State(s): State<ApiState>, NativeActor(a): NativeActor, _: Needs<Read>, RawQuery(raw): RawQuery) -> NResult {
    let q = page::parse(&query_pairs(raw)?, &["created_at", "url"], &["url"])?;
    let all = webhooks::list(&s.control, &a).await?;
    let key = |h: &Webhook, k: &str| if k == "url" { h.url.clone() } else { format!("{:020}", h.created_at) };
    let (items, pg) = page::apply(all, &q, |h, _| Some(h.url.clone()), key, |h| h.id.to_string());
    Ok(ok(items.iter().map(|h| render(h, None)).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/webhooks",
    tag = "webhooks",
    operation_id = "webhook_create",
    summary = "Subscribe a URL to events (the secret is returned in this response only)",
    request_body = w::WebhookCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create return the first response")),
    responses(
        (status = 201, description = "Created", body = n::Envelope<w::Webhook>),
        (status = 400, description = "Invalid url, events or secret", body = n::ErrorEnvelope),
        (status = 403, description = "Permission or quota", body = n::ErrorEnvelope)
    )
)]
pub async fn webhook_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(body): NativeJson<w::WebhookCreate>,
) -> NResult {
    let spec = webhooks::WebhookSpec { url: body.url, events: body.events, secret: body.secret };
    let (hook, secret) = webhooks::create(&s.control, &a, spec).await.map_err(with_event_types)?;
    Ok((StatusCode::CREATED, ok(render(&hook, Some(secret)), None)).into_response())
}

#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "webhook_get",
    summary = "Get a webhook (without its secret)",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "Success", body = n::Envelope<w::Webhook>),
        (status = 404, description = "Not found", body = n::ErrorEnvelope)
    )
)]
pub async fn webhook_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(&webhooks::get(&s.control, &a, &id).await?, None), None))
}

#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "webhook_delete",
    summary = "Delete a webhook and its delivery log",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "Deleted; the webhook as it was", body = n::Envelope<w::Webhook>),
        (status = 404, description = "Not found", body = n::ErrorEnvelope)
    )
)]
pub async fn webhook_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(&webhooks::delete(&s.control, &a, &id).await?, None), None))
}

#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries",
    tag = "webhooks",
    operation_id = "webhook_deliveries_list",
    summary = "The delivery log of a webhook, newest first: state, attempts, status codes, errors, next attempt",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("page" = Option<u32>, Query, description = "From 1"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20"),
        ("sort" = Option<String>, Query, description = "created_at"),
        ("order" = Option<String>, Query, description = "desc (default) or asc"),
        ("state" = Option<String>, Query, description = "pending, delivered or failed"),
        ("event_type" = Option<String>, Query)
    ),
    responses(
        (status = 200, description = "Success", body = n::Envelope<Vec<w::WebhookDelivery>>),
        (status = 400, description = "Invalid query", body = n::ErrorEnvelope),
        (status = 404, description = "Webhook not found", body = n::ErrorEnvelope)
    )
)]
pub async fn webhook_deliveries_list(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Read>,
    NativePath(id): NativePath<String>,
    RawQuery(raw): RawQuery,
) -> NResult {
    let params = query_pairs(raw)?;
    let q = page::parse(&params, &["created_at"], &["state", "event_type"])?;
    let filter = |f: &str| q.filters.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
    // A log reads newest first unless asked otherwise.
    let oldest_first = params.iter().any(|(k, _)| k == "order") && !q.desc;
    let query = webhooks::DeliveryQuery {
        state: filter("state"),
        event_type: filter("event_type"),
        oldest_first,
        limit: i64::from(q.limit),
        offset: (i64::from(q.page) - 1) * i64::from(q.limit),
    };
    let (items, total) = webhooks::deliveries(&s.control, &a, &id, &query).await?;
    let total = u64::try_from(total).unwrap_or(0);
    let total_pages = total.div_ceil(u64::from(q.limit));
    let pg = n::Pagination {
        page: q.page,
        limit: q.limit,
        total_items: total,
        total_pages,
        has_next: u64::from(q.page) < total_pages,
        has_prev: q.page > 1,
    };
    Ok(ok(items.iter().map(render_delivery).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    operation_id = "webhook_delivery_redeliver",
    summary = "Send a delivery again now (with retries as for a new one)",
    params(("id" = String, Path, description = "Webhook id"), ("delivery_id" = String, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "Queued; the delivery, now pending", body = n::Envelope<w::WebhookDelivery>),
        (status = 404, description = "Not found", body = n::ErrorEnvelope),
        (status = 409, description = "An attempt is in flight", body = n::ErrorEnvelope)
    )
)]
pub async fn webhook_delivery_redeliver(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    NativePath((id, delivery_id)): NativePath<(String, String)>,
) -> NResult {
    Ok(ok(render_delivery(&webhooks::redeliver(&s.control, &a, &id, &delivery_id).await?), None))
}
