//! PostgreSQL connections and migrations.
//!
//! Touches the database named by `--database-url`: creates it when missing (local
//! dev stacks), applies `migrations/*.sql` in order, once each, recorded in
//! `schema_migrations`, never while parts of a split commit are left prepared
//! (`sink::parts::migrate`, which the job and `conscope migrate` call, ends
//! them first). Secrets in the URL are never logged.
//!
//! Also the decoders of the rows the job reads back (`events`, `listings`,
//! prices and currencies of `alert_rules`) and the stored input offsets
//! (`kafka_offsets`): one place for what a column means when read.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use conscope_dataflows::model::{
    Cents, Currency, EventRow, ListingKey, ListingRow, Micros, Position, Restore, Seat, Stamped,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tokio_postgres::{Client, NoTls, Row};

use crate::config::redact_url;

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
    (
        "0009_listings_hot",
        include_str!("../migrations/0009_listings_hot.sql"),
    ),
    (
        "0010_history_partitions",
        include_str!("../migrations/0010_history_partitions.sql"),
    ),
    (
        "0011_rule_kinds",
        include_str!("../migrations/0011_rule_kinds.sql"),
    ),
    (
        "0014_commit_writer",
        include_str!("../migrations/0014_commit_writer.sql"),
    ),
    ("0012_notify", include_str!("../migrations/0012_notify.sql")),
    (
        "0015_bytewise_keys",
        include_str!("../migrations/0015_bytewise_keys.sql"),
    ),
    (
        "0016_event_field_positions",
        include_str!("../migrations/0016_event_field_positions.sql"),
    ),
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
    let mut pending = Vec::new();
    for (name, sql) in MIGRATIONS {
        let done = client
            .query_opt("SELECT 1 FROM schema_migrations WHERE name = $1", &[name])
            .await?
            .is_some();
        if !done {
            pending.push((name, sql));
        }
    }
    if !pending.is_empty() {
        refuse_with_prepared_parts(&client).await?;
    }
    for (name, sql) in pending {
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

/// A migration may fill a new table from `listings` or alter a table: with
/// parts of a split commit still prepared (`sink::parts`) it would miss their
/// rows, or wait for their locks forever. `conscope run` and `conscope
/// migrate` end them before they migrate; any other command refuses.
async fn refuse_with_prepared_parts(client: &Client) -> anyhow::Result<()> {
    let parts: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, 'conscope-')",
            &[],
        )
        .await
        .context("cannot read pg_prepared_xacts")?
        .get(0);
    if parts > 0 {
        anyhow::bail!(
            "{parts} prepared part(s) of an interrupted conscope commit are pending in this database, and a \
             migration must not run before they are ended: `conscope run` or `conscope migrate` ends them \
             (committed or rolled back, as their commit decided), then migrates"
        );
    }
    Ok(())
}

pub fn micros(time: DateTime<Utc>) -> Micros {
    time.timestamp_micros()
}

pub fn cents(decimal: Decimal) -> anyhow::Result<Cents> {
    (decimal * Decimal::from(100))
        .trunc()
        .to_i64()
        .map(Cents)
        .with_context(|| format!("price {decimal} out of range"))
}

pub fn currency(text: &str) -> anyhow::Result<Currency> {
    Currency::parse(text.trim()).with_context(|| format!("bad currency {text:?} in the database"))
}

/// The event field `field` of an `events` row with its carrier (`field` and
/// its `_observed_at`, `_partition`, `_offset` columns). A field stored before
/// positions were has none: it counts as the lowest at its time.
fn stamped<V>(row: &Row, value: Option<V>, field: &str) -> anyhow::Result<Option<Stamped<V>>> {
    let at: Option<DateTime<Utc>> = row.try_get(format!("{field}_observed_at").as_str())?;
    let partition: Option<i32> = row.try_get(format!("{field}_partition").as_str())?;
    let offset: Option<i64> = row.try_get(format!("{field}_offset").as_str())?;
    Ok(match (value, at) {
        (Some(value), Some(at)) => Some(Stamped {
            value,
            observed_at: micros(at),
            position: partition
                .zip(offset)
                .map(|(partition, offset)| Position { partition, offset }),
        }),
        _ => None,
    })
}

/// An `events` row as restored state.
pub fn event_row(row: &Row) -> anyhow::Result<Restore> {
    let date: Option<DateTime<Utc>> = row.try_get("event_date")?;
    Ok(Restore::Event(EventRow {
        event_id: row.try_get("event_id")?,
        event_name: stamped(row, row.try_get("event_name")?, "event_name")?,
        venue: stamped(row, row.try_get("venue")?, "venue")?,
        event_date: stamped(row, date.map(micros), "event_date")?,
        first_seen: micros(row.try_get("first_seen")?),
        last_seen: micros(row.try_get("last_seen")?),
    }))
}

/// A `listings` row as restored state.
pub fn listing_row(row: &Row) -> anyhow::Result<Restore> {
    let currency_text: String = row.try_get("currency")?;
    Ok(Restore::Listing(ListingRow {
        listing: ListingKey {
            event_id: row.try_get("event_id")?,
            seat: Seat {
                section: row.try_get("section")?,
                row: row.try_get("row")?,
                seat: row.try_get("seat")?,
                source: row.try_get("source")?,
            },
        },
        price: cents(row.try_get("price")?)?,
        currency: currency(&currency_text)?,
        available: row.try_get("available")?,
        observed_at: micros(row.try_get("observed_at")?),
    }))
}

/// Offsets stored for `topic`: partition -> next offset.
pub async fn stored_offsets(client: &Client, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows = client
        .query(
            "SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1",
            &[&topic],
        )
        .await
        .context("cannot read stored offsets")?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
