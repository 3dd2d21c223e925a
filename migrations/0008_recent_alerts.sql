-- The dashboard's alerts page and its live stream ask for the newest alerts of
-- all events every second: without this index each poll sorts the whole table
-- (10 ms at 44 000 alerts here, and linear in the table). Alert rows are a few
-- per cent of the messages, so the index costs the writer little.
CREATE INDEX IF NOT EXISTS price_alerts_recent ON price_alerts (observed_at DESC, alert_id DESC);
