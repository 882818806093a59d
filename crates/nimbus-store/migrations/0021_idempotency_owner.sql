-- An in-flight idempotency claim names the replica running it and how long it may run, and
-- records whether the request's change committed (set in the change's own transaction). A
-- claim whose replica died (its `replica/<id>` lease ran out) or that outlived `claim_until`,
-- with nothing committed, is taken over by the next request with the key; one whose change
-- committed is never run again (see nimbus-store's idempotency module).
ALTER TABLE idempotency_keys ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ADD COLUMN claim_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE idempotency_keys ADD COLUMN committed BIGINT NOT NULL DEFAULT 0;
