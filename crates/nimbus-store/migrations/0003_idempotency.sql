-- Idempotency keys: the first request with a key claims the row (status NULL while it runs),
-- then stores its response; repeats replay it byte for byte. Scoped per API key; kept 24 h.
CREATE TABLE idempotency_keys (
    api_key_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT,
    content_type TEXT,
    body TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (api_key_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
