//! conscope: watches ticket prices, exactly once.
//!
//! ```text
//!  Kafka raw_prices ──► source (static partition ownership, offsets from Postgres)
//!        │                   │
//!        │              parse/validate ──rejects──────────────┐
//!        │                   │                                │
//!        │        exchange by event_id                        │
//!        │                   ▼                                │
//!        │       per-event processor: dedup → listing state   │
//!        │       → event state → drops / get-in / rules       │
//!        │                   │  └─► section states            │
//!        │                   │      (differential)            │
//!        │                   │       └─► reduce by event:     │
//!        │                   │     event/section_summary      ▼
//!        │       exchange to worker 0 ─► Postgres sink: rows + summaries + alerts
//!        │                               + DLQ outbox + next offsets,
//!        │                               ONE transaction per batch of epochs
//!        │                                        │
//!        └─◄ resume from stored offsets           ▼
//!                                 outbox publisher ─► price_alerts, raw_prices.dlq
//! ```
//!
//! # Layout
//! - `config`: shared flags. `db`: connections and migrations.
//! - `source/`: Kafka and file sources (partition ownership, offsets, polling).
//! - `sink/`: the Postgres writer (and what it does with refused rows), the
//!   outbox publisher.
//! - `job`: `conscope run`, wiring the timely dataflow of `conscope_dataflows`;
//!   stops on a `shutdown` handle. `lease`: one live instance per process of a job.
//! - `runtime`: the tokio runtime builder. Printable text and money are the
//!   library target's `conscope::text` (with the alert decoder, see `lib.rs`).
//! - `produce`, `alerts`, `rules`, `quarantine`, `history`, `dashboard/`: the other
//!   subcommands.
//! - `notify/`: `conscope notify` (channels, routes, exactly-once delivery) and
//!   the `channels` and `routes` commands.
//! - `metrics`, `metrics_server`, `lag`: the job's figures, `/metrics`, and the
//!   consumer lag of each process's partitions.
//! - `progress`: progress bars on a terminal, and the log writer around them.

mod alerts;
mod cluster_stop;
mod config;
mod dashboard;
mod db;
mod fail;
mod history;
mod job;
mod kafka;
mod lag;
mod lease;
mod metrics;
mod metrics_server;
mod notify;
mod produce;
mod progress;
mod quarantine;
mod rules;
mod runtime;
mod shutdown;
mod sink;
mod source;

/// Every message allocates and frees its strings (keys, rows, outbox payloads)
/// on several threads; with glibc's malloc that was a fifth of the job's CPU
/// (`perf`, issue 7), with mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc advises transparent huge pages on its arenas, so the kernel
/// commits (and zeroes) 2 MiB at a page's first touch: the job's memory is
/// freed and touched again at every commit, and with huge pages its peak RSS
/// was 30-40 MiB higher on the 100 000-listing replay (file and Kafka, `-w 2`)
/// and 27 MiB on the 1M-listing one, for no CPU it saved (`clear_page_erms`
/// was 13 % of its samples). The flag holds for the whole process, also where
/// the system's THP setting is `always`.
fn no_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "conscope",
    version,
    about = "Exactly-once ticket-price stream processor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the job: Kafka -> timely dataflow -> PostgreSQL + alerts topic.
    Run(job::RunArgs),
    /// Mock producer: realistic events, listings and price walks.
    Produce(produce::ProduceArgs),
    /// Downstream alert consumer: prints notifications, optionally posts to a webhook.
    Alerts(alerts::AlertsArgs),
    /// Notifier: delivers alerts to the channels their routes name, exactly once.
    Notify(notify::NotifyArgs),
    /// Manage notification channels.
    Channels(notify::cli::ChannelsArgs),
    /// Manage notification routes (which alerts go to which channel).
    Routes(notify::cli::RoutesArgs),
    /// Manage alert rules.
    Rules(rules::RulesArgs),
    /// List the input messages quarantined because PostgreSQL refused their
    /// data, or release those quarantined by mistake.
    Quarantine(quarantine::QuarantineArgs),
    /// Web dashboard: events, get-in prices, price-history charts, live
    /// alerts, alert rules (writes need --token).
    Dashboard(dashboard::DashboardArgs),
    /// Retention of price_history: drop whole months before a date.
    History(history::HistoryArgs),
    /// Apply database migrations.
    Migrate {
        #[command(flatten)]
        db: config::DbArgs,
    },
}

fn main() -> std::process::ExitCode {
    let huge_pages = no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONSCOPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")),
        )
        // stderr, around a progress bar when one is drawn.
        .with_writer(progress::LogWriter)
        // Colours only for a person at a terminal: piped logs stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(error) = huge_pages {
        tracing::debug!(%error, "transparent huge pages stay on");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => shutdown::Shutdown::on_signals(
            "finishing the commit in progress and publishing what is committed",
        )
        .and_then(|shutdown| job::run(args, shutdown)),
        Command::Produce(args) => produce::run(args),
        Command::Alerts(args) => alerts::run(args),
        Command::Notify(args) => notify::main(args),
        Command::Channels(args) => notify::cli::channels(args),
        Command::Routes(args) => notify::cli::routes(args),
        Command::Rules(args) => rules::run(args),
        Command::Quarantine(args) => quarantine::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::History(args) => history::run(args),
        Command::Migrate { db } => sink::parts::migrate_command(&db),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("conscope: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
