//! State restored from PostgreSQL at start, and alert rules, as a dataflow source.
//!
//! The tables are the job's checkpoint: `events`, `listings` and the identities in
//! `price_history` were committed in the same transaction as the input offsets,
//! so reading them back gives exactly the state after the last committed message.
//! Each worker reads a disjoint slice (by `hashtext(event_id)`), emits it at epoch
//! 0, and the processor's exchange routes each record to the worker that owns its
//! event.
//!
//! Rules: worker 0 emits the active rules at epoch 0 (with their persisted arming
//! state), then, in a live job, polls `alert_rules` and emits changes as they
//! happen. A bounded replay (`--exit-at-end`) uses the rules present at start only.
//!
//! Touches: reads `events`, `listings`, `price_history`, `alert_rules`,
//! `rule_state`, `kafka_offsets`. Writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use conscope_dataflows::model::{
    Cents, Currency, EventRow, ListingKey, ListingRow, Micros, ProcessorInput, Restore, Rule, RuleChange,
    Seat, Stamped,
};
use futures_util::{pin_mut, TryStreamExt};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::current_epoch;

pub fn micros(time: DateTime<Utc>) -> Micros {
    time.timestamp_micros()
}

pub fn cents(decimal: Decimal) -> anyhow::Result<Cents> {
    (decimal * Decimal::from(100))
        .trunc()
        .to_i64()
        .map(Cents)
        .with_context(|| format!("price {decimal} out of range"))
}

fn currency(text: &str) -> anyhow::Result<Currency> {
    Currency::parse(text.trim()).with_context(|| format!("bad currency {text:?} in the database"))
}

fn listing_key(row: &Row) -> ListingKey {
    ListingKey {
        event_id: row.get("event_id"),
        seat: Seat {
            section: row.get("section"),
            row: row.get("row"),
            seat: row.get("seat"),
            source: row.get("source"),
        },
    }
}

fn stamped<V>(value: Option<V>, at: Option<DateTime<Utc>>) -> Option<Stamped<V>> {
    match (value, at) {
        (Some(value), Some(at)) => Some(Stamped {
            value,
            observed_at: micros(at),
        }),
        _ => None,
    }
}

/// Streams the rows of `sql` (whose last two parameters are `peers`, `index`).
async fn slice(client: &Client, sql: &str, peers: usize, index: usize) -> anyhow::Result<Vec<Row>> {
    let peers = peers as i64;
    let index = index as i64;
    let params: [&(dyn ToSql + Sync); 2] = [&peers, &index];
    let stream = client
        .query_raw(sql, params)
        .await
        .with_context(|| format!("restore query failed: {sql}"))?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        rows.push(row);
    }
    Ok(rows)
}

const MINE: &str = "abs(hashtext(event_id)::bigint) % $1 = $2";

/// This worker's slice of the committed state.
pub async fn load_slice(client: &Client, peers: usize, index: usize) -> anyhow::Result<Vec<ProcessorInput>> {
    let mut restored = Vec::new();
    for row in slice(
        client,
        &format!(
            "SELECT event_id, event_name, venue, event_date, first_seen, last_seen,
                    event_name_observed_at, venue_observed_at, event_date_observed_at
             FROM events WHERE {MINE}"
        ),
        peers,
        index,
    )
    .await?
    {
        let date: Option<DateTime<Utc>> = row.get("event_date");
        restored.push(ProcessorInput::Restore(Restore::Event(EventRow {
            event_id: row.get("event_id"),
            event_name: stamped(row.get("event_name"), row.get("event_name_observed_at")),
            venue: stamped(row.get("venue"), row.get("venue_observed_at")),
            event_date: stamped(date.map(micros), row.get("event_date_observed_at")),
            first_seen: micros(row.get("first_seen")),
            last_seen: micros(row.get("last_seen")),
        })));
    }
    for row in slice(
        client,
        &format!(
            "SELECT event_id, section, \"row\", seat, source, price, currency, available, observed_at
             FROM listings WHERE {MINE}"
        ),
        peers,
        index,
    )
    .await?
    {
        let currency_text: String = row.get("currency");
        restored.push(ProcessorInput::Restore(Restore::Listing(ListingRow {
            listing: listing_key(&row),
            price: cents(row.get("price"))?,
            currency: currency(&currency_text)?,
            available: row.get("available"),
            observed_at: micros(row.get("observed_at")),
        })));
    }
    for row in slice(
        client,
        &format!(
            "SELECT event_id, section, \"row\", seat, source, observed_at FROM price_history WHERE {MINE}"
        ),
        peers,
        index,
    )
    .await?
    {
        restored.push(ProcessorInput::Restore(Restore::Seen {
            listing: listing_key(&row),
            observed_at: micros(row.get("observed_at")),
        }));
    }
    Ok(restored)
}

/// Offsets stored for `topic`: partition -> next offset.
pub async fn stored_offsets(client: &Client, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows = client
        .query(
            "SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1",
            &[&topic],
        )
        .await
        .context("cannot read stored offsets")?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// A rule as the poller knows it: its definition and its generation (bumped by
/// `rules enable`: a re-enabled rule starts afresh even when the poller never
/// saw it disabled).
pub type KnownRule = (Rule, i64);

/// The active rules, by id, with their generation and persisted arming state.
async fn active_rules(client: &Client) -> anyhow::Result<HashMap<i64, (KnownRule, Option<bool>)>> {
    let rows = client
        .query(
            "SELECT r.rule_id, r.event_id, r.section, r.currency, r.max_price, r.generation, s.below
             FROM alert_rules r
             LEFT JOIN rule_state s ON s.rule_id = r.rule_id AND s.definition = rule_definition(r)
             WHERE r.active",
            &[],
        )
        .await
        .context("cannot read alert_rules")?;
    let mut rules = HashMap::new();
    for row in rows {
        let currency_text: String = row.get("currency");
        let rule = Rule {
            rule_id: row.get("rule_id"),
            event_id: row.get("event_id"),
            section: row.get("section"),
            currency: currency(&currency_text)?,
            max_price: cents(row.get("max_price"))?,
        };
        rules.insert(rule.rule_id, ((rule, row.get("generation")), row.get("below")));
    }
    Ok(rules)
}

/// The rules at start, each with its persisted arming state (`None`: never
/// evaluated, fires at once if its scope is already low enough).
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
        .map(|((rule, _), below)| RuleChange::Activate { rule, below })
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
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                tracing::error!("cannot start the rule poller's runtime; live rule changes are off");
                return;
            };
            runtime.block_on(async move {
                let mut client: Option<Client> = None;
                let mut errors = crate::metrics::RateLimited::new(Duration::from_secs(30));
                loop {
                    tokio::time::sleep(interval).await;
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
                                below: None,
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

/// Emits `restored` (and on worker 0 the rules) at epoch 0, then live rule
/// changes at the current epoch while the job runs.
pub fn state_source<'scope>(
    scope: Scope<'scope, u64>,
    restored: Vec<ProcessorInput>,
    rules: Option<RuleFeed>,
    epoch_ms: u64,
) -> Stream<'scope, u64, Vec<ProcessorInput>> {
    source(scope, "RestoreAndRules", move |capability, info| {
        let activator = scope.activator_for(info.address.clone());
        let mut pending: Vec<ProcessorInput> = restored;
        let mut live_rules: Option<mpsc::Receiver<Vec<RuleChange>>> = None;
        if let Some(feed) = rules {
            pending.extend(feed.initial.into_iter().map(ProcessorInput::Rule));
            if let Some(live) = feed.live {
                let (sender, receiver) = mpsc::channel();
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                match spawn_rule_poller(live.database_url, live.known, live.interval, sender, wake) {
                    Ok(()) => live_rules = Some(receiver),
                    Err(error) => {
                        tracing::error!(%error, "cannot start the rule poller; live rule changes are off")
                    }
                }
            }
        }
        let mut capability = Some(capability);
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            if !pending.is_empty() {
                output.session(&*cap).give_iterator(pending.drain(..));
            }
            let Some(receiver) = live_rules.as_ref() else {
                capability = None;
                return;
            };
            cap.downgrade(&current_epoch(epoch_ms).max(*cap.time()));
            let mut session = output.session(&*cap);
            loop {
                match receiver.try_recv() {
                    Ok(changes) => session.give_iterator(changes.into_iter().map(ProcessorInput::Rule)),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        drop(session);
                        live_rules = None;
                        capability = None;
                        return;
                    }
                }
            }
            drop(session);
            // Keep the epoch moving so this source never holds back the others.
            activator.activate_after(Duration::from_millis(epoch_ms.max(1)));
        }
    })
}
