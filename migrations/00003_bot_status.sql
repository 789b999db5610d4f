-- Per-bot session state for the admin status page (docs/admin.md), so any
-- replica can show the whole fleet. Owned by the runner package.
--
-- bot_status  the last session state of each bot as its owner saw it, and its
--             last error, written by the shard's owner at its epoch (fenced,
--             throttled to the cursor flush; only rows that changed).

-- +goose Up
CREATE TABLE bot_status (
    bot_id        text        PRIMARY KEY REFERENCES bots (id) ON DELETE CASCADE,
    state         text        NOT NULL,
    cause         text        NOT NULL DEFAULT '',
    state_since   timestamptz NOT NULL,
    last_error    text        NOT NULL DEFAULT '',
    last_error_at timestamptz,
    shard         integer     NOT NULL,
    owner         text        NOT NULL,
    epoch         bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE bot_status;
