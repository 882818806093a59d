-- WireGuard VPNs (native API). One gateway per VPN on one host; tunnel_index picks its /24 of
-- 10.201.0.0/16 and is unique per host.
CREATE TABLE vpns (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    tunnel_index BIGINT NOT NULL,
    listen_port BIGINT NOT NULL,
    gateway_private_key TEXT NOT NULL,
    gateway_public_key TEXT NOT NULL,
    client_public_key TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    endpoint TEXT,
    network TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name),
    UNIQUE (host_id, tunnel_index)
);
