-- Ownership of bots across the fleet of runner replicas (docs/architecture.md §5;
-- docs/ownership.md). Owned by the runner package.
--
-- runners       one row per live replica; heartbeat_at comes from Postgres now().
-- shard_leases  exactly N rows, one per shard, created here from
--               cluster_settings.shard_count (00001; fixed at install), the N
--               of bots.shard = fnv1a32(bot id) mod N.
-- bot_cursors   the highest update id acknowledged per bot, written only by the
--               shard's owner at its epoch.
-- handoffs      the Postgres-backed Handoff (dev and tests, before Temporal):
--               one row per (bot, update), so "handed off once" is checkable.

-- +goose Up
CREATE TABLE runners (
    id           text        PRIMARY KEY CHECK (id <> '' AND length(id) <= 200),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining     boolean     NOT NULL DEFAULT false,
    version      text        NOT NULL DEFAULT '',
    admin_addr   text        NOT NULL DEFAULT '',
    -- a random value per process: a second live process with the same id is
    -- refused instead of fighting the first over its leases
    incarnation  text        NOT NULL DEFAULT ''
);

CREATE TABLE shard_leases (
    shard       integer     PRIMARY KEY CHECK (shard >= 0),
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    claimed_at  timestamptz
);
CREATE INDEX shard_leases_owner ON shard_leases (owner) WHERE owner IS NOT NULL;

INSERT INTO shard_leases (shard)
SELECT generate_series(0, shard_count - 1) FROM cluster_settings;

-- Every change of a bot wakes the owner of its shard at once (LISTEN
-- agentrunner_bots); the runner's periodic full pass is the safety net.
-- +goose StatementBegin
CREATE FUNCTION agentrunner_bots_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    PERFORM pg_notify('agentrunner_bots',
        json_build_object('op', lower(TG_OP), 'bot_id', r.id, 'shard', r.shard)::text);
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER bots_notify AFTER INSERT OR UPDATE OR DELETE ON bots
    FOR EACH ROW EXECUTE FUNCTION agentrunner_bots_notify();

-- A rotated or rewrapped token: the owner drops its cached plaintext.
-- +goose StatementBegin
CREATE FUNCTION agentrunner_secret_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentrunner_bots',
        json_build_object('op', 'token', 'bot_id', NEW.bot_id,
                          'shard', (SELECT shard FROM bots WHERE id = NEW.bot_id))::text);
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER secret_vault_notify AFTER UPDATE ON secret_vault
    FOR EACH ROW EXECUTE FUNCTION agentrunner_secret_notify();

CREATE TABLE bot_cursors (
    bot_id          text        PRIMARY KEY REFERENCES bots (id) ON DELETE CASCADE,
    acked_update_id text        NOT NULL CHECK (acked_update_id ~ '^(0|[1-9][0-9]{0,63})$'),
    shard           integer     NOT NULL,
    owner           text        NOT NULL,
    epoch           bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE handoffs (
    bot_id      text        NOT NULL,
    update_id   text        NOT NULL CHECK (update_id ~ '^(0|[1-9][0-9]{0,63})$'),
    chat_id     text        NOT NULL DEFAULT '',
    payload     jsonb       NOT NULL,
    runner_id   text        NOT NULL DEFAULT '',
    handed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts    integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (bot_id, update_id)
);

-- +goose Down
DROP TABLE handoffs;
DROP TABLE bot_cursors;
DROP TRIGGER secret_vault_notify ON secret_vault;
DROP FUNCTION agentrunner_secret_notify();
DROP TRIGGER bots_notify ON bots;
DROP FUNCTION agentrunner_bots_notify();
DROP TABLE shard_leases;
DROP TABLE runners;
