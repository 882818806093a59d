//! Native billing handlers (usage so far; invoices and estimates follow).

use axum::extract::{RawQuery, State};
use nimbus_api_types::native as w;
use nimbus_control::metering;
use nimbus_core::clock::{parse_rfc3339, to_rfc3339};
use nimbus_core::money::Micros;
use nimbus_core::Error;

use super::extract::{NativeActor, NativePath, Needs};
use super::handlers::{ok, query_pairs, NResult};
use crate::auth::perm::Read;
use crate::ApiState;

/// The first instant of the month of `t` (µs, UTC).
fn month_start(t: i64) -> i64 {
    use chrono::{Datelike, TimeZone, Utc};
    let d = Utc.timestamp_micros(t).single().unwrap_or_default();
    Utc.with_ymd_and_hms(d.year(), d.month(), 1, 0, 0, 0).single().map(|m| m.timestamp_micros()).unwrap_or(0)
}

#[utoipa::path(
    get,
    path = "/billing/usage",
    tag = "billing",
    operation_id = "billing_usage_get",
    summary = "What the organization used in a period, per resource, to the micro-dollar (per-second metering)",
    params(
        ("start" = Option<String>, Query, description = "RFC 3339; default: the start of the current month (UTC)"),
        ("end" = Option<String>, Query, description = "RFC 3339; default: now"),
        ("resource_type" = Option<String>, Query, description = "instance or volume"),
        ("sku" = Option<String>, Query, description = "An instance type, or storage")
    ),
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::Usage>),
        (status = 400, description = "Invalid period", body = w::ErrorEnvelope)
    )
)]
pub async fn billing_usage_get(State(s): State<ApiState>, NativeActor(a): NativeActor, _: Needs<Read>, RawQuery(raw): RawQuery) -> NResult {
    let (mut start, mut end, mut rtype, mut sku) = (None, None, None, None);
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "start" => start = Some(parse_rfc3339(&v).ok_or_else(|| Error::invalid("start", "must be an RFC 3339 time"))?),
            "end" => end = Some(parse_rfc3339(&v).ok_or_else(|| Error::invalid("end", "must be an RFC 3339 time"))?),
            "resource_type" => rtype = Some(v),
            "sku" => sku = Some(v),
            other => return Err(Error::invalid(other, "unknown query parameter; expected start, end, resource_type, sku").into()),
        }
    }
    let now = s.control.now();
    let end = end.unwrap_or(now);
    let start = start.unwrap_or_else(|| month_start(now));
    let lines: Vec<metering::UsageLine> = metering::usage(&s.control, &a, start, end)
        .await?
        .into_iter()
        .filter(|l| rtype.as_ref().is_none_or(|t| &l.resource_type == t) && sku.as_ref().is_none_or(|k| &l.sku == k))
        .collect();
    let total = Micros(lines.iter().map(|l| l.amount.0).sum());
    Ok(ok(
        w::Usage {
            start: to_rfc3339(start),
            end: to_rfc3339(end),
            total_micros: total.0,
            total_usd: total.to_string(),
            lines: lines
                .into_iter()
                .map(|l| w::UsageLine {
                    amount_usd: l.amount.to_string(),
                    resource_type: l.resource_type,
                    resource_id: l.resource_id,
                    kind: l.kind,
                    sku: l.sku,
                    quantity: l.quantity,
                    rate_micros_per_hour: l.rate_micros_per_hour,
                    seconds: l.seconds,
                    amount_micros: l.amount.0,
                })
                .collect(),
        },
        None,
    ))
}

fn render_invoice(i: &nimbus_control::billing::Invoice) -> w::Invoice {
    w::Invoice {
        id: i.id.clone(),
        period: i.period.clone(),
        period_start: to_rfc3339(i.period_start),
        period_end: to_rfc3339(i.period_end),
        status: i.status.to_owned(),
        lines: i
            .lines
            .iter()
            .map(|l| w::InvoiceLine {
                sku: l.sku.clone(),
                kind: l.kind.clone(),
                seconds: l.seconds,
                amount_micros: l.amount_micros,
                amount_usd: Micros(l.amount_micros).to_string(),
            })
            .collect(),
        total_micros: i.total.0,
        total_usd: i.total.to_string(),
        credits_micros: i.credits.0,
        balance_start_micros: i.balance_start.0,
        balance_end_micros: i.balance_end.0,
    }
}

#[utoipa::path(
    get,
    path = "/billing/invoices",
    tag = "billing",
    operation_id = "billing_invoices_list",
    summary = "Monthly invoices from the first charge to the current month, newest first",
    responses((status = 200, description = "Success", body = w::Envelope<Vec<w::Invoice>>))
)]
pub async fn billing_invoices_list(State(s): State<ApiState>, NativeActor(a): NativeActor) -> NResult {
    let list = nimbus_control::billing::invoices(&s.control, &a).await?;
    Ok(ok(list.iter().map(render_invoice).collect::<Vec<_>>(), None))
}

#[utoipa::path(
    get,
    path = "/billing/invoices/{id}",
    tag = "billing",
    operation_id = "billing_invoice_get",
    summary = "One monthly invoice with its line items and balances",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = w::Envelope<w::Invoice>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn billing_invoice_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_invoice(&nimbus_control::billing::invoice(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    get,
    path = "/billing/estimate",
    tag = "billing",
    operation_id = "billing_estimate_get",
    summary = "Cost of a proposed instance type for some hours, and of the current running set to month end",
    params(
        ("instance_type" = Option<String>, Query),
        ("hours" = Option<i64>, Query, description = "1 to 8784; default 1 with instance_type")
    ),
    responses((status = 200, description = "Success", body = w::Envelope<w::Estimate>), (status = 400, description = "Invalid request", body = w::ErrorEnvelope))
)]
pub async fn billing_estimate_get(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Read>,
    RawQuery(raw): RawQuery,
) -> NResult {
    let (mut itype, mut hours) = (None, None);
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "instance_type" => itype = Some(v),
            "hours" => hours = Some(v.parse::<i64>().map_err(|_| Error::invalid("hours", "must be a whole number"))?),
            other => return Err(Error::invalid(other, "unknown query parameter; expected instance_type, hours").into()),
        }
    }
    let e = nimbus_control::billing::estimate(&s.control, &a, itype.as_deref(), hours).await?;
    Ok(ok(
        w::Estimate {
            proposed: e.proposed.map(|(t, h, m)| w::ProposedCost {
                instance_type: t,
                hours: h,
                amount_micros: m.0,
                amount_usd: m.to_string(),
            }),
            month_to_date_micros: e.month_to_date.0,
            current_to_month_end_micros: e.current_to_month_end.0,
            projected_month_total_micros: e.projected_month_total.0,
            projected_month_total_usd: e.projected_month_total.to_string(),
            month_end: to_rfc3339(e.month_end),
        },
        None,
    ))
}
