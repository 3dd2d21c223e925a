//! The Kafka source: one timely operator per worker, each owning a fixed set of
//! input partitions (partition `p` belongs to worker `p % peers`, across all
//! processes). No consumer-group rebalancing: ownership never moves while the job
//! runs, so a partition's messages always reach the dataflow in offset order.
//!
//! Touches the input topic only (reads, `assign` with explicit offsets, metadata).
//! Offsets are never committed here: they travel through the dataflow as
//! [`SourceEvent::Progress`] and are stored by the Postgres sink in the same
//! transaction as the rows derived from the messages before them. Each
//! `Progress` is also handed to the metrics, which count it as committed once
//! the sink's probe passes its epoch: consumer lag in every process.
//!
//! # Transactional producers
//! The input is read with `isolation.level=read_committed` (forced): records of
//! aborted transactions are never delivered. Neither are transaction markers, yet
//! they and the aborted records occupy offsets, so progress is the consumer's
//! *position* (the offset after the last message or marker librdkafka handed
//! over), not the last message's offset + 1. That position is what the sink
//! stores, so a restart neither re-reads nor waits for offsets that never come,
//! and a bounded replay ends when every position reached the watermark (the last
//! stable offset) seen at start, even when the last offsets are markers. An
//! unfinished transaction at start delays that end until it is committed or
//! aborted (at most the producer's `transaction.timeout.ms`).
//!
//! # Partitions added while the job runs
//! A live job (not `--exit-at-end`) runs one [`PartitionWatch`] thread per
//! process that re-reads the topic's partition count every [`PARTITION_POLL`].
//! Each worker notices the new count at its next activation and assigns the new
//! partitions it owns (same `p % peers` rule) from their earliest offset: a
//! partition created after start holds only messages the job has not seen. Their
//! progress reaches the sink like any other partition's. A bounded replay reads
//! the partitions that existed at start, up to the watermarks seen then, and
//! ignores partitions added later.
//!
//! # Where a partition starts
//! At its stored offset. `--from` applies only while no offset at all is
//! stored for the topic (SPEC §6): once the job has stored one, a partition
//! without a stored offset was added later (while the job was down, or while
//! it ran) and starts at its beginning, as live discovery does.
//!
//! A stored offset above the partition's high watermark means the log the job
//! read is not the one there now (the topic was deleted and recreated, or its
//! log truncated): the job refuses to start ([`SourceError::AboveEnd`]) until
//! the operator reruns it with `--reset-offsets-above-end`, which reads such
//! partitions from their log start. A stored offset below the log start means
//! retention deleted messages before the job read them: they are gone whatever
//! the operator decides, so the job warns, counts them
//! (`skipped_by_retention`) and resumes at the log start.
//!
//! # Epochs
//! The timely time is an epoch number, `wall-clock ms / epoch_ms`, the same
//! clock in every process, so workers advance together without talking. Within an
//! epoch the processor orders messages by `(partition, offset)`, so the results do
//! not depend on how messages were batched into epochs as long as an event's
//! messages come from one partition.
//!
//! Epochs are closed, and reading held back, by the operator shared with the
//! file source ([`super::input_source`]); this file is the [`Input`] it reads.
//!
//! # Never blocking a worker
//! `poll` is called with a zero timeout (librdkafka prefetches in its own
//! threads), at most `max_batch` messages per activation; the operator re-activates
//! itself. Positions are read from librdkafka's local state, and metadata requests
//! (which block) happen on the watcher thread only. It stops reading while more
//! than `max_in_flight` of its messages are not yet committed (read from the
//! sink's probe), which bounds memory when PostgreSQL is slow or away.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use conscope_dataflows::model::{Position, RawMessage, SourceEvent};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Message, Offset, TopicPartitionList};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::{input_source, Input, SourceFailure, SourceSettings};
use crate::config::KafkaArgs;
use crate::metrics::{Metrics, RateLimited};

/// How often a live job looks for partitions added to its input topic.
pub const PARTITION_POLL: Duration = Duration::from_secs(3);

/// Where to start a partition that has no stored offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    Earliest,
    Latest,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "--kafka isolation.level={0}: conscope reads its input with isolation.level=read_committed only, \
         so that records of aborted transactions never reach PostgreSQL; remove the setting"
    )]
    IsolationLevel(String),
    #[error(
        "{topic}: stored offsets are above the end of their partitions ({}): the topic was deleted \
         and recreated, or its log truncated, since the job stored them, and the messages below \
         those offsets would be skipped. Nothing was read. To read these partitions from their log \
         start, rerun with --reset-offsets-above-end (CONSCOPE_RESET_OFFSETS_ABOVE_END=true)",
        partitions.iter().map(|p| format!("partition {}: stored next offset {} > high watermark {}", p.0, p.1, p.2)).collect::<Vec<_>>().join("; ")
    )]
    AboveEnd {
        topic: String,
        /// (partition, stored next offset, high watermark)
        partitions: Vec<(i32, i64, i64)>,
    },
    #[error("cannot assign {topic}[{partition}]: {source}")]
    Assign {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
}

/// Refuses an `isolation.level` other than `read_committed` in `--kafka`: reading
/// uncommitted input would store records their producer aborted, and silently
/// overriding the setting would hide that the user asked for something else.
pub fn check_isolation(kafka: &KafkaArgs) -> Result<(), SourceError> {
    for setting in &kafka.kafka {
        if setting.key == "isolation.level" && !setting.value.trim().eq_ignore_ascii_case("read_committed") {
            return Err(SourceError::IsolationLevel(setting.value.clone()));
        }
    }
    Ok(())
}

/// Feeds librdkafka's statistics (served by our own `poll` calls) to the metrics.
pub struct LagContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, state) in &topic.partitions {
                // A read_committed consumer can read up to the last stable
                // offset only: lag beyond it is an open transaction, not ours.
                let readable = if state.ls_offset >= 0 {
                    state.ls_offset
                } else {
                    state.hi_offset
                };
                if *partition >= 0 && readable >= 0 {
                    self.metrics.set_high_watermark(*partition, readable);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// The input topic's partition count, kept current by a thread of its own: the
/// metadata request blocks, so no worker makes it. Workers read the count at
/// every activation; it never goes down (Kafka partitions cannot be removed).
#[derive(Clone)]
pub struct PartitionWatch {
    count: Arc<AtomicI32>,
}

impl PartitionWatch {
    /// Starts the watcher for `topic`, which had `initial` partitions. The thread
    /// ends once every clone of the watch is gone.
    pub fn spawn(
        kafka: &KafkaArgs,
        topic: &str,
        initial: i32,
        every: Duration,
    ) -> anyhow::Result<PartitionWatch> {
        let consumer: BaseConsumer = kafka
            .client_config()
            .create()
            .context("cannot create the Kafka client that watches the input topic")?;
        let count = Arc::new(AtomicI32::new(initial));
        let weak: Weak<AtomicI32> = Arc::downgrade(&count);
        let topic = topic.to_owned();
        std::thread::Builder::new()
            .name("partition-watch".into())
            .spawn(move || {
                let mut errors = RateLimited::new(Duration::from_secs(60));
                loop {
                    std::thread::sleep(every);
                    let Some(count) = weak.upgrade() else { return };
                    // One request per tick: while the broker is away the workers
                    // keep the last count and the next tick tries again.
                    match crate::kafka::partition_count_once(&consumer, &topic) {
                        Ok(Some(now)) => {
                            let before = count.fetch_max(now, Ordering::SeqCst);
                            if now > before {
                                tracing::info!(topic, before, now, "input topic has new partitions");
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            if errors.allow() {
                                tracing::warn!(%error, topic, "cannot read the input topic's partitions; retrying");
                            }
                        }
                    }
                }
            })
            .context("cannot start the partition watcher")?;
        Ok(PartitionWatch { count })
    }

    fn partitions(&self) -> i32 {
        self.count.load(Ordering::SeqCst)
    }
}

/// What every worker needs to open its partitions (one per process, cloned).
#[derive(Clone)]
pub struct KafkaInput {
    pub kafka: KafkaArgs,
    /// Consumer group the progress is reported to (monitoring only).
    pub group_id: String,
    pub topic: String,
    /// Partitions of the topic at start.
    pub partitions: i32,
    /// partition -> next offset, as stored in PostgreSQL.
    pub stored: BTreeMap<i32, i64>,
    /// Where to start while no offset is stored for the topic.
    pub from: StartFrom,
    /// Read partitions whose stored offset is above their end from their log start.
    pub reset_above_end: bool,
    pub exit_at_end: bool,
    pub metrics: Arc<Metrics>,
    pub stats_interval_secs: u64,
    /// Partitions added while the job runs (a live job only).
    pub watch: Option<PartitionWatch>,
}

/// One worker's consumer with its partitions assigned at their start offsets,
/// and (for bounded replays) the offsets to stop at.
pub struct OwnedPartitions {
    consumer: BaseConsumer<LagContext>,
    topic: String,
    worker: usize,
    peers: usize,
    /// partition -> next offset to read: the consumer's position.
    next: BTreeMap<i32, i64>,
    /// partition -> stop before this offset (`--exit-at-end`).
    end: Option<BTreeMap<i32, i64>>,
    /// Every assigned partition: the list `rd_kafka_position` fills in.
    assigned: TopicPartitionList,
    /// Partitions of the topic this worker has looked at; `watch` says when more exist.
    known: i32,
    watch: Option<PartitionWatch>,
    /// Offsets stored at start, for partitions found later (normally none are).
    stored: BTreeMap<i32, i64>,
    error_log: RateLimited,
    assign_log: RateLimited,
}

/// Where a partition starts: its stored offset, else `from` while nothing is
/// stored for the topic, else its beginning. `Err(())`: the stored offset is
/// above the partition's end and no reset was asked for.
fn start_offset(
    stored: Option<i64>,
    anything_stored: bool,
    from: StartFrom,
    (low, high): (i64, i64),
    reset_above_end: bool,
) -> Result<i64, ()> {
    Ok(match stored {
        Some(offset) if offset > high && !reset_above_end => return Err(()),
        Some(offset) if offset > high => low,
        Some(offset) => offset.max(low),
        None if anything_stored => low,
        None => match from {
            StartFrom::Earliest => low,
            StartFrom::Latest => high,
        },
    })
}

impl KafkaInput {
    /// Creates the consumer for the partitions `worker` owns, each at its start
    /// offset (see the module docs). Blocks (startup only) on watermark requests.
    /// `None` when the worker owns nothing and never will (no `watch`).
    pub fn open(&self, worker: usize, peers: usize) -> anyhow::Result<Option<OwnedPartitions>> {
        let (topic, metrics) = (self.topic.as_str(), &self.metrics);
        let peers = peers.max(1);
        let mine: Vec<i32> = (0..self.partitions)
            .filter(|partition| *partition as usize % peers == worker)
            .collect();
        if mine.is_empty() && self.watch.is_none() {
            return Ok(None);
        }
        let stats_interval_ms = (self.stats_interval_secs.max(1) * 1000).to_string();
        let consumer: BaseConsumer<LagContext> = self
            .kafka
            .client_config_with(&[
                // A stored offset that retention has already deleted: resume from
                // the oldest message still there rather than stall forever.
                ("auto.offset.reset", "earliest"),
                // Bounds librdkafka's prefetch (default 64 MiB, and 100 000
                // messages a partition). 4 MiB holds some 14 000 messages of
                // 300 bytes, a third of a second at 40k msgs/s, and is refilled
                // every 10 ms (below): 16 MiB cost 24-50 MiB of peak RSS at -w 2
                // for no gain in rate.
                ("queued.max.messages.kbytes", "4096"),
                ("queued.min.messages", "10000"),
                // A partition whose queue is full waits this long before its
                // next fetch (default 1 s): with a shallow queue, the default
                // starved the job (1M messages at -w 2: 43k msgs/s instead of
                // 118k with 10 ms).
                ("fetch.queue.backoff.ms", "10"),
            ])
            // Records of aborted transactions must never be stored, and the end of
            // a bounded replay is the last stable offset. librdkafka's default
            // already, set so no --kafka can change it (check_isolation refuses one).
            .set("isolation.level", "read_committed")
            // Only used to publish progress for monitoring tools; the job's own
            // offsets live in PostgreSQL.
            .set("group.id", &self.group_id)
            // Offsets are stored by the sink with the rows: never auto-commit,
            // whatever --kafka says.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Statistics carry each partition's watermarks from fetch responses:
            // consumer lag without extra requests to the broker.
            .set("statistics.interval.ms", &stats_interval_ms)
            .create_with_context(LagContext {
                metrics: Arc::clone(metrics),
            })
            .context("cannot create Kafka consumer")?;
        let mut next = BTreeMap::new();
        let mut end = self.exit_at_end.then(BTreeMap::new);
        let mut assignment = TopicPartitionList::new();
        let mut above_end = Vec::new();
        for partition in mine {
            let (low, high) =
                crate::kafka::retrying(&format!("reading watermarks of {topic}[{partition}]"), || {
                    consumer.fetch_watermarks(topic, partition, crate::kafka::METADATA_TIMEOUT)
                })?;
            let stored = self.stored.get(&partition).copied();
            let Ok(start) = start_offset(
                stored,
                !self.stored.is_empty(),
                self.from,
                (low, high),
                self.reset_above_end,
            ) else {
                above_end.push((partition, stored.unwrap_or_default(), high));
                continue;
            };
            match stored {
                Some(offset) if offset > high => tracing::warn!(
                    topic,
                    partition,
                    stored = offset,
                    high,
                    start,
                    "stored offset above the partition's end: reset to its log start (--reset-offsets-above-end)"
                ),
                Some(offset) if offset < low => {
                    // Retention deleted these before the job read them: they
                    // are gone for good, which must not pass as a quiet resume.
                    let lost = low - offset;
                    tracing::warn!(
                        topic,
                        partition,
                        stored = offset,
                        log_start = low,
                        lost,
                        "stored offset is below the partition's log start: messages deleted by retention are skipped"
                    );
                    metrics.skipped_by_retention(lost as u64);
                }
                _ => {}
            }
            if let Some(end) = end.as_mut() {
                end.insert(partition, high);
            }
            next.insert(partition, start);
            metrics.own_partition(partition, start, Some(high));
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .context("bad partition assignment")?;
            tracing::info!(topic, partition, start, low, high, worker, "assigned partition");
        }
        if !above_end.is_empty() {
            return Err(SourceError::AboveEnd {
                topic: topic.to_owned(),
                partitions: above_end,
            }
            .into());
        }
        if assignment.count() > 0 {
            consumer.assign(&assignment).context("cannot assign partitions")?;
        }
        Ok(Some(OwnedPartitions {
            consumer,
            topic: topic.to_owned(),
            worker,
            peers,
            next,
            end,
            assigned: assignment,
            known: self.partitions,
            watch: self.watch.clone(),
            stored: self.stored.clone(),
            error_log: RateLimited::new(Duration::from_secs(10)),
            assign_log: RateLimited::new(Duration::from_secs(10)),
        }))
    }
}

impl OwnedPartitions {
    /// Assigns the partitions this worker owns among those added to the topic
    /// since it last looked, from their earliest offset. No broker request here:
    /// the count comes from the watcher thread, and `incremental_assign` only
    /// hands the list to librdkafka's own thread (once per growth of the topic).
    fn adopt_new_partitions(&mut self) -> Result<(), SourceError> {
        let Some(count) = self.watch.as_ref().map(PartitionWatch::partitions) else {
            return Ok(());
        };
        if count <= self.known {
            return Ok(());
        }
        let mut added = TopicPartitionList::new();
        let mut starts = Vec::new();
        for partition in (self.known..count).filter(|p| *p as usize % self.peers == self.worker) {
            let (offset, next) = match self.stored.get(&partition) {
                Some(stored) => (Offset::Offset(*stored), *stored),
                None => (Offset::Beginning, 0),
            };
            added
                .add_partition_offset(&self.topic, partition, offset)
                .map_err(|source| self.assign_error(partition, source))?;
            starts.push((partition, next));
        }
        if let Some((partition, _)) = starts.first() {
            self.consumer
                .incremental_assign(&added)
                .map_err(|source| self.assign_error(*partition, source))?;
        }
        for (partition, next) in starts {
            self.consumer
                .context()
                .metrics
                .own_partition(partition, next, None);
            self.assigned.add_partition(&self.topic, partition);
            self.next.insert(partition, next);
            tracing::info!(topic = %self.topic, partition, worker = self.worker, "assigned a partition added while running");
        }
        self.known = count;
        Ok(())
    }

    fn assign_error(&self, partition: i32, source: KafkaError) -> SourceError {
        SourceError::Assign {
            topic: self.topic.clone(),
            partition,
            source,
        }
    }

    /// Moves each partition's next offset up to the consumer's position, which
    /// counts the transaction markers and aborted records it skipped, capped at
    /// the end of a bounded replay (what lies beyond was not emitted).
    fn advance_to_positions(&mut self) {
        if self.assigned.count() == 0 {
            return;
        }
        // SAFETY: both pointers are valid for the call (the consumer and the list
        // are owned by `self`, borrowed across it); `rd_kafka_position` only
        // locks each partition and writes offsets into the list we own. Unlike
        // `Consumer::position`, it needs no request to librdkafka's main thread.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_position(self.consumer.client().native_ptr(), self.assigned.ptr())
        };
        if error != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return;
        }
        for element in self.assigned.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue; // nothing handed over yet
            };
            let partition = element.partition();
            let cap = self.end.as_ref().and_then(|end| end.get(&partition).copied());
            let position = cap.map_or(position, |cap| position.min(cap));
            let next = self.next.entry(partition).or_insert(position);
            *next = (*next).max(position);
        }
    }

    fn at_end(&self) -> bool {
        match &self.end {
            Some(end) => self
                .next
                .iter()
                .all(|(partition, next)| end.get(partition).is_none_or(|end| next >= end)),
            None => false,
        }
    }

    fn past_end(&self, partition: i32, offset: i64) -> bool {
        self.end
            .as_ref()
            .and_then(|end| end.get(&partition))
            .is_some_and(|end| offset >= *end)
    }
}

impl Input for OwnedPartitions {
    fn prepare(&mut self) {
        if let Err(error) = self.adopt_new_partitions() {
            // librdkafka refused a local assignment: try again next time.
            if self.assign_log.allow() {
                tracing::warn!(%error, "cannot take up new input partitions; retrying");
            }
        }
    }

    fn read(&mut self, max: usize, out: &mut Vec<SourceEvent>) -> anyhow::Result<()> {
        // (partition, offset, Kafka timestamp) of what is read now, for commit lag.
        let mut timestamps = Vec::new();
        let mut read = 0;
        while read < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(error)) => {
                    // Transient (broker away, rebalance of a shared cluster):
                    // librdkafka reconnects by itself; we keep polling.
                    if self.error_log.allow() {
                        tracing::warn!(%error, "Kafka consumer error; retrying");
                    }
                    break;
                }
                Some(Ok(message)) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    if self.past_end(partition, offset) {
                        continue;
                    }
                    // A message below our position was already emitted (can
                    // happen right after a reset); never emit it twice.
                    if self.next.get(&partition).is_some_and(|next| offset < *next) {
                        continue;
                    }
                    if let Some(timestamp) = message.timestamp().to_millis() {
                        timestamps.push((partition, offset, timestamp));
                    }
                    out.push(SourceEvent::Message(RawMessage {
                        position: Position { partition, offset },
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                    }));
                    self.next.insert(partition, offset + 1);
                    read += 1;
                }
            }
        }
        self.consumer.context().metrics.read(&timestamps);
        // After the poll: markers and aborted records handed over meanwhile
        // moved the positions past the last message.
        self.advance_to_positions();
        Ok(())
    }

    fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.next
    }

    fn finished(&self) -> bool {
        self.at_end()
    }

    fn reported(&self, epoch: u64, moved: &[(i32, i64)]) {
        // Durable, and so no longer lag, once the sink's probe passes this epoch.
        self.consumer.context().metrics.reported(epoch, moved);
    }
}

/// Builds the source operator. `partitions` is `None` for a worker that owns no
/// partition and cannot get one (it drops its capability at once).
pub fn kafka_source<'scope>(
    scope: Scope<'scope, u64>,
    partitions: Option<OwnedPartitions>,
    settings: SourceSettings,
    committed: ProbeHandle<u64>,
) -> Stream<'scope, u64, Vec<SourceEvent>> {
    // Kafka reads never fail for good (see `read`): nothing lands in the failure.
    input_source(
        scope,
        "KafkaSource",
        partitions,
        settings,
        committed,
        SourceFailure::default(),
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
    use rdkafka::ClientConfig;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::Probe;

    use super::*;

    type Cluster = MockCluster<'static, DefaultProducerContext>;

    fn produce(cluster: &Cluster, partition: i32, count: usize) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for _ in 0..count {
            producer
                .send(BaseRecord::<(), _>::to("input").partition(partition).payload("x"))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// The input of a one-worker bounded replay of the 2-partition topic `input`.
    fn input(cluster: &Cluster, stored: &[(i32, i64)], from: StartFrom) -> KafkaInput {
        KafkaInput {
            kafka: KafkaArgs {
                brokers: cluster.bootstrap_servers(),
                kafka: Vec::new(),
            },
            group_id: "g".into(),
            topic: "input".into(),
            partitions: 2,
            stored: stored.iter().copied().collect(),
            from,
            reset_above_end: false,
            exit_at_end: true,
            metrics: Metrics::new("alerts", 0),
            stats_interval_secs: 60,
            watch: None,
        }
    }

    /// Runs the real source operator over `owned` until it ends (its probe is
    /// the only "sink"): the messages' (partition, offset) in emission order,
    /// and the last Progress of each partition.
    fn run_source(owned: OwnedPartitions) -> (Vec<(i32, i64)>, BTreeMap<i32, i64>) {
        let settings = SourceSettings {
            epoch_ms: 1,
            max_batch: 2,
            max_in_flight: 1000,
            idle_poll_ms: 1,
        };
        let captured = timely::execute_directly(move |worker| {
            let committed = ProbeHandle::new();
            let captured = worker.dataflow::<u64, _, _>(|scope| {
                kafka_source(scope, Some(owned), settings, committed.clone())
                    .probe_with(&committed)
                    .capture()
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !committed.done() {
                assert!(std::time::Instant::now() < deadline, "the source never ended");
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            captured
        });
        let (mut messages, mut progress) = (Vec::new(), BTreeMap::new());
        for event in captured.try_iter() {
            if let Event::Messages(_, data) = event {
                for record in data {
                    match record {
                        SourceEvent::Message(message) => {
                            messages.push((message.position.partition, message.position.offset))
                        }
                        SourceEvent::Progress(position) => {
                            progress.insert(position.partition, position.offset);
                        }
                    }
                }
            }
        }
        (messages, progress)
    }

    /// `--exit-at-end` against rdkafka's in-process mock cluster, through the
    /// real operator: the source ends at the high watermarks seen when it
    /// opened, an empty partition is finished at once, what is produced later
    /// is past the end, and the last Progress is each partition's end.
    #[test]
    fn a_bounded_replay_ends_at_the_watermarks_seen_at_open() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("input", 2, 1).unwrap();
        produce(&cluster, 0, 3);

        let owned = input(&cluster, &[], StartFrom::Earliest)
            .open(0, 1)
            .unwrap()
            .unwrap();
        assert!(!owned.at_end());
        produce(&cluster, 0, 2);
        assert!(owned.past_end(0, 3), "produced after open: past the end");
        assert!(owned.past_end(1, 0), "partition 1 was empty at open");
        let (messages, progress) = run_source(owned);
        assert_eq!(messages, [(0, 0), (0, 1), (0, 2)]);
        assert_eq!(progress, BTreeMap::from([(0, 3), (1, 0)]));

        // Resuming from stored offsets at the end: finished without reading.
        let resumed = input(&cluster, &[(0, 5), (1, 0)], StartFrom::Earliest)
            .open(0, 1)
            .unwrap()
            .unwrap();
        assert!(resumed.at_end());
        assert_eq!(run_source(resumed).0, []);
    }

    /// `--from latest` applies only while nothing is stored for the topic: a
    /// partition without a stored offset next to one with is a partition
    /// added while the job was down, and is read from its beginning.
    #[test]
    fn from_latest_does_not_skip_a_partition_added_while_the_job_was_down() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("input", 2, 1).unwrap();
        produce(&cluster, 0, 4);
        produce(&cluster, 1, 3);

        // Nothing stored: both partitions start at their end.
        let fresh = input(&cluster, &[], StartFrom::Latest)
            .open(0, 1)
            .unwrap()
            .unwrap();
        assert_eq!(run_source(fresh).0, []);

        // Partition 0 stored at 2, partition 1 new: all of partition 1 is read.
        let resumed = input(&cluster, &[(0, 2)], StartFrom::Latest)
            .open(0, 1)
            .unwrap()
            .unwrap();
        let (messages, progress) = run_source(resumed);
        let mut sorted = messages.clone();
        sorted.sort();
        assert_eq!(sorted, [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2)], "{messages:?}");
        assert_eq!(progress, BTreeMap::from([(0, 4), (1, 3)]));
    }

    /// A stored offset above a partition's end (the topic recreated) refuses
    /// to start, naming the topic, the partition and both offsets; with the
    /// reset asked for, that partition is read from its log start.
    #[test]
    fn a_stored_offset_above_the_end_refuses_to_start_until_reset() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("input", 2, 1).unwrap();
        produce(&cluster, 0, 2);
        produce(&cluster, 1, 5);

        let stored = [(0, 60), (1, 5)];
        let refused = input(&cluster, &stored, StartFrom::Earliest)
            .open(0, 1)
            .err()
            .expect("refused");
        let message = format!("{refused:#}");
        assert!(message.contains("input"), "{message}");
        assert!(
            message.contains("partition 0: stored next offset 60 > high watermark 2"),
            "{message}"
        );
        assert!(!message.contains("partition 1:"), "{message}");
        assert!(message.contains("--reset-offsets-above-end"), "{message}");

        let mut reset = input(&cluster, &stored, StartFrom::Earliest);
        reset.reset_above_end = true;
        let (messages, progress) = run_source(reset.open(0, 1).unwrap().unwrap());
        assert_eq!(messages, [(0, 0), (0, 1)]);
        assert_eq!(progress, BTreeMap::from([(0, 2), (1, 5)]));
    }
}
