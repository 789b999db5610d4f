-- The durable per-chat dedupe watermark of the chat workflows
-- (docs/workflows.md, "Dedupe"). Owned by the worker (runner.ChatMarks).
--
-- chat_watermarks  per chat, the highest update id its chat workflow handled:
--                  written before a workflow ends for quiet time (only when it
--                  grew), read when a fresh workflow of the chat starts, so an
--                  update redelivered however late is not answered twice.

-- +goose Up
CREATE TABLE chat_watermarks (
    bot_id         text        NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    chat_id        text        NOT NULL CHECK (chat_id <> '' AND length(chat_id) <= 1000),
    last_update_id text        NOT NULL CHECK (last_update_id ~ '^(0|[1-9][0-9]{0,63})$'),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id)
);

-- +goose Down
DROP TABLE chat_watermarks;
