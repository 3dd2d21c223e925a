-- Outbox rows the broker refused for good (message too large for the topic,
-- invalid record, not authorized, ...). The publisher moves a row here, with
-- the reason, instead of retrying it ahead of everything else: later alerts and
-- dead letters go on. To try one again (after raising the topic's
-- max.message.bytes, say), move it back:
--   WITH moved AS (DELETE FROM outbox_parked WHERE seq = $1 RETURNING *)
--   INSERT INTO outbox (seq, topic, partition, key, payload, headers, committed_at)
--   SELECT seq, topic, partition, key, payload, headers, committed_at FROM moved;
CREATE TABLE outbox_parked (
    seq          BIGINT PRIMARY KEY,
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    key          BYTEA,
    payload      BYTEA,
    headers      TEXT[] NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL,
    parked_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    park_error   TEXT NOT NULL
);
