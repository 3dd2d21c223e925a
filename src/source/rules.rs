//! Alert rules as the job sees them: the active rules at start, each with its
//! persisted state (`rule_state`: the arming flag and the rest of the rule's
//! memory, kept only for the rule's current definition and generation), and
//! in a live job a poller that watches
//! `alert_rules` and reports changes within `--rules-poll-ms`. The restore
//! source (`restore.rs`) feeds both into the dataflow on worker 0. A bounded
//! replay (`--exit-at-end`) uses the rules present at start only.
//!
//! Touches: reads `alert_rules`, `rule_state`. Writes nothing.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use conscope_dataflows::model::{Rule, RuleChange, RuleKind, RuleMemory};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tokio_postgres::{Client, Row};

use crate::db::{cents, currency};

/// A rule as the poller knows it: its definition and its generation (bumped by
/// `rules enable`: a re-enabled rule starts afresh even when the poller never
/// saw it disabled).
pub type KnownRule = (Rule, i64);

/// `new_low`'s window when `window_days` is NULL (SPEC §2b).
const DEFAULT_WINDOW_DAYS: u32 = 30;

/// The active rules, by id, with their generation and persisted state.
async fn active_rules(client: &Client) -> anyhow::Result<HashMap<i64, (KnownRule, Option<RuleMemory>)>> {
    let rows = client
        .query(
            "SELECT r.rule_id, r.event_id, r.section, r.currency, r.kind, r.max_price, r.rearm_pct,
                    r.window_days, r.deal_pct,
                    (extract(epoch FROM r.cooldown) * 1000000)::bigint AS cooldown_us,
                    r.generation, s.below, s.memory::text AS memory
             FROM alert_rules r
             LEFT JOIN rule_state s ON s.rule_id = r.rule_id AND s.definition = rule_definition(r)
             WHERE r.active",
            &[],
        )
        .await
        .context("cannot read alert_rules")?;
    let mut rules = HashMap::new();
    for row in rows {
        let rule_id: i64 = row.get("rule_id");
        let rule = rule_of(&row).with_context(|| format!("rule #{rule_id} in alert_rules"))?;
        let below: Option<bool> = row.get("below");
        let memory: Option<String> = row.get("memory");
        let state = match (below, memory) {
            (None, _) => None,
            (Some(below), None) => Some(RuleMemory {
                below,
                ..RuleMemory::default()
            }),
            (Some(below), Some(text)) => {
                let memory: RuleMemory = serde_json::from_str(&text)
                    .with_context(|| format!("rule #{rule_id}: unreadable rule_state.memory"))?;
                Some(RuleMemory { below, ..memory })
            }
        };
        rules.insert(rule.rule_id, ((rule, row.get("generation")), state));
    }
    Ok(rules)
}

/// A rule as the dataflow knows it, from a row of `alert_rules` (the
/// migrations' CHECKs guarantee each kind its columns; this still refuses a
/// row that breaks them rather than guessing).
fn rule_of(row: &Row) -> anyhow::Result<Rule> {
    let currency_text: String = row.get("currency");
    let max_price: Option<Decimal> = row.get("max_price");
    let max_price = max_price.map(cents).transpose()?;
    let kind_text: String = row.get("kind");
    let kind = match kind_text.as_str() {
        "max_price" => {
            let Some(max_price) = max_price else {
                bail!("a max_price rule without max_price");
            };
            let rearm: Decimal = row.get("rearm_pct");
            let rearm_bp = (rearm * Decimal::from(100))
                .trunc()
                .to_u32()
                .with_context(|| format!("rearm_pct {rearm} out of range"))?;
            RuleKind::MaxPrice { max_price, rearm_bp }
        }
        "new_low" => {
            let days: Option<i32> = row.get("window_days");
            let window_days = match days {
                None => DEFAULT_WINDOW_DAYS,
                Some(days) => u32::try_from(days).with_context(|| format!("window_days {days}"))?,
            };
            RuleKind::NewLow {
                window_days,
                max_price,
            }
        }
        "back_in_stock" => RuleKind::BackInStock { max_price },
        "deal" => {
            let pct: Option<i32> = row.get("deal_pct");
            let Some(deal_pct) = pct.and_then(|pct| u32::try_from(pct).ok()) else {
                bail!("a deal rule without a valid deal_pct");
            };
            RuleKind::Deal { deal_pct }
        }
        other => bail!("unknown rule kind {other:?}"),
    };
    let cooldown: i64 = row.get("cooldown_us");
    Ok(Rule {
        rule_id: row.get("rule_id"),
        event_id: row.get("event_id"),
        section: row.get("section"),
        currency: currency(&currency_text)?,
        kind,
        cooldown: cooldown.max(0),
    })
}

/// The rules at start, each with its persisted state (`None`: never
/// evaluated, starts from its scope's state; a `max_price` rule fires at once
/// if its scope is already low enough).
pub async fn initial_rules(client: &Client) -> anyhow::Result<(Vec<RuleChange>, HashMap<i64, KnownRule>)> {
    let rules = active_rules(client).await?;
    let mut ordered: Vec<_> = rules.into_values().collect();
    ordered.sort_by_key(|((rule, _), _)| rule.rule_id);
    let known = ordered
        .iter()
        .map(|(known, _)| (known.0.rule_id, known.clone()))
        .collect();
    let changes = ordered
        .into_iter()
        .map(|((rule, _), state)| RuleChange::Activate { rule, state })
        .collect();
    Ok((changes, known))
}

/// Polls `alert_rules` every `interval` on its own thread and sends the changes.
/// A poll that fails (database away) is retried at the next tick.
pub fn spawn_rule_poller(
    database_url: String,
    mut known: HashMap<i64, KnownRule>,
    interval: Duration,
    changes: mpsc::Sender<Vec<RuleChange>>,
    wake: timely::scheduling::SyncActivator,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("rule-poller".into())
        .spawn(move || {
            let Ok(runtime) = crate::runtime::current_thread() else {
                tracing::error!("cannot start the rule poller's runtime; live rule changes are off");
                return;
            };
            runtime.block_on(async move {
                let mut client: Option<Client> = None;
                let mut errors = crate::metrics::RateLimited::new(Duration::from_secs(30));
                loop {
                    tokio::time::sleep(interval).await;
                    // A dataflow dropped for an in-process replay leaves its
                    // receiver gone: stop polling for it (an empty batch is a no-op).
                    if changes.send(Vec::new()).is_err() {
                        return;
                    }
                    if client.as_ref().is_none_or(Client::is_closed) {
                        client = crate::db::connect(&database_url).await.ok();
                    }
                    let Some(connected) = client.as_ref() else {
                        continue;
                    };
                    let current = match active_rules(connected).await {
                        Ok(current) => current,
                        Err(error) => {
                            if errors.allow() {
                                tracing::warn!("{error:#}; retrying");
                            }
                            continue;
                        }
                    };
                    let mut batch = Vec::new();
                    // A rule edited or re-enabled (a new generation) is
                    // deactivated, then activated afresh.
                    for (rule_id, was) in &known {
                        match current.get(rule_id) {
                            Some((now, _)) if now == was => {}
                            _ => batch.push(RuleChange::Deactivate {
                                rule_id: *rule_id,
                                event_id: was.0.event_id.clone(),
                            }),
                        }
                    }
                    for (rule_id, (now, _)) in &current {
                        if known.get(rule_id) != Some(now) {
                            batch.push(RuleChange::Activate {
                                rule: now.0.clone(),
                                state: None,
                            });
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    tracing::info!(changes = batch.len(), "alert rules changed");
                    known = current.into_iter().map(|(id, (rule, _))| (id, rule)).collect();
                    if changes.send(batch).is_err() || wake.activate().is_err() {
                        return; // the dataflow is gone
                    }
                }
            });
        })?;
    Ok(())
}

/// What worker 0 knows about rules when the dataflow is built.
pub struct RuleFeed {
    pub initial: Vec<RuleChange>,
    /// Live changes; `None` in a bounded replay.
    pub live: Option<LiveRules>,
}

pub struct LiveRules {
    pub database_url: String,
    pub known: HashMap<i64, KnownRule>,
    pub interval: Duration,
}
