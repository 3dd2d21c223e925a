//! Live alerts: one background task polls `price_alerts` for the newest
//! alerts every [`POLL`] and broadcasts the ones it has not seen, as JSON, to
//! every open `/alerts/stream` (server-sent events). One query per poll
//! however many browsers watch; at most [`MAX_STREAMS`] streams at once.
//!
//! "New" means: among the newest [`WINDOW`] alerts (the order the alerts page
//! shows) and not among them at the previous poll. More than [`WINDOW`] new
//! alerts within one poll show as the newest [`WINDOW`]; a reload shows all.
//! While no stream is open it polls every [`IDLE_POLL`] only; an alert the
//! page already rendered may then come again, and the script skips it by id.
//! Each message carries display strings only (escaped nowhere: the page's
//! script sets them as text, never as HTML).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, Notify, OwnedSemaphorePermit, Semaphore};

use super::format;
use super::html::Seg;
use super::pages::{alert_change, kind_text, place};
use super::queries::{self, Alert};

pub const POLL: Duration = Duration::from_secs(1);
/// The poll interval while nobody watches: the baseline stays fresh enough,
/// and an idle dashboard costs the database little.
pub const IDLE_POLL: Duration = Duration::from_secs(10);
pub const WINDOW: i64 = 100;
pub const MAX_STREAMS: usize = 64;

/// The broadcast side and the cap on streams.
#[derive(Clone)]
pub struct Live {
    sender: broadcast::Sender<Arc<str>>,
    streams: Arc<Semaphore>,
    /// Wakes an idle poller when a stream opens.
    wake: Arc<Notify>,
}

impl Live {
    /// Starts the poller on the current runtime.
    pub fn spawn(pool: deadpool_postgres::Pool) -> Live {
        let (sender, _) = broadcast::channel(256);
        let live = Live {
            sender: sender.clone(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            wake: Arc::new(Notify::new()),
        };
        tokio::spawn(poll(pool, sender, Arc::clone(&live.wake)));
        live
    }

    /// A new stream of alerts, or `None` when [`MAX_STREAMS`] are open.
    pub fn subscribe(&self) -> Option<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
        let permit = Arc::clone(&self.streams).try_acquire_owned().ok()?;
        let receiver = self.sender.subscribe();
        self.wake.notify_one();
        let stream = futures_util::stream::unfold((receiver, permit), next_event);
        Some(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
    }
}

async fn next_event(
    (mut receiver, permit): (broadcast::Receiver<Arc<str>>, OwnedSemaphorePermit),
) -> Option<(
    Result<Event, Infallible>,
    (broadcast::Receiver<Arc<str>>, OwnedSemaphorePermit),
)> {
    loop {
        match receiver.recv().await {
            Ok(json) => {
                let event = Event::default().event("alert").data(&*json);
                return Some((Ok(event), (receiver, permit)));
            }
            // A slow browser missed some: it goes on with the newest.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn poll(pool: deadpool_postgres::Pool, sender: broadcast::Sender<Arc<str>>, wake: Arc<Notify>) {
    let mut seen: Option<HashSet<String>> = None;
    let mut failing = false;
    loop {
        match newest(&pool).await {
            Ok(alerts) => {
                if failing {
                    tracing::info!("live alerts: database reachable again");
                    failing = false;
                }
                if let Some(seen) = &seen {
                    // Oldest first, so each lands on top of the one before.
                    for alert in alerts.iter().rev().filter(|a| !seen.contains(&a.alert_id)) {
                        // No receiver is not an error: nobody is watching.
                        let _ = sender.send(Arc::from(message(alert)));
                    }
                }
                seen = Some(alerts.into_iter().map(|a| a.alert_id).collect());
            }
            Err(error) => {
                if !failing {
                    tracing::warn!("live alerts: cannot read price_alerts: {error:#}");
                    failing = true;
                }
            }
        }
        if sender.receiver_count() > 0 {
            tokio::time::sleep(POLL).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

async fn newest(pool: &deadpool_postgres::Pool) -> anyhow::Result<Vec<Alert>> {
    let client = pool.get().await?;
    Ok(queries::alerts(&client, None, WINDOW).await?)
}

/// The JSON the page's script renders: display strings only.
pub fn message(alert: &Alert) -> String {
    let (change, trend) = alert_change(alert);
    serde_json::json!({
        "id": alert.alert_id,
        "kind": match alert.kind.as_str() {
            kind @ ("listing_drop" | "event_low" | "rule_match" | "new_low" | "back_in_stock" | "deal") => kind,
            _ => "other",
        },
        "kind_label": kind_text(alert),
        "event_href": format!("/events/{}", Seg(&alert.event_id)),
        "event_name": alert.event_name,
        "place": place(&alert.section, &alert.row, &alert.seat),
        "source": alert.source,
        "price": format::money(alert.new_price, &alert.currency),
        "change": change,
        "trend": match trend {
            format::Trend::Down => "down",
            format::Trend::Up => "up",
            format::Trend::Flat => "flat",
        },
        "at": format::short(alert.observed_at),
        "at_full": format::when(alert.observed_at),
    })
    .to_string()
}
