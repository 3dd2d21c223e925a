//! The tokio runtime every blocking part of conscope runs its async IO on: one
//! current-thread runtime per thread that needs one (the CLI commands, the
//! writer, the publisher, the lease, the rule poller), so no thread pool
//! competes with the timely workers for cores.

/// A current-thread runtime with IO and timers.
pub fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
