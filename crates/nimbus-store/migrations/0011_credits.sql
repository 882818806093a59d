-- Credits granted to an organization (append-only, like the charges): they lower its balance.
CREATE TABLE ledger_credits (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    amount_micros BIGINT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_credits_org ON ledger_credits(org_id, created_at);
