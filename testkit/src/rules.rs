//! Alert rules for replays: the first events of a topic, and rules of every
//! kind of SPEC §2b over them, inserted before a job starts (rules present at
//! start are part of what a replay's output is a function of).

use crate::kafka::read_all;
use crate::pg::execute;
use crate::run::Job;

/// Event ids of the first messages of `topic`, at most `how_many`, in order of
/// first appearance.
pub fn first_event_ids(topic: &str, how_many: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for message in read_all(topic) {
        let Ok(value) =
            serde_json::from_slice::<serde_json::Value>(message.value.as_deref().unwrap_or_default())
        else {
            continue;
        };
        if let Some(id) = value["event_id"].as_str() {
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
        if ids.len() == how_many {
            break;
        }
    }
    ids
}

/// The rules one event gets from [`add_rules_of_every_kind`], as
/// `(kind, max_price, rearm_pct, window_days, deal_pct, cooldown)` SQL
/// literals: every kind, with and without hysteresis, thresholds and
/// cooldowns (the generator's event time runs about a minute per 600
/// messages of an event, so 90 s and 2 min cooldowns open and close).
const RULES_PER_EVENT: [(&str, &str, &str, &str, &str, &str); 6] = [
    ("max_price", "{max}", "0", "NULL", "NULL", "0"),
    ("max_price", "{max}", "5", "NULL", "NULL", "90 seconds"),
    ("new_low", "NULL", "0", "1", "NULL", "0"),
    ("new_low", "{max}", "0", "30", "NULL", "2 minutes"),
    ("back_in_stock", "{max}", "0", "NULL", "NULL", "0"),
    ("deal", "NULL", "0", "NULL", "10", "90 seconds"),
];

/// Migrates the job's database and inserts, per event, one rule of each kind
/// (and a second `max_price` and `new_low` with other parameters), in the same
/// order every time, so two databases get the same rule ids.
pub fn add_rules_of_every_kind(job: &Job, events: &[String]) {
    job.migrate();
    for (index, event) in events.iter().enumerate() {
        let max_price = (100 + 80 * index).to_string();
        for (kind, max, rearm, window, deal, cooldown) in RULES_PER_EVENT {
            // Test constants and generated event ids (quotes doubled) only.
            execute(
                &job.database_url,
                &format!(
                    "INSERT INTO alert_rules (event_id, currency, kind, max_price, rearm_pct, window_days, deal_pct, cooldown)
                     VALUES ('{}', 'USD', '{kind}', {}, {rearm}, {window}, {deal}, interval '{cooldown}')",
                    event.replace('\'', "''"),
                    max.replace("{max}", &max_price),
                ),
            );
        }
    }
}
