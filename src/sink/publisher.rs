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
//! `conscope.job` (this database's job id), which is how recovery recognises it
//! on a partition other producers may write to as well. Its partition was
//! fixed at commit time (see `encode`).
//!
//! # Sinking
//! Only committed rows are in the outbox, so nothing is published before it is
//! durable. A row is deleted when the broker acknowledged its message (with
//! `acks=all`: every in-sync replica has it), or moved to `outbox_parked` when
//! the broker refused it for good. Rows go out in batches in seq order; each
//! batch is settled (acknowledged rows deleted, refused ones parked, the
//! partitions' `scan_from` moved past the acknowledged offsets) in one
//! transaction before the next is sent.
//!
//! # Retries
//! A delivery that fails without a definite refusal (timeout, broker away, a
//! producer stopped by librdkafka) ends the producer session once the batch is
//! settled: after a pause the publisher re-runs recovery (`recovery`: reads
//! each partition with pending rows back from its `scan_from` and deletes
//! exactly the rows whose message it finds there) and carries on with a fresh
//! producer, re-sending the rest. Recovery confirms each row instead of
//! trusting order, because a message that timed out may leave a gap even with
//! `enable.gapless.guarantee` (librdkafka's documented exception).
//!
//! # Error handling
//! Nothing is skipped silently. A refusal the broker gives a batch may be the
//! batch's size, not the row's, so a refused row is sent again alone, and only
//! a refusal of the row alone (or librdkafka's own per-message size check)
//! parks it: kept in `outbox_parked` with the reason, counted (`parked`),
//! logged. Parked rows are out of the outbox, so they neither block later rows
//! nor keep `--exit-at-end` waiting. Everything else stays in the outbox until
//! acknowledged, whatever happens to the broker, the database or this process.
//!
//! # Fencing
//! An instance that lost the job lease must stop publishing before the
//! instance that took it starts. Each producer session first takes the
//! publish lock (a session advisory lock of its own, [`PUBLISH_LOCK_CLASS`]),
//! and gives it up only by ending: a new instance's publisher waits there.
//! Before each batch and in each settle's transaction the publisher checks in
//! the database that its lease still holds the job; once it does not, the
//! session ends without settling what it sent (the next instance's recovery
//! finds those messages on their partitions) and frees the publish lock.
//!
//! The guarantee rests on: the producer settings `delivery` forces
//! (idempotence, `acks=all`); this job being the only writer of messages
//! carrying its job id; `scan_from` only ever being set at or below the first
//! offset at which a pending row could land; and retention not deleting a
//! message before recovery has read it (a row whose message is gone is sent
//! again: a duplicate, never a loss). A message of a crashed process still in
//! flight when recovery reads the partition can land after that read and be
//! sent again: consumers dedup by `alert_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::Notify;
use tokio_postgres::Client;

use super::delivery::{DeliveryError, ProducerSettings};
use super::recovery::{self, Marked};
use crate::config::KafkaArgs;
use crate::fail::fail_point;
use crate::lease::{Lease, PUBLISH_LOCK_CLASS};
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
    /// This process's job lease: nothing is published without it.
    pub lease: Lease,
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
        offset: i64,
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
    let runtime = crate::runtime::current_thread()?;
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
    // Blocks while another instance's publisher still runs: see Fencing.
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&PUBLISH_LOCK_CLASS, &config.lease.process_key()],
        )
        .await
        .context("cannot take the publish lock")?;
    check_lease(&config.lease, &client).await?;
    let mut marked = recovery::recover(&config.kafka, &config.job_id, &mut client, metrics).await?;
    let producer: FutureProducer = config
        .producer
        .config()
        .create()
        .context("cannot create Kafka producer")?;
    // `publish` returns only with every delivery it started settled, so no
    // message of this producer is in flight when the next recovery reads back.
    publish(
        config,
        control,
        metrics,
        carry,
        &mut client,
        &producer,
        &mut marked,
    )
    .await
}

async fn publish(
    config: &PublisherConfig,
    control: &PublisherControl,
    metrics: &Metrics,
    carry: &mut Carry,
    client: &mut Client,
    producer: &FutureProducer,
    marked: &mut Marked,
) -> anyhow::Result<()> {
    loop {
        // While the lease is being taken again another instance may be about
        // to take over: publish nothing until it is ours again.
        while !config.lease.is_held() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        check_lease(&config.lease, client).await?;
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
        recovery::mark(
            client,
            producer.client(),
            rows.iter().map(|row| (row.topic.as_str(), row.partition)),
            marked,
        )
        .await?;
        fail_point("before_publish");
        let outcomes = send(producer, &rows, &config.job_id).await;
        settle(client, &config.lease, &rows, &outcomes).await?;
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
                Ok(Ok(delivered)) => {
                    let lag = Utc::now().signed_duration_since(row.committed_at);
                    Outcome::Acknowledged {
                        offset: delivered.offset,
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

/// One transaction: acknowledged rows deleted, refused ones parked, and
/// `scan_from` moved past the acknowledged offsets of every partition whose
/// rows in this batch all have a definite outcome (a failed one may yet land).
/// Ends the session when this instance no longer holds the job lease in the
/// database (see Fencing).
async fn check_lease(lease: &Lease, client: &impl tokio_postgres::GenericClient) -> anyhow::Result<()> {
    if lease
        .is_held_in(client)
        .await
        .context("cannot check the job lease")?
    {
        return Ok(());
    }
    anyhow::bail!("this instance does not hold the job lease: publishing stops")
}

/// Settles a batch, in one transaction fenced by the lease: nothing is deleted
/// and `scan_from` does not move for an instance that lost the job.
async fn settle(
    client: &mut Client,
    lease: &Lease,
    rows: &[OutboxRow],
    outcomes: &[Outcome],
) -> anyhow::Result<()> {
    let mut delivered = Vec::new();
    let mut next: BTreeMap<(&str, i32), Option<i64>> = BTreeMap::new();
    for (row, outcome) in rows.iter().zip(outcomes) {
        let slot = next
            .entry((row.topic.as_str(), row.partition))
            .or_insert(Some(-1));
        match outcome {
            Outcome::Acknowledged { offset, .. } => {
                delivered.push(row.seq);
                if let Some(next) = slot {
                    *next = (*next).max(offset + 1);
                }
            }
            Outcome::Failed(_) => *slot = None,
            Outcome::Park(_) | Outcome::Suspect | Outcome::Unsent => {}
        }
    }
    let transaction = client.transaction().await.context("BEGIN failed")?;
    check_lease(lease, &transaction).await?;
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
    for ((topic, partition), next) in next {
        if let Some(next) = next.filter(|next| *next >= 0) {
            recovery::set_scan_from(&transaction, topic, partition, next).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, topic: &str, partition: i32) -> OutboxRow {
        OutboxRow {
            seq,
            topic: topic.into(),
            partition,
            key: None,
            payload: None,
            headers: Vec::new(),
            committed_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    /// A lease that lost the job settles nothing: the rows it sent stay in
    /// the outbox (for the next instance's recovery) and `scan_from` stays.
    /// The same settle with the lease held deletes them.
    #[test]
    fn a_fenced_instance_settles_nothing() {
        let base =
            std::env::var("CONSCOPE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let url = format!("{base}/settle_t{}_{}", std::process::id(), nanos % 1_000_000_000);
        let runtime = crate::runtime::current_thread().unwrap();
        let mut client = runtime.block_on(async {
            crate::db::migrate(&url).await.unwrap();
            let client = crate::db::connect(&url).await.unwrap();
            client
                .batch_execute(
                    "INSERT INTO outbox (seq, topic, partition, payload, committed_at)
                     VALUES (1, 'a', 0, 'x', now()), (2, 'a', 0, 'y', now())",
                )
                .await
                .unwrap();
            client
        });
        let rows = [row(1, "a", 0), row(2, "a", 0)];
        let acknowledged = || {
            [1, 2].map(|offset| Outcome::Acknowledged {
                offset,
                lag_micros: 0,
            })
        };
        let outbox = |client: &Client| -> i64 {
            runtime
                .block_on(client.query_one("SELECT count(*) FROM outbox", &[]))
                .unwrap()
                .get(0)
        };

        let fenced = Lease::detached(7, 1);
        let refused = runtime.block_on(settle(&mut client, &fenced, &rows, &acknowledged()));
        assert!(refused.is_err(), "a fenced settle went through");
        assert_eq!(outbox(&client), 2);

        let held = Lease::acquire(&url, 7, |_| {}).unwrap();
        runtime
            .block_on(settle(&mut client, &held, &rows, &acknowledged()))
            .unwrap();
        assert_eq!(outbox(&client), 0);
    }

    fn seqs(rows: &[OutboxRow]) -> Vec<i64> {
        rows.iter().map(|row| row.seq).collect()
    }

    #[test]
    fn a_row_to_send_alone_gets_a_batch_of_its_own() {
        let batch = || vec![row(1, "a", 0), row(2, "a", 0), row(3, "d", 0), row(4, "a", 0)];
        let mut rows = batch();
        cut_before_alone(&mut rows, &BTreeSet::from([3]));
        assert_eq!(seqs(&rows), [1, 2]);
        let mut rows = batch();
        cut_before_alone(&mut rows, &BTreeSet::from([1, 3]));
        assert_eq!(seqs(&rows), [1]);
        let mut rows = batch();
        cut_before_alone(&mut rows, &BTreeSet::new());
        assert_eq!(seqs(&rows), [1, 2, 3, 4]);
    }

    #[test]
    fn a_refusal_is_the_rows_own_only_when_its_partition_had_nothing_else() {
        let rows = [row(1, "a", 0), row(2, "a", 1), row(3, "a", 0), row(4, "d", 0)];
        assert_eq!(alone_in_partition(&rows), [false, true, false, true]);
    }
}
