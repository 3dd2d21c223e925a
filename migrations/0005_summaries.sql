-- SPEC §3 summaries, kept by the job (issue 8): written in the same transaction
-- as the listing rows they derive from, so they always equal the aggregates over
-- `listings` below. A key with no listing has no row.

CREATE TABLE event_summary (
    event_id     TEXT NOT NULL REFERENCES events (event_id),
    currency     CHAR(3) NOT NULL,
    -- The event's listings in this currency, and how many of them are available.
    listings     BIGINT NOT NULL CHECK (listings > 0),
    available    BIGINT NOT NULL CHECK (available BETWEEN 0 AND listings),
    -- The lowest price among the available ones; NULL when none is.
    get_in_price NUMERIC(12,2),
    PRIMARY KEY (event_id, currency)
);

CREATE TABLE section_summary (
    event_id  TEXT NOT NULL REFERENCES events (event_id),
    section   TEXT NOT NULL,
    currency  CHAR(3) NOT NULL,
    available BIGINT NOT NULL CHECK (available >= 0),
    -- The lowest available price in the section; NULL when none is available.
    low_price NUMERIC(12,2),
    PRIMARY KEY (event_id, section, currency)
);

-- A database that predates the summaries: the job restores `listings` at start
-- and assumes the stored summaries equal theirs (it does not rewrite them), so
-- they must be right from the moment the tables exist.
INSERT INTO event_summary (event_id, currency, listings, available, get_in_price)
SELECT event_id, currency, count(*), count(*) FILTER (WHERE available),
       min(price) FILTER (WHERE available)
FROM listings
GROUP BY event_id, currency;

INSERT INTO section_summary (event_id, section, currency, available, low_price)
SELECT event_id, section, currency, count(*) FILTER (WHERE available),
       min(price) FILTER (WHERE available)
FROM listings
GROUP BY event_id, section, currency;
