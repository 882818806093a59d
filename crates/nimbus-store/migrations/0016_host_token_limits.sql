-- Host tokens expire and have a number of uses (issue 16). A token is usable only while
-- `uses_left > 0` and `expires_at` (µs) is in the future; registration spends one use in its
-- own transaction. The defaults make a token inserted without limits unusable, and retire the
-- tokens minted before this migration (which never expired): hosts registered with them keep
-- working with their host secret, new hosts need a new token.
ALTER TABLE host_tokens ADD COLUMN uses_left BIGINT NOT NULL DEFAULT 0;
ALTER TABLE host_tokens ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
-- A re-enrolment token names the one host it may take over (`nimbus admin hosts re-enrol`).
ALTER TABLE host_tokens ADD COLUMN host_id TEXT;
-- Registration looks a machine up by its id across tokens: one machine, one host.
CREATE INDEX hosts_machine_id ON hosts(machine_id);
