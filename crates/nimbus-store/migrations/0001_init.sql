-- Nimbus schema v1. One text for SQLite and PostgreSQL: only portable types are used (TEXT,
-- BIGINT; times are microseconds since the Unix epoch, UTC; JSON is TEXT). @SERIAL_PK@ is the
-- only per-backend token, replaced by the migration runner.

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    global_firewall_rules TEXT NOT NULL,
    -- Bumped in every transaction that changes one of the org's instances; list caches key on it.
    instances_generation BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    permissions BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_org ON api_keys(org_id);

CREATE TABLE host_tokens (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    token_id TEXT NOT NULL REFERENCES host_tokens(id),
    -- Stable identity reported by the agent, so that a re-registering agent gets its host back.
    machine_id TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL,
    cpu_model TEXT NOT NULL,
    vcpus_total BIGINT NOT NULL,
    memory_mib_total BIGINT NOT NULL,
    disk_gib_total BIGINT NOT NULL,
    vcpus_used BIGINT NOT NULL DEFAULT 0,
    memory_mib_used BIGINT NOT NULL DEFAULT 0,
    disk_gib_used BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    -- Bumped whenever the set of instances the host should run changes; agents long-poll on it.
    desired_generation BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    UNIQUE (token_id, machine_id)
);
CREATE INDEX hosts_region ON hosts(region, status);

CREATE TABLE host_gpus (
    host_id TEXT NOT NULL REFERENCES hosts(id),
    idx BIGINT NOT NULL,
    model TEXT NOT NULL,
    memory_mib BIGINT NOT NULL,
    uuid TEXT NOT NULL,
    instance_id TEXT,
    PRIMARY KEY (host_id, idx)
);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    family TEXT NOT NULL,
    version TEXT NOT NULL,
    architecture TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE ssh_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE file_systems (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    mount_point TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE firewall_rulesets (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    rules TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT,
    hostname TEXT NOT NULL,
    state TEXT NOT NULL,
    region TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    host_id TEXT REFERENCES hosts(id),
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    gpu_indices TEXT NOT NULL,
    image_id TEXT NOT NULL,
    ssh_key_names TEXT NOT NULL,
    ssh_public_keys TEXT NOT NULL,
    user_data TEXT,
    tags TEXT NOT NULL,
    file_system_mounts TEXT NOT NULL,
    firewall_ruleset_ids TEXT NOT NULL,
    ip TEXT,
    private_ip TEXT,
    restart_generation BIGINT NOT NULL DEFAULT 0,
    generation BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    terminated_at BIGINT
);
CREATE INDEX instances_org ON instances(org_id, state);
CREATE INDEX instances_host ON instances(host_id, state);

-- Which live instances mount which file system / use which ruleset; rows are removed when the
-- instance terminates, so "in use" is a plain existence check.
CREATE TABLE instance_file_systems (
    instance_id TEXT NOT NULL REFERENCES instances(id),
    file_system_id TEXT NOT NULL REFERENCES file_systems(id),
    PRIMARY KEY (instance_id, file_system_id)
);
CREATE INDEX instance_file_systems_fs ON instance_file_systems(file_system_id);

CREATE TABLE instance_firewall_rulesets (
    instance_id TEXT NOT NULL REFERENCES instances(id),
    ruleset_id TEXT NOT NULL REFERENCES firewall_rulesets(id),
    PRIMARY KEY (instance_id, ruleset_id)
);
CREATE INDEX instance_firewall_rulesets_rs ON instance_firewall_rulesets(ruleset_id);

-- The outbox: every state change appends here in its own transaction. Audit events, webhooks
-- and metrics read from it.
CREATE TABLE events (
    seq @SERIAL_PK@,
    id TEXT NOT NULL UNIQUE,
    org_id TEXT,
    kind TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    actor_key_id TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_org ON events(org_id, seq);
