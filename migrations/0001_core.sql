-- conscope schema: SPEC §3 tables plus the job's own bookkeeping.
-- Never schema-qualified, so `--database-url ...?options=-csearch_path%3Dx` gives
-- one job its own schema.

CREATE TABLE events (
    event_id          TEXT PRIMARY KEY,
    event_name        TEXT NOT NULL,
    venue             TEXT,
    event_date        TIMESTAMPTZ,
    first_seen        TIMESTAMPTZ NOT NULL,
    last_seen         TIMESTAMPTZ NOT NULL,
    -- When each optional field was last set: "taken from the most recent
    -- observation that carried it" must survive restarts.
    event_name_observed_at TIMESTAMPTZ,
    venue_observed_at      TIMESTAMPTZ,
    event_date_observed_at TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE price_history (
    event_id    TEXT NOT NULL REFERENCES events (event_id),
    section     TEXT NOT NULL,
    "row"       TEXT NOT NULL,
    seat        TEXT NOT NULL,
    source      TEXT NOT NULL,
    price       NUMERIC(12,2) NOT NULL,
    currency    CHAR(3) NOT NULL,
    available   BOOLEAN NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_id, section, "row", seat, source, observed_at)
);

CREATE TABLE listings (
    event_id    TEXT NOT NULL REFERENCES events (event_id),
    section     TEXT NOT NULL,
    "row"       TEXT NOT NULL,
    seat        TEXT NOT NULL,
    source      TEXT NOT NULL,
    price       NUMERIC(12,2) NOT NULL,
    currency    CHAR(3) NOT NULL,
    available   BOOLEAN NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_id, section, "row", seat, source)
);
CREATE INDEX listings_get_in ON listings (event_id, currency, price) WHERE available;

CREATE TABLE alert_rules (
    rule_id    BIGSERIAL PRIMARY KEY,
    event_id   TEXT NOT NULL,
    section    TEXT,
    currency   CHAR(3) NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    max_price  NUMERIC(12,2) NOT NULL CHECK (max_price > 0),
    active     BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a rule's arming state depends on: a state saved for another definition
-- (the rule was edited while the job was down) is not restored.
CREATE FUNCTION rule_definition(r alert_rules) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT concat_ws('|', r.event_id, coalesce(r.section, '*'), r.currency, r.max_price::text)
$$;

-- Written by the job only, in its commit transaction: whether a rule's scope is
-- at or below max_price (fired, waiting to re-arm), and for which definition.
CREATE TABLE rule_state (
    rule_id    BIGINT PRIMARY KEY REFERENCES alert_rules (rule_id) ON DELETE CASCADE,
    below      BOOLEAN NOT NULL,
    definition TEXT NOT NULL
);

CREATE TABLE price_alerts (
    alert_id    TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('listing_drop', 'event_low', 'rule_match')),
    event_id    TEXT NOT NULL REFERENCES events (event_id),
    section     TEXT NOT NULL,
    "row"       TEXT NOT NULL,
    seat        TEXT NOT NULL,
    source      TEXT NOT NULL,
    rule_id     BIGINT,
    old_price   NUMERIC(12,2),
    new_price   NUMERIC(12,2) NOT NULL,
    currency    CHAR(3) NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX price_alerts_event ON price_alerts (event_id, observed_at);

-- Next offset to read per input partition, committed with the rows derived from
-- the messages before it.
CREATE TABLE kafka_offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- One row: the number of the last commit. Each commit moves it by exactly one,
-- which makes a retried commit idempotent and fences off a second writer.
CREATE TABLE job_progress (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    commit_no BIGINT NOT NULL,
    -- Tags what this database's outbox published, so recovery never mistakes
    -- another job's messages on a shared topic for its own.
    job_id    UUID NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO job_progress (id, commit_no) VALUES (1, 0);

-- Messages to publish once their transaction is durable (alerts, dead letters).
-- Rows are deleted once the broker acknowledged them.
CREATE TABLE outbox (
    seq          BIGSERIAL PRIMARY KEY,
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    key          BYTEA,
    payload      BYTEA,
    headers      TEXT[] NOT NULL DEFAULT '{}',
    committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
