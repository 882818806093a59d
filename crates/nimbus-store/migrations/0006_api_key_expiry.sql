-- API keys created through the API may expire, and remember which key created them.
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN created_by TEXT;
