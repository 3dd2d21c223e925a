//! The notifier's tables (SPEC §3): `notify_channels`, `notify_routes` and
//! `notify_deliveries`: validation of new channels and routes, and every SQL
//! statement that reads or writes them. The CLI (`channels`, `routes`), the
//! notifier and the dashboard all go through here; every value reaches SQL as
//! a parameter.
//!
//! Touches the database it is handed, nothing else. Secrets are never read
//! here: a channel stores only the *name* of the environment variable that
//! holds its secret.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// SPEC §3's channel kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Webhook,
    Slack,
    Discord,
    Telegram,
    Ntfy,
    Email,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 6] = [
        ChannelKind::Webhook,
        ChannelKind::Slack,
        ChannelKind::Discord,
        ChannelKind::Telegram,
        ChannelKind::Ntfy,
        ChannelKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Discord => "discord",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Ntfy => "ntfy",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(text: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// What `target` holds for this kind, for error messages and help.
    pub fn target_means(self) -> &'static str {
        match self {
            ChannelKind::Webhook | ChannelKind::Slack | ChannelKind::Discord => "an http:// or https:// URL",
            ChannelKind::Ntfy => "the topic's http:// or https:// URL",
            ChannelKind::Telegram => "a chat id (an integer, or @channelname)",
            ChannelKind::Email => "an e-mail address",
        }
    }
}

/// A channel as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub channel_id: i64,
    pub name: String,
    pub kind: ChannelKind,
    pub target: String,
    pub secret_env: Option<String>,
    pub max_per_hour: Option<i32>,
    pub active: bool,
}

/// A channel as validated, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChannel {
    pub name: String,
    pub kind: ChannelKind,
    pub target: String,
    pub secret_env: Option<String>,
    pub max_per_hour: Option<i32>,
}

/// A route as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub route_id: i64,
    pub channel_id: i64,
    pub kinds: Option<Vec<String>>,
    pub event_id: Option<String>,
    pub rule_id: Option<i64>,
    pub active: bool,
}

/// A route as validated, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoute {
    pub channel_id: i64,
    pub kinds: Option<Vec<String>>,
    pub event_id: Option<String>,
    pub rule_id: Option<i64>,
}

/// A field of a channel or route that cannot be stored; `problem` reads after
/// the flag's name (`--target must be …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {problem}")]
pub struct Invalid {
    pub flag: &'static str,
    pub problem: String,
}

fn invalid(flag: &'static str, problem: impl Into<String>) -> Invalid {
    Invalid {
        flag,
        problem: problem.into(),
    }
}

/// Longest channel name and target accepted.
const MAX_NAME_CHARS: usize = 64;
const MAX_TARGET_CHARS: usize = 2048;

/// Checks a new channel; every error names its flag. Nothing is touched.
pub fn validate_channel(
    name: &str,
    kind: &str,
    target: &str,
    secret_env: Option<&str>,
    max_per_hour: Option<i64>,
) -> Result<NewChannel, Invalid> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(invalid(
            "--name",
            format!("must be 1-{MAX_NAME_CHARS} printable characters"),
        ));
    }
    let Some(kind) = ChannelKind::parse(kind.trim()) else {
        let known: Vec<&str> = ChannelKind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(invalid("--kind", format!("must be one of {}", known.join(", "))));
    };
    let target = target.trim();
    let bad_target = || {
        invalid(
            "--target",
            format!("must be {} for a {} channel", kind.target_means(), kind.as_str()),
        )
    };
    if target.is_empty() || target.chars().count() > MAX_TARGET_CHARS || target.chars().any(char::is_control)
    {
        return Err(bad_target());
    }
    let ok = match kind {
        ChannelKind::Webhook | ChannelKind::Slack | ChannelKind::Discord | ChannelKind::Ntfy => {
            is_http_url(target)
        }
        ChannelKind::Telegram => {
            let digits = target.strip_prefix('-').unwrap_or(target);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                || target.strip_prefix('@').is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
        }
        ChannelKind::Email => is_address(target),
    };
    if !ok {
        return Err(bad_target());
    }
    let secret_env = match secret_env.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(env) => {
            let valid = env.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && env.len() <= 128;
            if !valid {
                return Err(invalid(
                    "--secret-env",
                    "must be the NAME of an environment variable (letters, digits, _), never the secret itself",
                ));
            }
            Some(env.to_owned())
        }
    };
    if kind == ChannelKind::Telegram && secret_env.is_none() {
        return Err(invalid(
            "--secret-env",
            "is required for a telegram channel: the variable holding the bot token",
        ));
    }
    let max_per_hour = match max_per_hour {
        None => None,
        Some(n) if (1..=1_000_000).contains(&n) => Some(n as i32),
        Some(_) => return Err(invalid("--max-per-hour", "must be between 1 and 1000000")),
    };
    Ok(NewChannel {
        name: name.to_owned(),
        kind,
        target: target.to_owned(),
        secret_env,
        max_per_hour,
    })
}

fn is_http_url(text: &str) -> bool {
    let Some(rest) = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty() && !text.chars().any(char::is_whitespace)
}

fn is_address(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

/// Checks a new route; `kinds` is a comma-separated list (empty = every kind).
pub fn validate_route(
    channel_id: i64,
    kinds: Option<&str>,
    event_id: Option<&str>,
    rule_id: Option<i64>,
) -> Result<NewRoute, Invalid> {
    let kinds = match kinds.map(str::trim).filter(|k| !k.is_empty()) {
        None => None,
        Some(list) => {
            let mut seen = HashSet::new();
            let mut kinds = Vec::new();
            for kind in list.split(',').map(str::trim) {
                let ok = !kind.is_empty()
                    && kind.len() <= 64
                    && kind
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(invalid(
                        "--kinds",
                        "must be alert kinds separated by commas (lower-case letters, digits, _), e.g. listing_drop,rule_match",
                    ));
                }
                if seen.insert(kind.to_owned()) {
                    kinds.push(kind.to_owned());
                }
            }
            Some(kinds)
        }
    };
    let event_id = match event_id.map(str::trim).filter(|e| !e.is_empty()) {
        None => None,
        Some(event) => {
            if event.chars().count() > conscope_dataflows::parse::MAX_EVENT_ID_CHARS || event.contains('\0') {
                return Err(invalid("--event", "must be an event_id of 1-128 characters"));
            }
            Some(event.to_owned())
        }
    };
    if rule_id.is_some_and(|id| id <= 0) {
        return Err(invalid("--rule", "must be a rule id (a positive integer)"));
    }
    Ok(NewRoute {
        channel_id,
        kinds,
        event_id,
        rule_id,
    })
}

/// Why a channel or route could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a channel named {0:?} already exists")]
    DuplicateName(String),
    #[error("no channel {0}")]
    NoSuchChannel(String),
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
}

pub async fn insert_channel(client: &Client, channel: &NewChannel) -> Result<i64, StoreError> {
    let result = client
        .query_one(
            "INSERT INTO notify_channels (name, kind, target, secret_env, max_per_hour)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING channel_id",
            &[
                &channel.name,
                &channel.kind.as_str(),
                &channel.target,
                &channel.secret_env,
                &channel.max_per_hour,
            ],
        )
        .await;
    match result {
        Ok(row) => Ok(row.try_get(0)?),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            Err(StoreError::DuplicateName(channel.name.clone()))
        }
        Err(error) => Err(error.into()),
    }
}

fn channel_from(row: &tokio_postgres::Row) -> Result<Channel, tokio_postgres::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(Channel {
        channel_id: row.try_get("channel_id")?,
        name: row.try_get("name")?,
        // The table's CHECK keeps kinds to the known ones.
        kind: ChannelKind::parse(&kind).unwrap_or(ChannelKind::Webhook),
        target: row.try_get("target")?,
        secret_env: row.try_get("secret_env")?,
        max_per_hour: row.try_get("max_per_hour")?,
        active: row.try_get("active")?,
    })
}

/// Every channel (active or not), by id.
pub async fn channels(client: &Client) -> Result<Vec<Channel>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT channel_id, name, kind, target, secret_env, max_per_hour, active
             FROM notify_channels ORDER BY channel_id",
            &[],
        )
        .await?;
    rows.iter().map(channel_from).collect()
}

/// A channel by id, or by name when `key` is not a number.
pub async fn channel(client: &Client, key: &str) -> Result<Channel, StoreError> {
    let id: Option<i64> = key.trim().parse().ok();
    let row = client
        .query_opt(
            "SELECT channel_id, name, kind, target, secret_env, max_per_hour, active
             FROM notify_channels WHERE channel_id = $1 OR ($1 IS NULL AND name = $2)",
            &[&id, &key.trim()],
        )
        .await?;
    match row {
        Some(row) => Ok(channel_from(&row)?),
        None => Err(StoreError::NoSuchChannel(key.to_owned())),
    }
}

/// Sets a channel's `active`; false when it already was so.
pub async fn set_channel_active(client: &Client, channel_id: i64, active: bool) -> Result<bool, StoreError> {
    let changed = client
        .execute(
            "UPDATE notify_channels SET active = $2 WHERE channel_id = $1 AND active <> $2",
            &[&channel_id, &active],
        )
        .await?;
    Ok(changed > 0)
}

pub async fn insert_route(client: &Client, route: &NewRoute) -> Result<i64, StoreError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM notify_channels WHERE channel_id = $1",
            &[&route.channel_id],
        )
        .await?
        .is_some();
    if !exists {
        return Err(StoreError::NoSuchChannel(route.channel_id.to_string()));
    }
    let row = client
        .query_one(
            "INSERT INTO notify_routes (channel_id, kinds, event_id, rule_id)
             VALUES ($1, $2, $3, $4) RETURNING route_id",
            &[&route.channel_id, &route.kinds, &route.event_id, &route.rule_id],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The routes (the active ones only unless `all`), by id.
pub async fn routes(client: &Client, all: bool) -> Result<Vec<Route>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT route_id, channel_id, kinds, event_id, rule_id, active
             FROM notify_routes WHERE active OR $1 ORDER BY route_id",
            &[&all],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Route {
                route_id: row.try_get("route_id")?,
                channel_id: row.try_get("channel_id")?,
                kinds: row.try_get("kinds")?,
                event_id: row.try_get("event_id")?,
                rule_id: row.try_get("rule_id")?,
                active: row.try_get("active")?,
            })
        })
        .collect()
}

/// Removes a route; false when there was none. Its deliveries stay: they are
/// per channel, not per route.
pub async fn remove_route(client: &Client, route_id: i64) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .execute("DELETE FROM notify_routes WHERE route_id = $1", &[&route_id])
        .await?
        > 0)
}

/// A delivery's final state (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Failed,
    Digested,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Digested => "digested",
        }
    }
}

/// One row of `notify_deliveries`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub alert_id: String,
    pub channel_id: i64,
    pub status: Status,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: DateTime<Utc>,
}

/// Stores `rows` in one transaction. A row already there stays as it is: a
/// (alert, channel) is final once.
pub async fn insert_deliveries(client: &mut Client, rows: &[Delivery]) -> Result<(), tokio_postgres::Error> {
    let alert_ids: Vec<&str> = rows.iter().map(|r| r.alert_id.as_str()).collect();
    let channel_ids: Vec<i64> = rows.iter().map(|r| r.channel_id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.sent_at).collect();
    client
        .execute(
            "INSERT INTO notify_deliveries (alert_id, channel_id, status, attempts, last_error, sent_at)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::timestamptz[])
             ON CONFLICT (alert_id, channel_id) DO NOTHING",
            &[&alert_ids, &channel_ids, &statuses, &attempts, &errors, &times],
        )
        .await?;
    Ok(())
}

/// The (alert, channel) pairs among `alert_ids` that already have a row.
pub async fn delivered(
    client: &Client,
    alert_ids: &[&str],
) -> Result<HashSet<(String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT alert_id, channel_id FROM notify_deliveries WHERE alert_id = ANY($1)",
            &[&alert_ids],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Single messages (`sent`) per channel since `since`: what the rate cap has
/// already spent of the current hour when the notifier starts.
pub async fn sent_since(
    client: &Client,
    since: DateTime<Utc>,
) -> Result<Vec<(i64, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT channel_id, count(*) FROM notify_deliveries
             WHERE status = 'sent' AND sent_at >= $1 GROUP BY channel_id",
            &[&since],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// A delivery with its channel's name, for the dashboard.
#[derive(Debug, Clone)]
pub struct DeliveryLine {
    pub alert_id: String,
    pub channel: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: DateTime<Utc>,
}

pub async fn deliveries_of(
    client: &Client,
    alert_id: &str,
) -> Result<Vec<DeliveryLine>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT d.alert_id, c.name, c.kind, d.status, d.attempts, d.last_error, d.sent_at
             FROM notify_deliveries d JOIN notify_channels c USING (channel_id)
             WHERE d.alert_id = $1 ORDER BY c.name",
            &[&alert_id],
        )
        .await?;
    rows.iter().map(delivery_line).collect()
}

/// The newest `limit` deliveries, all channels.
pub async fn recent_deliveries(
    client: &Client,
    limit: i64,
) -> Result<Vec<DeliveryLine>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT d.alert_id, c.name, c.kind, d.status, d.attempts, d.last_error, d.sent_at
             FROM notify_deliveries d JOIN notify_channels c USING (channel_id)
             ORDER BY d.sent_at DESC, d.alert_id LIMIT $1",
            &[&limit],
        )
        .await?;
    rows.iter().map(delivery_line).collect()
}

fn delivery_line(row: &tokio_postgres::Row) -> Result<DeliveryLine, tokio_postgres::Error> {
    Ok(DeliveryLine {
        alert_id: row.try_get(0)?,
        channel: row.try_get(1)?,
        kind: row.try_get(2)?,
        status: row.try_get(3)?,
        attempts: row.try_get(4)?,
        last_error: row.try_get(5)?,
        sent_at: row.try_get(6)?,
    })
}

/// Deliveries per channel and status: (channel_id, status, count).
pub async fn delivery_counts(client: &Client) -> Result<Vec<(i64, String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT channel_id, status, count(*) FROM notify_deliveries GROUP BY channel_id, status",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_validated_field_by_field() {
        let ok = validate_channel(
            "ops",
            "slack",
            "https://hooks.example/T/B/x",
            Some("SLACK_SECRET"),
            Some(60),
        )
        .unwrap();
        assert_eq!(ok.kind, ChannelKind::Slack);
        assert_eq!(ok.max_per_hour, Some(60));
        let flag = |r: Result<NewChannel, Invalid>| r.unwrap_err().flag;
        assert_eq!(
            flag(validate_channel("", "slack", "https://x", None, None)),
            "--name"
        );
        assert_eq!(
            flag(validate_channel("a", "sms", "https://x", None, None)),
            "--kind"
        );
        assert_eq!(
            flag(validate_channel("a", "webhook", "ftp://x", None, None)),
            "--target"
        );
        assert_eq!(
            flag(validate_channel("a", "webhook", "https://", None, None)),
            "--target"
        );
        assert_eq!(
            flag(validate_channel("a", "email", "nobody", None, None)),
            "--target"
        );
        assert_eq!(
            flag(validate_channel("a", "telegram", "12ab", Some("T"), None)),
            "--target"
        );
        assert_eq!(
            flag(validate_channel("a", "telegram", "-100123", None, None)),
            "--secret-env"
        );
        assert_eq!(
            flag(validate_channel(
                "a",
                "webhook",
                "http://x",
                Some("s3cr3t value!"),
                None
            )),
            "--secret-env"
        );
        assert_eq!(
            flag(validate_channel("a", "webhook", "http://x", None, Some(0))),
            "--max-per-hour"
        );
        assert!(validate_channel("a", "telegram", "@my_channel", Some("TG"), None).is_ok());
        assert!(validate_channel("a", "email", "ops@example.com", None, None).is_ok());
        // The error never echoes what was given as a secret.
        let error = validate_channel("a", "webhook", "http://x", Some("hunter2 pw"), None).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn routes_are_validated() {
        let route = validate_route(
            1,
            Some("rule_match, listing_drop,rule_match"),
            Some(" ev "),
            Some(3),
        )
        .unwrap();
        assert_eq!(
            route.kinds,
            Some(vec!["rule_match".to_owned(), "listing_drop".to_owned()])
        );
        assert_eq!(route.event_id.as_deref(), Some("ev"));
        assert_eq!(validate_route(1, Some(""), None, None).unwrap().kinds, None);
        assert_eq!(
            validate_route(1, Some("Drop!"), None, None).unwrap_err().flag,
            "--kinds"
        );
        assert_eq!(validate_route(1, None, None, Some(0)).unwrap_err().flag, "--rule");
        let long = "e".repeat(129);
        assert_eq!(
            validate_route(1, None, Some(&long), None).unwrap_err().flag,
            "--event"
        );
    }
}
