-- SPEC §2b: rule kinds. Existing rules become `max_price` rules with no
-- hysteresis and no cooldown, which is what they always were.
ALTER TABLE alert_rules
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'max_price'
        CHECK (kind IN ('max_price', 'new_low', 'back_in_stock', 'deal')),
    -- Percent above max_price the lowest price must rise to re-arm.
    ADD COLUMN rearm_pct NUMERIC(5,2) NOT NULL DEFAULT 0
        CHECK (rearm_pct >= 0 AND rearm_pct <= 100),
    -- new_low's window; NULL means 30 days.
    ADD COLUMN window_days INTEGER CHECK (window_days BETWEEN 1 AND 365),
    ADD COLUMN deal_pct INTEGER CHECK (deal_pct BETWEEN 1 AND 90),
    -- Whole microseconds of event time: the job compares it with observation
    -- times, so months (of no fixed length) are refused.
    ADD COLUMN cooldown INTERVAL NOT NULL DEFAULT '0'
        CHECK (cooldown >= interval '0' AND cooldown <= interval '365 days'
               AND extract(month FROM cooldown) = 0
               AND extract(year FROM cooldown) = 0);

ALTER TABLE alert_rules ALTER COLUMN max_price DROP NOT NULL;

-- The columns each kind takes; the others stay NULL (or 0) so a rule's row
-- says what it does.
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_kind_columns CHECK (
    CASE kind
        WHEN 'max_price' THEN max_price IS NOT NULL AND window_days IS NULL AND deal_pct IS NULL
        WHEN 'new_low' THEN deal_pct IS NULL AND rearm_pct = 0
        WHEN 'back_in_stock' THEN window_days IS NULL AND deal_pct IS NULL AND rearm_pct = 0
        WHEN 'deal' THEN deal_pct IS NOT NULL AND max_price IS NULL AND window_days IS NULL
                         AND rearm_pct = 0
    END
);

-- What a rule's state depends on. A max_price rule without hysteresis or
-- cooldown keeps the text it always had, so states saved before this
-- migration are still restored; any other rule adds its kind and parameters.
CREATE OR REPLACE FUNCTION rule_definition(r alert_rules) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT concat_ws('|', r.event_id, coalesce(r.section, '*'), r.currency, r.max_price::text)
        || CASE WHEN r.kind <> 'max_price' OR r.rearm_pct <> 0 OR r.cooldown <> interval '0'
                THEN '|' || concat_ws('|', r.kind, 'rearm ' || r.rearm_pct::text,
                                      'window ' || r.window_days::text, 'deal ' || r.deal_pct::text,
                                      'cooldown ' || extract(epoch FROM r.cooldown)::text)
                ELSE '' END
        || CASE WHEN r.generation > 0 THEN '|gen ' || r.generation::text ELSE '' END
$$;

-- A rule's state beyond its arming flag (the last firing, a new_low window,
-- a deal rule's deals), as the job's RuleMemory in JSON; written with `below`
-- in the commit transaction.
ALTER TABLE rule_state ADD COLUMN memory JSONB;

ALTER TABLE price_alerts DROP CONSTRAINT price_alerts_kind_check;
ALTER TABLE price_alerts ADD CONSTRAINT price_alerts_kind_check CHECK (
    kind IN ('listing_drop', 'event_low', 'rule_match', 'new_low', 'back_in_stock', 'deal')
);
