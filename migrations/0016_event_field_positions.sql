-- SPEC §2: each event field comes from the most recent observation that
-- carried it, ties going to the later message in partition order. The time
-- alone cannot say which of two carriers observed at one instant came later,
-- and the two may reach `events` in either order: the job's own event row and
-- the fields of a stale row (applied after its insert) are merged separately,
-- in one commit or in two. So each field keeps its carrier's position, and
-- both merges take a value only from a carrier greater in (observed_at,
-- partition, offset). Across partitions that order is an arbitrary tie-break,
-- but a deterministic one (producers key by event, so an event's messages
-- normally share a partition).
--
-- NULL: a value stored before this migration, whose carrier is not known; it
-- counts as the lowest position, so any carrier at the same time wins over it.
-- Nullable columns without a default: no table rewrite.
ALTER TABLE events
    ADD COLUMN event_name_partition INTEGER,
    ADD COLUMN event_name_offset BIGINT,
    ADD COLUMN venue_partition INTEGER,
    ADD COLUMN venue_offset BIGINT,
    ADD COLUMN event_date_partition INTEGER,
    ADD COLUMN event_date_offset BIGINT;

-- Whether the carrier `new` of a field wins over the stored carrier `old`:
-- never when `new` carried nothing (a NULL time), always when nothing is
-- stored. The one place of the rule for both merges; a single SQL
-- expression, so PostgreSQL inlines it into the statement.
CREATE FUNCTION event_field_wins(
    new_at TIMESTAMPTZ, new_partition INTEGER, new_offset BIGINT,
    old_at TIMESTAMPTZ, old_partition INTEGER, old_offset BIGINT
) RETURNS BOOLEAN LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT new_at IS NOT NULL AND (
        old_at IS NULL
        OR (new_at, coalesce(new_partition, -1), coalesce(new_offset, -1))
           > (old_at, coalesce(old_partition, -1), coalesce(old_offset, -1)))
$$;
