//! Instance metrics: ingest from agents (only for instances on the reporting host), bounded
//! retention, and range queries downsampled to a step.

use std::sync::atomic::{AtomicI64, Ordering};

use nimbus_core::auth::Actor;
use nimbus_core::ids::{HostId, InstanceId};
use nimbus_core::model::MetricPoint;
use nimbus_core::Error;
use nimbus_store::Store;

use crate::{instances, Control};

/// Most samples one upload may carry, and most raw samples one query reads.
const MAX_BATCH: usize = 10_000;
const MAX_RAW: i64 = 200_000;
/// Most buckets a query returns.
pub const MAX_POINTS: i64 = 1_000;
const PRUNE_EVERY_MICROS: i64 = 60_000_000;

static LAST_PRUNE: AtomicI64 = AtomicI64::new(0);

/// Stores an agent's samples. Samples of instances that are not on `host` are dropped, so a host
/// can never write another host's (or tenant's) metrics.
pub async fn ingest(c: &Control, host: &HostId, samples: Vec<nimbus_proto::MetricSample>) -> Result<usize, Error> {
    if samples.len() > MAX_BATCH {
        return Err(Error::invalid("samples", format!("at most {MAX_BATCH} samples per upload")));
    }
    let mine: Vec<InstanceId> = c.store().instance_list_by_host(host).await?.into_iter().map(|i| i.id).collect();
    let points: Vec<MetricPoint> = samples
        .into_iter()
        .filter_map(|s| {
            let id = InstanceId::parse(&s.instance_id)?;
            mine.contains(&id).then_some(MetricPoint {
                instance_id: id,
                at: s.at,
                cpu_millicores: s.cpu_millicores.max(0),
                memory_bytes: s.memory_bytes.max(0),
                disk_bytes: s.disk_bytes.max(0),
                net_rx_bps: s.net_rx_bps.max(0),
                net_tx_bps: s.net_tx_bps.max(0),
                gpu_util_permille: s.gpu_util_permille.map(|v| v.clamp(0, 1000)),
                gpu_memory_bytes: s.gpu_memory_bytes.map(|v| v.max(0)),
            })
        })
        .collect();
    let now = c.now();
    let prune = now - LAST_PRUNE.load(Ordering::Relaxed) > PRUNE_EVERY_MICROS;
    if points.is_empty() && !prune {
        return Ok(0);
    }
    let mut tx = c.store().begin().await?;
    Store::metrics_insert_in_txn(&mut tx, &points).await?;
    if prune {
        LAST_PRUNE.store(now, Ordering::Relaxed);
        let before = now - c.config().metrics.retention_hours * 3_600_000_000;
        Store::metrics_prune_in_txn(&mut tx, before).await?;
    }
    Store::commit(tx).await?;
    Ok(points.len())
}

/// Means of the samples in each `step` from `from` to `to` (µs); steps without samples are
/// left out.
pub async fn query(c: &Control, actor: &Actor, id: &str, from: i64, to: i64, step: i64) -> Result<Vec<MetricPoint>, Error> {
    let inst = instances::get(c, actor, id).await?;
    if step < 1_000_000 {
        return Err(Error::invalid("step", "must be at least 1 second"));
    }
    if to <= from {
        return Err(Error::invalid("to", "must be after from"));
    }
    if (to - from) / step > MAX_POINTS {
        return Err(Error::invalid("step", format!("from..to would be more than {MAX_POINTS} steps; use a larger step")));
    }
    let raw = c.store().metrics_range(&inst.id, from, to, MAX_RAW).await?;
    Ok(downsample(&raw, from, step))
}

/// Samples after `after` (µs), oldest first: what the metrics stream pushes.
pub async fn since(c: &Control, actor: &Actor, id: &InstanceId, after: i64) -> Result<Vec<MetricPoint>, Error> {
    instances::get(c, actor, id.as_str()).await?;
    c.store().metrics_range(id, after, i64::MAX, 1_000).await
}

/// Means per step; a bucket's timestamp is its start.
pub fn downsample(raw: &[MetricPoint], from: i64, step: i64) -> Vec<MetricPoint> {
    let mut out: Vec<MetricPoint> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let bucket = (raw[i].at - from - 1).max(0) / step;
        let mut j = i;
        while j < raw.len() && (raw[j].at - from - 1).max(0) / step == bucket {
            j += 1;
        }
        let group = &raw[i..j];
        let n = group.len() as i64;
        let mean = |f: fn(&MetricPoint) -> i64| group.iter().map(f).sum::<i64>() / n;
        let opt_mean = |f: fn(&MetricPoint) -> Option<i64>| {
            let vals: Vec<i64> = group.iter().filter_map(f).collect();
            (!vals.is_empty()).then(|| vals.iter().sum::<i64>() / vals.len() as i64)
        };
        out.push(MetricPoint {
            instance_id: raw[i].instance_id.clone(),
            at: from + bucket * step,
            cpu_millicores: mean(|p| p.cpu_millicores),
            memory_bytes: mean(|p| p.memory_bytes),
            disk_bytes: mean(|p| p.disk_bytes),
            net_rx_bps: mean(|p| p.net_rx_bps),
            net_tx_bps: mean(|p| p.net_tx_bps),
            gpu_util_permille: opt_mean(|p| p.gpu_util_permille),
            gpu_memory_bytes: opt_mean(|p| p.gpu_memory_bytes),
        });
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at: i64, cpu: i64, gpu: Option<i64>) -> MetricPoint {
        MetricPoint {
            instance_id: InstanceId::from_trusted("i".into()),
            at,
            cpu_millicores: cpu,
            memory_bytes: 10,
            disk_bytes: 0,
            net_rx_bps: 0,
            net_tx_bps: 0,
            gpu_util_permille: gpu,
            gpu_memory_bytes: None,
        }
    }

    #[test]
    fn downsample_means_per_step() {
        let s = 1_000_000;
        // (0, 1 s] is the first bucket, (1 s, 2 s] the second; nothing in the third; one in the fourth.
        let raw = vec![p(500_000, 100, Some(200)), p(s, 300, None), p(s + 1, 1_000, Some(400)), p(3 * s + 5, 7, None)];
        let d = downsample(&raw, 0, s);
        assert_eq!(
            d.iter().map(|x| (x.at, x.cpu_millicores, x.gpu_util_permille)).collect::<Vec<_>>(),
            vec![(0, 200, Some(200)), (s, 1_000, Some(400)), (3 * s, 7, None)]
        );
    }
}
