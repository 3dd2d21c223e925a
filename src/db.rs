//! PostgreSQL connections and migrations.
//!
//! Touches the database named by `--database-url`: creates it when missing (local
//! dev stacks), applies `migrations/*.sql` in order, once each, recorded in
//! `schema_migrations`. Secrets in the URL are never logged.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use crate::config::{redact_url, DbArgs};

/// The migrations, in order. Embedded so the binary alone can set up a database.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_core", include_str!("../migrations/0001_core.sql")),
    (
        "0002_outbox_parked",
        include_str!("../migrations/0002_outbox_parked.sql"),
    ),
    (
        "0003_outbox_partitions",
        include_str!("../migrations/0003_outbox_partitions.sql"),
    ),
    (
        "0004_rule_generation",
        include_str!("../migrations/0004_rule_generation.sql"),
    ),
    ("0005_summaries", include_str!("../migrations/0005_summaries.sql")),
    (
        "0006_history_without_fk_check",
        include_str!("../migrations/0006_history_without_fk_check.sql"),
    ),
    (
        "0007_quarantine",
        include_str!("../migrations/0007_quarantine.sql"),
    ),
    (
        "0008_recent_alerts",
        include_str!("../migrations/0008_recent_alerts.sql"),
    ),
    ("0012_notify", include_str!("../migrations/0012_notify.sql")),
];

/// Connects once; the connection task runs on the current tokio runtime.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Connects, waiting with backoff while PostgreSQL is unreachable (a service must
/// ride out a database restart), giving up after `patience`.
pub async fn connect_with_retry(url: &str, patience: Duration) -> anyhow::Result<Client> {
    with_patience(patience, || connect(url)).await
}

/// Runs `attempt` until it succeeds, waiting with backoff after each failure,
/// for `patience` at most: startup reads must ride out a database restart too.
/// The last failure is returned once patience runs out.
pub async fn with_patience<T, F, Fut>(patience: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() < patience => {
                tracing::warn!("{error:#}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Creates the database named in `url` when it does not exist, by connecting to
/// the `postgres` database of the same server.
async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let config: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("bad --database-url {}", redact_url(url)))?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
    tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // CREATE DATABASE takes no parameters: quote the identifier ourselves.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client.batch_execute(&format!("CREATE DATABASE {quoted}")).await {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE.
            Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(error) => return Err(error).context("CREATE DATABASE failed"),
        }
    }
    Ok(())
}

/// Applies every migration not applied yet, each in its own transaction. Safe to
/// run concurrently: an advisory lock serialises migrators.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    create_database_if_missing(url).await?;
    let mut client = connect(url).await?;
    client
        .batch_execute(
            "SET client_min_messages = warning;
             SELECT pg_advisory_lock(7263001);
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .context("cannot prepare schema_migrations")?;
    for (name, sql) in MIGRATIONS {
        let done = client
            .query_opt("SELECT 1 FROM schema_migrations WHERE name = $1", &[name])
            .await?
            .is_some();
        if done {
            continue;
        }
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(sql)
            .await
            .with_context(|| format!("migration {name} failed"))?;
        transaction
            .execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[name])
            .await?;
        transaction.commit().await?;
        tracing::info!(migration = name, "applied migration");
    }
    client.batch_execute("SELECT pg_advisory_unlock(7263001)").await?;
    Ok(())
}

/// `conscope migrate`.
pub fn migrate_blocking(db: &DbArgs) -> anyhow::Result<()> {
    let runtime = crate::runtime::current_thread()?;
    runtime.block_on(migrate(&db.database_url))?;
    println!("migrations applied to {}", redact_url(&db.database_url));
    Ok(())
}
