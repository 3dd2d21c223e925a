//! The Kafka source: one timely operator per worker, each owning a fixed set of
//! input partitions (partition `p` belongs to worker `p % peers`, across all
//! processes). No consumer-group rebalancing: ownership never moves while the job
//! runs, so a partition's messages always reach the dataflow in offset order.
//!
//! Touches the input topic only (reads, `assign` with explicit offsets).
//! Offsets are never committed here: they travel through the dataflow as
//! [`SourceEvent::Progress`] and are stored by the Postgres sink in the same
//! transaction as the rows derived from the messages before them.
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
//! itself. Positions are read from librdkafka's local state. It stops reading while more
//! than `max_in_flight` of its messages are not yet committed (read from the
//! sink's probe), which bounds memory when PostgreSQL is slow or away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use conscope_dataflows::model::{Position, RawMessage, SourceEvent};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Message, Offset, TopicPartitionList};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::{current_epoch, InFlight, SourceSettings};
use crate::config::KafkaArgs;
use crate::metrics::{Metrics, RateLimited};

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

/// One worker's consumer with its partitions assigned at their start offsets,
/// and (for bounded replays) the offsets to stop at.
pub struct OwnedPartitions {
    consumer: BaseConsumer<LagContext>,
    /// partition -> next offset to read: the consumer's position.
    next: BTreeMap<i32, i64>,
    /// partition -> stop before this offset (`--exit-at-end`).
    end: Option<BTreeMap<i32, i64>>,
    /// Every assigned partition: the list `rd_kafka_position` fills in.
    assigned: TopicPartitionList,
}

impl OwnedPartitions {
    /// Creates the consumer for the partitions `worker` owns, starting each at its
    /// stored offset, else at `from`. Blocks (startup only) on watermark requests.
    /// `None` when the worker owns nothing.
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
    ) -> anyhow::Result<Option<OwnedPartitions>> {
        let mine: Vec<i32> = (0..partition_count)
            .filter(|partition| *partition as usize % peers == worker)
            .collect();
        if mine.is_empty() {
            return Ok(None);
        }
        let stats_interval_ms = (stats_interval_secs.max(1) * 1000).to_string();
        let consumer: BaseConsumer<LagContext> = kafka
            .client_config_with(&[
                // A stored offset that retention has already deleted: resume from
                // the oldest message still there rather than stall forever.
                ("auto.offset.reset", "earliest"),
                // Bounds librdkafka's prefetch per partition (default 64 MiB).
                ("queued.max.messages.kbytes", "16384"),
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
            .create_with_context(LagContext { metrics })
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
                (Some(offset), _) => (*offset).max(low),
                (None, StartFrom::Earliest) => low,
                (None, StartFrom::Latest) => high,
            };
            if let Some(end) = end.as_mut() {
                end.insert(partition, high);
            }
            next.insert(partition, start);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .context("bad partition assignment")?;
            tracing::info!(topic, partition, start, low, high, worker, "assigned partition");
        }
        consumer.assign(&assignment).context("cannot assign partitions")?;
        Ok(Some(OwnedPartitions {
            consumer,
            next,
            end,
            assigned: assignment,
        }))
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
/// partition (it drops its capability at once).
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

        move |output| {
            let (Some(cap), Some(owned)) = (capability.as_mut(), partitions.as_mut()) else {
                return;
            };
            let epoch = current_epoch(settings.epoch_ms).max(*cap.time());
            let closing = epoch > *cap.time();
            if closing || owned.finished() {
                // Progress is emitted at the epoch its messages were emitted at.
                let mut session = output.session(&*cap);
                for (partition, next) in &owned.next {
                    if reported.get(partition) != Some(next) {
                        session.give(SourceEvent::Progress(Position {
                            partition: *partition,
                            offset: *next,
                        }));
                        reported.insert(*partition, *next);
                    }
                }
                drop(session);
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
