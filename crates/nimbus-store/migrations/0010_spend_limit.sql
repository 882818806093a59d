-- Monthly spend limit per organization (US cents), what happens when it is reached (`stop`
-- compute or `notify` only), and the month (`YYYY-MM`) it was last acted on.
ALTER TABLE orgs ADD COLUMN spend_limit_cents BIGINT;
ALTER TABLE orgs ADD COLUMN spend_limit_action TEXT NOT NULL DEFAULT 'notify';
ALTER TABLE orgs ADD COLUMN spend_limit_reached TEXT;
