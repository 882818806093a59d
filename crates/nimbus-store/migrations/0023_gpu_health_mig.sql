-- GPU health and MIG devices (issue 20). A GPU's health is what its agent last reported
-- (nimbus_core::gpu_health::Condition); `clean` says it was checked idle (and reset) since its
-- last instance let it go, which a release undoes: `released_generation` is the host's desired
-- generation then, and only a report that applied it may call the GPU clean again.
ALTER TABLE host_gpus ADD COLUMN health TEXT NOT NULL DEFAULT 'ok';
ALTER TABLE host_gpus ADD COLUMN health_reasons TEXT NOT NULL DEFAULT '[]';
ALTER TABLE host_gpus ADD COLUMN health_since BIGINT NOT NULL DEFAULT 0;
ALTER TABLE host_gpus ADD COLUMN clean BIGINT NOT NULL DEFAULT 1;
ALTER TABLE host_gpus ADD COLUMN released_generation BIGINT NOT NULL DEFAULT 0;

-- MIG devices an operator made of a host's GPUs, as its agent reports them; an instance of a
-- MIG type holds some (`instance_id`).
CREATE TABLE host_mig_devices (
    host_id TEXT NOT NULL REFERENCES hosts(id),
    uuid TEXT NOT NULL,
    parent_idx BIGINT NOT NULL,
    profile TEXT NOT NULL,
    memory_mib BIGINT NOT NULL,
    gpu_instance_id BIGINT NOT NULL,
    compute_instance_id BIGINT NOT NULL,
    instance_id TEXT,
    PRIMARY KEY (host_id, uuid)
);
CREATE INDEX host_mig_devices_instance ON host_mig_devices(instance_id);
