//! The Postgres writer: one transaction per batch of epochs.
//!
//! ```text
//!  sink operator (worker 0) ──EpochBatch──► writer thread ──COMMIT──► PostgreSQL
//!          ▲                                    │
//!          └────── committed epoch + wake ──────┘──► publisher (outbox)
//! ```
//!
//! # Encoding
//! History rows go in with binary `COPY`; listings, events and alerts are `COPY`'d
//! into temporary tables and merged with one `INSERT … ON CONFLICT` each; rejects
//! and alerts become `outbox` rows. No SQL is built from data.
//!
//! # Sinking
//! Everything derived from the messages of the epochs, the next input offsets and
//! `job_progress.commit_no + 1` commit together, so after any crash the stored
//! offsets and the rows agree: a restart neither re-applies nor skips a message.
//! When the writer falls behind, queued epochs are merged into one transaction
//! (later states win), which keeps throughput up under load.
//!
//! # Retries
//! Connection and serialization failures are transient: reconnect with backoff
//! and retry the same batch; the dataflow holds the epochs' capabilities (and the
//! sources stop reading) until the commit succeeds, so memory stays bounded. A
//! commit whose outcome is unknown is resolved by `commit_no`: if it moved by one,
//! the batch is in.
//!
//! # Error handling
//! Anything else (a constraint violated, a second job writing to the same
//! database) is definite: the writer stops the job with a clear error instead of
//! skipping data.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use conscope_dataflows::model::{
    Alert, Cents, Counters, EventRow, ListingKey, ListingRow, Micros, Rejected, SinkRecord,
};
use futures_util::pin_mut;
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use super::encode::{alert_headers, alert_json, dead_letter, OutboxTarget};
use super::publisher::PublisherControl;
use crate::config::KafkaArgs;
use crate::fail::fail_point;
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
}

/// Everything to write in one transaction, merged from one or more epochs.
#[derive(Default)]
struct Merged {
    epochs: Vec<u64>,
    history: Vec<ListingRow>,
    listings: HashMap<ListingKey, ListingRow>,
    events: HashMap<String, EventRow>,
    alerts: Vec<Alert>,
    rule_states: BTreeMap<i64, bool>,
    rejected: Vec<Rejected>,
    offsets: BTreeMap<i32, i64>,
    counters: Counters,
    records: usize,
}

impl Merged {
    fn absorb(&mut self, batch: EpochBatch) {
        self.epochs.push(batch.epoch);
        self.records += batch.records.len();
        for record in batch.records {
            match record {
                SinkRecord::History(row) => self.history.push(row),
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
                SinkRecord::Rejected(rejected) => self.rejected.push(rejected),
                SinkRecord::Offset(position) => {
                    let next = self.offsets.entry(position.partition).or_insert(position.offset);
                    *next = (*next).max(position.offset);
                }
                SinkRecord::Counters(counters) => self.counters.add(&counters),
            }
        }
    }
}

fn timestamp(micros: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn decimal(cents: Cents) -> Decimal {
    Decimal::new(cents.0, 2)
}

/// Runs the writer on the calling thread until `batches` closes. Sends each
/// committed epoch on `committed` and calls `wake` after each commit.
pub fn run_writer(
    config: WriterConfig,
    batches: mpsc::Receiver<EpochBatch>,
    committed: mpsc::Sender<u64>,
    wake: impl Fn() + Send + 'static,
    metrics: Arc<Metrics>,
    publisher: Arc<PublisherControl>,
) -> anyhow::Result<()> {
    let monitor = match &config.monitor {
        Some((kafka, group)) => Some(GroupMonitor::new(kafka, group, &config.input_name)?),
        None => None,
    };
    let mut rejected_log = crate::metrics::RateLimited::new(Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
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
            writer.commit_with_retry(&merged, &metrics).await?;
            metrics.committed(&merged.counters, merged.rejected.len() as u64, &merged.offsets);
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
                    return Ok(());
                }
            }
            wake();
            publisher.wake.notify_one();
            if let Some(monitor) = &monitor {
                monitor.report(&merged.offsets);
            }
        }
        Ok(())
    })
}

/// Commits the stored offsets to the consumer group too, so lag dashboards and
/// `kafka-consumer-groups` see the job. Never read back: PostgreSQL is the truth.
struct GroupMonitor {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
}

impl GroupMonitor {
    fn new(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<GroupMonitor> {
        let consumer = kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the monitoring Kafka client")?;
        Ok(GroupMonitor {
            consumer,
            topic: topic.to_owned(),
        })
    }

    fn report(&self, offsets: &BTreeMap<i32, i64>) {
        use rdkafka::consumer::{CommitMode, Consumer};
        let mut list = rdkafka::TopicPartitionList::new();
        for (partition, next) in offsets {
            if list
                .add_partition_offset(&self.topic, *partition, rdkafka::Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, "cannot report offsets to the consumer group");
        }
    }
}

struct Writer {
    config: WriterConfig,
    client: Client,
    commit_no: i64,
}

impl Writer {
    async fn connect(config: WriterConfig) -> anyhow::Result<Writer> {
        let client = crate::db::connect_with_retry(&config.database_url, Duration::from_secs(60)).await?;
        prepare(&client).await?;
        let commit_no = client
            .query_one("SELECT commit_no FROM job_progress WHERE id = 1", &[])
            .await
            .context("cannot read job_progress")?
            .get(0);
        Ok(Writer {
            config,
            client,
            commit_no,
        })
    }

    async fn commit_with_retry(&mut self, merged: &Merged, metrics: &Metrics) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(100);
        let mut errors = crate::metrics::RateLimited::new(Duration::from_secs(10));
        loop {
            let outcome = write(&mut self.client, &self.config, merged, self.commit_no).await;
            match outcome {
                Ok(()) => {
                    self.commit_no += 1;
                    metrics.commit_done();
                    fail_point("after_commit");
                    return Ok(());
                }
                Err(error) if is_transient(&error) || self.client.is_closed() => {
                    if errors.allow() {
                        tracing::warn!("commit failed ({error:#}); retrying in {delay:?}");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    if self.client.is_closed() {
                        match crate::db::connect(&self.config.database_url).await {
                            Ok(client) => {
                                prepare(&client).await?;
                                self.client = client;
                            }
                            Err(error) => {
                                if errors.allow() {
                                    tracing::warn!("{error:#}");
                                }
                                continue;
                            }
                        }
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
                            return Ok(());
                        }
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .is_some_and(|error| {
                error.is_closed()
                    || error.code().is_none_or(|code| {
                        let class = &code.code()[..2];
                        // 08 connection, 40 serialization/deadlock, 53 resources,
                        // 57 operator intervention (restart), 58 system error.
                        matches!(class, "08" | "40" | "53" | "57" | "58")
                    })
            })
    })
}

/// Per-connection temporary tables for the merges.
async fn prepare(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS incoming_events (
                 event_id TEXT, event_name TEXT, venue TEXT, event_date TIMESTAMPTZ,
                 first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ, event_name_observed_at TIMESTAMPTZ,
                 venue_observed_at TIMESTAMPTZ, event_date_observed_at TIMESTAMPTZ) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_listings (
                 event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 price NUMERIC(12,2), currency CHAR(3), available BOOLEAN, observed_at TIMESTAMPTZ)
                 ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_alerts (
                 alert_id TEXT, kind TEXT, event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 rule_id BIGINT, old_price NUMERIC(12,2), new_price NUMERIC(12,2), currency CHAR(3),
                 observed_at TIMESTAMPTZ) ON COMMIT DELETE ROWS;",
        )
        .await
        .context("cannot create temporary tables")?;
    Ok(())
}

/// `COPY table (columns) FROM STDIN BINARY` of `rows`.
async fn copy_in<'a, I>(
    transaction: &Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: I,
) -> anyhow::Result<()>
where
    I: IntoIterator<Item = Vec<Box<dyn ToSql + Sync + Send + 'a>>>,
{
    let sink = transaction
        .copy_in(statement)
        .await
        .with_context(|| format!("{statement} failed"))?;
    let writer = BinaryCopyInWriter::new(sink, types);
    pin_mut!(writer);
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> =
            row.iter().map(|value| &**value as &(dyn ToSql + Sync)).collect();
        writer
            .as_mut()
            .write(&refs)
            .await
            .with_context(|| format!("{statement} failed"))?;
    }
    writer
        .finish()
        .await
        .with_context(|| format!("{statement} failed"))?;
    Ok(())
}

type Values<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

fn listing_values(row: &ListingRow) -> Values<'_> {
    vec![
        Box::new(row.listing.event_id.as_str()),
        Box::new(row.listing.seat.section.as_str()),
        Box::new(row.listing.seat.row.as_str()),
        Box::new(row.listing.seat.seat.as_str()),
        Box::new(row.listing.seat.source.as_str()),
        Box::new(decimal(row.price)),
        Box::new(row.currency.as_str().to_owned()),
        Box::new(row.available),
        Box::new(timestamp(row.observed_at)),
    ]
}

const LISTING_TYPES: [Type; 9] = [
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
) -> anyhow::Result<()> {
    let transaction = client.transaction().await.context("BEGIN failed")?;
    let moved = transaction
        .execute(
            "UPDATE job_progress SET commit_no = $1 WHERE id = 1 AND commit_no = $2",
            &[&(commit_no + 1), &commit_no],
        )
        .await
        .context("cannot advance job_progress")?;
    if moved != 1 {
        bail!(
            "job_progress.commit_no is no longer {commit_no}: another conscope job is writing to this \
             database (one database holds one job's state)"
        );
    }

    // Events first: history, listings and alerts reference them.
    if !merged.events.is_empty() {
        let mut events: Vec<&EventRow> = merged.events.values().collect();
        // A stable order keeps lock order stable between concurrent writers.
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        copy_in(
            &transaction,
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
                     event_name = EXCLUDED.event_name, venue = EXCLUDED.venue, event_date = EXCLUDED.event_date,
                     first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen,
                     event_name_observed_at = EXCLUDED.event_name_observed_at,
                     venue_observed_at = EXCLUDED.venue_observed_at,
                     event_date_observed_at = EXCLUDED.event_date_observed_at,
                     updated_at = now()",
            )
            .await
            .context("cannot merge events")?;
    }

    if !merged.history.is_empty() {
        copy_in(
            &transaction,
            "COPY price_history (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM STDIN BINARY",
            &LISTING_TYPES,
            merged.history.iter().map(listing_values),
        )
        .await?;
        fail_point("mid_copy");
    }

    if !merged.listings.is_empty() {
        copy_in(
            &transaction,
            "COPY incoming_listings FROM STDIN BINARY",
            &LISTING_TYPES,
            merged.listings.values().map(listing_values),
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
            .context("cannot merge listings")?;
    }

    let mut outbox: Vec<OutboxRow> = Vec::new();
    if !merged.alerts.is_empty() {
        copy_in(
            &transaction,
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
            merged.alerts.iter().map(|alert| -> Values<'_> {
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
        // An alert id seen before (a rule re-enabled on the same observation) is
        // not published twice.
        let inserted: std::collections::HashSet<String> = transaction
            .query(
                "INSERT INTO price_alerts SELECT * FROM incoming_alerts ON CONFLICT (alert_id) DO NOTHING
                 RETURNING alert_id",
                &[],
            )
            .await
            .context("cannot insert alerts")?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        let mut alerts: Vec<&Alert> = merged
            .alerts
            .iter()
            .filter(|alert| inserted.contains(&alert.alert_id))
            .collect();
        alerts.sort_by(|a, b| (a.observed_at, &a.alert_id).cmp(&(b.observed_at, &b.alert_id)));
        for alert in alerts {
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
            &transaction,
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
                 ON CONFLICT (rule_id) DO UPDATE SET below = EXCLUDED.below, definition = EXCLUDED.definition",
                &[&ids, &below],
            )
            .await
            .context("cannot store rule state")?;
    }

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
            .context("cannot store offsets")?;
    }
    fail_point("before_commit");
    transaction.commit().await.context("COMMIT failed")?;
    Ok(())
}
