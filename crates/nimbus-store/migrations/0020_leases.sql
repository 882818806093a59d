-- Leases of the server's background loops (host liveness, clusters, spend limits, metering):
-- one holder at a time, until `until` (µs since the epoch). `generation` grows by one at every
-- change of holder; a holder's transactions prove (holder, generation) first, so a holder that
-- was paused past its lease and replaced cannot write (see nimbus-store's leases module).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT,
    generation BIGINT NOT NULL,
    until BIGINT NOT NULL
);
