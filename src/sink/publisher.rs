//! The outbox publisher: sends committed alerts and dead letters to Kafka, each
//! exactly once, also across crashes; parks what the broker refuses for good.
//!
//! ```text
//!  outbox (seq order) ──► idempotent producer ──► price_alerts / raw_prices.dlq
//!        ▲                     │ acknowledged          │ refused for good
//!        └── DELETE seq ◄──────┘       outbox_parked ◄──┘
//! ```
//!
//! # Encoding
//! Each message carries headers `conscope.seq` (its outbox sequence number) and
//! `conscope.job` (this database's job id). Its partition was fixed at commit
//! time (see `encode`).
//!
//! # Sinking
//! Only committed rows are in the outbox, so nothing is published before it is
//! durable. Within one producer session the idempotent, gap-less producer (see
//! `delivery`) keeps each partition in order, without gaps or duplicates, so
//! "the last message of a partition has seq n" means every outbox row for that
//! partition with seq ≤ n is on the topic. A row is deleted when the broker
//! acknowledged its message, or moved to `outbox_parked` when the broker
//! refused it for good; each batch is settled in one transaction before the
//! next is sent.
//!
//! # Retries
//! A delivery that fails without a definite refusal ends the producer session
//! once the batch is settled: after a pause the publisher re-runs recovery
//! (reads the last message of each partition it has rows for, drops the rows
//! already there) and carries on with a fresh producer.
//!
//! # Error handling
//! Nothing is skipped silently. A refusal the broker gives a batch may be the
//! batch's size, not the row's, so a refused row is sent again alone, and only
//! a refusal of the row alone (or librdkafka's own per-message size check)
//! parks it: kept in `outbox_parked` with the reason, counted (`parked`),
//! logged. Parked rows are out of the outbox, so they neither block later rows
//! nor keep `--exit-at-end` waiting. Everything else stays in the outbox until
//! acknowledged, whatever happens to the broker, the database or this process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_postgres::Client;

use super::delivery::{DeliveryError, ProducerSettings};
use crate::config::KafkaArgs;
use crate::fail::fail_point;
use crate::metrics::Metrics;

/// Rows published per round at most.
const BATCH: i64 = 5_000;

pub struct PublisherConfig {
    /// From `delivery::producer_config`, which refuses `--kafka` settings that
    /// would break exactly-once publishing.
    pub producer: ProducerSettings,
    /// For recovery's read-back consumer.
    pub kafka: KafkaArgs,
    pub database_url: String,
    pub job_id: String,
}

/// Shared between the job and the publisher thread.
#[derive(Default)]
pub struct PublisherControl {
    /// Woken after each commit.
    pub wake: Notify,
    /// Set when the job has committed everything: drain the outbox, then stop.
    pub finishing: AtomicBool,
}

struct OutboxRow {
    seq: i64,
    topic: String,
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<String>,
    committed_at: DateTime<Utc>,
}

/// What became of one row of a batch.
enum Outcome {
    Acknowledged {
        lag_micros: u64,
    },
    /// Refused for good: park it with this reason.
    Park(String),
    /// Refused within a batch: send it again alone.
    Suspect,
    Failed(DeliveryError),
    /// Not handed to the producer (its queue was full, or it had failed).
    Unsent,
}

/// What outlives a producer session.
#[derive(Default)]
struct Carry {
    /// Rows to send alone (see `Error handling`).
    alone: BTreeSet<i64>,
    /// Whether the session settled anything: resets the backoff.
    progressed: bool,
}

/// Runs until `control.finishing` is set and the outbox is empty.
pub fn run_publisher(
    config: PublisherConfig,
    control: Arc<PublisherControl>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut errors = crate::metrics::RateLimited::new(Duration::from_secs(10));
        let mut delay = Duration::from_millis(200);
        let mut carry = Carry::default();
        loop {
            match session(&config, &control, &metrics, &mut carry).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    if std::mem::take(&mut carry.progressed) {
                        delay = Duration::from_millis(200);
                    }
                    if errors.allow() {
                        tracing::warn!("alert publisher: {error:#}; restarting in {delay:?}");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    })
}

/// One producer session: recover, then publish until finished or a failure.
async fn session(
    config: &PublisherConfig,
    control: &PublisherControl,
    metrics: &Metrics,
    carry: &mut Carry,
) -> anyhow::Result<()> {
    let mut client = crate::db::connect(&config.database_url).await?;
    recover(config, &client, metrics).await?;
    let producer: FutureProducer = config
        .producer
        .config()
        .create()
        .context("cannot create Kafka producer")?;
    // `publish` returns only with every delivery it started settled, so no
    // message of this producer is in flight when the next recovery reads back.
    publish(config, control, metrics, carry, &mut client, &producer).await
}

async fn publish(
    config: &PublisherConfig,
    control: &PublisherControl,
    metrics: &Metrics,
    carry: &mut Carry,
    client: &mut Client,
    producer: &FutureProducer,
) -> anyhow::Result<()> {
    loop {
        let mut rows = fetch(client).await?;
        if rows.is_empty() {
            if control.finishing.load(Ordering::SeqCst) {
                // Re-check after the flag: a last commit may have landed meanwhile.
                if fetch(client).await?.is_empty() {
                    return Ok(());
                }
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), control.wake.notified()).await;
            continue;
        }
        cut_before_alone(&mut rows, &carry.alone);
        fail_point("before_publish");
        let outcomes = send(producer, &rows, &config.job_id).await;
        settle(client, &rows, &outcomes).await?;
        carry.progressed |= outcomes
            .iter()
            .any(|outcome| matches!(outcome, Outcome::Acknowledged { .. } | Outcome::Park(_)));
        let mut failure = None;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Acknowledged { lag_micros, .. } => {
                    carry.alone.remove(&row.seq);
                    // Counted once the row leaves the outbox: a batch cut short
                    // by a failure is counted by the recovery that finds it on
                    // the topic, or when resent.
                    metrics.published(&row.topic, lag_micros);
                }
                Outcome::Park(reason) => {
                    carry.alone.remove(&row.seq);
                    metrics.parked(1);
                    tracing::warn!(
                        topic = row.topic,
                        partition = row.partition,
                        seq = row.seq,
                        reason,
                        "the broker refuses this outbox message for good; moved to outbox_parked"
                    );
                }
                Outcome::Suspect => {
                    carry.alone.insert(row.seq);
                }
                Outcome::Failed(error) => {
                    failure.get_or_insert_with(|| {
                        format!("delivery of outbox message {} failed: {error}", row.seq)
                    });
                }
                Outcome::Unsent => {}
            }
        }
        if let Some(failure) = failure {
            anyhow::bail!(failure);
        }
        // After a refusal, a gap-less idempotent producer stops for good.
        if let Some((code, reason)) = producer.client().fatal_error() {
            anyhow::bail!("the producer stopped ({code}: {reason})");
        }
    }
}

/// Rows go out in seq order; a row to be sent alone goes in a batch of its own,
/// so the batch ends before it.
fn cut_before_alone(rows: &mut Vec<OutboxRow>, alone: &BTreeSet<i64>) {
    match rows.iter().position(|row| alone.contains(&row.seq)) {
        Some(0) => rows.truncate(1),
        Some(at) => rows.truncate(at),
        None => {}
    }
}

/// Whether each row is the only one of its partition in `rows`: the broker
/// sizes a partition's record batch, so a refusal of a lone row is the row's.
fn alone_in_partition(rows: &[OutboxRow]) -> Vec<bool> {
    let mut counts: BTreeMap<(&str, i32), usize> = BTreeMap::new();
    for row in rows {
        *counts.entry((row.topic.as_str(), row.partition)).or_default() += 1;
    }
    rows.iter()
        .map(|row| counts[&(row.topic.as_str(), row.partition)] == 1)
        .collect()
}

fn headers(row: &OutboxRow, job_id: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(row.headers.len() / 2 + 2);
    for pair in row.headers.chunks_exact(2) {
        headers = headers.insert(Header {
            key: &pair[0],
            value: Some(pair[1].as_bytes()),
        });
    }
    let seq = row.seq.to_string();
    headers
        .insert(Header {
            key: "conscope.seq",
            value: Some(seq.as_bytes()),
        })
        .insert(Header {
            key: "conscope.job",
            value: Some(job_id.as_bytes()),
        })
}

/// Sends `rows` and waits for every outcome.
async fn send(producer: &FutureProducer, rows: &[OutboxRow], job_id: &str) -> Vec<Outcome> {
    let mut deliveries = Vec::with_capacity(rows.len());
    let mut stopped = false;
    for row in rows {
        if stopped {
            deliveries.push(Err(Outcome::Unsent));
            continue;
        }
        let mut record = FutureRecord::to(&row.topic)
            .partition(row.partition)
            .headers(headers(row, job_id));
        if let Some(key) = &row.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &row.payload {
            record = record.payload(payload.as_slice());
        }
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(Ok(delivery)),
            Err((error, _)) => match DeliveryError::classify(error) {
                // librdkafka's own checks look at this message alone.
                refused @ DeliveryError::Refused(_) => {
                    deliveries.push(Err(Outcome::Park(refused.to_string())))
                }
                other => {
                    // Later rows wait, so that each partition stays in order.
                    stopped = true;
                    let queue_full = matches!(
                        &other,
                        DeliveryError::NotYet(rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        ))
                    );
                    deliveries.push(Err(if queue_full {
                        Outcome::Unsent
                    } else {
                        Outcome::Failed(other)
                    }));
                }
            },
        }
        if deliveries.len() == rows.len() / 2 {
            fail_point("mid_publish");
        }
    }
    let mut outcomes = Vec::with_capacity(rows.len());
    for ((row, delivery), alone) in rows.iter().zip(deliveries).zip(alone_in_partition(rows)) {
        let outcome = match delivery {
            Err(outcome) => outcome,
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => {
                    let lag = Utc::now().signed_duration_since(row.committed_at);
                    Outcome::Acknowledged {
                        lag_micros: lag.num_microseconds().unwrap_or(0).max(0) as u64,
                    }
                }
                Ok(Err((error, _))) => match DeliveryError::classify(error) {
                    refused @ DeliveryError::Refused(_) if alone => Outcome::Park(refused.to_string()),
                    DeliveryError::Refused(_) => Outcome::Suspect,
                    other => Outcome::Failed(other),
                },
                // The producer went away with the message: not known to be anywhere.
                Err(_) => Outcome::Failed(DeliveryError::NotYet(rdkafka::error::KafkaError::Canceled)),
            },
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// One transaction: acknowledged rows deleted, refused ones parked.
async fn settle(client: &mut Client, rows: &[OutboxRow], outcomes: &[Outcome]) -> anyhow::Result<()> {
    let delivered: Vec<i64> = rows
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| matches!(outcome, Outcome::Acknowledged { .. }))
        .map(|(row, _)| row.seq)
        .collect();
    let transaction = client.transaction().await.context("BEGIN failed")?;
    transaction
        .execute("DELETE FROM outbox WHERE seq = ANY($1)", &[&delivered])
        .await
        .context("cannot clear published outbox rows")?;
    for (row, outcome) in rows.iter().zip(outcomes) {
        if let Outcome::Park(reason) = outcome {
            transaction
                .execute(
                    "WITH parked AS (DELETE FROM outbox WHERE seq = $1 RETURNING *)
                     INSERT INTO outbox_parked (seq, topic, partition, key, payload, headers, committed_at, park_error)
                     SELECT seq, topic, partition, key, payload, headers, committed_at, $2 FROM parked",
                    &[&row.seq, reason],
                )
                .await
                .context("cannot park an outbox row")?;
        }
    }
    transaction.commit().await.context("COMMIT failed")?;
    Ok(())
}

async fn fetch(client: &Client) -> anyhow::Result<Vec<OutboxRow>> {
    let rows = client
        .query(
            "SELECT seq, topic, partition, key, payload, headers, committed_at FROM outbox ORDER BY seq LIMIT $1",
            &[&BATCH],
        )
        .await
        .context("cannot read the outbox")?;
    Ok(rows
        .into_iter()
        .map(|row| OutboxRow {
            seq: row.get(0),
            topic: row.get(1),
            partition: row.get(2),
            key: row.get(3),
            payload: row.get(4),
            headers: row.get(5),
            committed_at: row.get(6),
        })
        .collect())
}

/// Drops the outbox rows a previous session already published: for each partition
/// with pending rows, the `conscope.seq` of its last message (when this job's).
async fn recover(config: &PublisherConfig, client: &Client, metrics: &Metrics) -> anyhow::Result<()> {
    let pending = client
        .query(
            "SELECT topic, partition, min(seq) FROM outbox GROUP BY topic, partition",
            &[],
        )
        .await
        .context("cannot read the outbox")?;
    if pending.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .set("group.id", "conscope-outbox-recovery")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create Kafka consumer")?;
    for row in pending {
        let topic: String = row.get(0);
        let partition: i32 = row.get(1);
        let Some(last) = last_published_seq(&consumer, &topic, partition, &config.job_id)? else {
            continue;
        };
        let cleared = client
            .execute(
                "DELETE FROM outbox WHERE topic = $1 AND partition = $2 AND seq <= $3",
                &[&topic, &partition, &last],
            )
            .await?;
        if cleared > 0 {
            // Delivered by an earlier session whose acknowledgement was lost:
            // published all the same.
            metrics.found_published(&topic, cleared);
            tracing::info!(
                topic,
                partition,
                last,
                cleared,
                "outbox rows already on the topic"
            );
        }
    }
    Ok(())
}

/// The `conscope.seq` of the last message of `topic[partition]`, if this job
/// wrote it.
fn last_published_seq(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    job_id: &str,
) -> anyhow::Result<Option<i64>> {
    let (low, high) = crate::kafka::retrying(&format!("reading watermarks of {topic}[{partition}]"), || {
        consumer.fetch_watermarks(topic, partition, crate::kafka::METADATA_TIMEOUT)
    })?;
    if high <= low {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(high - 1))?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + crate::kafka::METADATA_TIMEOUT;
    while Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message =
            message.with_context(|| format!("cannot read the last message of {topic}[{partition}]"))?;
        if message.offset() < high - 1 {
            continue;
        }
        let mut fields: HashMap<&str, &[u8]> = HashMap::new();
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                if let Some(value) = header.value {
                    fields.insert(header.key, value);
                }
            }
        }
        if fields.get("conscope.job").copied() != Some(job_id.as_bytes()) {
            return Ok(None);
        }
        let seq = fields
            .get("conscope.seq")
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.parse().ok());
        return Ok(seq);
    }
    anyhow::bail!("timed out reading the last message of {topic}[{partition}]")
}
