//! The `rule_state` table: each rule's last state in the batch (below its
//! threshold or not), the rule's definition (`rule_definition`), and the rest
//! of the state of rules of SPEC §2b (`memory`, JSON: window lows, deal flags,
//! cooldown).

use tokio_postgres::Transaction;

use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// Upserts the batch's rule states.
pub(super) async fn write_rule_states(
    transaction: &Transaction<'_>,
    merged: &Merged,
) -> Result<(), WriteError> {
    if !merged.rule_states.is_empty() {
        let ids: Vec<i64> = merged.rule_states.keys().copied().collect();
        let below: Vec<bool> = merged.rule_states.values().copied().collect();
        // A rule deleted meanwhile has no state to keep.
        transaction
            .execute(
                "INSERT INTO rule_state (rule_id, below, definition)
                 SELECT s.rule_id, s.below, rule_definition(r)
                 FROM unnest($1::bigint[], $2::bool[]) AS s(rule_id, below)
                 JOIN alert_rules r ON r.rule_id = s.rule_id
                 ON CONFLICT (rule_id) DO UPDATE
                 SET below = EXCLUDED.below, definition = EXCLUDED.definition, memory = NULL",
                &[&ids, &below],
            )
            .await
            .map_err(WriteError::at("cannot store rule state"))?;
    }
    if !merged.rule_memories.is_empty() {
        let ids: Vec<i64> = merged.rule_memories.keys().copied().collect();
        let mut memories = Vec::with_capacity(ids.len());
        for memory in merged.rule_memories.values() {
            // Plain data (integers, strings): serialising it cannot fail.
            memories.push(serde_json::to_string(memory).unwrap_or_default());
        }
        // Sent with the rule's `RuleState`, whose row the statement above wrote.
        transaction
            .execute(
                "UPDATE rule_state s SET memory = m.memory::jsonb
                 FROM unnest($1::bigint[], $2::text[]) AS m(rule_id, memory)
                 WHERE s.rule_id = m.rule_id AND m.memory <> ''",
                &[&ids, &memories],
            )
            .await
            .map_err(WriteError::at("cannot store rule state"))?;
    }
    Ok(())
}
