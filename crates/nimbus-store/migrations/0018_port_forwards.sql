-- Port forwards an instance's owner opened (issue 17, the Voltage Park dialect's port_forwards):
-- a port of the host's public address to a port of the instance. A host port is forwarded at
-- most once; an instance forwards each of its ports at most once. The SSH forward of a launch
-- stays in instances.ssh_port. Rows of a terminated instance are removed with it.
CREATE TABLE port_forwards (
    host_id TEXT NOT NULL,
    external_port BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    internal_port BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (host_id, external_port),
    UNIQUE (instance_id, internal_port)
);
