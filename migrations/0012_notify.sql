-- conscope notify (SPEC §3, §7): where alerts go (channels), which alerts go
-- where (routes), and what was delivered (deliveries, one row per alert and
-- channel: the notifier's exactly-once ledger).
CREATE TABLE notify_channels (
    channel_id   BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE CHECK (name <> ''),
    kind         TEXT NOT NULL
                 CHECK (kind IN ('webhook', 'slack', 'discord', 'telegram', 'ntfy', 'email')),
    -- A URL (webhook, slack, discord, ntfy), a chat id (telegram), an address (email).
    target       TEXT NOT NULL CHECK (target <> ''),
    -- The NAME of the notifier's environment variable holding the secret;
    -- secrets themselves never live in the database.
    secret_env   TEXT CHECK (secret_env ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    -- NULL = no cap.
    max_per_hour INTEGER CHECK (max_per_hour > 0),
    active       BOOLEAN NOT NULL DEFAULT true,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE notify_routes (
    route_id   BIGSERIAL PRIMARY KEY,
    channel_id BIGINT NOT NULL REFERENCES notify_channels (channel_id),
    -- NULL = every alert kind. Kinds are free text: the job may add new ones.
    kinds      TEXT[] CHECK (kinds IS NULL OR cardinality(kinds) > 0),
    event_id   TEXT,
    rule_id    BIGINT,
    active     BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX notify_routes_channel ON notify_routes (channel_id);

-- No foreign key to price_alerts: the notifier reads alerts from the topic,
-- and a topic may be replayed into a database that never held them.
CREATE TABLE notify_deliveries (
    alert_id   TEXT NOT NULL,
    channel_id BIGINT NOT NULL REFERENCES notify_channels (channel_id),
    status     TEXT NOT NULL CHECK (status IN ('sent', 'failed', 'digested')),
    attempts   INTEGER NOT NULL CHECK (attempts >= 0),
    last_error TEXT,
    sent_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, channel_id)
);
-- The rate cap counts a channel's messages of the current hour at start.
CREATE INDEX notify_deliveries_channel_time ON notify_deliveries (channel_id, sent_at);
