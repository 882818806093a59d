-- Metering: usage intervals, opened and closed in the transactions of the state changes that
-- cause them (at most one open interval per resource and kind), and the ledger of hourly
-- charges rolled up from them (one row per interval and hour, so a repeated roll-up is a no-op).
CREATE TABLE usage_intervals (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    rate_micros_per_hour BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX usage_intervals_org ON usage_intervals(org_id, started_at);
CREATE INDEX usage_intervals_resource ON usage_intervals(resource_id, ended_at);

CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    interval_id TEXT NOT NULL REFERENCES usage_intervals(id),
    -- Unix seconds of the hour this charge covers.
    hour_start BIGINT NOT NULL,
    seconds BIGINT NOT NULL,
    amount_micros BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (interval_id, hour_start)
);
CREATE INDEX ledger_entries_org ON ledger_entries(org_id, hour_start);

-- How far (Unix seconds, an hour boundary) the hourly roll-up has gone.
CREATE TABLE metering_cursor (
    name TEXT PRIMARY KEY,
    rolled_until BIGINT NOT NULL
);
