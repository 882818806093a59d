-- Access and billing of Voltage Park-style virtual machines (they are instances like any other):
-- the host port forwarded to an instance's SSH port, what a stop costs while the reservation is
-- held ('storage' or 'reserved'), whether a stopped instance released its processors, memory and
-- GPUs ("disassociated"), and the address of each host that clients reach forwarded ports on.
ALTER TABLE instances ADD COLUMN ssh_port BIGINT;
ALTER TABLE instances ADD COLUMN stop_billing TEXT NOT NULL DEFAULT 'storage';
ALTER TABLE instances ADD COLUMN compute_released BIGINT NOT NULL DEFAULT 0;
-- One live instance per forwarded port and host (the launch allocates under the host's row lock;
-- this is the backstop).
CREATE UNIQUE INDEX instances_host_ssh_port ON instances(host_id, ssh_port) WHERE ssh_port IS NOT NULL AND state <> 'terminated';
ALTER TABLE hosts ADD COLUMN public_ip TEXT;

-- Bare-metal rentals (Voltage Park dialect): whole hosts, one instance per host ("node"), all
-- placed in one transaction. A node's price is fixed at provisioning (it is no catalog type).
CREATE TABLE rentals (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    network_type TEXT NOT NULL,
    sub_order TEXT,
    storage_id TEXT,
    tags TEXT NOT NULL,
    node_count BIGINT NOT NULL,
    gpus_per_node BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    terminated_at BIGINT
);
CREATE INDEX rentals_org ON rentals(org_id);
ALTER TABLE instances ADD COLUMN rental_id TEXT;
ALTER TABLE instances ADD COLUMN price_micros_per_hour BIGINT;
CREATE INDEX instances_rental ON instances(rental_id);
