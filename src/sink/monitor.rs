//! Reports the committed input offsets to the job's Kafka consumer group, so lag
//! dashboards and `kafka-consumer-groups` see the job.
//!
//! Monitoring only, never read back: PostgreSQL's `kafka_offsets` is the truth
//! the job resumes from. A failed report is logged at debug level and the next
//! commit reports again.
//!
//! The client has a `group.id`, so librdkafka queues the result of every
//! asynchronous commit as an event for `poll`. Nothing else polls this client
//! (it reads no partition): each report serves the events queued so far, or
//! they would pile up for the life of the job, one per commit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::KafkaArgs;

/// Events served per report at most. Each report queues one commit result
/// (plus the odd error): serving more than that keeps the queue drained, and a
/// bound keeps a report from spinning.
const SERVE_PER_REPORT: usize = 8;

/// Logs the result of each commit when `poll` serves it.
pub struct CommitLog;

impl ClientContext for CommitLog {}

impl ConsumerContext for CommitLog {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "cannot report offsets to the consumer group");
        }
    }
}

pub struct GroupMonitor<C: ConsumerContext = CommitLog> {
    consumer: BaseConsumer<C>,
    topic: String,
}

impl GroupMonitor {
    pub fn new(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<GroupMonitor> {
        GroupMonitor::with_context(kafka, group, topic, CommitLog)
    }
}

impl<C: ConsumerContext> GroupMonitor<C> {
    fn with_context(
        kafka: &KafkaArgs,
        group: &str,
        topic: &str,
        context: C,
    ) -> anyhow::Result<GroupMonitor<C>> {
        let consumer = kafka
            .client_config()
            .set("group.id", group)
            // The job commits what PostgreSQL has, when it has it.
            .set("enable.auto.commit", "false")
            .create_with_context(context)
            .context("cannot create the monitoring Kafka client")?;
        Ok(GroupMonitor {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Serves the commit results queued so far, then commits `offsets` (next
    /// offset by partition) to the group, without waiting.
    pub fn report(&self, offsets: &BTreeMap<i32, i64>) {
        for _ in 0..SERVE_PER_REPORT {
            // Never blocks: zero timeout. A served event also reads as `None`,
            // so the bound, not the result, ends the loop.
            if let Some(Err(error)) = self.consumer.poll(Duration::ZERO) {
                tracing::debug!(%error, "consumer group monitor: Kafka client error");
            }
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets {
            if list
                .add_partition_offset(&self.topic, *partition, rdkafka::Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, "cannot report offsets to the consumer group");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events waiting on the client's queue (the consumer queue, where a
    /// client with a `group.id` gets everything librdkafka reports).
    fn queued<C: ConsumerContext>(monitor: &GroupMonitor<C>) -> usize {
        // SAFETY: the client outlives the call; the queue handle taken here is
        // released before returning.
        unsafe {
            let queue =
                rdkafka::bindings::rd_kafka_queue_get_consumer(monitor.consumer.client().native_ptr());
            let length = rdkafka::bindings::rd_kafka_queue_length(queue);
            rdkafka::bindings::rd_kafka_queue_destroy(queue);
            length
        }
    }

    /// With no broker to talk to, librdkafka reports an error event at every
    /// failed connection. A client nobody polls keeps them all (the control);
    /// the monitor serves them at each report, so its queue stays empty.
    #[test]
    fn reports_keep_the_event_queue_drained() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let kafka = KafkaArgs {
            brokers: closed.local_addr().unwrap().to_string(),
            kafka: Vec::new(),
        };
        drop(closed);
        let monitor = GroupMonitor::new(&kafka, "g", "input").unwrap();
        let unpolled = GroupMonitor::new(&kafka, "g", "input").unwrap();
        for offset in 0..40 {
            monitor.report(&[(0, offset)].into());
            std::thread::sleep(Duration::from_millis(100));
        }
        monitor.report(&[(0, 40)].into());
        let left = queued(&monitor);
        let piled_up = queued(&unpolled);
        assert!(piled_up >= 3, "the control client queued only {piled_up} events");
        assert!(
            left <= 1,
            "{left} events left on the monitor's queue ({piled_up} on the control's)"
        );
    }
}
