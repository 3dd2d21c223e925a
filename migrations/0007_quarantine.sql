-- Input messages PostgreSQL refused for good: the writer traced a definite
-- error (a check, a value out of range, ...) back to them. A replay rejects
-- each one to the dead-letter topic with `reason` instead of processing it.
CREATE TABLE quarantine (
    topic          TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       BIGINT NOT NULL,
    reason         TEXT NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
