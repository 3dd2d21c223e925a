//! The outbox publisher: sends committed alerts and dead letters to Kafka, each
//! exactly once, also across crashes.
//!
//! ```text
//!  outbox (seq order) ──► idempotent producer ──► price_alerts / raw_prices.dlq
//!        ▲                     │ delivered
//!        └── DELETE seq ≤ n ◄──┘
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
//! partition with seq ≤ n is on the topic.
//!
//! # Retries
//! A failed delivery ends the producer session: after a pause the publisher
//! re-runs recovery (reads the last message of each partition it has rows for,
//! drops the rows already there) and carries on with a fresh producer.
//!
//! # Error handling
//! Nothing is skipped: rows stay in the outbox until the broker acknowledged
//! them, whatever happens to the broker, the database or this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_postgres::Client;

use super::delivery::ProducerSettings;
use crate::config::KafkaArgs;
use crate::fail::fail_point;
use crate::metrics::Metrics;

/// Rows published per round at most.
const BATCH: i64 = 5_000;

pub struct PublisherConfig {
    /// From `delivery::producer_config`, which refuses `--kafka` settings that
    /// would break exactly-once publishing.
    pub producer: ProducerSettings,
    /// For recovery's consumer.
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
        loop {
            match session(&config, &control, &metrics).await {
                Ok(()) => return Ok(()),
                Err(error) => {
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
) -> anyhow::Result<()> {
    let client = crate::db::connect(&config.database_url).await?;
    recover(config, &client, metrics).await?;
    let producer: FutureProducer = config
        .producer
        .config()
        .create()
        .context("cannot create Kafka producer")?;
    loop {
        let rows = fetch(&client).await?;
        if rows.is_empty() {
            if control.finishing.load(Ordering::SeqCst) {
                // Re-check after the flag: a last commit may have landed meanwhile.
                if fetch(&client).await?.is_empty() {
                    return Ok(());
                }
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), control.wake.notified()).await;
            continue;
        }
        fail_point("before_publish");
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut headers = OwnedHeaders::new_with_capacity(row.headers.len() / 2 + 2);
            for pair in row.headers.chunks_exact(2) {
                headers = headers.insert(Header {
                    key: &pair[0],
                    value: Some(pair[1].as_bytes()),
                });
            }
            let seq = row.seq.to_string();
            headers = headers
                .insert(Header {
                    key: "conscope.seq",
                    value: Some(seq.as_bytes()),
                })
                .insert(Header {
                    key: "conscope.job",
                    value: Some(config.job_id.as_bytes()),
                });
            let mut record = FutureRecord::to(&row.topic)
                .partition(row.partition)
                .headers(headers);
            if let Some(key) = &row.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &row.payload {
                record = record.payload(payload.as_slice());
            }
            let delivery = producer.send_result(record).map_err(|(error, _)| {
                anyhow::anyhow!("cannot enqueue outbox message {}: {error}", row.seq)
            })?;
            deliveries.push(delivery);
            if deliveries.len() == rows.len() / 2 {
                fail_point("mid_publish");
            }
        }
        let mut lags = Vec::with_capacity(rows.len());
        for (row, delivery) in rows.iter().zip(deliveries) {
            match delivery.await {
                Ok(Ok(_)) => {
                    let lag = Utc::now().signed_duration_since(row.committed_at);
                    lags.push(lag.num_microseconds().unwrap_or(0).max(0) as u64);
                }
                Ok(Err((error, _))) => {
                    anyhow::bail!("delivery of outbox message {} failed: {error}", row.seq)
                }
                Err(_) => anyhow::bail!("producer dropped outbox message {}", row.seq),
            }
        }
        let last = rows.last().map(|row| row.seq).unwrap_or(0);
        client
            .execute("DELETE FROM outbox WHERE seq <= $1", &[&last])
            .await
            .context("cannot clear published outbox rows")?;
        // Counted once the rows leave the outbox: a batch cut short by a failure
        // is counted by the recovery that finds it on the topic, or when resent.
        for (row, lag) in rows.iter().zip(lags) {
            metrics.published(row.topic.as_str(), lag);
        }
    }
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
