-- price_history partitioned by month of observed_at (issue 13): a year of
-- history is a dozen tables, and retention (`conscope history prune`) drops
-- whole ones instead of deleting rows. The primary key includes observed_at,
-- the partition key, so it is enforced across the whole table as before.
--
-- Partitions are created on demand, by the writer (for the months of the rows
-- it writes) and below (for the months of the rows already stored), through
-- price_history_ensure_months. There is no DEFAULT partition: rows in it would
-- block creating the partition of their month later, and every row's month is
-- made to exist before it is written.

-- The rows of an unpartitioned table move to the partitioned one, in this
-- transaction: nothing is lost if the migration fails half-way.
ALTER TABLE price_history RENAME TO price_history_unpartitioned;
ALTER TABLE price_history_unpartitioned RENAME CONSTRAINT price_history_pkey TO price_history_unpartitioned_pkey;

CREATE TABLE price_history (
    -- names a row of events; the job keeps that true (0006 dropped the
    -- row-by-row foreign-key check).
    event_id    TEXT NOT NULL,
    section     TEXT NOT NULL,
    "row"       TEXT NOT NULL,
    seat        TEXT NOT NULL,
    source      TEXT NOT NULL,
    price       NUMERIC(12,2) NOT NULL,
    currency    CHAR(3) NOT NULL,
    available   BOOLEAN NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    -- The identity (SPEC §1). Kept as a B-tree: dedup's ON CONFLICT needs it,
    -- and the dashboard reads one listing's history through it.
    PRIMARY KEY (event_id, section, "row", seat, source, observed_at)
) PARTITION BY RANGE (observed_at);

-- Time-range reads that name no listing (how much history a month holds, what
-- `history prune` keeps of a month it cannot drop) scan a range of blocks: rows
-- arrive in roughly time order, so a BRIN index of a few pages serves them
-- where a B-tree over the whole table would cost every insert an index entry.
-- autosummarize: ranges are summarised as they fill, not only at VACUUM, so the
-- newest data is not read whole by every such query.
CREATE INDEX price_history_observed_at ON price_history USING brin (observed_at)
    WITH (autosummarize = on);

-- The earliest time price_history still takes rows for: `history prune`
-- raises it to the start of the oldest month it kept; the writer drops (and
-- counts as stale) rows observed before it. One row; NULL: nothing pruned.
CREATE TABLE history_retention (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_before TIMESTAMPTZ
);
INSERT INTO history_retention (id, pruned_before) VALUES (1, NULL);

-- Makes the partition of each month in `months` (any time in the month; UTC
-- months) exist; returns how many it created. A partition is made as a table
-- LIKE the parent and then attached: ATTACH PARTITION takes SHARE UPDATE
-- EXCLUSIVE on price_history, which neither reads nor writes of price_history
-- wait for (CREATE TABLE … PARTITION OF would take ACCESS EXCLUSIVE, stalling
-- every dashboard read until the writer's transaction ends). Taking that lock
-- first serialises two callers, so the existence check holds until the attach.
-- SECURITY DEFINER: ATTACH PARTITION needs the owner of price_history (the
-- role that ran the migrations), and a job usually runs as a role that may only
-- read and write rows. The search_path is the migration's own (FROM CURRENT),
-- so a caller's search_path cannot redirect the names inside, and a job in a
-- schema of its own (`options=-csearch_path=...`) still gets its own tables.
CREATE FUNCTION price_history_ensure_months(months TIMESTAMPTZ[]) RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    parent  regclass := 'price_history'::regclass;
    schema  name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = parent);
    month   TIMESTAMP;
    part    TEXT;
    created INTEGER := 0;
BEGIN
    LOCK TABLE price_history IN SHARE UPDATE EXCLUSIVE MODE;
    FOR month IN SELECT DISTINCT date_trunc('month', m AT TIME ZONE 'UTC') FROM unnest(months) AS m
                 WHERE m IS NOT NULL ORDER BY 1
    LOOP
        part := 'price_history_p' || to_char(month, 'YYYYMM');
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                              WHERE i.inhparent = parent AND c.relname = part);
        EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING ALL)', schema, part, parent);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                       parent, schema, part,
                       month AT TIME ZONE 'UTC', (month + interval '1 month') AT TIME ZONE 'UTC');
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

SELECT price_history_ensure_months(ARRAY(
    SELECT DISTINCT date_trunc('month', observed_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    FROM price_history_unpartitioned));

INSERT INTO price_history (event_id, section, "row", seat, source, price, currency, available, observed_at)
SELECT event_id, section, "row", seat, source, price, currency, available, observed_at
FROM price_history_unpartitioned;

DROP TABLE price_history_unpartitioned;

-- `conscope history prune` drops partitions through this, by oid: it drops a
-- partition of price_history and nothing else, whatever it is given.
CREATE FUNCTION price_history_drop_partition(part regclass) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = part AND inhparent = 'price_history'::regclass) THEN
        RAISE EXCEPTION '% is not a partition of price_history', part;
    END IF;
    EXECUTE format('DROP TABLE %s', part);
END $$;
