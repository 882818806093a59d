-- Console sessions: the web console's sign-in, held in an HttpOnly cookie whose secret is
-- stored here only as its SHA-256. A tenant session acts with its API key's permissions (and
-- ends with the key); an operator session (api_key_id NULL, operator = 1) comes from a
-- one-use login link printed by `nimbus admin console-link`. `csrf` is the token every
-- mutating request of the session must echo in X-CSRF-Token. Times are µs since the epoch.
CREATE TABLE console_sessions (
    secret_hash TEXT PRIMARY KEY,
    api_key_id TEXT,
    operator BIGINT NOT NULL DEFAULT 0,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions(expires_at);

-- One-use operator login links: the link's secret, hashed, until it is used or expires.
CREATE TABLE console_links (
    secret_hash TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
