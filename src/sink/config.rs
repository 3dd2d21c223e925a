//! The writer's configuration: where it writes, and what the rows it writes
//! need to address outbox messages (topics, partitions, the input's name).
//!
//! Data only. Read by the writer, by the tables' SQL and by `isolate`, so it
//! sits below all of them.

use super::encode::OutboxTarget;
use crate::config::KafkaArgs;
use crate::lease::Lease;
use crate::shutdown::Shutdown;

/// Where the writer writes and what it needs to address outbox messages.
#[derive(Clone)]
pub struct WriterConfig {
    pub database_url: String,
    /// The offsets table's topic name (the input topic, or `file:<path>`).
    pub input_name: String,
    pub alerts: OutboxTarget,
    pub dlq: OutboxTarget,
    /// Upper bound of records merged into one transaction.
    pub max_records_per_commit: usize,
    /// `job_progress.job_id`: names the job's prepared parts (`parts`).
    pub job_id: String,
    /// PostgreSQL connections a commit may use (`parts`); 1: one transaction.
    pub connections: usize,
    /// History and listing rows a commit needs before it is split over them.
    pub split_min_rows: usize,
    /// Where to report committed offsets for monitoring tools (Kafka client
    /// settings and consumer group); `None` for file input.
    pub monitor: Option<(KafkaArgs, String)>,
    /// This process's job lease: no commit lands without it.
    pub lease: Lease,
    /// The job's stop request: a writer waiting out PostgreSQL gives up on
    /// what it holds (the next start reads it again) instead of waiting on.
    pub shutdown: Shutdown,
}
