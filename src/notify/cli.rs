//! `conscope channels add|list|test|disable|enable` and `conscope routes
//! add|list|remove` (SPEC §6): manage where alerts go. Input is validated
//! before the database is touched (errors name the flag); `channels test`
//! sends a sample alert through the real channel and prints its answer.
//!
//! Touches the database named by `--database-url` (migrations first, so a fresh
//! database works) and, for `channels test`, the channel. Secrets are read only
//! by `channels test`, from the environment, and never printed.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::alert::decode;
use super::channels::{Outcome, Payload, Sender};
use super::message::compose;
use super::store::{self, Channel};
use super::ReachArgs;
use crate::config::DbArgs;
use crate::db;
use conscope::text::printable;

#[derive(Args)]
pub struct ChannelsArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: ChannelsCommand,
}

#[derive(Subcommand)]
enum ChannelsCommand {
    /// Add a channel; prints its id.
    Add {
        /// A unique name (1-64 characters).
        #[arg(long, env = "CONSCOPE_CHANNEL_NAME")]
        name: String,
        /// webhook, slack, discord, telegram, ntfy or email.
        #[arg(long, env = "CONSCOPE_CHANNEL_KIND")]
        kind: String,
        /// A URL (webhook, slack, discord, ntfy topic), a chat id (telegram) or an
        /// address (email). `{secret}` in a URL is replaced by the secret.
        // Telegram group chat ids are negative.
        #[arg(long, env = "CONSCOPE_CHANNEL_TARGET", allow_hyphen_values = true)]
        target: String,
        /// The NAME of the notifier's environment variable holding the secret
        /// (webhook signing key, bot token, ntfy token, SMTP password).
        #[arg(long, env = "CONSCOPE_CHANNEL_SECRET_ENV")]
        secret_env: Option<String>,
        /// Single messages per hour; the rest of the hour goes as one digest.
        #[arg(long, env = "CONSCOPE_CHANNEL_MAX_PER_HOUR")]
        max_per_hour: Option<i64>,
    },
    /// List every channel.
    List,
    /// Send a sample alert to a channel and print its answer.
    Test {
        /// The channel's id or name.
        channel: String,
        #[command(flatten)]
        reach: ReachArgs,
    },
    /// Stop sending to a channel (its routes stay).
    Disable { channel: String },
    /// Send to a disabled channel again.
    Enable { channel: String },
}

#[derive(Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Route alerts to a channel; prints the route id.
    Add {
        /// The channel's id or name.
        #[arg(long, env = "CONSCOPE_ROUTE_CHANNEL")]
        channel: String,
        /// Alert kinds, comma-separated (default: every kind).
        #[arg(long, env = "CONSCOPE_ROUTE_KINDS")]
        kinds: Option<String>,
        /// Only this event_id's alerts.
        #[arg(long, env = "CONSCOPE_ROUTE_EVENT")]
        event: Option<String>,
        /// Only this rule's alerts.
        #[arg(long, env = "CONSCOPE_ROUTE_RULE")]
        rule: Option<i64>,
    },
    /// List the routes.
    List {
        /// Include inactive routes.
        #[arg(long)]
        all: bool,
    },
    /// Remove a route.
    Remove { route: i64 },
}

/// The sample `channels test` sends (a listing drop on a made-up event).
const SAMPLE: &str = r#"{"alert_id":"conscope-test","kind":"listing_drop","event_id":"conscope-test-event",
    "event_name":"conscope test alert","venue":"Nowhere Hall","event_date":"2030-01-01T20:00:00Z",
    "section":"Floor A","row":"3","seat":"12","source":"test","rule_id":null,"max_price":null,
    "old_price":"250.00","new_price":"199.00","currency":"USD","observed_at":"2030-01-01T00:00:00Z"}"#;

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn channels(args: ChannelsArgs) -> anyhow::Result<()> {
    let new = match &args.command {
        ChannelsCommand::Add {
            name,
            kind,
            target,
            secret_env,
            max_per_hour,
        } => Some(store::validate_channel(
            name,
            kind,
            target,
            secret_env.as_deref(),
            *max_per_hour,
        )?),
        _ => None,
    };
    let settings = match &args.command {
        ChannelsCommand::Test { reach, .. } => Some(reach.settings()?),
        _ => None,
    };
    let runtime = crate::runtime::current_thread()?;
    let url = &args.db.database_url;
    runtime.block_on(db::migrate(url))?;
    let client = runtime.block_on(db::connect(url))?;
    match args.command {
        ChannelsCommand::Add { .. } => {
            let Some(new) = new else {
                bail!("internal error: add without a validated channel")
            };
            let id = runtime.block_on(store::insert_channel(&client, &new))?;
            println!("{id}");
            eprintln!("added channel #{id} {:?} ({})", new.name, new.kind.as_str());
        }
        ChannelsCommand::List => {
            let channels = runtime
                .block_on(store::channels(&client))
                .context("cannot read notify_channels")?;
            if channels.is_empty() {
                println!("no channels");
                return Ok(());
            }
            let mut rows = vec![["ID", "NAME", "KIND", "TARGET", "SECRET ENV", "MAX/H", "ACTIVE"]
                .map(str::to_owned)
                .to_vec()];
            for c in channels {
                rows.push(vec![
                    c.channel_id.to_string(),
                    printable(&c.name),
                    c.kind.as_str().to_owned(),
                    printable(&c.target),
                    c.secret_env.unwrap_or_else(|| "-".into()),
                    c.max_per_hour.map_or_else(|| "-".into(), |n| n.to_string()),
                    if c.active { "yes" } else { "no" }.to_owned(),
                ]);
            }
            print!("{}", table(rows));
        }
        ChannelsCommand::Test { channel, .. } => {
            let channel = runtime.block_on(store::channel(&client, &channel))?;
            let Some(settings) = settings else {
                bail!("internal error: test without settings")
            };
            let alert = decode(SAMPLE.as_bytes()).map_err(|e| anyhow::anyhow!("sample alert: {e}"))?;
            let message = compose(&alert, settings.dashboard_url.as_deref());
            let name = channel.name.clone();
            let sender = Sender::new(channel, settings);
            match sender.send(&Payload::One(&alert), &message, &alert.alert_id) {
                Outcome::Accepted(answer) => println!("{name}: accepted: {answer}"),
                Outcome::Transient { reason, retry_after } => {
                    let after = retry_after
                        .map(|d| format!(" (retry after {d:?})"))
                        .unwrap_or_default();
                    bail!("{name}: failed, transient (the notifier would retry): {reason}{after}");
                }
                Outcome::Definite(reason) => {
                    bail!("{name}: refused (the notifier would record it as failed): {reason}")
                }
            }
        }
        ChannelsCommand::Disable { channel } => set_active(&runtime, &client, &channel, false)?,
        ChannelsCommand::Enable { channel } => set_active(&runtime, &client, &channel, true)?,
    }
    Ok(())
}

fn set_active(
    runtime: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    key: &str,
    active: bool,
) -> anyhow::Result<()> {
    let channel: Channel = runtime.block_on(store::channel(client, key))?;
    let changed = runtime.block_on(store::set_channel_active(client, channel.channel_id, active))?;
    let state = if active { "enabled" } else { "disabled" };
    if changed {
        println!("channel #{} {:?} {state}", channel.channel_id, channel.name);
    } else {
        println!(
            "channel #{} {:?} was already {state}",
            channel.channel_id, channel.name
        );
    }
    Ok(())
}

pub fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    let runtime = crate::runtime::current_thread()?;
    let url = &args.db.database_url;
    // Validate what needs no database first.
    if let RoutesCommand::Add {
        kinds, event, rule, ..
    } = &args.command
    {
        store::validate_route(0, kinds.as_deref(), event.as_deref(), *rule)?;
    }
    runtime.block_on(db::migrate(url))?;
    let client = runtime.block_on(db::connect(url))?;
    match args.command {
        RoutesCommand::Add {
            channel,
            kinds,
            event,
            rule,
        } => {
            let channel = runtime.block_on(store::channel(&client, &channel))?;
            let route = store::validate_route(channel.channel_id, kinds.as_deref(), event.as_deref(), rule)?;
            let id = runtime.block_on(store::insert_route(&client, &route))?;
            println!("{id}");
            eprintln!("added route #{id} to channel {:?}", channel.name);
        }
        RoutesCommand::List { all } => {
            let routes = runtime.block_on(store::routes(&client, all))?;
            let channels = runtime.block_on(store::channels(&client))?;
            if routes.is_empty() {
                println!("no routes");
                return Ok(());
            }
            let mut rows = vec![["ID", "CHANNEL", "KINDS", "EVENT", "RULE", "ACTIVE"]
                .map(str::to_owned)
                .to_vec()];
            for r in routes {
                let name = channels
                    .iter()
                    .find(|c| c.channel_id == r.channel_id)
                    .map_or_else(|| r.channel_id.to_string(), |c| printable(&c.name));
                rows.push(vec![
                    r.route_id.to_string(),
                    name,
                    r.kinds.map_or_else(|| "all".into(), |k| k.join(",")),
                    r.event_id.map_or_else(|| "all".into(), |e| printable(&e)),
                    r.rule_id.map_or_else(|| "any".into(), |id| id.to_string()),
                    if r.active { "yes" } else { "no" }.to_owned(),
                ]);
            }
            print!("{}", table(rows));
        }
        RoutesCommand::Remove { route } => {
            if runtime.block_on(store::remove_route(&client, route))? {
                println!("route #{route} removed");
            } else {
                bail!("no route {route}");
            }
        }
    }
    Ok(())
}
