-- Clusters (the CockroachDB-Cloud-shaped API): N instances placed together and managed as one.
-- Nodes are instances (instances.cluster_id); a cluster row is inserted in the launch
-- transaction that places all of its nodes, or on its own when it fails or waits for capacity.
CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    -- SERVERLESS | DEDICATED
    plan TEXT NOT NULL,
    -- CREATING | CREATED | FAILED | DELETED
    state TEXT NOT NULL,
    operation_status TEXT NOT NULL,
    -- JSON: [[region, node count], ...]
    region_nodes TEXT NOT NULL,
    machine_type TEXT NOT NULL,
    spend_limit_cents BIGINT,
    -- The month (YYYY-MM) the spend limit was last reached and acted on.
    spend_limit_reached TEXT,
    wait_for_capacity BIGINT NOT NULL DEFAULT 0,
    -- JSON: the SSH key names put on every node (a waiting cluster places them later).
    ssh_key_names TEXT NOT NULL DEFAULT '[]',
    creator_id TEXT NOT NULL,
    message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX clusters_org ON clusters(org_id, state);
ALTER TABLE instances ADD COLUMN cluster_id TEXT;
CREATE INDEX instances_cluster ON instances(cluster_id);
