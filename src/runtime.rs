//! The tokio runtime every blocking part of conscope runs its async IO on: one
//! current-thread runtime per thread that needs one (the CLI commands, the
//! writer, the publisher, the lease, the rule poller), so no thread pool
//! competes with the timely workers for cores. Also how a thread that cannot
//! go on ends the process ([`fatal`]), and how long startup waits for
//! PostgreSQL ([`STARTUP_PATIENCE`]): shared by the job and its sources.

use std::time::Duration;

/// A current-thread runtime with IO and timers.
pub fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Ends the process with `error`: a worker that cannot go on must not leave the
/// others waiting for it forever.
pub fn fatal(error: anyhow::Error) -> ! {
    tracing::error!("{error:#}");
    eprintln!("conscope: error: {error:#}");
    std::process::exit(1);
}

/// How long startup reads (offsets, quarantine, restore) ride out PostgreSQL
/// being away before the job gives up.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(120);
