-- Webhooks: subscriptions, one delivery per (webhook, event) with its attempts, and the
-- dispatcher's durable cursor over the outbox.

-- The secret is kept as given: signing needs it. It is returned once, at creation.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    url TEXT NOT NULL,
    -- JSON array of event types and wildcards (`instance.*`, `*`).
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks(org_id, created_at);

-- The unique (webhook_id, event_id) makes the fan-out idempotent: a dispatcher that crashed
-- before advancing its cursor re-inserts nothing. `body` is the exact JSON sent (each attempt
-- signs it with a fresh timestamp). While an attempt is in flight, `lease_owner` names it and
-- `next_attempt_at` is the end of its lease, so no other sender picks the row before then.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id),
    org_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_status BIGINT,
    last_error TEXT,
    next_attempt_at BIGINT,
    lease_owner TEXT,
    give_up_at BIGINT NOT NULL,
    event_created_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE INDEX webhook_deliveries_log ON webhook_deliveries(webhook_id, created_at);

-- No foreign key here: an attempt recorded while its webhook is being deleted may outlive it,
-- harmlessly, instead of failing the deletion.
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    status BIGINT,
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts(webhook_id);

-- One row: every event with seq <= last_seq has been fanned out. The replica whose lease is
-- live (owner, lease_until) is the only one dispatching.
CREATE TABLE webhook_dispatch (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    owner TEXT,
    lease_until BIGINT NOT NULL
);
INSERT INTO webhook_dispatch (id, last_seq, owner, lease_until) SELECT 1, COALESCE(MAX(seq), 0), NULL, 0 FROM events;
