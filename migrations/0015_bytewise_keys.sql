-- The job's hot statements are index searches on text keys: the listings upsert
-- probes `(event_id, section, "row", seat, source)` once per listing per commit,
-- the history COPY inserts into a six-column key, the summaries and alerts into
-- theirs. Under the database's collation every one of those comparisons is a
-- locale-aware `strcoll` (even C.UTF-8 goes through libc), which showed up as
-- ~20 % of the writer's backend in `perf` (`varstr_cmp`, `_bt_compare`). These
-- columns are identifiers, not prose: byte order is all they need, equality is
-- the same under every deterministic collation, and with COLLATE "C" a
-- comparison is a `memcmp` and sorts get abbreviated keys. Measured on a
-- 100 000-listing replay of 1M messages: Postgres CPU 26.6 -> 24.4 s.
--
-- Every column that holds these identifiers changes, in every table, so joins
-- between tables keep using their indexes (a join between two collations
-- cannot). Names people read (event_name, venue) keep the database's collation.
-- On an existing database this rebuilds the indexes on those columns (no table
-- rewrite: the type stays text).

-- Foreign keys from listings, alerts and summaries to events go, as the one
-- from price_history did in 0006: PostgreSQL checked them row by row (a query
-- per inserted row). The job is their only writer and upserts an event's row
-- in the same transaction as, and before, anything that names it; the tests
-- check that every row's event exists.
ALTER TABLE listings DROP CONSTRAINT IF EXISTS listings_event_id_fkey;
ALTER TABLE price_alerts DROP CONSTRAINT IF EXISTS price_alerts_event_id_fkey;
ALTER TABLE event_summary DROP CONSTRAINT IF EXISTS event_summary_event_id_fkey;
ALTER TABLE section_summary DROP CONSTRAINT IF EXISTS section_summary_event_id_fkey;

ALTER TABLE events
    ALTER COLUMN event_id TYPE TEXT COLLATE "C";
ALTER TABLE listings
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN section TYPE TEXT COLLATE "C",
    ALTER COLUMN "row" TYPE TEXT COLLATE "C",
    ALTER COLUMN seat TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE CHAR(3) COLLATE "C";
ALTER TABLE price_history
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN section TYPE TEXT COLLATE "C",
    ALTER COLUMN "row" TYPE TEXT COLLATE "C",
    ALTER COLUMN seat TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE CHAR(3) COLLATE "C";
ALTER TABLE price_alerts
    ALTER COLUMN alert_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN section TYPE TEXT COLLATE "C",
    ALTER COLUMN "row" TYPE TEXT COLLATE "C",
    ALTER COLUMN seat TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE CHAR(3) COLLATE "C";
ALTER TABLE event_summary
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE CHAR(3) COLLATE "C";
ALTER TABLE section_summary
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN section TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE CHAR(3) COLLATE "C";
ALTER TABLE alert_rules
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN section TYPE TEXT COLLATE "C";
ALTER TABLE notify_routes
    ALTER COLUMN event_id TYPE TEXT COLLATE "C";
ALTER TABLE notify_deliveries
    ALTER COLUMN alert_id TYPE TEXT COLLATE "C";
