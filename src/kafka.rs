//! Small Kafka helpers shared by the job, the producer and the alert consumer:
//! creating topics, reading partition counts and watermarks, and choosing a
//! partition the way Kafka's Java client does (murmur2 of the key), so the outbox
//! publisher knows where each message lands before it is sent.
//!
//! Broker-agnostic: only standard Kafka admin and metadata requests.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};

use crate::config::KafkaArgs;

/// How long a metadata or admin request may take before we call the broker unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long startup requests keep retrying while the broker is away or busy.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// Retries a blocking metadata request with backoff until it succeeds or
/// `STARTUP_PATIENCE` ran out: a broker that is restarting or overloaded is a
/// reason to wait, not to fail.
pub fn retrying<T>(what: &str, mut request: impl FnMut() -> KafkaResult<T>) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match request() {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() < STARTUP_PATIENCE => {
                tracing::warn!(%error, "{what} failed; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error).with_context(|| format!("{what} failed (is the broker up?)")),
        }
    }
}

/// The number of partitions of `topic`, or `None` when it does not exist; waits
/// and retries while the broker is away (see `retrying`).
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Option<i32>> {
    retrying(&format!("reading metadata of topic {topic:?}"), || {
        partition_count_once(consumer, topic)
    })
}

/// Like `partition_count`, with one metadata request and no retry, for any
/// consumer (the alert consumer has a context of its own).
pub fn partition_count_once<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> KafkaResult<Option<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error() {
        None if !found.partitions().is_empty() => Ok(Some(found.partitions().len() as i32)),
        _ => Ok(None),
    }
}

/// Creates `topic` with `partitions` partitions unless it exists; returns its
/// partition count either way.
pub fn ensure_topic(kafka: &KafkaArgs, topic: &str, partitions: i32) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .create()
        .context("cannot create Kafka client")?;
    if let Some(count) = partition_count(&consumer, topic)? {
        return Ok(count);
    }
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config()
        .create()
        .context("cannot create Kafka admin client")?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let runtime = crate::runtime::current_thread()?;
    let results = runtime
        .block_on(admin.create_topics(
            [&new_topic],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        ))
        .with_context(|| format!("cannot create topic {topic:?}"))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name:?}: {code}"),
        }
    }
    // Metadata can lag a creation by a moment.
    for _ in 0..50 {
        if let Some(count) = partition_count(&consumer, topic)? {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("topic {topic:?} was created but does not show in metadata")
}

/// Kafka's murmur2 (as in the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition the Java client's default partitioner picks for a keyed message.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_java_client() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
