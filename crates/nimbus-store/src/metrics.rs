//! Instance metrics: batched inserts from agents, range reads, and pruning past retention.

use nimbus_core::ids::InstanceId;
use nimbus_core::model::MetricPoint;
use nimbus_core::Error;

use crate::rows::get;
use crate::{db_err, Conn, Store};

impl Store {
    /// Inserts samples; a repeated `(instance, at)` (a retried upload) is ignored.
    pub async fn metrics_insert_in_txn(tx: &mut Conn, points: &[MetricPoint]) -> Result<(), Error> {
        for p in points {
            sqlx::query(
                "INSERT INTO instance_metrics (instance_id, at, cpu_millicores, memory_bytes, disk_bytes, net_rx_bps, net_tx_bps, \
                 gpu_util_permille, gpu_memory_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (instance_id, at) DO NOTHING",
            )
            .bind(p.instance_id.as_str())
            .bind(p.at)
            .bind(p.cpu_millicores)
            .bind(p.memory_bytes)
            .bind(p.disk_bytes)
            .bind(p.net_rx_bps)
            .bind(p.net_tx_bps)
            .bind(p.gpu_util_permille)
            .bind(p.gpu_memory_bytes)
            .execute(&mut *tx)
            .await
            .map_err(db_err("inserting metrics"))?;
        }
        Ok(())
    }

    /// Samples of one instance with `from < at <= to`, oldest first, at most `limit`.
    pub async fn metrics_range(&self, instance: &InstanceId, from: i64, to: i64, limit: i64) -> Result<Vec<MetricPoint>, Error> {
        let mut c = self.reader().await?;
        let rows = sqlx::query(
            "SELECT at, cpu_millicores, memory_bytes, disk_bytes, net_rx_bps, net_tx_bps, gpu_util_permille, gpu_memory_bytes \
             FROM instance_metrics WHERE instance_id = $1 AND at > $2 AND at <= $3 ORDER BY at LIMIT $4",
        )
        .bind(instance.as_str())
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err("reading metrics"))?;
        rows.iter()
            .map(|r| {
                Ok(MetricPoint {
                    instance_id: instance.clone(),
                    at: get(r, "at")?,
                    cpu_millicores: get(r, "cpu_millicores")?,
                    memory_bytes: get(r, "memory_bytes")?,
                    disk_bytes: get(r, "disk_bytes")?,
                    net_rx_bps: get(r, "net_rx_bps")?,
                    net_tx_bps: get(r, "net_tx_bps")?,
                    gpu_util_permille: get(r, "gpu_util_permille")?,
                    gpu_memory_bytes: get(r, "gpu_memory_bytes")?,
                })
            })
            .collect()
    }

    /// Deletes samples taken before `before`; returns how many.
    pub async fn metrics_prune_in_txn(tx: &mut Conn, before: i64) -> Result<u64, Error> {
        let r =
            sqlx::query("DELETE FROM instance_metrics WHERE at < $1").bind(before).execute(tx).await.map_err(db_err("pruning metrics"))?;
        Ok(r.rows_affected())
    }
}
