//! The notifier's PostgreSQL connection: one client on a current-thread runtime
//! per thread that needs one (the consumer loop, the ledger writer), connected
//! lazily and again after any error, with backoff: the database going away makes
//! the notifier wait, never skip or crash (SPEC §4). Gives up only on shutdown.
//!
//! Touches the database named by `--database-url`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio_postgres::Client;

use super::alert::{lookup_events, EventInfo};
use super::routes::Routing;
use super::store::{self, Delivery};
use crate::config::redact_url;
use crate::db;
use crate::shutdown::Shutdown;

/// Shutdown came while the database was away.
#[derive(Debug, thiserror::Error)]
#[error("stopped while waiting for PostgreSQL")]
pub struct Stopped;

pub struct Pg {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    shutdown: Shutdown,
}

impl Pg {
    pub fn new(url: &str, shutdown: Shutdown) -> std::io::Result<Pg> {
        Ok(Pg {
            url: url.to_owned(),
            runtime: crate::runtime::current_thread()?,
            client: None,
            shutdown,
        })
    }

    /// Runs `attempt` until it succeeds, reconnecting after each failure.
    fn retry<T>(
        &mut self,
        what: &str,
        mut attempt: impl FnMut(&mut Client, &tokio::runtime::Runtime) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, Stopped> {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.client.as_ref().is_none_or(Client::is_closed) {
                match self.runtime.block_on(db::connect(&self.url)) {
                    Ok(client) => self.client = Some(client),
                    Err(error) => {
                        tracing::warn!(database = %redact_url(&self.url), "{error:#}; retrying in {delay:?}")
                    }
                }
            }
            if let Some(client) = self.client.as_mut() {
                match attempt(client, &self.runtime) {
                    Ok(value) => return Ok(value),
                    Err(error) => {
                        tracing::warn!(%error, "{what} failed; retrying in {delay:?}");
                        self.client = None;
                    }
                }
            }
            if self.shutdown.is_triggered() {
                return Err(Stopped);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    pub fn routing(&mut self) -> Result<Routing, Stopped> {
        self.retry("reading channels and routes", |client, rt| {
            rt.block_on(async {
                Ok(Routing::new(
                    store::channels(client).await?,
                    store::routes(client, false).await?,
                ))
            })
        })
    }

    pub fn delivered(&mut self, alert_ids: &[&str]) -> Result<HashSet<(String, i64)>, Stopped> {
        self.retry("reading notify_deliveries", |client, rt| {
            rt.block_on(store::delivered(client, alert_ids))
        })
    }

    pub fn events(&mut self, event_ids: &[&str]) -> Result<HashMap<String, EventInfo>, Stopped> {
        self.retry("reading events", |client, rt| {
            rt.block_on(lookup_events(client, event_ids))
        })
    }

    pub fn sent_since(&mut self, since: chrono::DateTime<chrono::Utc>) -> Result<HashMap<i64, i64>, Stopped> {
        self.retry("counting this hour's messages", |client, rt| {
            rt.block_on(store::sent_since(client, since))
                .map(|rows| rows.into_iter().collect())
        })
    }

    pub fn insert_deliveries(&mut self, rows: &[Delivery]) -> Result<(), Stopped> {
        self.retry("writing notify_deliveries", |client, rt| {
            rt.block_on(store::insert_deliveries(client, rows))
        })
    }
}
