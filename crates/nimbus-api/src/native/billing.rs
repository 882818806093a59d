//! Native billing handlers (usage so far; invoices and estimates follow).

use axum::extract::{RawQuery, State};
use nimbus_api_types::native as w;
use nimbus_control::metering;
use nimbus_core::clock::{parse_rfc3339, to_rfc3339};
use nimbus_core::money::Micros;
use nimbus_core::Error;

use super::extract::NativeActor;
use super::handlers::{ok, query_pairs, NResult};
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
pub async fn billing_usage_get(State(s): State<ApiState>, NativeActor(a): NativeActor, RawQuery(raw): RawQuery) -> NResult {
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
