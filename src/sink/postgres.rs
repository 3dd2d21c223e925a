//! The Postgres writer: one transaction per batch of epochs.
//!
//! ```text
//!  sink operator (worker 0) ──EpochBatch──► writer thread ──COMMIT──► PostgreSQL
//!          ▲                                    │
//!          └────── committed epoch + wake ──────┘──► publisher (outbox)
//! ```
//!
//! # Encoding
//! History rows go in with binary `COPY`. Rows of observations older than their
//! listing's current state (`MaybeStale`: stale, or duplicates of a stored
//! identity, which only the table knows) are `COPY`'d into a temporary table and
//! inserted in partition order with `ON CONFLICT DO NOTHING`: the first of an
//! identity wins, the rows inserted split them into the stale and duplicate
//! counters, and the stale ones' event fields are applied where they are the
//! most recent (the events merge keeps, per field, the most recent value). Listings, events and alerts are `COPY`'d
//! into temporary tables and merged with one `INSERT … ON CONFLICT` each; rejects
//! and alerts become `outbox` rows. Summary changes (differential updates) are
//! folded into the new row of each changed key, or its absence, and merged the
//! same way (upsert, or delete when the key has no listing left). No SQL is built
//! from data.
//!
//! # Sinking
//! Everything derived from the messages of the epochs, the next input offsets and
//! `job_progress.commit_no + 1` commit together, so after any crash the stored
//! offsets and the rows agree: a restart neither re-applies nor skips a message.
//! When the writer falls behind, queued epochs are merged into one transaction
//! (later states win), which keeps throughput up under load. Each transaction
//! first checks that this process still holds the job lease (`lease`).
//!
//! # Retries
//! Every SQL call classifies its failure where it is made (`write_error`).
//! Transient failures (connection lost, server restarting, serialization,
//! resources) reconnect with backoff and retry the same batch, including the
//! reconnect's own statements; the dataflow holds the epochs' capabilities (and
//! the sources stop reading) until the commit succeeds, so memory stays
//! bounded. A commit whose outcome is unknown is resolved by `commit_no`: if it
//! moved by one, the batch is in.
//!
//! # Error handling
//! A definite failure (PostgreSQL refuses the data: a check, a value out of
//! range, ...) is traced back to the input messages behind the refused rows
//! (`isolate`); they are stored in `quarantine` and the writer asks the job to
//! start over from the last commit (`WriterExit::Restart`): the replay rejects
//! them to the dead-letter topic with the refusal as reason, so every other
//! message lands exactly as it would have without them, derived rows
//! included. A refusal no input message explains (a schema problem) stops the
//! job with the error. Losing the job lease to another instance (`Fenced`)
//! stops it at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use conscope_dataflows::model::{
    Alert, Cents, Change, Counters, EventCurrency, EventFields, EventRow, EventSummary, ListingKey,
    ListingRow, Micros, Position, Rejected, RuleMemory, Seat, SectionCurrency, SectionSummary, SinkRecord,
};
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use super::encode::{alert_headers, alert_json, dead_letter, OutboxTarget};
use super::monitor::GroupMonitor;
use super::publisher::PublisherControl;
use super::write_error::WriteError;
use crate::config::KafkaArgs;
use crate::fail::fail_point;
use crate::lease::{Lease, LOCK_CLASS};
use crate::metrics::Metrics;

/// The records of one epoch, ready to commit.
pub struct EpochBatch {
    pub epoch: u64,
    pub records: Vec<SinkRecord>,
}

/// Where the writer writes and what it needs to address outbox messages.
#[derive(Clone)]
pub struct WriterConfig {
    pub database_url: String,
    /// The offsets table's topic name (the input topic, or `file:<path>`).
    pub input_name: String,
    pub alerts: OutboxTarget,
    pub dlq: OutboxTarget,
    /// Upper bound of records merged into one transaction.
    pub max_records_per_commit: usize,
    /// Where to report committed offsets for monitoring tools (Kafka client
    /// settings and consumer group); `None` for file input.
    pub monitor: Option<(KafkaArgs, String)>,
    /// This process's job lease: no commit lands without it.
    pub lease: Lease,
}

/// Why the writer returned.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterExit {
    /// Its input closed: the job is stopping.
    Finished,
    /// Messages PostgreSQL refused were quarantined: the job must replay from
    /// the last commit without them.
    Restart,
}

/// Everything to write in one transaction, merged from one or more epochs.
#[derive(Default)]
pub(super) struct Merged {
    pub(super) epochs: Vec<u64>,
    pub(super) history: Vec<ListingRow>,
    /// The input position of each history row (same index).
    pub(super) origins: Vec<Position>,
    /// Rows of observations older than their listing's current state, in
    /// input order: epoch by epoch, and by position within an epoch.
    pub(super) maybe_stale: Vec<OlderRow>,
    pub(super) listings: HashMap<ListingKey, ListingRow>,
    pub(super) events: HashMap<String, EventRow>,
    pub(super) alerts: Vec<Alert>,
    pub(super) rule_states: BTreeMap<i64, bool>,
    /// The rest of each rule's state (rules of SPEC §2b beyond a plain
    /// `max_price`), as JSON for `rule_state.memory`.
    pub(super) rule_memories: BTreeMap<i64, Box<RuleMemory>>,
    pub(super) rejected: Vec<Rejected>,
    pub(super) offsets: BTreeMap<i32, i64>,
    pub(super) counters: Counters,
    pub(super) records: usize,
    /// Each changed summary key's row after the epochs; `None`: delete it.
    pub(super) event_summaries: HashMap<EventCurrency, Option<EventSummary>>,
    pub(super) section_summaries: HashMap<SectionCurrency, Option<SectionSummary>>,
}

/// An observation older than its listing's current state (a `MaybeStale`
/// record): its history row, its input position, and the event fields it
/// carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OlderRow {
    pub(super) row: ListingRow,
    pub(super) position: Position,
    pub(super) fields: Option<Box<EventFields>>,
}

impl Merged {
    /// Counts the `maybe_stale` rows once the commit told how many it inserted
    /// (`stale`): the rest had a stored identity, so were duplicates.
    fn count_maybe_stale(&mut self, stale: u64) {
        let duplicates = self.maybe_stale.len() as u64 - stale;
        self.counters.add(&Counters {
            prices_stored: stale,
            stale,
            duplicates,
            ..Counters::default()
        });
    }

    /// Adds the next epoch. Its records arrive in no particular order: timely's
    /// `for_each_stamp` sorts the containers of one time unstably, so even one
    /// worker's containers may come swapped. What depends on order is put in
    /// input order here; the rest is one record per key and epoch.
    pub(super) fn absorb(&mut self, batch: EpochBatch) {
        self.epochs.push(batch.epoch);
        self.records += batch.records.len();
        let mut event_summaries = Vec::new();
        let mut section_summaries = Vec::new();
        let mut maybe_stale = Vec::new();
        let mut rejected = Vec::new();
        for record in batch.records {
            match record {
                SinkRecord::History { row, position } => {
                    self.history.push(row);
                    self.origins.push(position);
                }
                SinkRecord::MaybeStale {
                    row,
                    position,
                    fields,
                } => maybe_stale.push(OlderRow {
                    row,
                    position,
                    fields,
                }),
                SinkRecord::Listing(row) => {
                    self.listings.insert(row.listing.clone(), row);
                }
                SinkRecord::Event(row) => {
                    self.events.insert(row.event_id.clone(), row);
                }
                SinkRecord::Alert(alert) => self.alerts.push(alert),
                SinkRecord::RuleState { rule_id, below } => {
                    self.rule_states.insert(rule_id, below);
                }
                SinkRecord::RuleMemory { rule_id, memory } => {
                    self.rule_memories.insert(rule_id, memory);
                }
                SinkRecord::Rejected(record) => rejected.push(record),
                SinkRecord::Offset(position) => {
                    let next = self.offsets.entry(position.partition).or_insert(position.offset);
                    *next = (*next).max(position.offset);
                }
                SinkRecord::Counters(counters) => self.counters.add(&counters),
                SinkRecord::EventSummary(change) => event_summaries.push(change),
                SinkRecord::SectionSummary(change) => section_summaries.push(change),
            }
        }
        // Stable: two records at one position are one message delivered twice.
        maybe_stale.sort_by_key(|older| older.position);
        self.maybe_stale.append(&mut maybe_stale);
        rejected.sort_by_key(|record| record.position);
        self.rejected.append(&mut rejected);
        fold_changes(&mut self.event_summaries, event_summaries);
        fold_changes(&mut self.section_summaries, section_summaries);
    }
}

/// Applies one epoch's changes of a summary on top of the epochs merged before
/// it (epochs arrive in order). Within an epoch a changed key has its old value
/// retracted and, unless it has no listing left, its new value inserted, in any
/// order: the insertion wins, a retraction alone deletes the row.
fn fold_changes<K: Hash + Eq, V>(rows: &mut HashMap<K, Option<V>>, changes: Vec<Change<K, V>>) {
    let (inserted, retracted): (Vec<_>, Vec<_>) = changes.into_iter().partition(|change| change.diff > 0);
    for change in retracted {
        rows.insert(change.key, None);
    }
    for change in inserted {
        rows.insert(change.key, Some(change.value));
    }
}

fn timestamp(micros: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn decimal(cents: Cents) -> Decimal {
    Decimal::new(cents.0, 2)
}

/// Runs the writer on the calling thread until `batches` closes or messages
/// must be taken out of a replay. Sends each committed epoch on `committed`
/// and calls `wake` after each commit.
pub fn run_writer(
    config: WriterConfig,
    batches: mpsc::Receiver<EpochBatch>,
    committed: mpsc::Sender<u64>,
    wake: impl Fn() + Send + 'static,
    metrics: Arc<Metrics>,
    publisher: Arc<PublisherControl>,
) -> anyhow::Result<WriterExit> {
    let monitor = match &config.monitor {
        Some((kafka, group)) => Some(GroupMonitor::new(kafka, group, &config.input_name)?),
        None => None,
    };
    let mut rejected_log = crate::metrics::RateLimited::new(Duration::from_secs(5));
    let runtime = crate::runtime::current_thread()?;
    runtime.block_on(async move {
        let mut writer = Writer::connect(config).await?;
        while let Ok(first) = batches.recv() {
            let mut merged = Merged::default();
            merged.absorb(first);
            while merged.records < writer.config.max_records_per_commit {
                match batches.try_recv() {
                    Ok(next) => merged.absorb(next),
                    Err(_) => break,
                }
            }
            match writer.commit_with_retry(&merged, &metrics).await {
                Ok(stale) => merged.count_maybe_stale(stale),
                Err(WriteError::Definite { context, reason }) => {
                    writer.quarantine_refused(&merged, context, &reason).await?;
                    return Ok(WriterExit::Restart);
                }
                Err(error) => return Err(error.into()),
            }
            metrics.committed(&merged.counters, merged.rejected.len() as u64);
            for rejected in &merged.rejected {
                if rejected_log.allow() {
                    tracing::warn!(
                        partition = rejected.position.partition,
                        offset = rejected.position.offset,
                        reason = %rejected.reason,
                        suppressed_since_last = rejected_log.suppressed,
                        "rejected a message; copied to the dead-letter topic"
                    );
                    rejected_log.suppressed = 0;
                }
            }
            for epoch in &merged.epochs {
                if committed.send(*epoch).is_err() {
                    return Ok(WriterExit::Finished);
                }
            }
            wake();
            publisher.wake.notify_one();
            if let Some(monitor) = &monitor {
                monitor.report(&merged.offsets);
            }
        }
        Ok(WriterExit::Finished)
    })
}

pub(super) struct Writer {
    pub(super) config: WriterConfig,
    pub(super) client: Client,
    commit_no: i64,
    errors: crate::metrics::RateLimited,
}

impl Writer {
    async fn connect(config: WriterConfig) -> anyhow::Result<Writer> {
        let client = crate::db::connect_with_retry(&config.database_url, Duration::from_secs(60)).await?;
        let mut writer = Writer {
            config,
            client,
            commit_no: 0,
            errors: crate::metrics::RateLimited::new(Duration::from_secs(10)),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match writer.start_session().await {
                Ok(()) => return Ok(writer),
                Err(error) if error.is_transient() => writer.pause(&error, &mut delay).await,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// What the first commit needs: the temporary tables and the commit
    /// counter. Transient failures (the server restarting) are returned, for
    /// `connect` to retry.
    async fn start_session(&mut self) -> Result<(), WriteError> {
        if !self.recover().await? {
            prepare(&self.client).await?;
        }
        self.commit_no = self
            .client
            .query_one("SELECT commit_no FROM job_progress WHERE id = 1", &[])
            .await
            .map_err(WriteError::at("cannot read job_progress"))?
            .get(0);
        Ok(())
    }

    /// Logs (rate-limited) and waits before the next attempt.
    pub(super) async fn pause(&mut self, error: &WriteError, delay: &mut Duration) {
        if self.errors.allow() {
            tracing::warn!("{error}; retrying in {delay:?}");
        }
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(Duration::from_secs(5));
    }

    /// After a transient failure: a new, prepared connection if this one is
    /// gone (`true`). Its own failures are classified like any other.
    pub(super) async fn recover(&mut self) -> Result<bool, WriteError> {
        if !self.client.is_closed() {
            return Ok(false);
        }
        self.client = crate::db::connect(&self.config.database_url)
            .await
            .map_err(|error| WriteError::Transient {
                context: "reconnect",
                detail: format!("{error:#}"),
            })?;
        prepare(&self.client).await?;
        Ok(true)
    }

    /// Commits `merged`, retrying transient failures; returns definite and
    /// fencing ones. Returns how many of its `maybe_stale` rows were inserted
    /// (stale, not duplicates).
    async fn commit_with_retry(&mut self, merged: &Merged, metrics: &Metrics) -> Result<u64, WriteError> {
        let mut delay = Duration::from_millis(100);
        loop {
            // Set by the attempt before its COMMIT: what a commit that landed
            // unacknowledged inserted.
            let mut stale = None;
            let error = match write(&mut self.client, &self.config, merged, self.commit_no, &mut stale).await
            {
                Ok(()) => {
                    self.commit_no += 1;
                    metrics.commit_done();
                    fail_point("after_commit");
                    return Ok(stale.unwrap_or(0));
                }
                Err(error) if error.is_transient() => error,
                Err(error) => return Err(error),
            };
            self.pause(&error, &mut delay).await;
            if let Err(error) = self.recover().await {
                if error.is_transient() {
                    continue;
                }
                return Err(error);
            }
            // Did the lost commit land? commit_no tells.
            if let Ok(row) = self
                .client
                .query_one("SELECT commit_no FROM job_progress WHERE id = 1", &[])
                .await
            {
                let stored: i64 = row.get(0);
                if stored == self.commit_no + 1 {
                    tracing::info!("the interrupted commit had landed");
                    self.commit_no = stored;
                    metrics.commit_done();
                    return Ok(stale.unwrap_or(0));
                }
            }
        }
    }

    /// PostgreSQL refused `merged` for good: finds the input messages behind
    /// the refused rows and quarantines them, retrying transient failures on
    /// the way. Fails when no message explains the refusal.
    async fn quarantine_refused(
        &mut self,
        merged: &Merged,
        context: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            "PostgreSQL refused a commit ({context}: {reason}); looking for the input messages behind it"
        );
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = match super::isolate::offenders(&mut self.client, &self.config, merged).await {
                Ok(offenders) if offenders.is_empty() => anyhow::bail!(
                    "PostgreSQL refused a commit ({context}: {reason}) and no input message explains it \
                     (each one alone is accepted): check the schema and constraints of this database"
                ),
                Ok(offenders) => {
                    super::quarantine::store(&self.client, &self.config.input_name, &offenders).await
                }
                Err(error) => Err(error),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => {
                    self.pause(&error, &mut delay).await;
                    if let Err(error) = self.recover().await {
                        if !error.is_transient() {
                            return Err(error.into());
                        }
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Per-connection temporary tables for the merges.
async fn prepare(client: &Client) -> Result<(), WriteError> {
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS incoming_events (
                 event_id TEXT, event_name TEXT, venue TEXT, event_date TIMESTAMPTZ,
                 first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ, event_name_observed_at TIMESTAMPTZ,
                 venue_observed_at TIMESTAMPTZ, event_date_observed_at TIMESTAMPTZ) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_history (
                 ord BIGINT, event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 price NUMERIC(12,2), currency CHAR(3), available BOOLEAN, observed_at TIMESTAMPTZ)
                 ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_listings (
                 event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 price NUMERIC(12,2), currency CHAR(3), available BOOLEAN, observed_at TIMESTAMPTZ)
                 ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_alerts (
                 alert_id TEXT, kind TEXT, event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 rule_id BIGINT, old_price NUMERIC(12,2), new_price NUMERIC(12,2), currency CHAR(3),
                 observed_at TIMESTAMPTZ) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_event_summary (
                 event_id TEXT, currency CHAR(3), listings BIGINT, available BIGINT,
                 get_in_price NUMERIC(12,2), present BOOLEAN) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_section_summary (
                 event_id TEXT, section TEXT, currency CHAR(3), available BIGINT,
                 low_price NUMERIC(12,2), present BOOLEAN) ON COMMIT DELETE ROWS;",
        )
        .await
        .map_err(WriteError::at("cannot create temporary tables"))?;
    Ok(())
}

/// Empties the temporary tables within a transaction (they empty themselves
/// at commit): `isolate` writes several probes in one transaction. Every
/// temporary table of the session, so a table added to `prepare` is covered.
pub(super) async fn clear_incoming(transaction: &Transaction<'_>) -> Result<(), WriteError> {
    transaction
        .batch_execute(
            "DO $$ DECLARE t regclass; BEGIN
                 FOR t IN SELECT oid FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'
                 LOOP EXECUTE format('DELETE FROM %s', t); END LOOP;
             END $$",
        )
        .await
        .map_err(WriteError::at("cannot empty the temporary tables"))
}

/// `COPY table (columns) FROM STDIN BINARY` of `rows`; `context` names the
/// table in errors.
async fn copy_in<'a, I>(
    transaction: &Transaction<'_>,
    context: &'static str,
    statement: &str,
    types: &[Type],
    rows: I,
) -> Result<(), WriteError>
where
    I: IntoIterator<Item = Vec<Box<dyn ToSql + Sync + Send + 'a>>>,
{
    let mut copy = CopyIn::start(transaction, context, statement, types).await?;
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> =
            row.iter().map(|value| &**value as &(dyn ToSql + Sync)).collect();
        copy.write(&refs).await?;
    }
    copy.finish().await
}

/// One `COPY … FROM STDIN BINARY` in progress; `context` names the table in
/// errors.
struct CopyIn {
    context: &'static str,
    writer: std::pin::Pin<Box<BinaryCopyInWriter>>,
}

impl CopyIn {
    async fn start(
        transaction: &Transaction<'_>,
        context: &'static str,
        statement: &str,
        types: &[Type],
    ) -> Result<CopyIn, WriteError> {
        let sink = transaction
            .copy_in(statement)
            .await
            .map_err(WriteError::at(context))?;
        Ok(CopyIn {
            context,
            writer: Box::pin(BinaryCopyInWriter::new(sink, types)),
        })
    }

    async fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), WriteError> {
        self.writer
            .as_mut()
            .write(values)
            .await
            .map_err(WriteError::at(self.context))
    }

    async fn finish(mut self) -> Result<(), WriteError> {
        self.writer
            .as_mut()
            .finish()
            .await
            .map_err(WriteError::at(self.context))?;
        Ok(())
    }
}

type Values<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

/// `COPY … FROM STDIN BINARY` of listing-shaped rows (history, listings), the
/// bulk of every commit: the values are borrowed on the stack, nothing is
/// allocated per row. `ordered`: a first column numbers the rows (partition
/// order, for `insert_maybe_stale`).
async fn copy_listing_rows<'a>(
    transaction: &Transaction<'_>,
    context: &'static str,
    statement: &str,
    ordered: bool,
    rows: impl IntoIterator<Item = &'a ListingRow>,
) -> Result<(), WriteError> {
    let types: &[Type] = if ordered {
        &ORDERED_LISTING_TYPES
    } else {
        &ORDERED_LISTING_TYPES[1..]
    };
    let mut copy = CopyIn::start(transaction, context, statement, types).await?;
    for (ord, row) in rows.into_iter().enumerate() {
        let ord = ord as i64;
        let price = decimal(row.price);
        let currency = row.currency.as_str();
        let observed_at = timestamp(row.observed_at);
        let seat = &row.listing.seat;
        let values: [&(dyn ToSql + Sync); 10] = [
            &ord,
            &row.listing.event_id,
            &seat.section,
            &seat.row,
            &seat.seat,
            &seat.source,
            &price,
            &currency,
            &row.available,
            &observed_at,
        ];
        copy.write(if ordered { &values[..] } else { &values[1..] })
            .await?;
    }
    copy.finish().await
}

/// A row number, then the columns of a listing row.
const ORDERED_LISTING_TYPES: [Type; 10] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::BPCHAR,
    Type::BOOL,
    Type::TIMESTAMPTZ,
];

/// A message to publish once the transaction commits.
struct OutboxRow<'a> {
    topic: &'a str,
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<String>,
}

async fn write(
    client: &mut Client,
    config: &WriterConfig,
    merged: &Merged,
    commit_no: i64,
    stale: &mut Option<u64>,
) -> Result<(), WriteError> {
    let transaction = client
        .transaction()
        .await
        .map_err(WriteError::at("BEGIN failed"))?;
    check_lease(&transaction, &config.lease).await?;
    let moved = transaction
        .execute(
            "UPDATE job_progress SET commit_no = $1 WHERE id = 1 AND commit_no = $2",
            &[&(commit_no + 1), &commit_no],
        )
        .await
        .map_err(WriteError::at("cannot advance job_progress"))?;
    if moved != 1 {
        return Err(WriteError::Fenced(format!(
            "job_progress.commit_no is no longer {commit_no}: another conscope job is writing to this \
             database (one database holds one job's state)"
        )));
    }

    *stale = Some(write_rows(&transaction, config, merged).await?);

    if !merged.offsets.is_empty() {
        let partitions: Vec<i32> = merged.offsets.keys().copied().collect();
        let next: Vec<i64> = merged.offsets.values().copied().collect();
        transaction
            .execute(
                "INSERT INTO kafka_offsets (topic, partition, next_offset)
                 SELECT $1, p, o FROM unnest($2::int[], $3::bigint[]) AS t(p, o)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                &[&config.input_name, &partitions, &next],
            )
            .await
            .map_err(WriteError::at("cannot store offsets"))?;
    }
    fail_point("before_commit");
    transaction
        .commit()
        .await
        .map_err(WriteError::at("COMMIT failed"))?;
    Ok(())
}

/// No commit without the job lease: the lease's session must still hold the
/// lock (it may have been lost with its connection, and taken by another
/// instance since; then the lease stops the job).
async fn check_lease(transaction: &Transaction<'_>, lease: &Lease) -> Result<(), WriteError> {
    let Some(pid) = lease.holder_pid() else {
        return Err(WriteError::Transient {
            context: "job lease",
            detail: "the job lease is being taken again after a lost connection".to_owned(),
        });
    };
    let held: bool = transaction
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                            AND classid::bigint = $1 AND objid::bigint = $2 AND pid = $3
                            AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            &[&i64::from(LOCK_CLASS), &i64::from(lease.process_key()), &pid],
        )
        .await
        .map_err(WriteError::at("cannot check the job lease"))?
        .get(0);
    if held {
        Ok(())
    } else {
        // Its session is gone: the lease notices within a second and takes
        // the lock again, or stops the job if another instance has it.
        Err(WriteError::Transient {
            context: "job lease",
            detail: format!("the job lease's session (pid {pid}) no longer holds the lock"),
        })
    }
}

/// Every row derived from the messages of `merged`: events, history, listings,
/// summaries, alerts, the outbox, rule states. Without the bookkeeping
/// (progress, offsets), so `isolate` can write parts of a batch. Returns how
/// many `maybe_stale` rows it inserted.
pub(super) async fn write_rows(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    merged: &Merged,
) -> Result<u64, WriteError> {
    // Events first: history, listings and alerts reference them.
    if !merged.events.is_empty() {
        let mut events: Vec<&EventRow> = merged.events.values().collect();
        // A stable order keeps lock order stable between concurrent writers.
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        copy_in(
            transaction,
            "cannot copy into incoming_events",
            "COPY incoming_events FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
            ],
            events.iter().map(|event| -> Values<'_> {
                vec![
                    Box::new(event.event_id.as_str()),
                    Box::new(event.display_name()),
                    Box::new(event.venue.as_ref().map(|venue| venue.value.as_str())),
                    Box::new(event.event_date.as_ref().map(|date| timestamp(date.value))),
                    Box::new(timestamp(event.first_seen)),
                    Box::new(timestamp(event.last_seen)),
                    Box::new(event.event_name.as_ref().map(|name| timestamp(name.observed_at))),
                    Box::new(event.venue.as_ref().map(|venue| timestamp(venue.observed_at))),
                    Box::new(event.event_date.as_ref().map(|date| timestamp(date.observed_at))),
                ]
            }),
        )
        .await?;
        transaction
            .batch_execute(
                "INSERT INTO events (event_id, event_name, venue, event_date, first_seen, last_seen,
                                     event_name_observed_at, venue_observed_at, event_date_observed_at)
                 SELECT * FROM incoming_events
                 ON CONFLICT (event_id) DO UPDATE SET
                     -- Per field the most recent value: a stale row's (applied
                     -- by the writer) stays until something newer comes.
                     event_name = CASE WHEN events.event_name_observed_at IS NULL OR EXCLUDED.event_name_observed_at >= events.event_name_observed_at
                         THEN EXCLUDED.event_name ELSE events.event_name END,
                     event_name_observed_at = CASE WHEN events.event_name_observed_at IS NULL OR EXCLUDED.event_name_observed_at >= events.event_name_observed_at
                         THEN EXCLUDED.event_name_observed_at ELSE events.event_name_observed_at END,
                     venue = CASE WHEN events.venue_observed_at IS NULL OR EXCLUDED.venue_observed_at >= events.venue_observed_at
                         THEN EXCLUDED.venue ELSE events.venue END,
                     venue_observed_at = CASE WHEN events.venue_observed_at IS NULL OR EXCLUDED.venue_observed_at >= events.venue_observed_at
                         THEN EXCLUDED.venue_observed_at ELSE events.venue_observed_at END,
                     event_date = CASE WHEN events.event_date_observed_at IS NULL OR EXCLUDED.event_date_observed_at >= events.event_date_observed_at
                         THEN EXCLUDED.event_date ELSE events.event_date END,
                     event_date_observed_at = CASE WHEN events.event_date_observed_at IS NULL OR EXCLUDED.event_date_observed_at >= events.event_date_observed_at
                         THEN EXCLUDED.event_date_observed_at ELSE events.event_date_observed_at END,
                     first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen,
                     updated_at = now()",
            )
            .await
            .map_err(WriteError::at("cannot merge events"))?;
    }

    if !merged.history.is_empty() {
        copy_listing_rows(
            transaction,
            "cannot copy into price_history",
            "COPY price_history (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM STDIN BINARY",
            false,
            &merged.history,
        )
        .await?;
        fail_point("mid_copy");
    }
    let stale = if merged.maybe_stale.is_empty() {
        0
    } else {
        insert_maybe_stale(transaction, &merged.maybe_stale).await?
    };

    if !merged.listings.is_empty() {
        copy_listing_rows(
            transaction,
            "cannot copy into incoming_listings",
            "COPY incoming_listings FROM STDIN BINARY",
            false,
            merged.listings.values(),
        )
        .await?;
        transaction
            .batch_execute(
                "INSERT INTO listings SELECT * FROM incoming_listings
                 ON CONFLICT (event_id, section, \"row\", seat, source) DO UPDATE SET
                     price = EXCLUDED.price, currency = EXCLUDED.currency,
                     available = EXCLUDED.available, observed_at = EXCLUDED.observed_at",
            )
            .await
            .map_err(WriteError::at("cannot merge listings"))?;
    }

    // With the listings they summarise, in the same transaction.
    write_summaries(transaction, merged).await?;

    let mut outbox: Vec<OutboxRow> = Vec::new();
    if !merged.alerts.is_empty() {
        let alerts = distinct_alerts(&merged.alerts);
        copy_in(
            transaction,
            "cannot copy into incoming_alerts",
            "COPY incoming_alerts FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::NUMERIC,
                Type::NUMERIC,
                Type::BPCHAR,
                Type::TIMESTAMPTZ,
            ],
            alerts.iter().map(|alert| -> Values<'_> {
                vec![
                    Box::new(alert.alert_id.as_str()),
                    Box::new(alert.kind.as_str()),
                    Box::new(alert.listing.event_id.as_str()),
                    Box::new(alert.listing.seat.section.as_str()),
                    Box::new(alert.listing.seat.row.as_str()),
                    Box::new(alert.listing.seat.seat.as_str()),
                    Box::new(alert.listing.seat.source.as_str()),
                    Box::new(alert.rule_id),
                    Box::new(alert.old_price.map(decimal)),
                    Box::new(decimal(alert.new_price)),
                    Box::new(alert.currency.as_str().to_owned()),
                    Box::new(timestamp(alert.observed_at)),
                ]
            }),
        )
        .await?;
        // An alert id stored by an earlier commit (a rule re-enabled on the same
        // observation) is not published again.
        let inserted: HashSet<String> = transaction
            .query(
                "INSERT INTO price_alerts SELECT * FROM incoming_alerts ON CONFLICT (alert_id) DO NOTHING
                 RETURNING alert_id",
                &[],
            )
            .await
            .map_err(WriteError::at("cannot insert alerts"))?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        for alert in alerts_to_publish(&merged.alerts, inserted) {
            let key = alert.listing.event_id.as_bytes();
            outbox.push(OutboxRow {
                topic: &config.alerts.topic,
                partition: config.alerts.partition_for(Some(key), 0),
                key: Some(key.to_vec()),
                payload: alert_json(alert),
                headers: alert_headers(alert),
            });
        }
    }
    for rejected in &merged.rejected {
        let (payload, headers) = dead_letter(rejected, &config.input_name);
        outbox.push(OutboxRow {
            topic: &config.dlq.topic,
            partition: config
                .dlq
                .partition_for(rejected.key.as_deref(), rejected.position.partition),
            key: rejected.key.clone(),
            payload,
            headers,
        });
    }
    if !outbox.is_empty() {
        copy_in(
            transaction,
            "cannot copy into outbox",
            "COPY outbox (topic, partition, key, payload, headers) FROM STDIN BINARY",
            &[Type::TEXT, Type::INT4, Type::BYTEA, Type::BYTEA, Type::TEXT_ARRAY],
            outbox.iter().map(|row| -> Values<'_> {
                vec![
                    Box::new(row.topic),
                    Box::new(row.partition),
                    Box::new(row.key.as_deref()),
                    Box::new(row.payload.as_slice()),
                    Box::new(row.headers.as_slice()),
                ]
            }),
        )
        .await?;
    }

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

    Ok(stale)
}

/// Inserts the rows of observations older than their listing's current state,
/// in partition order, skipping every identity stored already (by an earlier
/// commit, a row above, or the batch's new rows, COPY'd before): the first one
/// of an identity wins, as SPEC §2's dedup asks. The rows it inserted are
/// stale, and their event fields then count for `events`. Returns how many it
/// inserted.
async fn insert_maybe_stale(transaction: &Transaction<'_>, rows: &[OlderRow]) -> Result<u64, WriteError> {
    copy_listing_rows(
        transaction,
        "cannot copy into incoming_history",
        "COPY incoming_history FROM STDIN BINARY",
        true,
        rows.iter().map(|older| &older.row),
    )
    .await?;
    let inserted = transaction
        .query(
            "INSERT INTO price_history (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             SELECT event_id, section, \"row\", seat, source, price, currency, available, observed_at
             FROM incoming_history ORDER BY ord
             ON CONFLICT DO NOTHING
             RETURNING event_id, section, \"row\", seat, source, observed_at",
            &[],
        )
        .await
        .map_err(WriteError::at("cannot insert stale history rows"))?;
    let count = inserted.len() as u64;
    if rows.iter().all(|older| older.fields.is_none()) {
        return Ok(count);
    }
    let inserted: HashSet<(ListingKey, Micros)> = inserted
        .iter()
        .map(|row| {
            let listing = ListingKey {
                event_id: row.get(0),
                seat: Seat {
                    section: row.get(1),
                    row: row.get(2),
                    seat: row.get(3),
                    source: row.get(4),
                },
            };
            let observed_at: DateTime<Utc> = row.get(5);
            (listing, observed_at.timestamp_micros())
        })
        .collect();
    let updates = stale_event_fields(rows, &inserted);
    apply_stale_event_fields(transaction, &updates).await?;
    Ok(count)
}

/// One event's fields as the stale rows of a commit bring them, each with the
/// `observed_at` of its carrier.
#[derive(Debug, Default, PartialEq, Eq)]
struct StaleFields {
    event_name: Option<(String, Micros)>,
    venue: Option<(String, Micros)>,
    event_date: Option<(Micros, Micros)>,
}

/// Per event, the most recent carrier of each field among the rows `inserted`
/// (the first row of each inserted identity; later copies were duplicates).
/// Of carriers at one `observed_at` the first in input order is kept, and the
/// update only takes a strictly more recent value: so the result is the same
/// however the input is cut into commits (see `apply_stale_event_fields`).
fn stale_event_fields(
    rows: &[OlderRow],
    inserted: &HashSet<(ListingKey, Micros)>,
) -> BTreeMap<String, StaleFields> {
    fn newer<V: Clone>(slot: &mut Option<(V, Micros)>, value: Option<&V>, at: Micros) {
        if let Some(value) = value {
            if slot.as_ref().is_none_or(|(_, stored)| at > *stored) {
                *slot = Some((value.clone(), at));
            }
        }
    }
    let mut seen: HashSet<(&ListingKey, Micros)> = HashSet::new();
    let mut updates: BTreeMap<String, StaleFields> = BTreeMap::new();
    for OlderRow { row, fields, .. } in rows {
        let identity = (&row.listing, row.observed_at);
        if !seen.insert(identity) {
            continue;
        }
        let Some(fields) = fields else { continue };
        if !inserted.contains(&(row.listing.clone(), row.observed_at)) {
            continue;
        }
        let at = row.observed_at;
        let update = updates.entry(row.listing.event_id.clone()).or_default();
        newer(&mut update.event_name, fields.event_name.as_ref(), at);
        newer(&mut update.venue, fields.venue.as_ref(), at);
        newer(&mut update.event_date, fields.event_date.as_ref(), at);
    }
    updates
}

/// Sets each field a stale row brought where it is more recent than the
/// stored one. Strictly: at one `observed_at` the value already stored stays,
/// whether the job's own event row (merged before, in this commit or an
/// earlier one) or an earlier stale row put it there.
async fn apply_stale_event_fields(
    transaction: &Transaction<'_>,
    updates: &BTreeMap<String, StaleFields>,
) -> Result<(), WriteError> {
    if updates.is_empty() {
        return Ok(());
    }
    let n = updates.len();
    let mut events: Vec<&str> = Vec::with_capacity(n);
    let (mut names, mut name_ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut venues, mut venue_ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut dates, mut date_ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (event, fields) in updates {
        events.push(event.as_str());
        let (name, at) = split(fields.event_name.as_ref().map(|(name, at)| (name.as_str(), *at)));
        names.push(name);
        name_ats.push(at);
        let (venue, at) = split(fields.venue.as_ref().map(|(venue, at)| (venue.as_str(), *at)));
        venues.push(venue);
        venue_ats.push(at);
        let (date, at) = split(fields.event_date.map(|(date, at)| (timestamp(date), at)));
        dates.push(date);
        date_ats.push(at);
    }
    transaction
        .execute(
            "UPDATE events e SET
                 event_name = CASE WHEN u.name_at > e.event_name_observed_at OR e.event_name_observed_at IS NULL
                     THEN coalesce(u.name, e.event_name) ELSE e.event_name END,
                 event_name_observed_at = CASE WHEN u.name_at > e.event_name_observed_at OR e.event_name_observed_at IS NULL
                     THEN coalesce(u.name_at, e.event_name_observed_at) ELSE e.event_name_observed_at END,
                 venue = CASE WHEN u.venue_at > e.venue_observed_at OR e.venue_observed_at IS NULL
                     THEN coalesce(u.venue, e.venue) ELSE e.venue END,
                 venue_observed_at = CASE WHEN u.venue_at > e.venue_observed_at OR e.venue_observed_at IS NULL
                     THEN coalesce(u.venue_at, e.venue_observed_at) ELSE e.venue_observed_at END,
                 event_date = CASE WHEN u.date_at > e.event_date_observed_at OR e.event_date_observed_at IS NULL
                     THEN coalesce(u.event_date, e.event_date) ELSE e.event_date END,
                 event_date_observed_at = CASE WHEN u.date_at > e.event_date_observed_at OR e.event_date_observed_at IS NULL
                     THEN coalesce(u.date_at, e.event_date_observed_at) ELSE e.event_date_observed_at END,
                 updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::timestamptz[])
                  AS u(event_id, name, name_at, venue, venue_at, event_date, date_at)
             WHERE e.event_id = u.event_id",
            &[&events, &names, &name_ats, &venues, &venue_ats, &dates, &date_ats],
        )
        .await
        .map_err(WriteError::at("cannot apply the event fields of stale rows"))?;
    Ok(())
}

/// A value and its time, as two nullable SQL parameters.
fn split<V>(field: Option<(V, Micros)>) -> (Option<V>, Option<DateTime<Utc>>) {
    match field {
        Some((value, at)) => (Some(value), Some(timestamp(at))),
        None => (None, None),
    }
}

/// The alerts of a merged batch to insert: the first of each `alert_id` in
/// commit order. Merged epochs can hold one id twice (a rule disabled and
/// re-enabled while the writer is behind fires again on the same observation);
/// the table keeps one row per id, and which one must not depend on the order
/// PostgreSQL reads the temporary table in.
fn distinct_alerts(alerts: &[Alert]) -> Vec<&Alert> {
    let mut seen = HashSet::new();
    alerts
        .iter()
        .filter(|alert| seen.insert(alert.alert_id.as_str()))
        .collect()
}

/// The alerts of a merged batch that go to the outbox, ordered by time: one per
/// row the `INSERT` added (`inserted`: its `RETURNING` set), so one per id even
/// when the batch holds an id twice, and the first of them in commit order, as
/// `distinct_alerts` inserted.
fn alerts_to_publish(alerts: &[Alert], mut inserted: HashSet<String>) -> Vec<&Alert> {
    let mut alerts: Vec<&Alert> = alerts
        .iter()
        .filter(|alert| inserted.remove(&alert.alert_id))
        .collect();
    alerts.sort_by(|a, b| (a.observed_at, &a.alert_id).cmp(&(b.observed_at, &b.alert_id)));
    alerts
}

/// Upserts the changed keys of `event_summary` and `section_summary` and deletes
/// the keys that have no listing left.
async fn write_summaries(transaction: &Transaction<'_>, merged: &Merged) -> Result<(), WriteError> {
    if !merged.event_summaries.is_empty() {
        copy_in(
            transaction,
            "cannot copy into incoming_event_summary",
            "COPY incoming_event_summary FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::BPCHAR,
                Type::INT8,
                Type::INT8,
                Type::NUMERIC,
                Type::BOOL,
            ],
            merged.event_summaries.iter().map(|(key, summary)| -> Values<'_> {
                vec![
                    Box::new(key.event_id.as_str()),
                    Box::new(key.currency.as_str().to_owned()),
                    Box::new(summary.map(|summary| summary.listings)),
                    Box::new(summary.map(|summary| summary.available)),
                    Box::new(summary.and_then(|summary| summary.get_in_price).map(decimal)),
                    Box::new(summary.is_some()),
                ]
            }),
        )
        .await?;
        transaction
            .batch_execute(
                "DELETE FROM event_summary s USING incoming_event_summary i
                 WHERE NOT i.present AND s.event_id = i.event_id AND s.currency = i.currency;
                 INSERT INTO event_summary (event_id, currency, listings, available, get_in_price)
                 SELECT event_id, currency, listings, available, get_in_price
                 FROM incoming_event_summary WHERE present
                 ON CONFLICT (event_id, currency) DO UPDATE SET
                     listings = EXCLUDED.listings, available = EXCLUDED.available,
                     get_in_price = EXCLUDED.get_in_price",
            )
            .await
            .map_err(WriteError::at("cannot merge event_summary"))?;
    }
    if !merged.section_summaries.is_empty() {
        copy_in(
            transaction,
            "cannot copy into incoming_section_summary",
            "COPY incoming_section_summary FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::BPCHAR,
                Type::INT8,
                Type::NUMERIC,
                Type::BOOL,
            ],
            merged
                .section_summaries
                .iter()
                .map(|(key, summary)| -> Values<'_> {
                    vec![
                        Box::new(key.event_id.as_str()),
                        Box::new(key.section.as_str()),
                        Box::new(key.currency.as_str().to_owned()),
                        Box::new(summary.map(|summary| summary.available)),
                        Box::new(summary.and_then(|summary| summary.low_price).map(decimal)),
                        Box::new(summary.is_some()),
                    ]
                }),
        )
        .await?;
        transaction
            .batch_execute(
                "DELETE FROM section_summary s USING incoming_section_summary i
                 WHERE NOT i.present AND s.event_id = i.event_id AND s.section = i.section
                   AND s.currency = i.currency;
                 INSERT INTO section_summary (event_id, section, currency, available, low_price)
                 SELECT event_id, section, currency, available, low_price
                 FROM incoming_section_summary WHERE present
                 ON CONFLICT (event_id, section, currency) DO UPDATE SET
                     available = EXCLUDED.available, low_price = EXCLUDED.low_price",
            )
            .await
            .map_err(WriteError::at("cannot merge section_summary"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use conscope_dataflows::model::{AlertKind, Cents, Change, Currency, EventCurrency, EventSummary, Seat};

    use super::*;

    fn key(event_id: &str) -> EventCurrency {
        EventCurrency {
            event_id: event_id.to_owned(),
            currency: Currency::USD,
        }
    }

    fn summary(listings: i64) -> EventSummary {
        EventSummary {
            listings,
            available: listings,
            get_in_price: Some(Cents(100)),
        }
    }

    fn change(event_id: &str, listings: i64, diff: i64) -> Change<EventCurrency, EventSummary> {
        Change {
            key: key(event_id),
            value: summary(listings),
            diff,
        }
    }

    fn rule_alert(alert_id: &str, old_price: Option<i64>, observed_at: Micros) -> Alert {
        Alert {
            alert_id: alert_id.to_owned(),
            kind: AlertKind::RuleMatch,
            listing: ListingKey {
                event_id: "e1".to_owned(),
                seat: Seat {
                    section: "A".to_owned(),
                    row: "1".to_owned(),
                    seat: "1".to_owned(),
                    source: "s1".to_owned(),
                },
            },
            rule_id: Some(7),
            max_price: Some(Cents(12500)),
            old_price: old_price.map(Cents),
            new_price: Cents(12000),
            currency: Currency::USD,
            observed_at,
            event_name: "e1".to_owned(),
        }
    }

    fn epoch(epoch: u64, alerts: Vec<Alert>) -> EpochBatch {
        EpochBatch {
            epoch,
            records: alerts.into_iter().map(SinkRecord::Alert).collect(),
        }
    }

    /// A rule disabled and re-enabled while the writer is behind fires twice on
    /// the same observation: two alerts with one id in one merged batch. The
    /// table keeps one row, so the outbox gets one message: the first firing's.
    #[test]
    fn alerts_sharing_an_id_in_one_merged_batch_are_published_once() {
        let mut merged = Merged::default();
        merged.absorb(epoch(
            1,
            vec![rule_alert("r7", None, 10), rule_alert("other", None, 5)],
        ));
        merged.absorb(epoch(2, vec![rule_alert("r7", Some(13000), 10)]));

        let inserted: HashSet<String> = ["r7".to_owned(), "other".to_owned()].into();
        let stored: Vec<Option<Cents>> = distinct_alerts(&merged.alerts)
            .iter()
            .map(|alert| alert.old_price)
            .collect();
        assert_eq!(stored, [None, None], "one row per id, the first firing's");
        let published = alerts_to_publish(&merged.alerts, inserted);
        let ids: Vec<&str> = published.iter().map(|alert| alert.alert_id.as_str()).collect();
        assert_eq!(ids, ["other", "r7"]);
        assert_eq!(
            published[1].old_price, None,
            "the first firing in commit order wins"
        );

        // An id the INSERT skipped (stored by an earlier commit) is not published.
        let published = alerts_to_publish(&merged.alerts, ["other".to_owned()].into());
        assert_eq!(published.len(), 1);
    }

    fn listing_row(seat: &str, cents: i64, observed_at: Micros) -> ListingRow {
        ListingRow {
            listing: ListingKey {
                event_id: "e1".to_owned(),
                seat: Seat {
                    section: "A".to_owned(),
                    row: "1".to_owned(),
                    seat: seat.to_owned(),
                    source: "s1".to_owned(),
                },
            },
            price: Cents(cents),
            currency: Currency::USD,
            available: true,
            observed_at,
        }
    }

    fn at(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    /// Epochs merged into one transaction: every history row once, with its
    /// input position, in order; the last state of each listing; the highest
    /// next offset per partition; counters and rejects summed.
    #[test]
    fn absorbed_epochs_keep_every_row_and_the_last_state() {
        let counted = |processed| {
            SinkRecord::Counters(Counters {
                processed,
                ..Counters::default()
            })
        };
        let mut merged = Merged::default();
        merged.absorb(EpochBatch {
            epoch: 7,
            records: vec![
                SinkRecord::History {
                    row: listing_row("1", 100, 10),
                    position: at(0, 4),
                },
                SinkRecord::Listing(listing_row("1", 100, 10)),
                SinkRecord::Offset(at(0, 5)),
                SinkRecord::Offset(at(1, 9)),
                SinkRecord::RuleState {
                    rule_id: 3,
                    below: true,
                },
                counted(2),
            ],
        });
        merged.absorb(EpochBatch {
            epoch: 8,
            records: vec![
                SinkRecord::History {
                    row: listing_row("1", 90, 20),
                    position: at(0, 5),
                },
                SinkRecord::Listing(listing_row("1", 90, 20)),
                SinkRecord::Rejected(Rejected {
                    position: at(1, 9),
                    key: None,
                    payload: None,
                    reason: "bad".to_owned(),
                }),
                // Progress of another worker's partition can arrive late: the
                // highest next offset wins.
                SinkRecord::Offset(at(1, 10)),
                SinkRecord::Offset(at(0, 6)),
                SinkRecord::RuleState {
                    rule_id: 3,
                    below: false,
                },
                counted(3),
            ],
        });
        assert_eq!(merged.epochs, [7, 8]);
        assert_eq!(merged.records, 13);
        assert_eq!(
            merged.history.iter().map(|row| row.price).collect::<Vec<_>>(),
            [Cents(100), Cents(90)]
        );
        assert_eq!(merged.origins, [at(0, 4), at(0, 5)]);
        let listings: Vec<&ListingRow> = merged.listings.values().collect();
        assert_eq!(listings, [&listing_row("1", 90, 20)]);
        assert_eq!(merged.offsets, BTreeMap::from([(0, 6), (1, 10)]));
        assert_eq!(merged.rule_states, BTreeMap::from([(3, false)]));
        assert_eq!(merged.rejected.len(), 1);
        assert_eq!(merged.counters.processed, 5);
    }

    /// One epoch's containers reach the sink in any order (timely sorts them
    /// unstably by time), so what depends on order is put back in input order:
    /// the first of two stale copies of an identity is the one kept.
    #[test]
    fn an_epoch_in_any_order_gives_stale_rows_and_dead_letters_in_input_order() {
        let stale = |offset: i64, cents: i64| SinkRecord::MaybeStale {
            row: listing_row("1", cents, 5),
            position: at(0, offset),
            fields: None,
        };
        let rejected = |partition: i32, offset: i64| {
            SinkRecord::Rejected(Rejected {
                position: at(partition, offset),
                key: None,
                payload: None,
                reason: "bad".to_owned(),
            })
        };
        let mut merged = Merged::default();
        merged.absorb(EpochBatch {
            epoch: 1,
            records: vec![stale(9, 300), rejected(1, 2), stale(3, 100)],
        });
        merged.absorb(EpochBatch {
            epoch: 2,
            records: vec![rejected(0, 8), stale(12, 400), rejected(0, 7), stale(10, 200)],
        });
        let prices: Vec<i64> = merged.maybe_stale.iter().map(|older| older.row.price.0).collect();
        assert_eq!(
            prices,
            [100, 300, 200, 400],
            "by position within each epoch, epochs in order"
        );
        let positions: Vec<Position> = merged.rejected.iter().map(|record| record.position).collect();
        assert_eq!(positions, [at(1, 2), at(0, 7), at(0, 8)]);
    }

    /// Of the stale rows' event fields only inserted rows count (a later copy
    /// of an identity, or one the table held, is a duplicate), the most recent
    /// carrier wins, and of carriers at one time the first in input order.
    #[test]
    fn stale_rows_bring_the_fields_of_their_most_recent_inserted_carrier() {
        let venue = |venue: &str| {
            Some(Box::new(EventFields {
                venue: Some(venue.to_owned()),
                ..EventFields::default()
            }))
        };
        let named = |name: &str| {
            Some(Box::new(EventFields {
                event_name: Some(name.to_owned()),
                ..EventFields::default()
            }))
        };
        let rows: Vec<OlderRow> = [
            (listing_row("a", 100, 5), venue("V5")),
            (listing_row("a", 101, 5), venue("copy of a@5, a duplicate")),
            (
                listing_row("b", 100, 9),
                named("b@9 was stored before, a duplicate"),
            ),
            (listing_row("c", 100, 7), venue("V7")),
            (listing_row("d", 100, 7), venue("V7 later")),
            (listing_row("e", 100, 3), named("N3")),
        ]
        .into_iter()
        .enumerate()
        .map(|(offset, (row, fields))| OlderRow {
            row,
            position: at(0, offset as i64),
            fields,
        })
        .collect();
        let inserted: HashSet<(ListingKey, Micros)> = [("a", 5), ("c", 7), ("d", 7), ("e", 3)]
            .into_iter()
            .map(|(seat, at)| (listing_row(seat, 0, at).listing, at))
            .collect();
        let updates = stale_event_fields(&rows, &inserted);
        assert_eq!(
            updates,
            BTreeMap::from([(
                "e1".to_owned(),
                StaleFields {
                    event_name: Some(("N3".to_owned(), 3)),
                    venue: Some(("V7".to_owned(), 7)),
                    event_date: None,
                }
            )])
        );
    }

    #[test]
    fn summary_changes_fold_into_the_last_state_of_each_key() {
        let mut rows = HashMap::new();
        fold_changes(&mut rows, vec![change("a", 1, 1), change("b", 1, 1)]);
        // The insertion wins over the retraction whatever their order; a
        // retraction alone deletes.
        fold_changes(
            &mut rows,
            vec![change("a", 2, 1), change("a", 1, -1), change("b", 1, -1)],
        );
        assert_eq!(rows.get(&key("a")), Some(&Some(summary(2))));
        assert_eq!(rows.get(&key("b")), Some(&None));
        // A later epoch brings a deleted key back.
        fold_changes(&mut rows, vec![change("b", 3, 1)]);
        assert_eq!(rows.get(&key("b")), Some(&Some(summary(3))));
    }
}
