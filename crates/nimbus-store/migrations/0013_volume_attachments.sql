-- Volumes attached to several instances (Voltage Park's shared storage), free-form display
-- names, and what the volume's host last reported (its state and bytes in use).
--
-- volume_attachments replaces volumes.instance_id and volumes.mounted: one row per instance a
-- volume is attached to, all on the volume's host (it is mounted once there and bound into each
-- instance). The old columns stay (SQLite cannot drop a column that is a foreign key) but are
-- cleared here and no longer read or written.

CREATE TABLE volume_attachments (
    volume_id TEXT NOT NULL REFERENCES volumes(id),
    instance_id TEXT NOT NULL REFERENCES instances(id),
    -- What the host last reported: 1 when mounted inside instance_id.
    mounted BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (volume_id, instance_id)
);
CREATE INDEX volume_attachments_instance ON volume_attachments(instance_id);

INSERT INTO volume_attachments (volume_id, instance_id, mounted, created_at)
    SELECT id, instance_id, mounted, updated_at FROM volumes WHERE instance_id IS NOT NULL;
UPDATE volumes SET instance_id = NULL, mounted = 0;

-- Shown instead of name where a dialect has free-form names; NULL for native volumes.
ALTER TABLE volumes ADD COLUMN display_name TEXT;
-- unreported | ready | failed (host_message says why), from the host's reports.
ALTER TABLE volumes ADD COLUMN host_state TEXT NOT NULL DEFAULT 'unreported';
ALTER TABLE volumes ADD COLUMN host_message TEXT;
-- Bytes in use in the volume's file system, as its host last measured them.
ALTER TABLE volumes ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;
-- Volumes placed before this migration have been on their host's desired set all along.
UPDATE volumes SET host_state = 'ready' WHERE host_id IS NOT NULL;
