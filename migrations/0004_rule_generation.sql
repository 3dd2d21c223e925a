-- `conscope rules enable` starts a rule afresh: each enable is a new generation
-- of the rule, and an arming state saved for another generation is never
-- restored. A running job treats a re-enabled rule as a new one (it fires at
-- once when its scope is already low enough); a restart must do the same, also
-- when the rule was disabled and enabled again while the job was down or
-- between two of its polls.
ALTER TABLE alert_rules ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- Generation 0 keeps the definition text it always had, so arming states saved
-- before this migration are still restored.
CREATE OR REPLACE FUNCTION rule_definition(r alert_rules) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT concat_ws('|', r.event_id, coalesce(r.section, '*'), r.currency, r.max_price::text)
        || CASE WHEN r.generation > 0 THEN '|gen ' || r.generation::text ELSE '' END
$$;
