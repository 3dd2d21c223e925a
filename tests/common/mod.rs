//! Shared harness for integration tests against the real local services: the
//! Kafka broker at `CONSCOPE_BROKERS` (default 127.0.0.1:9092: Apache Kafka from scripts/stack-up.sh) and
//! PostgreSQL at `CONSCOPE_TEST_PG` (default postgres://postgres@127.0.0.1:5432).
//! Every test uses its own topics and its own database, and never deletes a topic.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::NoTls;

pub mod compare;

pub fn brokers() -> String {
    std::env::var("CONSCOPE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn pg_base() -> String {
    std::env::var("CONSCOPE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
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

/// A fresh database for one job; its URL.
pub fn fresh_database(name: &str) -> String {
    let base = pg_base();
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(&format!("{base}/postgres"), NoTls)
            .await
            .expect("postgres");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
            .expect("drop db");
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create db");
    });
    format!("{base}/{name}")
}

pub fn query_strings(url: &str, sql: &str) -> Vec<String> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .batch_execute("SET TIME ZONE 'UTC'")
            .await
            .expect("set time zone");
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|row| row.get::<_, String>(0))
            .collect()
    })
}

pub fn execute(url: &str, sql: &str) {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

pub fn query_i64(url: &str, sql: &str) -> i64 {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    })
}

/// The deterministic contents of every output table, one string per row,
/// ordered (wall-clock columns left out).
pub fn dump(url: &str) -> BTreeMap<&'static str, Vec<String>> {
    let mut tables = BTreeMap::new();
    tables.insert(
        "events",
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, event_name, venue, event_date, first_seen, last_seen)
             FROM events ORDER BY event_id",
        ),
    );
    tables.insert(
        "price_history",
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM price_history ORDER BY event_id, section, \"row\", seat, source, observed_at",
        ),
    );
    tables.insert(
        "listings",
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM listings ORDER BY event_id, section, \"row\", seat, source",
        ),
    );
    tables.insert(
        "price_alerts",
        query_strings(
            url,
            "SELECT concat_ws('|', alert_id, kind, event_id, section, \"row\", seat, source, rule_id,
                              coalesce(old_price::text, 'null'), new_price, currency, observed_at)
             FROM price_alerts ORDER BY alert_id",
        ),
    );
    for (table, [stored, _]) in SUMMARIES {
        tables.insert(table, query_strings(url, stored));
    }
    tables
}

/// Per summary table: its rows, and the same aggregates computed over `listings`
/// (SPEC §3), each row as one string, in the same order.
const SUMMARIES: [(&str, [&str; 2]); 2] = [
    (
        "event_summary",
        [
            "SELECT concat_ws('|', event_id, currency, listings, available, coalesce(get_in_price::text, 'null'))
             FROM event_summary ORDER BY event_id, currency",
            "SELECT concat_ws('|', event_id, currency, count(*), count(*) FILTER (WHERE available),
                              coalesce((min(price) FILTER (WHERE available))::text, 'null'))
             FROM listings GROUP BY event_id, currency ORDER BY event_id, currency",
        ],
    ),
    (
        "section_summary",
        [
            "SELECT concat_ws('|', event_id, section, currency, available, coalesce(low_price::text, 'null'))
             FROM section_summary ORDER BY event_id, section, currency",
            "SELECT concat_ws('|', event_id, section, currency, count(*) FILTER (WHERE available),
                              coalesce((min(price) FILTER (WHERE available))::text, 'null'))
             FROM listings GROUP BY event_id, section, currency ORDER BY event_id, section, currency",
        ],
    ),
];

/// Checks that `event_summary` and `section_summary` equal the aggregates over
/// `listings`, and are not empty when `listings` is not.
/// Every history row's event is in `events` (no foreign key checks it row by
/// row: migration 0006).
pub fn assert_history_has_its_events(url: &str) {
    let orphans = query_i64(
        url,
        "SELECT count(*) FROM price_history h WHERE NOT EXISTS
             (SELECT 1 FROM events e WHERE e.event_id = h.event_id)",
    );
    assert_eq!(orphans, 0, "history rows without their event in {url}");
}

pub fn assert_summaries_match_listings(url: &str) {
    for (table, [stored, computed]) in SUMMARIES {
        let stored = query_strings(url, stored);
        let computed = query_strings(url, computed);
        if stored != computed {
            let missing: Vec<_> = computed
                .iter()
                .filter(|row| !stored.contains(row))
                .take(5)
                .collect();
            let extra: Vec<_> = stored
                .iter()
                .filter(|row| !computed.contains(row))
                .take(5)
                .collect();
            panic!(
                "{table} differs from the aggregates over listings ({} rows, {} expected); \
                 missing {missing:?}, unexpected {extra:?}",
                stored.len(),
                computed.len()
            );
        }
    }
}

pub fn conscope() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_conscope"));
    command
        .env("CONSCOPE_BROKERS", brokers())
        .env(
            "CONSCOPE_LOG",
            std::env::var("CONSCOPE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .env_remove("DATABASE_URL");
    command
}

/// `conscope run` flags for small transactions, so a run commits often and is
/// still mid-run when a fault hits: against a fast broker the writer otherwise
/// merges a run's epochs into a couple of commits and a fault point late in the
/// commit is never reached.
pub const SMALL_TRANSACTIONS: [&str; 8] = [
    "--epoch-ms",
    "10",
    "--max-batch",
    "200",
    "--max-in-flight",
    "500",
    "--max-commit-records",
    "200",
];

/// `job_progress.commit_no` of the job database at `url`; None while it is not
/// migrated yet or does not answer (a Postgres restarting).
pub fn commit_no(url: &str) -> Option<i64> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
        tokio::spawn(connection);
        let row = client
            .query_opt("SELECT commit_no FROM job_progress", &[])
            .await
            .ok()??;
        row.try_get(0).ok()
    })
}

/// Topics and database of one job.
#[derive(Clone, Debug)]
pub struct Job {
    pub input: String,
    pub alerts: String,
    pub dlq: String,
    pub database_url: String,
}

impl Job {
    /// New output topics and database, reading `input`.
    pub fn new(name: &str, input: &str) -> Job {
        let id = unique(name);
        Job {
            input: input.to_owned(),
            alerts: format!("{id}.alerts"),
            dlq: format!("{id}.dlq"),
            database_url: fresh_database(&id),
        }
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut command = conscope();
        command.args([
            "run",
            "--input-topic",
            &self.input,
            "--alerts-topic",
            &self.alerts,
            "--dlq-topic",
            &self.dlq,
            "--database-url",
            &self.database_url,
        ]);
        command.args(extra);
        command
    }

    /// Runs `conscope run --exit-at-end` to completion and checks it succeeded.
    pub fn run_to_end(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--exit-at-end"];
        args.extend_from_slice(extra);
        succeeded(self.command(&args).output().expect("run conscope"))
    }

    /// Runs `conscope run --exit-at-end`, killing it and failing the test when
    /// it has not ended within `limit`; checks it succeeded. Returns stdout.
    pub fn run_to_end_within(&self, limit: Duration, extra: &[&str]) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut args = vec!["--exit-at-end"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn conscope");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        match status {
            None => panic!("conscope run --exit-at-end did not end within {limit:?}\n{stdout}\n{stderr}"),
            Some(status) => assert!(status.success(), "conscope run failed: {stdout}\n{stderr}"),
        }
        stdout
    }

    /// Applies the migrations to the job's database, as the job would at start.
    pub fn migrate(&self) {
        let output = conscope()
            .args(["migrate", "--database-url", &self.database_url])
            .output()
            .expect("run conscope migrate");
        assert!(
            output.status.success(),
            "conscope migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// This job's id (the `conscope.job` header of what it publishes); the
    /// database must be migrated.
    pub fn job_id(&self) -> String {
        query_strings(&self.database_url, "SELECT job_id::text FROM job_progress")
            .pop()
            .expect("job_progress row")
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conscope")
    }
}

/// `output` of a `conscope run` that must have succeeded.
fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "conscope run failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Waits until `condition` holds, or panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Runs `conscope produce` into `topic` (created with `partitions`).
pub fn produce_generated(topic: &str, partitions: i32, count: u64, seed: u64, extra: &[&str]) {
    produce_generated_at(&brokers(), topic, partitions, count, seed, extra);
}

/// `produce_generated` on the broker at `brokers` (a test's own broker).
pub fn produce_generated_at(
    brokers: &str,
    topic: &str,
    partitions: i32,
    count: u64,
    seed: u64,
    extra: &[&str],
) {
    let output = conscope()
        .env("CONSCOPE_BROKERS", brokers)
        .args([
            "produce",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(extra)
        .output()
        .expect("run conscope produce");
    assert!(
        output.status.success(),
        "conscope produce failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Kills the child when dropped, so a failing test never leaves a job running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// `kafka_offsets` of a job's database, by partition.
pub fn stored_offsets(url: &str, topic: &str) -> BTreeMap<i32, i64> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .query(
                "SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1",
                &[&topic],
            )
            .await
            .expect("kafka_offsets")
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    })
}
