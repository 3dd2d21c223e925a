//! Progress bars for `conscope run --exit-at-end` and `conscope produce`, drawn
//! on stderr when it is a terminal: count/total, rate and ETA. Elsewhere (CI,
//! pipes, files) nothing is drawn and the plain log lines are all there is.
//! Touches stderr only.
//!
//! Log lines and a bar share the terminal: [`LogWriter`], the `tracing` writer,
//! hands each formatted line to the active bar's `suspend`, which clears the bar,
//! prints the line and draws the bar again below it, so neither tears the other.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;

/// The bar on screen, if any: where log lines go through.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> Option<ProgressBar> {
    ACTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn set_active(bar: Option<ProgressBar>) {
    *ACTIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = bar;
}

/// A progress bar on stderr, cleared when dropped.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar counting `unit` towards `total` (`None`: a count and a rate only;
    /// `Some(0)`: not known yet, the bar appears once it is), or `None` when
    /// stderr is not a terminal.
    pub fn start(label: &str, unit: &str, total: Option<u64>) -> Option<Progress> {
        if !io::stderr().is_terminal() {
            return None;
        }
        let target = match total {
            Some(0) => ProgressDrawTarget::hidden(),
            _ => ProgressDrawTarget::stderr(),
        };
        let bar = ProgressBar::with_draw_target(total, target);
        let template = match total {
            Some(_) => format!(
                "{{prefix}} [{{elapsed_precise}}] [{{wide_bar}}] {{human_pos}}/{{human_len}} {unit} \
                 {{rate}} ETA {{eta}}"
            ),
            None => format!("{{prefix}} [{{elapsed_precise}}] {{spinner}} {{human_pos}} {unit} {{rate}}"),
        };
        // The templates are constants of ours: a bad one is a bug, shown as a plain bar.
        if let Ok(style) = ProgressStyle::with_template(&template) {
            let style = style
                .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                })
                .progress_chars("=> ");
            bar.set_style(style);
        }
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        set_active(Some(bar.clone()));
        Some(Progress { bar })
    }

    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        if total > 0 && self.bar.is_hidden() {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    /// Updates the bar from `poll` (done, total) every `every` on a thread of its
    /// own, until the returned handle is stopped or dropped.
    pub fn follow(
        self,
        every: Duration,
        poll: impl Fn() -> (u64, u64) + Send + 'static,
    ) -> io::Result<Following> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let (done, total) = poll();
                        self.set_total(total);
                        self.set(done);
                        std::thread::sleep(every);
                    }
                })?
        };
        Ok(Following {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        set_active(None);
        self.bar.finish_and_clear();
    }
}

/// A bar kept current by [`Progress::follow`]; clears it when dropped.
pub struct Following {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `tracing` writer: stderr, around the active bar.
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// One formatted log event, written out whole when dropped.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let write = || {
            let _ = io::stderr().lock().write_all(&self.0);
        };
        match active() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
