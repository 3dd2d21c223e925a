//! The Kafka side of the tests: topics (created, grown, trimmed), messages
//! produced and read back, watermarks, the alert ids on an alerts topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::{runtime, unique};

pub fn brokers() -> String {
    std::env::var("CONSCOPE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn client_config() -> ClientConfig {
    client_config_at(&brokers())
}

/// A client of the broker at `brokers` (a test's own broker).
pub fn client_config_at(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Fails the test with a clear message when no broker answers.
pub fn require_broker() {
    let consumer: BaseConsumer = client_config().create().expect("Kafka client");
    // One topic, not all: on a broker holding many test topics a full metadata
    // request is slow, and an unknown topic still proves the broker answers.
    if let Err(error) = consumer.fetch_metadata(Some("conscope-ping"), Duration::from_secs(60)) {
        panic!(
            "no Kafka broker answers at {} ({error}); start one with scripts/stack-up.sh",
            brokers()
        );
    }
}

pub fn create_topic(topic: &str, partitions: i32) {
    create_topic_with(topic, partitions, &[]);
}

/// Creates `topic` with topic-level `configs` (e.g. a small `max.message.bytes`).
pub fn create_topic_with(topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    let results = runtime()
        .block_on(admin.create_topics([&new_topic], &AdminOptions::new()))
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
    wait_for_partitions(topic, partitions);
}

/// Deletes `topic` (one the test created) and creates it again, empty, with
/// `partitions`: what an operator's mistake does under a running job's feet.
/// Retries the creation while the broker still finishes the deletion.
pub fn recreate_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let results = runtime()
        .block_on(admin.delete_topics(&[topic], &AdminOptions::new()))
        .expect("delete topic");
    for result in results {
        result.expect("topic deleted");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = runtime()
            .block_on(admin.create_topics([&new_topic], &AdminOptions::new()))
            .expect("create topic");
        match results.into_iter().next() {
            Some(Ok(_)) => break,
            Some(Err((_, error))) => {
                assert!(Instant::now() < deadline, "cannot create {topic} again: {error}");
                std::thread::sleep(Duration::from_millis(500));
            }
            None => panic!("no result for creating {topic}"),
        }
    }
    wait_for_partitions(topic, partitions);
}

/// Deletes the records of `topic`'s `partition` before `offset`, as retention
/// would: the partition's log start moves up to `offset`.
pub fn delete_records(topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("partition offset");
    let deleted = runtime()
        .block_on(admin.delete_records(&list, &AdminOptions::new()))
        .expect("delete records");
    for element in deleted.elements() {
        element.error().expect("records deleted");
    }
}

/// Adds partitions to `topic` until it has `total`.
pub fn add_partitions(topic: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let results = runtime()
        .block_on(admin.create_partitions([&NewPartitions::new(topic, total)], &AdminOptions::new()))
        .expect("create partitions");
    for result in results {
        result.expect("partitions added");
    }
    wait_for_partitions(topic, total as i32);
}

/// Waits until the metadata shows `topic` with `partitions` partitions.
fn wait_for_partitions(topic: &str, partitions: i32) {
    let consumer: BaseConsumer = client_config().create().expect("Kafka client");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .expect("metadata");
        if metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.partitions().len() == partitions as usize)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never showed {partitions} partitions"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces `(partition, key, value)` messages in order, waiting for each batch.
pub fn produce(topic: &str, messages: &[(i32, Option<&str>, Vec<u8>)]) {
    let messages: Vec<Outgoing> = messages
        .iter()
        .map(|(partition, key, value)| Outgoing {
            partition: *partition,
            key: key.map(str::to_owned),
            value: value.clone(),
            headers: Vec::new(),
        })
        .collect();
    produce_with(topic, &messages, &[]);
}

/// A message for `produce_with`.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    pub partition: i32,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Produces `messages` in order with extra producer `settings` (e.g. a larger
/// `message.max.bytes`), waiting for each.
pub fn produce_with(topic: &str, messages: &[Outgoing], settings: &[(&str, &str)]) {
    let mut config = client_config();
    config.set("enable.idempotence", "true").set("linger.ms", "5");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create().expect("producer");
    runtime().block_on(async {
        let mut pending = Vec::new();
        for message in messages {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &message.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(topic)
                .partition(message.partition)
                .payload(message.value.as_slice())
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            pending.push(producer.send(record, Duration::from_secs(30)));
        }
        for delivery in pending {
            delivery.await.expect("delivered");
        }
    });
}

/// A message read back from a topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Every message of `topic` (all partitions, up to the high watermarks now).
pub fn read_all(topic: &str) -> Vec<Read> {
    read_all_at(&brokers(), topic)
}

/// `read_all` from the broker at `brokers` (a test's own broker).
pub fn read_all_at(brokers: &str, topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = client_config_at(brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(60))
        .expect("metadata");
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Vec::new();
    };
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(60))
            .expect("watermarks");
        if high > low {
            ends.insert(partition.id(), high);
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(low))
                .expect("assign");
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.values().any(|d| !d) {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("message");
        let mut headers = BTreeMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                headers.insert(
                    header.key.to_owned(),
                    header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        if message.offset() + 1 >= ends[&message.partition()] {
            done.insert(message.partition(), true);
        }
        out.push(Read {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    out
}

/// The high watermark of every partition of `topic`, by partition.
pub fn high_watermarks(topic: &str) -> BTreeMap<i32, i64> {
    high_watermarks_at(&brokers(), topic)
}

/// `high_watermarks` on the broker at `brokers` (a test's own broker).
pub fn high_watermarks_at(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = client_config_at(brokers).create().expect("Kafka client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(60))
        .expect("metadata");
    let mut highs = BTreeMap::new();
    for found in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in found.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(60))
                .expect("watermarks");
            highs.insert(partition.id(), high);
        }
    }
    highs
}

/// The alert ids on an alerts topic, with how often each occurs.
pub fn alert_ids_on_topic(topic: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for message in read_all(topic) {
        let value: serde_json::Value =
            serde_json::from_slice(message.value.as_deref().unwrap_or_default()).expect("alert JSON");
        let id = value["alert_id"].as_str().expect("alert_id").to_owned();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}
