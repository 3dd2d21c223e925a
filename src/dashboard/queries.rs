//! Every SQL statement the dashboard reads with, and the rows they return.
//!
//! Reads `events`, `event_summary`, `section_summary`, `listings`,
//! `price_history` and `price_alerts`; writes nothing (rule writes go through
//! `crate::rules`). Every value reaches SQL as a parameter; the only text put
//! into a statement is fixed: the `ORDER BY` clauses of [`Sort`] and the
//! per-listing subqueries of [`last_at_or_before`].
//! Everything is bounded: lists have a `LIMIT`, the price history is streamed
//! row by row into [`History`] rather than collected, and stops at the
//! chart's row limit (`--chart-rows`).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use futures_util::{pin_mut, TryStreamExt};
use rust_decimal::Decimal;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row};

use super::history::{History, ListingKey, Observation};

/// An event with its summary per currency.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event: Event,
    pub prices: Vec<CurrencyLine>,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub event_name: String,
    pub venue: Option<String>,
    pub event_date: Option<DateTime<Utc>>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// One row of `event_summary`, with the get-in price 24 h of observations
/// before the event's latest one.
#[derive(Debug, Clone)]
pub struct CurrencyLine {
    pub currency: String,
    pub listings: i64,
    pub available: i64,
    pub get_in: Option<Decimal>,
    pub day_ago: Option<Decimal>,
}

#[derive(Debug, Clone)]
pub struct SectionLine {
    pub section: String,
    pub currency: String,
    pub available: i64,
    pub low_price: Option<Decimal>,
}

#[derive(Debug, Clone)]
pub struct Listing {
    pub section: String,
    pub row: String,
    pub seat: String,
    pub source: String,
    pub price: Decimal,
    pub currency: String,
    pub available: bool,
    pub observed_at: DateTime<Utc>,
    /// `(median − price) / median` in percent, against the lower median of
    /// the available prices of its section (and currency): the deal score of
    /// SPEC §2b. `None` when it is not available or its section has fewer than
    /// 5 available listings (no deal can be judged there).
    pub deal_score: Option<Decimal>,
}

#[derive(Debug, Clone)]
pub struct Alert {
    pub alert_id: String,
    pub kind: String,
    pub event_id: String,
    pub event_name: String,
    pub section: String,
    pub row: String,
    pub seat: String,
    pub source: String,
    pub rule_id: Option<i64>,
    pub old_price: Option<Decimal>,
    pub new_price: Decimal,
    pub currency: String,
    pub observed_at: DateTime<Utc>,
}

/// How the events list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Soonest event first, undated last.
    #[default]
    Date,
    Name,
    /// Cheapest get-in price first.
    Price,
    /// Most available listings first.
    Available,
    /// Most recently observed first.
    Updated,
}

impl Sort {
    pub const ALL: [Sort; 5] = [
        Sort::Date,
        Sort::Name,
        Sort::Price,
        Sort::Available,
        Sort::Updated,
    ];

    pub fn parse(text: &str) -> Option<Sort> {
        Sort::ALL.into_iter().find(|sort| sort.key() == text)
    }

    pub fn key(self) -> &'static str {
        match self {
            Sort::Date => "date",
            Sort::Name => "name",
            Sort::Price => "price",
            Sort::Available => "available",
            Sort::Updated => "updated",
        }
    }

    /// A fixed clause: never built from request text.
    fn order_by(self) -> &'static str {
        match self {
            Sort::Date => "e.event_date ASC NULLS LAST, e.event_id",
            Sort::Name => "lower(e.event_name), e.event_id",
            Sort::Price => {
                "(SELECT min(s.get_in_price) FROM event_summary s WHERE s.event_id = e.event_id) ASC NULLS LAST, e.event_id"
            }
            Sort::Available => {
                "(SELECT sum(s.available) FROM event_summary s WHERE s.event_id = e.event_id) DESC NULLS LAST, e.event_id"
            }
            Sort::Updated => "e.last_seen DESC, e.event_id",
        }
    }
}

/// `text` as an ILIKE pattern that matches it anywhere, literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn event_from(row: &Row) -> Result<Event, Error> {
    Ok(Event {
        event_id: row.try_get("event_id")?,
        event_name: row.try_get("event_name")?,
        venue: row.try_get("venue")?,
        event_date: row.try_get("event_date")?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
    })
}

const EVENT_COLUMNS: &str = "e.event_id, e.event_name, e.venue, e.event_date, e.first_seen, e.last_seen";

/// One page of the events list matching `search` (in name, venue or id), and
/// how many events match in all.
pub async fn events(
    client: &Client,
    search: &str,
    sort: Sort,
    offset: i64,
    limit: i64,
) -> Result<(Vec<EventRow>, i64), Error> {
    let pattern = contains_pattern(search.trim());
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, count(*) OVER () AS total
         FROM events e
         WHERE e.event_name ILIKE $1 OR e.venue ILIKE $1 OR e.event_id ILIKE $1
         ORDER BY {}
         LIMIT $2 OFFSET $3",
        sort.order_by()
    );
    let rows = client.query(&sql, &[&pattern, &limit, &offset]).await?;
    let mut total = 0;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        total = row.try_get("total")?;
        events.push(event_from(row)?);
    }
    if events.is_empty() && offset > 0 {
        // Past the last page: still say how many there are.
        let row = client
            .query_one(
                "SELECT count(*) FROM events e WHERE e.event_name ILIKE $1 OR e.venue ILIKE $1 OR e.event_id ILIKE $1",
                &[&pattern],
            )
            .await?;
        total = row.try_get(0)?;
    }
    let mut prices = currency_lines(client, &events).await?;
    let rows = events
        .into_iter()
        .map(|event| EventRow {
            prices: prices.remove(&event.event_id).unwrap_or_default(),
            event,
        })
        .collect();
    Ok((rows, total))
}

/// The summaries of `events` per currency, each with its get-in price as of
/// the event's latest observation minus 24 h: per listing its last
/// observation at or before then, and the lowest available price among them.
pub async fn currency_lines(
    client: &Client,
    events: &[Event],
) -> Result<HashMap<String, Vec<CurrencyLine>>, Error> {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.last_seen - Duration::hours(24)).collect();
    let sql = format!(
        "WITH p AS (SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS p(event_id, at)),
             past AS (
                 SELECT l.event_id, h.currency, min(h.price) FILTER (WHERE h.available) AS day_ago
                 FROM p JOIN listings l ON l.event_id = p.event_id
                 CROSS JOIN LATERAL ({LAST_AT_OR_BEFORE}) h
                 GROUP BY l.event_id, h.currency
             )
             SELECT s.event_id, s.currency::text AS currency, s.listings, s.available, s.get_in_price, past.day_ago
             FROM event_summary s
             LEFT JOIN past ON past.event_id = s.event_id AND past.currency = s.currency
             WHERE s.event_id = ANY($1)
             ORDER BY s.event_id, s.listings DESC, s.currency",
        LAST_AT_OR_BEFORE = last_at_or_before("p.at")
    );
    let rows = client.query(&sql, &[&ids, &ats]).await?;
    let mut lines: HashMap<String, Vec<CurrencyLine>> = HashMap::new();
    for row in &rows {
        let event_id: String = row.try_get("event_id")?;
        lines.entry(event_id).or_default().push(CurrencyLine {
            currency: row.try_get("currency")?,
            listings: row.try_get("listings")?,
            available: row.try_get("available")?,
            get_in: row.try_get("get_in_price")?,
            day_ago: row.try_get("day_ago")?,
        });
    }
    Ok(lines)
}

pub async fn event(client: &Client, event_id: &str) -> Result<Option<Event>, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1"),
            &[&event_id],
        )
        .await?;
    row.as_ref().map(event_from).transpose()
}

/// The event's sections, most available listings first.
pub async fn sections(client: &Client, event_id: &str) -> Result<Vec<SectionLine>, Error> {
    let rows = client
        .query(
            "SELECT section, currency::text AS currency, available, low_price
             FROM section_summary WHERE event_id = $1
             ORDER BY available DESC, low_price ASC NULLS LAST, section, currency
             LIMIT 500",
            &[&event_id],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(SectionLine {
                section: row.try_get("section")?,
                currency: row.try_get("currency")?,
                available: row.try_get("available")?,
                low_price: row.try_get("low_price")?,
            })
        })
        .collect()
}

/// The event's current listings, available and cheapest first, at most
/// `limit`, each with its deal score. `percentile_disc(0.5)` is the lower
/// median: the ⌈n/2⌉-th price, as the job judges deals.
pub async fn listings(client: &Client, event_id: &str, limit: i64) -> Result<Vec<Listing>, Error> {
    let rows = client
        .query(
            "WITH medians AS (
                 SELECT section, currency, count(*) AS n,
                        percentile_disc(0.5) WITHIN GROUP (ORDER BY price) AS median
                 FROM listings WHERE event_id = $1 AND available
                 GROUP BY section, currency
             )
             SELECT l.section, l.\"row\", l.seat, l.source, l.price, l.currency::text AS currency,
                    l.available, l.observed_at,
                    CASE WHEN l.available AND m.n >= 5
                         THEN round((m.median - l.price) * 100 / m.median, 1) END AS deal_score
             FROM listings l
             LEFT JOIN medians m ON m.section = l.section AND m.currency = l.currency
             WHERE l.event_id = $1
             ORDER BY l.available DESC, l.currency, l.price, l.section, l.\"row\", l.seat, l.source
             LIMIT $2",
            &[&event_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Listing {
                section: row.try_get("section")?,
                row: row.try_get("row")?,
                seat: row.try_get("seat")?,
                source: row.try_get("source")?,
                price: row.try_get("price")?,
                currency: row.try_get("currency")?,
                available: row.try_get("available")?,
                observed_at: row.try_get("observed_at")?,
                deal_score: row.try_get("deal_score")?,
            })
        })
        .collect()
}

/// The lowest get-in price of `event` per currency while its clock (its
/// latest observation) was within the last 30 days: the lowest available
/// price each listing held in that time, its state 30 days ago included.
/// What a 30-day `new_low` rule on the whole event compares with.
pub async fn month_lows(client: &Client, event: &Event) -> Result<HashMap<String, Decimal>, Error> {
    let start = event.last_seen - Duration::days(30);
    let rows = client
        .query(
            &format!(
                "SELECT h.currency, min(h.price) AS low
                 FROM listings l CROSS JOIN LATERAL (
                     ({LAST_AT_OR_BEFORE})
                     UNION ALL
                     SELECT h.price, h.currency::text AS currency, h.available, h.observed_at
                     FROM price_history h WHERE {SAME_LISTING} AND h.observed_at > $2
                 ) h
                 WHERE l.event_id = $1 AND h.available
                 GROUP BY h.currency",
                LAST_AT_OR_BEFORE = last_at_or_before("$2")
            ),
            &[&event.event_id, &start],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("currency")?, row.try_get("low")?)))
        .collect()
}

/// The newest alerts (by the time of the observation that triggered them),
/// of one event or of all.
pub async fn alerts(client: &Client, event_id: Option<&str>, limit: i64) -> Result<Vec<Alert>, Error> {
    // Two statements, not one with `$1 IS NULL OR event_id = $1`: a generic
    // plan of that could use neither index (price_alerts_event, _recent).
    macro_rules! newest_alerts {
        ($filter:literal, $limit:literal) => {
            concat!(
                "SELECT a.alert_id, a.kind, a.event_id, coalesce(e.event_name, a.event_id) AS event_name,
                        a.section, a.\"row\", a.seat, a.source, a.rule_id, a.old_price, a.new_price,
                        a.currency::text AS currency, a.observed_at
                 FROM price_alerts a LEFT JOIN events e ON e.event_id = a.event_id ",
                $filter,
                " ORDER BY a.observed_at DESC, a.alert_id DESC LIMIT ",
                $limit
            )
        };
    }
    let rows = match event_id {
        Some(event_id) => {
            client
                .query(
                    newest_alerts!("WHERE a.event_id = $1", "$2"),
                    &[&event_id, &limit],
                )
                .await?
        }
        None => client.query(newest_alerts!("", "$1"), &[&limit]).await?,
    };
    rows.iter()
        .map(|row| {
            Ok(Alert {
                alert_id: row.try_get("alert_id")?,
                kind: row.try_get("kind")?,
                event_id: row.try_get("event_id")?,
                event_name: row.try_get("event_name")?,
                section: row.try_get("section")?,
                row: row.try_get("row")?,
                seat: row.try_get("seat")?,
                source: row.try_get("source")?,
                rule_id: row.try_get("rule_id")?,
                old_price: row.try_get("old_price")?,
                new_price: row.try_get("new_price")?,
                currency: row.try_get("currency")?,
                observed_at: row.try_get("observed_at")?,
            })
        })
        .collect()
}

/// Replays the event's price history into `history`: first each listing's
/// state as of `from` (its last observation at or before it; none when `from`
/// is `None`), then every observation after `from` up to `to`, in time order,
/// streamed, `max_rows` at most (then `history.truncated` says where it
/// stopped). Returns how many rows it read.
pub async fn replay_history(
    client: &Client,
    event_id: &str,
    from: Option<DateTime<Utc>>,
    to: DateTime<Utc>,
    max_rows: u64,
    history: &mut History,
) -> Result<u64, Error> {
    let mut read = 0u64;
    if let Some(from) = from {
        let params: [&(dyn ToSql + Sync); 2] = [&event_id, &from];
        let rows = client
            .query_raw(
                &format!(
                    "SELECT l.section, l.\"row\", l.seat, l.source, h.price, h.currency, h.available, h.observed_at
                     FROM listings l CROSS JOIN LATERAL ({}) h
                     WHERE l.event_id = $1",
                    last_at_or_before("$2")
                ),
                params,
            )
            .await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            if read >= max_rows {
                // Nothing of the window itself was read.
                history.truncated = Some(from);
                return Ok(read);
            }
            let (key, observation) = observation_from(&row)?;
            history.seed(key, observation);
            read += 1;
        }
    }
    history.start();
    let from = from.unwrap_or(DateTime::<Utc>::MIN_UTC);
    let params: [&(dyn ToSql + Sync); 3] = [&event_id, &from, &to];
    let rows = client
        .query_raw(
            &format!(
                "SELECT l.section, l.\"row\", l.seat, l.source, h.price, h.currency::text AS currency, h.available, h.observed_at
                 FROM listings l CROSS JOIN LATERAL (
                     SELECT h.price, h.currency, h.available, h.observed_at FROM price_history h
                     WHERE {SAME_LISTING} AND h.observed_at > $2 AND h.observed_at <= $3
                 ) h
                 WHERE l.event_id = $1
                 ORDER BY h.observed_at, l.section, l.\"row\", l.seat, l.source"
            ),
            params,
        )
        .await?;
    pin_mut!(rows);
    // A row past the limit is what says the window holds more.
    let mut last_at = from;
    while let Some(row) = rows.try_next().await? {
        if read >= max_rows {
            history.truncated = Some(last_at);
            break;
        }
        let (key, observation) = observation_from(&row)?;
        last_at = observation.observed_at;
        history.observe(key, observation);
        read += 1;
    }
    Ok(read)
}

fn observation_from(row: &Row) -> Result<(ListingKey, Observation), Error> {
    Ok((
        ListingKey {
            section: row.try_get("section")?,
            row: row.try_get("row")?,
            seat: row.try_get("seat")?,
            source: row.try_get("source")?,
        },
        Observation {
            price: row.try_get("price")?,
            currency: row.try_get("currency")?,
            available: row.try_get("available")?,
            observed_at: row.try_get("observed_at")?,
        },
    ))
}

/// `price_history` rows of the listing `l`: an equality on the whole primary
/// key prefix, so each lookup is one index probe.
const SAME_LISTING: &str = "h.event_id = l.event_id AND h.section = l.section AND h.\"row\" = l.\"row\" \
     AND h.seat = l.seat AND h.source = l.source";

/// A subquery for `CROSS JOIN LATERAL`: the last observation of listing `l`
/// at or before `at`. One index probe per listing (every listing with history
/// has its row in `listings`) rather than a scan of the event's whole history:
/// 10 ms against 3.7 s for 200 listings with 2 000 observations each, measured here.
fn last_at_or_before(at: &str) -> String {
    format!(
        "SELECT h.price, h.currency::text AS currency, h.available, h.observed_at FROM price_history h
         WHERE {SAME_LISTING} AND h.observed_at <= {at}
         ORDER BY h.observed_at DESC LIMIT 1"
    )
}

/// Whether the database answers.
pub async fn ping(client: &Client) -> Result<(), Error> {
    client.query_one("SELECT 1", &[]).await.map(|_| ())
}
