//! Reports the committed input offsets to the job's Kafka consumer group, so lag
//! dashboards and `kafka-consumer-groups` see the job.
//!
//! Monitoring only, never read back: PostgreSQL's `kafka_offsets` is the truth
//! the job resumes from. A failed report is logged at debug level and the next
//! commit reports again.

use std::collections::BTreeMap;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use crate::config::KafkaArgs;

pub struct GroupMonitor {
    consumer: BaseConsumer,
    topic: String,
}

impl GroupMonitor {
    pub fn new(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<GroupMonitor> {
        let consumer = kafka
            .client_config()
            .set("group.id", group)
            // The job commits what PostgreSQL has, when it has it.
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the monitoring Kafka client")?;
        Ok(GroupMonitor {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Commits `offsets` (next offset by partition) to the group, without waiting.
    pub fn report(&self, offsets: &BTreeMap<i32, i64>) {
        let mut list = rdkafka::TopicPartitionList::new();
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
