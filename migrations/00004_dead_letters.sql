-- Dead letters (docs/sessions.md, docs/admin.md): updates a session could not
-- hand off — they did not decode, or the processing side refused them for
-- good — kept here before they were acked, so nothing acknowledged to Buko is
-- lost. Owned by the runner package (runner/deadletter.go).
--
-- dead_letters  one row per kept update. payload is the raw update (or
--               Gateway frame) sealed with the payload codec (AES-256-GCM,
--               the keys of Temporal payloads) and bound to its bot and
--               update id; no column ever holds a bot token. reason is a short
--               category; error is scrubbed and bounded. A redelivery of the
--               same (bot_id, update_id) does not add a row. replayed_at is
--               set once `agentrunner dead-letters replay` handed it off;
--               replay_error keeps the last failed attempt's reason.

-- +goose Up
CREATE TABLE dead_letters (
    id            bigserial   PRIMARY KEY,
    bot_id        text        NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    update_id     text,
    chat_id       text,
    reason        text        NOT NULL,
    error         text        NOT NULL DEFAULT '',
    payload       bytea       NOT NULL,
    payload_bytes integer     NOT NULL,
    received_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz,
    replay_error  text
);
CREATE UNIQUE INDEX dead_letters_bot_update ON dead_letters (bot_id, update_id) WHERE update_id IS NOT NULL;
CREATE INDEX dead_letters_pending ON dead_letters (bot_id, id) WHERE replayed_at IS NULL;

-- +goose Down
DROP TABLE dead_letters;
