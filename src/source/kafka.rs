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
//! # Epochs
//! The timely time is an epoch number, `wall-clock ms / epoch_ms`, the same
//! clock in every process, so workers advance together without talking. Within an
//! epoch the processor orders messages by `(partition, offset)`, so the results do
//! not depend on how messages were batched into epochs as long as an event's
//! messages come from one partition.
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
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::{current_epoch, InFlight, SourceSettings};
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
}

impl OwnedPartitions {
    /// Creates the consumer for the partitions `worker` owns, starting each at its
    /// stored offset, else at `from`. Blocks (startup only) on watermark requests.
    /// `None` when the worker owns nothing and never will (no `watch`).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        kafka: &KafkaArgs,
        group_id: &str,
        topic: &str,
        partition_count: i32,
        worker: usize,
        peers: usize,
        stored: &BTreeMap<i32, i64>,
        from: StartFrom,
        exit_at_end: bool,
        metrics: Arc<Metrics>,
        stats_interval_secs: u64,
        watch: Option<PartitionWatch>,
    ) -> anyhow::Result<Option<OwnedPartitions>> {
        let peers = peers.max(1);
        let mine: Vec<i32> = (0..partition_count)
            .filter(|partition| *partition as usize % peers == worker)
            .collect();
        if mine.is_empty() && watch.is_none() {
            return Ok(None);
        }
        let stats_interval_ms = (stats_interval_secs.max(1) * 1000).to_string();
        let consumer: BaseConsumer<LagContext> = kafka
            .client_config_with(&[
                // A stored offset that retention has already deleted: resume from
                // the oldest message still there rather than stall forever.
                ("auto.offset.reset", "earliest"),
                // Bounds librdkafka's prefetch per partition (default 64 MiB,
                // and 100 000 messages: some 40 MiB per partition of small ones).
                ("queued.max.messages.kbytes", "16384"),
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
            .set("group.id", group_id)
            // Offsets are stored by the sink with the rows: never auto-commit,
            // whatever --kafka says.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Statistics carry each partition's watermarks from fetch responses:
            // consumer lag without extra requests to the broker.
            .set("statistics.interval.ms", &stats_interval_ms)
            .create_with_context(LagContext {
                metrics: Arc::clone(&metrics),
            })
            .context("cannot create Kafka consumer")?;
        let mut next = BTreeMap::new();
        let mut end = exit_at_end.then(BTreeMap::new);
        let mut assignment = TopicPartitionList::new();
        for partition in mine {
            let (low, high) =
                crate::kafka::retrying(&format!("reading watermarks of {topic}[{partition}]"), || {
                    consumer.fetch_watermarks(topic, partition, crate::kafka::METADATA_TIMEOUT)
                })?;
            let start = match (stored.get(&partition), from) {
                (Some(offset), _) => {
                    if *offset < low {
                        // Retention deleted these before the job read them: they
                        // are gone for good, which must not pass as a quiet resume.
                        let lost = low - *offset;
                        tracing::warn!(
                            topic,
                            partition,
                            stored = *offset,
                            log_start = low,
                            lost,
                            "stored offset is below the partition's log start: messages deleted by retention are skipped"
                        );
                        metrics.skipped_by_retention(lost as u64);
                    }
                    (*offset).max(low)
                }
                (None, StartFrom::Earliest) => low,
                (None, StartFrom::Latest) => high,
            };
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
            known: partition_count,
            watch,
            stored: stored.clone(),
        }))
    }

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

    fn finished(&self) -> bool {
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

/// Builds the source operator. `partitions` is `None` for a worker that owns no
/// partition and cannot get one (it drops its capability at once).
pub fn kafka_source<'scope>(
    scope: Scope<'scope, u64>,
    partitions: Option<OwnedPartitions>,
    settings: SourceSettings,
    committed: ProbeHandle<u64>,
) -> Stream<'scope, u64, Vec<SourceEvent>> {
    let worker = scope.index();
    source(scope, "KafkaSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = partitions.as_ref().map(|_| capability);
        let mut partitions = partitions;
        // Offsets reported so far, to send Progress only for partitions that moved.
        let mut reported: BTreeMap<i32, i64> = BTreeMap::new();
        // (epoch, messages) emitted but not yet committed.
        let mut in_flight = InFlight::default();
        let mut error_log = RateLimited::new(Duration::from_secs(10));
        let mut assign_log = RateLimited::new(Duration::from_secs(10));

        move |output| {
            let (Some(cap), Some(owned)) = (capability.as_mut(), partitions.as_mut()) else {
                return;
            };
            if let Err(error) = owned.adopt_new_partitions() {
                // librdkafka refused a local assignment: try again next time.
                if assign_log.allow() {
                    tracing::warn!(%error, "cannot take up new input partitions; retrying");
                }
            }
            let epoch = current_epoch(settings.epoch_ms).max(*cap.time());
            let closing = epoch > *cap.time();
            if closing || owned.finished() {
                // Progress is emitted at the epoch its messages were emitted at.
                let mut session = output.session(&*cap);
                let mut moved = Vec::new();
                for (partition, next) in &owned.next {
                    if reported.get(partition) != Some(next) {
                        session.give(SourceEvent::Progress(Position {
                            partition: *partition,
                            offset: *next,
                        }));
                        reported.insert(*partition, *next);
                        moved.push((*partition, *next));
                    }
                }
                drop(session);
                // Durable, and so no longer lag, once the sink's probe passes this epoch.
                owned.consumer.context().metrics.reported(*cap.time(), &moved);
                in_flight.close(*cap.time());
                if owned.finished() {
                    tracing::info!(worker, "source reached the end offsets seen at start");
                    capability = None;
                    partitions = None;
                    return;
                }
                cap.downgrade(&epoch);
            }

            // Backpressure: stop reading while too much is waiting for PostgreSQL.
            if in_flight.full(&committed, settings.max_in_flight) {
                activator.activate_after(Duration::from_millis(5));
                return;
            }

            let mut read = 0;
            // (partition, offset, Kafka timestamp) of what is read now, for commit lag.
            let mut timestamps = Vec::new();
            let mut session = output.session(&*cap);
            while read < settings.max_batch {
                match owned.consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(error)) => {
                        // Transient (broker away, rebalance of a shared cluster):
                        // librdkafka reconnects by itself; we keep polling.
                        if error_log.allow() {
                            tracing::warn!(%error, "Kafka consumer error; retrying");
                        }
                        break;
                    }
                    Some(Ok(message)) => {
                        let partition = message.partition();
                        let offset = message.offset();
                        if owned.past_end(partition, offset) {
                            continue;
                        }
                        // A message below our position was already emitted (can
                        // happen right after a reset); never emit it twice.
                        if owned.next.get(&partition).is_some_and(|next| offset < *next) {
                            continue;
                        }
                        if let Some(timestamp) = message.timestamp().to_millis() {
                            timestamps.push((partition, offset, timestamp));
                        }
                        session.give(SourceEvent::Message(RawMessage {
                            position: Position { partition, offset },
                            key: message.key().map(<[u8]>::to_vec),
                            payload: message.payload().map(<[u8]>::to_vec),
                        }));
                        owned.next.insert(partition, offset + 1);
                        read += 1;
                    }
                }
            }
            drop(session);
            owned.consumer.context().metrics.read(&timestamps);
            // After the poll: markers and aborted records handed over meanwhile
            // moved the positions past the last message.
            owned.advance_to_positions();
            in_flight.read(read);
            if read == settings.max_batch || owned.finished() {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(settings.idle_poll_ms));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    use super::*;

    fn produce(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        partition: i32,
        count: usize,
    ) {
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

    fn open(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        stored: &BTreeMap<i32, i64>,
    ) -> OwnedPartitions {
        let kafka = KafkaArgs {
            brokers: cluster.bootstrap_servers(),
            kafka: Vec::new(),
        };
        let metrics = Metrics::new("alerts", 0);
        OwnedPartitions::open(
            &kafka,
            "g",
            "input",
            2,
            0,
            1,
            stored,
            StartFrom::Earliest,
            true,
            metrics,
            60,
            None,
        )
        .unwrap()
        .unwrap()
    }

    /// Reads as the source does: until the end offsets seen at open, or none left.
    fn drain(owned: &mut OwnedPartitions) -> Vec<(i32, i64)> {
        let mut emitted = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !owned.finished() && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = owned.consumer.poll(Duration::from_millis(100)) {
                let (partition, offset) = (message.partition(), message.offset());
                if !owned.past_end(partition, offset) {
                    emitted.push((partition, offset));
                    owned.next.insert(partition, offset + 1);
                }
            }
            owned.advance_to_positions();
        }
        emitted
    }

    /// `--exit-at-end` against rdkafka's in-process mock cluster: the source
    /// ends at the high watermarks seen when it opened, an empty partition is
    /// finished at once, and what is produced later is past the end.
    #[test]
    fn a_bounded_replay_ends_at_the_watermarks_seen_at_open() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("input", 2, 1).unwrap();
        produce(&cluster, 0, 3);

        let mut owned = open(&cluster, &BTreeMap::new());
        assert!(!owned.finished());
        produce(&cluster, 0, 2);
        assert_eq!(drain(&mut owned), [(0, 0), (0, 1), (0, 2)]);
        assert!(owned.finished());
        assert!(owned.past_end(0, 3), "produced after open: past the end");
        assert!(owned.past_end(1, 0), "partition 1 was empty at open");

        // Resuming from stored offsets at the end: finished without reading.
        let resumed = open(&cluster, &[(0, 5), (1, 0)].into());
        assert!(resumed.finished());
    }
}
