-- Service accounts (seed 003): named principals of an organization whose API keys act with the
-- account's permissions, read through the account when a key authenticates. A deleted account
-- keeps its row (deleted_at) so that events and revoked keys can still name it; names are unique
-- among an organization's live accounts only.
CREATE TABLE service_accounts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    permissions BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX service_accounts_org ON service_accounts(org_id);
CREATE UNIQUE INDEX service_accounts_live_name ON service_accounts(org_id, name) WHERE deleted_at IS NULL;

-- A key of a service account; NULL for a key of the organization itself.
ALTER TABLE api_keys ADD COLUMN service_account_id TEXT REFERENCES service_accounts(id);
CREATE INDEX api_keys_service_account ON api_keys(service_account_id);
