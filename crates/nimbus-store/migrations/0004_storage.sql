-- Volumes and snapshots (native API). Both are host-local: a volume's ext4 image and a
-- snapshot's copy live on one host, recorded in host_id (NULL for a volume that has never been
-- attached, hence never materialized). Rows are deleted outright; the host's agent deletes the
-- files once they are no longer in its desired set.

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    host_id TEXT REFERENCES hosts(id),
    instance_id TEXT REFERENCES instances(id),
    source_snapshot_id TEXT,
    -- What the host last reported: 1 when mounted in instance_id.
    mounted BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE INDEX volumes_host ON volumes(host_id);
CREATE INDEX volumes_instance ON volumes(instance_id);

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    source_type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    -- The source's size when taken: the least a restore gets.
    size_gib BIGINT NOT NULL,
    -- creating | available | failed
    state TEXT NOT NULL,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE INDEX snapshots_host ON snapshots(host_id);

ALTER TABLE instances ADD COLUMN source_snapshot_id TEXT;
