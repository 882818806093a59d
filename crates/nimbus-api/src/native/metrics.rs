//! Native handlers for instance metrics: a range query downsampled to a step, and a WebSocket
//! stream pushing each new sample (one per second per running instance).

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use nimbus_api_types::native as w;
use nimbus_control::{instances, metrics};
use nimbus_core::auth::{Actor, Permission};
use nimbus_core::clock::{parse_rfc3339, to_rfc3339};
use nimbus_core::model::MetricPoint;
use nimbus_core::Error;

use super::extract::{NativeActor, NativePath, Needs};
use super::handlers::{ok, query_pairs, NResult};
use super::NativeError;
use crate::auth::perm::Read;
use crate::ApiState;

pub(super) fn render(p: &MetricPoint) -> w::MetricPoint {
    w::MetricPoint {
        timestamp: to_rfc3339(p.at),
        cpu_millicores: p.cpu_millicores,
        memory_bytes: p.memory_bytes,
        disk_bytes: p.disk_bytes,
        net_rx_bytes_per_sec: p.net_rx_bps,
        net_tx_bytes_per_sec: p.net_tx_bps,
        gpu_utilization_pct: p.gpu_util_permille.map(|v| v as f64 / 10.0),
        gpu_memory_bytes: p.gpu_memory_bytes,
    }
}

const DEFAULT_WINDOW_MICROS: i64 = 3_600_000_000;

#[utoipa::path(
    get,
    path = "/instances/{id}/metrics",
    tag = "metrics",
    operation_id = "instance_metrics_get",
    summary = "CPU, memory, disk, network and GPU use of an instance: means per step between from and to",
    params(
        ("id" = String, Path),
        ("from" = Option<String>, Query, description = "RFC 3339; default: one hour before `to` (less when 1,000 steps span less)"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
        ("step" = Option<i64>, Query, description = "Seconds per point, at least 1; default 60; at most 1,000 points")
    ),
    responses(
        (status = 200, description = "Success", body = w::Envelope<w::InstanceMetrics>),
        (status = 400, description = "Invalid range or step", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn instance_metrics_get(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Read>,
    NativePath(id): NativePath<String>,
    RawQuery(raw): RawQuery,
) -> NResult {
    let (mut from, mut to, mut step) = (None, None, 60i64);
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "from" => from = Some(parse_rfc3339(&v).ok_or_else(|| Error::invalid("from", "must be an RFC 3339 time"))?),
            "to" => to = Some(parse_rfc3339(&v).ok_or_else(|| Error::invalid("to", "must be an RFC 3339 time"))?),
            "step" => step = v.parse().map_err(|_| Error::invalid("step", "must be a whole number of seconds"))?,
            other => return Err(Error::invalid(other, "unknown query parameter; expected from, to, step").into()),
        }
    }
    let step_micros = step.checked_mul(1_000_000).filter(|m| *m > 0).ok_or_else(|| Error::invalid("step", "must be at least 1 second"))?;
    let to = to.unwrap_or_else(|| s.control.now());
    // Without `from`: the last hour, or fewer steps' worth when the step is small.
    let from = from.unwrap_or(to - DEFAULT_WINDOW_MICROS.min(step_micros.saturating_mul(metrics::MAX_POINTS)));
    let points = metrics::query(&s.control, &a, &id, from, to, step_micros).await?;
    Ok(ok(
        w::InstanceMetrics {
            instance_id: id,
            from: to_rfc3339(from),
            to: to_rfc3339(to),
            step_seconds: step,
            points: points.iter().map(render).collect(),
        },
        None,
    ))
}

/// `GET /v1/instances/{id}/metrics/stream` (WebSocket): a text frame with one `MetricPoint`
/// JSON per new sample, checked every second, until the client closes or the instance ends.
/// The key is authenticated again before every push (through the auth cache, so the store is
/// read about every [`nimbus_control::auth::CACHE_TTL`]): once it is revoked or expires, or
/// loses the read permission, the server closes the socket with 1008 (policy violation), within
/// a second on the replica that revoked it and within the cache TTL plus a second elsewhere.
/// Outside the OpenAPI document, which cannot describe a WebSocket.
pub async fn instance_metrics_stream(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    NativePath(id): NativePath<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, NativeError> {
    let inst = instances::get(&s.control, &a, &id).await?;
    let ws =
        ws.map_err(|_| Error::InvalidRequest { message: "this endpoint is a WebSocket: send an Upgrade: websocket request".into() })?;
    // The actor extractor authenticated exactly this secret.
    let secret = crate::auth::presented_key(&headers).ok_or(Error::Unauthenticated)?;
    let start = s.control.now() - 2_000_000;
    Ok(ws.on_upgrade(move |socket| stream(socket, s, a, secret, inst.id, start)).into_response())
}

/// Whether a stream's key may still read: `Unknown` when the store could not tell (nothing is
/// pushed that tick, and the next asks again).
enum Recheck {
    Still(Actor),
    Denied(&'static str),
    Unknown,
}

async fn recheck(s: &ApiState, secret: &str, actor: &Actor) -> Recheck {
    match nimbus_control::auth::authenticate(&s.control, secret).await {
        Ok(a) if a.key_id != actor.key_id => Recheck::Denied("the API key changed"),
        Ok(a) => match a.require(Permission::Read) {
            Ok(()) => Recheck::Still(a),
            Err(_) => Recheck::Denied("the API key lost the read permission"),
        },
        Err(Error::Unauthenticated) => Recheck::Denied("the API key was revoked or has expired"),
        Err(_) => Recheck::Unknown,
    }
}

async fn stream(mut socket: WebSocket, s: ApiState, mut actor: Actor, secret: String, id: nimbus_core::ids::InstanceId, mut after: i64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                match recheck(&s, &secret, &actor).await {
                    Recheck::Still(a) => actor = a,
                    Recheck::Denied(reason) => {
                        let frame = CloseFrame { code: close_code::POLICY, reason: reason.into() };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        return;
                    }
                    Recheck::Unknown => continue,
                }
                let points = match metrics::since(&s.control, &actor, &id, after).await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                for p in &points {
                    after = after.max(p.at);
                    let Ok(text) = serde_json::to_string(&render(p)) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                match instances::get(&s.control, &actor, id.as_str()).await {
                    Ok(i) if i.state != nimbus_core::instance::InstanceState::Terminated => {}
                    _ => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
        }
    }
}
