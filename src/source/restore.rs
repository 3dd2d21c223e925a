//! The restore: the committed state read back from PostgreSQL at start, streamed
//! into the dataflow at epoch 0, and the source that carries it and the rules.
//!
//! The tables are the job's checkpoint: `events` and `listings` were committed in
//! the same transaction as the input offsets, so reading them back gives exactly
//! the state after the last committed message. Nothing else is needed: dedup
//! decides from each listing's current state (`dataflows/src/dedup.rs`), and
//! `price_history` is never read, so a restart costs the listings, not the
//! history.
//!
//! One reader (worker 0) streams both tables on its own thread, in batches
//! through a bounded channel, straight into the dataflow; the processor's
//! exchange routes each record to the worker that owns its event. A single
//! reader scans each table once, where one query per worker would each scan it
//! whole (a hash of `event_id` is no index).
//!
//! The source (`RestoreAndRules`) holds epoch 0 until the restore is complete,
//! so no observation is applied before it. On worker 0 it then emits the rules
//! at start and, in a live job, their changes (`rules.rs`).
//!
//! Touches: reads `events`, `listings` (decoded by `crate::db`). Writes nothing.

use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use conscope_dataflows::model::{ProcessorInput, Restore, RuleChange};
use futures_util::{pin_mut, TryStreamExt};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::SyncActivator;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::rules::{spawn_rule_poller, RuleFeed};
use super::{current_epoch, until_next_epoch};
use crate::db::{event_row, listing_row};

/// Records per batch handed to the dataflow.
const BATCH: usize = 1024;
/// Batches the reader may be ahead of the dataflow: bounds the restore's memory
/// outside the dataflow.
const BATCHES_AHEAD: usize = 8;

const EVENTS: &str = "SELECT event_id, event_name, venue, event_date, first_seen, last_seen,
                             event_name_observed_at, venue_observed_at, event_date_observed_at,
                             event_name_partition, event_name_offset, venue_partition,
                             venue_offset, event_date_partition, event_date_offset
                      FROM events";
const LISTINGS: &str =
    "SELECT event_id, section, \"row\", seat, source, price, currency, available, observed_at FROM listings";

/// Streams the rows of `sql` through `convert` into `batches`, `BATCH` at a
/// time; returns how many it sent, or `None` when the dataflow has gone.
async fn stream(
    client: &Client,
    sql: &str,
    convert: fn(&Row) -> anyhow::Result<Restore>,
    batches: &mpsc::SyncSender<Vec<ProcessorInput>>,
    wake: &SyncActivator,
) -> anyhow::Result<Option<usize>> {
    let rows = client
        .query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>())
        .await
        .with_context(|| format!("restore query failed: {sql}"))?;
    pin_mut!(rows);
    let mut batch = Vec::with_capacity(BATCH);
    let mut sent = 0;
    loop {
        let row = rows.try_next().await.context("restore read failed")?;
        if let Some(row) = &row {
            batch.push(ProcessorInput::Restore(convert(row)?));
        }
        if batch.len() == BATCH || (row.is_none() && !batch.is_empty()) {
            sent += batch.len();
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if batches.send(full).is_err() || wake.activate().is_err() {
                return Ok(None);
            }
        }
        if row.is_none() {
            return Ok(Some(sent));
        }
    }
}

/// Reads `events` and `listings` on a thread of its own and sends them in
/// batches; the channel closes when everything is sent. A restore that fails
/// ends the job: a worker must not start from half a checkpoint.
fn spawn_restore(
    database_url: String,
    batches: mpsc::SyncSender<Vec<ProcessorInput>>,
    wake: SyncActivator,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("restore".into())
        .spawn(move || {
            let started = Instant::now();
            let restored = crate::runtime::current_thread()
                .context("cannot start the restore's runtime")
                .and_then(|runtime| {
                    runtime.block_on(async {
                        // Rides out a database restart before the first row; one
                        // failing mid-stream ends the job (the restart reads again).
                        let client =
                            crate::db::connect_with_retry(&database_url, crate::runtime::STARTUP_PATIENCE)
                                .await?;
                        // One snapshot for both tables: the same commit.
                        client
                            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                            .await
                            .context("cannot begin the restore")?;
                        let Some(events) = stream(&client, EVENTS, event_row, &batches, &wake).await? else {
                            return Ok(None);
                        };
                        let Some(listings) = stream(&client, LISTINGS, listing_row, &batches, &wake).await?
                        else {
                            return Ok(None);
                        };
                        anyhow::Ok(Some((events, listings)))
                    })
                });
            match restored {
                Ok(Some((events, listings))) => tracing::info!(
                    events,
                    listings,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restored state"
                ),
                Ok(None) => {}
                Err(error) => crate::runtime::fatal(error.context("cannot restore state")),
            }
            drop(batches);
            let _ = wake.activate();
        })?;
    Ok(())
}

/// What worker 0 restores and feeds: the database to restore from and the rules.
pub struct Checkpoint {
    pub database_url: String,
    pub rules: RuleFeed,
}

/// Emits, on worker 0 (`checkpoint`), the restored state and the rules at
/// epoch 0, then live rule changes at the current epoch while the job runs.
/// Other workers' instances only hold nothing back.
pub fn restore_source<'scope>(
    scope: Scope<'scope, u64>,
    checkpoint: Option<Checkpoint>,
    epoch_ms: u64,
) -> Stream<'scope, u64, Vec<ProcessorInput>> {
    source(scope, "RestoreAndRules", move |capability, info| {
        let activator = scope.activator_for(info.address.clone());
        let mut restoring: Option<mpsc::Receiver<Vec<ProcessorInput>>> = None;
        let mut rules: Vec<RuleChange> = Vec::new();
        let mut live_rules: Option<mpsc::Receiver<Vec<RuleChange>>> = None;
        if let Some(checkpoint) = checkpoint {
            let (sender, receiver) = mpsc::sync_channel(BATCHES_AHEAD);
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            if let Err(error) = spawn_restore(checkpoint.database_url, sender, wake) {
                crate::runtime::fatal(error.context("cannot start the restore"));
            }
            restoring = Some(receiver);
            rules = checkpoint.rules.initial;
            if let Some(live) = checkpoint.rules.live {
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
            if let Some(receiver) = restoring.as_ref() {
                let mut session = output.session(&*cap);
                loop {
                    match receiver.try_recv() {
                        Ok(mut batch) => session.give_container(&mut batch),
                        // The reader wakes this operator when it sends more.
                        Err(mpsc::TryRecvError::Empty) => return,
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    }
                }
                drop(session);
                restoring = None;
            }
            if !rules.is_empty() {
                output
                    .session(&*cap)
                    .give_iterator(rules.drain(..).map(ProcessorInput::Rule));
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
            activator.activate_after(until_next_epoch(epoch_ms));
        }
    })
}
