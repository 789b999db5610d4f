-- Liveness bound to each replica's Postgres session (docs/ownership.md,
-- "Liveness"). Owned by the runner package.
--
-- Each replica process holds the session-level advisory lock
-- pg_advisory_lock(1634168436, liveness_key) on a connection of its own (the
-- liveness connection) and records the key here. Postgres releases the lock
-- when that backend ends (the process died, or the connection broke), so a
-- peer that has watched the lock held and then missing, for a grace longer
-- than the replica's own liveness deadline, may take its shards before their
-- leases expire. The key is new for every liveness connection (the sequence),
-- never a hash of the runner id, so two replicas never share one.

-- +goose Up
CREATE SEQUENCE runner_liveness_keys AS integer MINVALUE 1 CYCLE;
ALTER TABLE runners ADD COLUMN liveness_key integer;

-- +goose Down
ALTER TABLE runners DROP COLUMN liveness_key;
DROP SEQUENCE runner_liveness_keys;
