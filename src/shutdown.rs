//! Stopping on request. A [`Shutdown`] is handed to a long-running command
//! (as mini-redis's `server::run` takes a shutdown future), so a test can stop
//! it in-process and the binary can stop it on a signal: the first SIGINT or
//! SIGTERM triggers it, a second one exits at once.
//!
//! Touches: the process's signal dispositions (SIGINT, SIGTERM), via tokio.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

/// Cloneable; every clone sees the trigger.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Resolves once triggered (checked every 50 ms: the flag is shared with
    /// threads that are not async).
    pub async fn triggered(&self) {
        while !self.is_triggered() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A handle the first SIGINT/SIGTERM triggers (logging `stopping`); the
    /// second one exits the process at once with status 130.
    pub fn on_signals(stopping: &'static str) -> anyhow::Result<Shutdown> {
        let shutdown = Shutdown::new();
        let runtime = crate::runtime::current_thread().context("cannot start the signal runtime")?;
        #[cfg(unix)]
        let (mut interrupt, mut terminate) = {
            use tokio::signal::unix::{signal, SignalKind};
            let _guard = runtime.enter();
            (
                signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            )
        };
        let handle = shutdown.clone();
        std::thread::Builder::new()
            .name("conscope-signals".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    for round in 0..2 {
                        #[cfg(unix)]
                        tokio::select! {
                            _ = interrupt.recv() => {}
                            _ = terminate.recv() => {}
                        }
                        #[cfg(not(unix))]
                        if tokio::signal::ctrl_c().await.is_err() {
                            return;
                        }
                        if round == 0 {
                            tracing::info!("stopping: {stopping} (signal again to quit at once)");
                            handle.trigger();
                        } else {
                            std::process::exit(130);
                        }
                    }
                });
            })
            .context("cannot start the signal thread")?;
        Ok(shutdown)
    }
}
