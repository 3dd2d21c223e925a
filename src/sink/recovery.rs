//! Publisher recovery: which outbox rows an earlier publisher session already
//! got onto their partitions, confirmed row by row by reading the partitions
//! back; and `outbox_partitions.scan_from`, which bounds that read.
//!
//! Touches the `outbox` and `outbox_partitions` tables and reads (never writes)
//! the alerts and dead-letter partitions the outbox has rows for.
//!
//! `scan_from` of a partition: every message this job wrote, or may still have
//! written, for a row now in `outbox` lies at or after it. It is set before this job first sends to a partition
//! (its high watermark then), moved to the high watermark read by each recovery
//! (nothing pending was found below it, and whatever is sent later lands above
//! it), and moved past each acknowledged batch whose rows all have a definite
//! outcome. So a recovery reads only what was written since the last
//! acknowledged batch: this job's unconfirmed messages and whatever other
//! producers wrote meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::client::{Client as KafkaClient, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_postgres::{Client, GenericClient};

use crate::config::KafkaArgs;
use crate::metrics::Metrics;

/// A read-back with no message for this long has stalled.
const STALL: Duration = Duration::from_secs(30);

/// Output partitions that have a `scan_from`: safe to send to.
pub type Marked = HashSet<(String, i32)>;

#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error("cannot read back {topic}[{partition}]: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("reading back {topic}[{partition}] stalled at offset {offset} (high watermark {high})")]
    Stalled {
        topic: String,
        partition: i32,
        offset: i64,
        high: i64,
    },
}

/// For every partition with outbox rows: reads it back from its `scan_from`
/// (from its low watermark when none is recorded: a database from before
/// `scan_from` existed) to its high watermark, deletes exactly the pending rows
/// whose message it found there (this job's `conscope.job`, their
/// `conscope.seq`), and records the high watermark as the new `scan_from`.
/// Rows not found stay pending and are sent again. Returns the partitions
/// handled, which now have a `scan_from`.
pub async fn recover(
    kafka: &KafkaArgs,
    job_id: &str,
    client: &mut Client,
    metrics: &Metrics,
) -> anyhow::Result<Marked> {
    let partitions = client
        .query(
            "SELECT o.topic, o.partition, p.scan_from
             FROM (SELECT DISTINCT topic, partition FROM outbox) o
             LEFT JOIN outbox_partitions p USING (topic, partition)",
            &[],
        )
        .await
        .context("cannot read the outbox")?;
    let mut marked = Marked::new();
    if partitions.is_empty() {
        return Ok(marked);
    }
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "conscope-outbox-recovery")
        .set("enable.auto.commit", "false")
        // Ends a read-back even when the last offsets are control records,
        // which are never handed to us as messages.
        .set("enable.partition.eof", "true")
        // Another producer's open transaction must not hide our messages
        // behind it.
        .set("isolation.level", "read_uncommitted")
        .create()
        .context("cannot create Kafka consumer")?;
    for row in partitions {
        let topic: String = row.get(0);
        let partition: i32 = row.get(1);
        let scan_from: Option<i64> = row.get(2);
        let (low, high) =
            crate::kafka::retrying(&format!("reading watermarks of {topic}[{partition}]"), || {
                consumer.fetch_watermarks(&topic, partition, crate::kafka::METADATA_TIMEOUT)
            })?;
        let from = scan_from.unwrap_or(low).max(low);
        let pending: HashSet<i64> = client
            .query(
                "SELECT seq FROM outbox WHERE topic = $1 AND partition = $2",
                &[&topic, &partition],
            )
            .await
            .context("cannot read the outbox")?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        let found = if from < high {
            read_back(&consumer, &topic, partition, (from, high), job_id, &pending)?
        } else {
            Vec::new()
        };
        let transaction = client.transaction().await.context("BEGIN failed")?;
        let cleared = transaction
            .execute(
                "DELETE FROM outbox WHERE topic = $1 AND partition = $2 AND seq = ANY($3)",
                &[&topic, &partition, &found],
            )
            .await
            .context("cannot clear published outbox rows")?;
        set_scan_from(&transaction, &topic, partition, high).await?;
        transaction.commit().await.context("COMMIT failed")?;
        marked.insert((topic.clone(), partition));
        if cleared > 0 {
            // Delivered by an earlier session whose acknowledgement was lost:
            // published all the same.
            metrics.found_published(&topic, cleared);
        }
        tracing::info!(
            topic,
            partition,
            from,
            high,
            pending = pending.len(),
            found = cleared,
            "outbox recovery read the partition back"
        );
    }
    Ok(marked)
}

/// The `pending` seqs this job's messages in `topic[partition]` carry, between
/// offsets `from` and `high`.
fn read_back(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    (from, high): (i64, i64),
    job_id: &str,
    pending: &HashSet<i64>,
) -> Result<Vec<i64>, ReadBackError> {
    let kafka = |source| ReadBackError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(kafka)?;
    consumer.assign(&assignment).map_err(kafka)?;
    let mut found = HashSet::new();
    let mut position = from;
    let mut last_progress = Instant::now();
    while position < high {
        if last_progress.elapsed() > STALL {
            return Err(ReadBackError::Stalled {
                topic: topic.to_owned(),
                partition,
                offset: position,
                high,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(kafka(error)),
            Some(Ok(message)) => {
                position = message.offset() + 1;
                last_progress = Instant::now();
                if let Some(seq) = message.headers().and_then(|headers| our_seq(headers, job_id)) {
                    if pending.contains(&seq) {
                        found.insert(seq);
                    }
                }
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// The `conscope.seq` of a message this job wrote.
fn our_seq(headers: &impl Headers, job_id: &str) -> Option<i64> {
    let fields: HashMap<&str, &[u8]> = headers
        .iter()
        .filter_map(|header| Some((header.key, header.value?)))
        .collect();
    if fields.get("conscope.job").copied() != Some(job_id.as_bytes()) {
        return None;
    }
    std::str::from_utf8(fields.get("conscope.seq")?)
        .ok()?
        .parse()
        .ok()
}

/// Records a `scan_from` for each partition in `partitions` that has none,
/// before anything is sent there: its high watermark now, since nothing of
/// this job's pending rows was sent to it yet.
pub async fn mark<C: ClientContext>(
    client: &Client,
    kafka: &KafkaClient<C>,
    partitions: impl IntoIterator<Item = (&str, i32)>,
    marked: &mut Marked,
) -> anyhow::Result<()> {
    for (topic, partition) in partitions {
        if marked.contains(&(topic.to_owned(), partition)) {
            continue;
        }
        let known = client
            .query_opt(
                "SELECT 1 FROM outbox_partitions WHERE topic = $1 AND partition = $2",
                &[&topic, &partition],
            )
            .await
            .context("cannot read outbox_partitions")?
            .is_some();
        if !known {
            let (_, high) =
                crate::kafka::retrying(&format!("reading watermarks of {topic}[{partition}]"), || {
                    kafka.fetch_watermarks(topic, partition, crate::kafka::METADATA_TIMEOUT)
                })?;
            client
                .execute(
                    "INSERT INTO outbox_partitions (topic, partition, scan_from) VALUES ($1, $2, $3)
                     ON CONFLICT (topic, partition) DO NOTHING",
                    &[&topic, &partition, &high],
                )
                .await
                .context("cannot write outbox_partitions")?;
        }
        marked.insert((topic.to_owned(), partition));
    }
    Ok(())
}

pub async fn set_scan_from(
    client: &impl GenericClient,
    topic: &str,
    partition: i32,
    scan_from: i64,
) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO outbox_partitions (topic, partition, scan_from) VALUES ($1, $2, $3)
             ON CONFLICT (topic, partition) DO UPDATE SET scan_from = EXCLUDED.scan_from",
            &[&topic, &partition, &scan_from],
        )
        .await
        .context("cannot write outbox_partitions")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    use super::*;

    /// Read-back against rdkafka's in-process mock cluster (no broker needed):
    /// finds exactly the pending seqs of this job between `from` and `high`,
    /// ignoring other jobs' messages, rows already settled, and what lies
    /// below `from`.
    #[test]
    fn read_back_finds_exactly_this_jobs_pending_rows_in_range() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("alerts", 1, 1).unwrap();
        let config = || {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", cluster.bootstrap_servers());
            config
        };
        let producer: BaseProducer = config().create().unwrap();
        // Offsets 0..6: job j1 seqs 1..3, another job's seq 2, j1 seqs 4 and 5.
        let sent = [("j1", 1), ("j1", 2), ("j2", 2), ("j1", 3), ("j1", 4), ("j1", 5)];
        for (job, seq) in sent {
            let seq = seq.to_string();
            let headers = headers(&[("conscope.job", job), ("conscope.seq", &seq)]);
            producer
                .send(
                    BaseRecord::<(), _>::to("alerts")
                        .partition(0)
                        .payload("x")
                        .headers(headers),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let consumer: BaseConsumer = config()
            .set("group.id", "recovery-test")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();

        let pending: HashSet<i64> = [1, 2, 4, 9].into();
        let mut found = read_back(&consumer, "alerts", 0, (0, 6), "j1", &pending).unwrap();
        found.sort_unstable();
        assert_eq!(found, [1, 2, 4], "seq 9 was never sent; j2's seq 2 is not ours");

        // From offset 2 on: j1's seq 1 and 2 lie below, they are not read.
        let mut found = read_back(&consumer, "alerts", 0, (2, 6), "j1", &pending).unwrap();
        found.sort_unstable();
        assert_eq!(found, [4]);
    }

    fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
    }

    #[test]
    fn only_this_jobs_messages_count() {
        let mine = headers(&[
            ("conscope.alert_id", "a"),
            ("conscope.seq", "42"),
            ("conscope.job", "j1"),
        ]);
        assert_eq!(our_seq(&mine, "j1"), Some(42));
        assert_eq!(our_seq(&mine, "j2"), None);
        assert_eq!(our_seq(&headers(&[("conscope.seq", "42")]), "j1"), None);
        assert_eq!(
            our_seq(&headers(&[("conscope.job", "j1"), ("conscope.seq", "x")]), "j1"),
            None
        );
    }
}
