-- +goose Up
-- The managed bots, their encrypted tokens, and the audit trail of every
-- operator action and every non-session read of a token (docs/architecture.md §7).

-- cluster_settings holds install-time constants in exactly one row.
-- shard_count is N in bots.shard = fnv1a32(bot id) mod N; it is fixed at install
-- (changing it would move every bot to another shard).
CREATE TABLE cluster_settings (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    shard_count integer NOT NULL DEFAULT 128 CHECK (shard_count BETWEEN 1 AND 65536)
);
INSERT INTO cluster_settings (id) VALUES (true);

CREATE TABLE bots (
    id           text PRIMARY KEY CHECK (id <> ''),            -- Buko's bot id, from getMe
    handle       text NOT NULL CHECK (handle <> ''),
    display_name text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'active'
                 CHECK (status IN ('active', 'paused', 'disabled', 'auth_failed')),
    delivery     text NOT NULL DEFAULT 'gateway' CHECK (delivery IN ('gateway', 'polling')),
    agent        text NOT NULL DEFAULT 'echo' CHECK (agent <> ''),
    agent_config jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(agent_config) = 'object'),
    quota_tier   text NOT NULL DEFAULT '',
    shard        integer NOT NULL CHECK (shard >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- Handles are unique whatever their case.
CREATE UNIQUE INDEX bots_handle_key ON bots (lower(handle));
-- The runner lists the bots of the shards it owns.
CREATE INDEX bots_shard_idx ON bots (shard);

-- One encrypted token per bot. The ciphertext is bound to bot_id (Transit
-- derivation context / AES-GCM associated data): copied onto another bot it
-- does not decrypt.
CREATE TABLE secret_vault (
    bot_id     text PRIMARY KEY REFERENCES bots (id) ON DELETE CASCADE,
    ciphertext text NOT NULL CHECK (ciphertext <> ''),
    key_ref    text NOT NULL CHECK (key_ref <> ''),             -- which cipher and key sealed it
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz                                      -- last token rotation
);

-- Never holds a token. bot_id is not a foreign key: the trail outlives the bot.
CREATE TABLE audit_log (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    bot_id text,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_bot_idx ON audit_log (bot_id, at);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE secret_vault;
DROP TABLE bots;
DROP TABLE cluster_settings;
