//! Fault points for crash tests: `CONSCOPE_FAIL_POINT=NAME` (optionally
//! `CONSCOPE_FAIL_AFTER=N`, default 1) makes the process abort, like `kill -9`,
//! the N-th time it reaches the named point. Points: `mid_copy`,
//! `after_prepare` (a split commit's parts prepared, `sink::parts`),
//! `before_commit`, `before_commit_prepared` (its main transaction committed,
//! its parts not yet), `after_commit`, `before_publish`, `mid_publish`.
//!
//! Reads only its two environment variables, once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var("CONSCOPE_FAIL_POINT").ok()?;
            let after = std::env::var("CONSCOPE_FAIL_AFTER")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            Some((name, after))
        })
        .as_ref()
}

pub fn fail_point(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some((armed, after)) = armed() {
        if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *after {
            eprintln!("conscope: fail point {name} reached: aborting");
            std::process::abort();
        }
    }
}
