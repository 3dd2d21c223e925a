//! Shared harness for conscope's integration tests against the real local
//! services: the Kafka broker at `CONSCOPE_BROKERS` (default 127.0.0.1:9092:
//! Apache Kafka from scripts/stack-up.sh) and PostgreSQL at `CONSCOPE_TEST_PG`
//! (default postgres://postgres@127.0.0.1:5432). Every test uses its own topics
//! and its own database, and deletes no topic but one it created
//! (`recreate_topic`).
//!
//! A library of its own (a dev-dependency of the conscope crate) rather than a
//! module each test binary includes: each test uses what it needs, and no
//! helper hides behind `allow(dead_code)`. Tests `use conscope_testkit::*;`.
//!
//! # Layout
//! - `compare`: a run's outputs against an uninterrupted run's: what is missing, what is doubled.
//! - `kafka`: topics, producing, reading back, watermarks, alert ids.
//! - `pg`: databases, queries, a transaction held open, the dump of the output tables, table checks.
//! - `rules`: the first events of a topic, and alert rules of every kind over them.
//! - `run`: the `conscope` binary, a job's command line, child processes, cluster ports.
//! - `summary`: the metrics lines and the exit summary, parsed into fields.
//! - `notify`: an HTTP receiver and an SMTP server (STARTTLS) for the notifier
//!   (not glob-exported: `use conscope_testkit::notify::*`).
//! - `dashboard`: a database seeded for the dashboard, a running dashboard, HTTP
//!   requests (not glob-exported: `use conscope_testkit::dashboard::*`).

pub mod compare;
pub mod dashboard;
pub mod kafka;
pub mod notify;
pub mod pg;
pub mod rules;
pub mod run;
pub mod summary;

use std::time::{SystemTime, UNIX_EPOCH};

pub use kafka::*;
pub use pg::*;
pub use rules::*;
pub use run::*;
pub use summary::*;

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // `_t<pid>_`: scripts/test.sh drops the databases of test processes that
    // are gone, and only those.
    format!("{prefix}_t{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
