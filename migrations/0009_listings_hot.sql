-- Listings are rewritten at nearly every message (a new price, or at least a new
-- observed_at), so each update should be HOT: no new index entries, the old
-- version pruned in place. That needs two things.
--
-- 1. No indexed column may change. `listings_get_in (event_id, currency, price)
--    WHERE available` put `price` and `available` in an index, so every price
--    change was a full update: a new heap tuple plus an entry in both indexes
--    (on a 100 000-listing replay, 244 of 813 052 updates were HOT, and 36 MB of
--    that index served 100 000 rows). Nothing reads it any more: get-in prices
--    come from `event_summary` / `section_summary`, the dashboard's listing
--    queries go by event through the primary key.
DROP INDEX IF EXISTS listings_get_in;

-- 2. Room on the page for the new version. A listing row is ~100 bytes: at 70 %
--    a page keeps ~24 rows' worth free for their next versions, and HOT pruning
--    reclaims the dead ones on the next visit, without VACUUM. Existing pages
--    keep their old fill until they are rewritten (VACUUM FULL / CLUSTER, taken
--    offline by whoever owns the database): new pages get the room at once.
ALTER TABLE listings SET (fillfactor = 70);

-- The summaries are updated in place at every commit that touches their key,
-- and only their primary key is indexed: the same room makes those updates HOT.
ALTER TABLE event_summary SET (fillfactor = 70);
ALTER TABLE section_summary SET (fillfactor = 70);
