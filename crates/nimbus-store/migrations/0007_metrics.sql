-- Per-instance resource samples from the agents (one per instance per second), kept for the
-- configured retention and pruned by the server.
CREATE TABLE instance_metrics (
    instance_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    cpu_millicores BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    disk_bytes BIGINT NOT NULL,
    net_rx_bps BIGINT NOT NULL,
    net_tx_bps BIGINT NOT NULL,
    gpu_util_permille BIGINT,
    gpu_memory_bytes BIGINT,
    PRIMARY KEY (instance_id, at)
);
CREATE INDEX instance_metrics_at ON instance_metrics(at);
