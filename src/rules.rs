//! `conscope rules add|list|disable|enable`: manage the alert rules of SPEC §2
//! and §2b, every kind (`alert_rules`, SPEC §3).
//!
//! Touches the database named by `--database-url`: applies the migrations first
//! (idempotent, so it works on a fresh database), then inserts, lists or
//! deactivates rules. Every value reaches SQL as a parameter. Input is validated
//! before the database is touched, with errors that name the offending field.
//!
//! [`validate_kind`], [`insert`], [`list`] and [`set_active`] are the one
//! implementation of rule management: the dashboard's rule pages call them too.
//!
//! A running job picks up rule changes by itself (it polls `alert_rules` every
//! `--rules-poll-ms`); nothing here talks to the job.

use std::fmt::Write as _;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use conscope_dataflows::parse::{price_cents, PriceProblem, MAX_EVENT_ID_CHARS, MAX_SECTION_CHARS};
use rust_decimal::Decimal;

use crate::config::{redact_url, DbArgs};
use crate::db;
use conscope::text::{money, printable};

/// Largest accepted `--max-price` (SPEC §1: prices are ≤ 1000000).
const MAX_PRICE_LIMIT: i64 = 1_000_000;

#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: RulesCommand,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Add a rule. Prints the new rule id. Kinds (SPEC §2b):
    /// max_price (--max-price, optional --rearm-pct): the lowest available
    /// price in scope drops to or below --max-price;
    /// new_low (optional --window-days, default 30, and --max-price): the
    /// lowest price in scope goes below every value it held in the window;
    /// back_in_stock (optional --max-price): listings in scope become available
    /// again; deal (--deal-pct): a listing at least that % below its section's
    /// median. Every kind takes --cooldown.
    Add {
        /// The event_id the rule watches (1-128 characters).
        #[arg(long, env = "CONSCOPE_RULE_EVENT")]
        event: String,
        /// Only this section (1-64 characters); omit to watch the whole event.
        #[arg(long, env = "CONSCOPE_RULE_SECTION")]
        section: Option<String>,
        /// Currency of the prices watched: 3 upper-case letters.
        #[arg(long, env = "CONSCOPE_RULE_CURRENCY", default_value = "USD")]
        currency: String,
        /// max_price, new_low, back_in_stock or deal.
        #[arg(long, env = "CONSCOPE_RULE_KIND", default_value = "max_price")]
        kind: String,
        /// Fire at or below this price: a decimal > 0 and ≤ 1000000, at most 2
        /// decimal places. Required by max_price; optional for new_low and
        /// back_in_stock; not taken by deal.
        #[arg(long, env = "CONSCOPE_RULE_MAX_PRICE", allow_negative_numbers = true)]
        max_price: Option<String>,
        /// max_price only: re-arm once the lowest price rises this many percent
        /// above --max-price (0-100, at most 2 decimals; default 0).
        #[arg(long, env = "CONSCOPE_RULE_REARM_PCT", allow_negative_numbers = true)]
        rearm_pct: Option<String>,
        /// new_low only: the window in days of event time (1-365, default 30).
        #[arg(long, env = "CONSCOPE_RULE_WINDOW_DAYS", allow_negative_numbers = true)]
        window_days: Option<String>,
        /// deal only: how many percent below its section's median a listing
        /// must be (1-90).
        #[arg(long, env = "CONSCOPE_RULE_DEAL_PCT", allow_negative_numbers = true)]
        deal_pct: Option<String>,
        /// Stay silent this long (event time) after each alert: 90s, 10m, 2h,
        /// 1d; at most 365d (default 0: none).
        #[arg(long, env = "CONSCOPE_RULE_COOLDOWN", allow_negative_numbers = true)]
        cooldown: Option<String>,
    },
    /// List the active rules (all rules with --all).
    List {
        /// Include disabled rules.
        #[arg(long, env = "CONSCOPE_RULES_ALL")]
        all: bool,
    },
    /// Deactivate a rule (it stays listed with --all).
    Disable {
        /// The rule id printed by `rules add`.
        id: i64,
    },
    /// Reactivate a disabled rule. It starts afresh, as a new rule does: it fires
    /// at once if its scope is already at or below its price.
    Enable {
        /// The rule id printed by `rules add`.
        id: i64,
    },
}

/// The rule kinds of SPEC §2b, as `alert_rules.kind` spells them.
pub const KINDS: [&str; 4] = ["max_price", "new_low", "back_in_stock", "deal"];

/// What a rule watches for and its kind's parameters, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// One of [`KINDS`].
    pub kind: String,
    pub max_price: Option<Decimal>,
    /// Percent; 0 unless a max_price rule has hysteresis.
    pub rearm_pct: Decimal,
    pub window_days: Option<i32>,
    pub deal_pct: Option<i32>,
    /// Whole seconds of event time.
    pub cooldown_secs: i64,
}

impl RuleSpec {
    /// What the rule fires on, for people: `≤ 199.99 USD (re-arms above +5%)`,
    /// `lowest in 30 d`, `back in stock ≤ 100.00 USD`, `≥ 20% below median`.
    pub fn describe(&self, currency: &str) -> String {
        let under = |price: Option<Decimal>| {
            price
                .map(|p| format!(" ≤ {} {currency}", money(p)))
                .unwrap_or_default()
        };
        let mut text = match self.kind.as_str() {
            "max_price" => {
                let mut text = under(self.max_price).trim_start().to_owned();
                if !self.rearm_pct.is_zero() {
                    let _ = write!(text, " (re-arms above +{}%)", self.rearm_pct.normalize());
                }
                text
            }
            "new_low" => format!(
                "lowest in {} d{}",
                self.window_days.unwrap_or(DEFAULT_WINDOW_DAYS),
                under(self.max_price)
            ),
            "back_in_stock" => format!("back in stock{}", under(self.max_price)),
            "deal" => format!("≥ {}% below section median", self.deal_pct.unwrap_or_default()),
            other => other.to_owned(),
        };
        if self.cooldown_secs > 0 {
            let _ = write!(text, ", cooldown {}", duration_text(self.cooldown_secs));
        }
        text
    }
}

/// A rule as validated, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub event_id: String,
    pub section: Option<String>,
    pub currency: String,
    pub spec: RuleSpec,
}

/// A stored rule, as `rules list` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub rule_id: i64,
    pub event_id: String,
    pub section: Option<String>,
    pub currency: String,
    pub spec: RuleSpec,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// `new_low`'s window when none is given (SPEC §2b).
pub const DEFAULT_WINDOW_DAYS: i32 = 30;

/// Longest accepted cooldown (migration 0011 refuses longer ones).
const MAX_COOLDOWN_SECS: i64 = 365 * 86_400;

/// The field of a rule a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleField {
    Event,
    Section,
    Currency,
    Kind,
    MaxPrice,
    RearmPct,
    WindowDays,
    DealPct,
    Cooldown,
}

impl RuleField {
    /// The `rules add` flag that sets this field.
    pub fn flag(self) -> &'static str {
        match self {
            RuleField::Event => "--event",
            RuleField::Section => "--section",
            RuleField::Currency => "--currency",
            RuleField::Kind => "--kind",
            RuleField::MaxPrice => "--max-price",
            RuleField::RearmPct => "--rearm-pct",
            RuleField::WindowDays => "--window-days",
            RuleField::DealPct => "--deal-pct",
            RuleField::Cooldown => "--cooldown",
        }
    }

    /// The field's name for people filling in a form.
    pub fn label(self) -> &'static str {
        match self {
            RuleField::Event => "Event",
            RuleField::Section => "Section",
            RuleField::Currency => "Currency",
            RuleField::Kind => "Kind",
            RuleField::MaxPrice => "Max price",
            RuleField::RearmPct => "Re-arm %",
            RuleField::WindowDays => "Window (days)",
            RuleField::DealPct => "Deal %",
            RuleField::Cooldown => "Cooldown",
        }
    }
}

/// A rule's kind and parameters as typed (flags or form fields), unchecked;
/// `None` or blank = not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct KindInput<'a> {
    pub kind: &'a str,
    pub max_price: Option<&'a str>,
    pub rearm_pct: Option<&'a str>,
    pub window_days: Option<&'a str>,
    pub deal_pct: Option<&'a str>,
    pub cooldown: Option<&'a str>,
}

/// A rule that cannot be stored; `problem` reads after the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {problem}", field.flag())]
pub struct InvalidRule {
    pub field: RuleField,
    pub problem: String,
}

fn invalid(field: RuleField, problem: String) -> InvalidRule {
    InvalidRule { field, problem }
}

/// What `set_active` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Changed,
    AlreadySo,
    NoSuchRule,
}

pub fn run(args: RulesArgs) -> anyhow::Result<()> {
    // Validate everything before connecting: a bad rule never touches the database.
    let new_rule = match &args.command {
        RulesCommand::Add {
            event,
            section,
            currency,
            kind,
            max_price,
            rearm_pct,
            window_days,
            deal_pct,
            cooldown,
        } => Some(validate_kind(
            event,
            section.as_deref(),
            currency,
            &KindInput {
                kind,
                max_price: max_price.as_deref(),
                rearm_pct: rearm_pct.as_deref(),
                window_days: window_days.as_deref(),
                deal_pct: deal_pct.as_deref(),
                cooldown: cooldown.as_deref(),
            },
        )?),
        _ => None,
    };
    let runtime = crate::runtime::current_thread().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let url = &args.db.database_url;
        db::migrate(url).await?;
        let client = db::connect(url).await?;
        match args.command {
            RulesCommand::Add { .. } => {
                let Some(rule) = new_rule else {
                    bail!("internal error: add without a validated rule");
                };
                let rule_id = insert(&client, &rule)
                    .await
                    .with_context(|| format!("cannot insert the rule into {}", redact_url(url)))?;
                // Bare id on stdout for scripts; the description on stderr for people.
                println!("{rule_id}");
                eprintln!(
                    "added rule #{rule_id}: {} · {} · {} {}",
                    rule.event_id,
                    rule.section.as_deref().unwrap_or("all sections"),
                    rule.spec.kind,
                    rule.spec.describe(&rule.currency)
                );
                Ok(())
            }
            RulesCommand::List { all } => print_list(&client, all).await,
            RulesCommand::Disable { id } => print_set_active(&client, id, false).await,
            RulesCommand::Enable { id } => print_set_active(&client, id, true).await,
        }
    })
}

/// Stores a validated rule; returns its id. A running job picks it up at its
/// next poll.
pub async fn insert(client: &tokio_postgres::Client, rule: &NewRule) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO alert_rules (event_id, section, currency, kind, max_price, rearm_pct,
                                      window_days, deal_pct, cooldown)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::bigint * interval '1 second')
             RETURNING rule_id",
            &[
                &rule.event_id,
                &rule.section,
                &rule.currency,
                &rule.spec.kind,
                &rule.spec.max_price,
                &rule.spec.rearm_pct,
                &rule.spec.window_days,
                &rule.spec.deal_pct,
                &rule.spec.cooldown_secs,
            ],
        )
        .await?;
    row.try_get(0)
}

/// The active rules (every rule with `all`), by id.
pub async fn list(client: &tokio_postgres::Client, all: bool) -> Result<Vec<Rule>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rule_id, event_id, section, currency, kind, max_price, rearm_pct, window_days,
                    deal_pct, extract(epoch FROM cooldown)::bigint AS cooldown_secs, active, created_at
             FROM alert_rules
             WHERE active OR $1
             ORDER BY rule_id",
            &[&all],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Rule {
                rule_id: row.try_get("rule_id")?,
                event_id: row.try_get("event_id")?,
                section: row.try_get("section")?,
                currency: row.try_get("currency")?,
                spec: RuleSpec {
                    kind: row.try_get("kind")?,
                    max_price: row.try_get("max_price")?,
                    rearm_pct: row.try_get("rearm_pct")?,
                    window_days: row.try_get("window_days")?,
                    deal_pct: row.try_get("deal_pct")?,
                    cooldown_secs: row.try_get("cooldown_secs")?,
                },
                active: row.try_get("active")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

async fn print_list(client: &tokio_postgres::Client, all: bool) -> anyhow::Result<()> {
    let rules = list(client, all).await.context("cannot read alert_rules")?;
    if rules.is_empty() {
        println!(
            "{}",
            if all {
                "no rules"
            } else {
                "no active rules (see --all)"
            }
        );
        return Ok(());
    }
    let mut table = vec![[
        "ID".to_owned(),
        "EVENT".to_owned(),
        "SECTION".to_owned(),
        "CURRENCY".to_owned(),
        "MAX PRICE".to_owned(),
        "KIND".to_owned(),
        "FIRES ON".to_owned(),
        "ACTIVE".to_owned(),
        "CREATED".to_owned(),
    ]];
    for rule in rules {
        table.push([
            rule.rule_id.to_string(),
            printable(&rule.event_id),
            rule.section.as_deref().map_or_else(|| "*".to_owned(), printable),
            rule.currency.clone(),
            rule.spec.max_price.map_or_else(|| "-".to_owned(), money),
            rule.spec.kind.clone(),
            rule.spec.describe(&rule.currency),
            if rule.active { "yes" } else { "no" }.to_owned(),
            rule.created_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        ]);
    }
    print!("{}", render_table(&table));
    Ok(())
}

/// `rules disable` and `rules enable`. Enabling starts a new generation of the
/// rule (migration 0004_rule_generation), so no arming state from before is
/// ever restored. One UPDATE, so two concurrent enables bump the generation
/// once: the second waits for the first's row lock, then sees the rule active.
pub async fn set_active(
    client: &tokio_postgres::Client,
    id: i64,
    active: bool,
) -> Result<Activation, tokio_postgres::Error> {
    let changed = client
        .execute(
            "UPDATE alert_rules
             SET active = $2, generation = generation + CASE WHEN $2 THEN 1 ELSE 0 END
             WHERE rule_id = $1 AND active <> $2",
            &[&id, &active],
        )
        .await?;
    if changed > 0 {
        return Ok(Activation::Changed);
    }
    // Saying it twice is not an error, and does not wake the job.
    let exists = client
        .query_opt("SELECT 1 FROM alert_rules WHERE rule_id = $1", &[&id])
        .await?
        .is_some();
    Ok(if exists {
        Activation::AlreadySo
    } else {
        Activation::NoSuchRule
    })
}

async fn print_set_active(client: &tokio_postgres::Client, id: i64, active: bool) -> anyhow::Result<()> {
    let (verb, past) = if active {
        ("enable", "enabled")
    } else {
        ("disable", "disabled")
    };
    match set_active(client, id, active)
        .await
        .with_context(|| format!("cannot {verb} the rule"))?
    {
        Activation::Changed => println!("{past} rule #{id}"),
        Activation::AlreadySo => println!("rule #{id} was already {past}"),
        Activation::NoSuchRule => bail!("no rule with id {id} (see `conscope rules list --all`)"),
    }
    Ok(())
}

/// Checks every field of a new rule of any kind; the error names the field
/// at fault, and a parameter the kind does not take is an error, not
/// silently ignored.
pub fn validate_kind(
    event: &str,
    section: Option<&str>,
    currency: &str,
    input: &KindInput<'_>,
) -> Result<NewRule, InvalidRule> {
    let event_chars = event.chars().count();
    if event_chars == 0 {
        return Err(invalid(RuleField::Event, "must not be empty".into()));
    }
    // The input parser refuses NUL (PostgreSQL text cannot hold it), so no
    // event could ever match, and the INSERT would fail.
    if event.contains('\0') {
        return Err(invalid(
            RuleField::Event,
            "must not contain a NUL character".into(),
        ));
    }
    if event_chars > MAX_EVENT_ID_CHARS {
        return Err(invalid(
            RuleField::Event,
            format!("must be at most {MAX_EVENT_ID_CHARS} characters, got {event_chars}"),
        ));
    }
    if let Some(section) = section {
        let section_chars = section.chars().count();
        if section_chars == 0 {
            return Err(invalid(
                RuleField::Section,
                "must not be empty (omit it to watch the whole event)".into(),
            ));
        }
        if section.contains('\0') {
            return Err(invalid(
                RuleField::Section,
                "must not contain a NUL character".into(),
            ));
        }
        if section_chars > MAX_SECTION_CHARS {
            return Err(invalid(
                RuleField::Section,
                format!("must be at most {MAX_SECTION_CHARS} characters, got {section_chars}"),
            ));
        }
    }
    if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(invalid(
            RuleField::Currency,
            format!("must be 3 upper-case letters such as USD, got {currency:?}"),
        ));
    }
    let spec = validate_spec(input)?;
    Ok(NewRule {
        event_id: event.to_owned(),
        section: section.map(str::to_owned),
        currency: currency.to_owned(),
        spec,
    })
}

/// The kind and its parameters of [`validate_kind`].
fn validate_spec(input: &KindInput<'_>) -> Result<RuleSpec, InvalidRule> {
    let kind = input.kind.trim();
    if !KINDS.contains(&kind) {
        return Err(invalid(
            RuleField::Kind,
            format!("must be one of {}, got {:?}", KINDS.join(", "), input.kind),
        ));
    }
    // Each parameter with the kinds that take it.
    let takes: [(RuleField, Option<&str>, &[&str]); 4] = [
        (
            RuleField::MaxPrice,
            input.max_price,
            &["max_price", "new_low", "back_in_stock"],
        ),
        (RuleField::RearmPct, input.rearm_pct, &["max_price"]),
        (RuleField::WindowDays, input.window_days, &["new_low"]),
        (RuleField::DealPct, input.deal_pct, &["deal"]),
    ];
    for (field, value, kinds) in takes {
        if given(value).is_some() && !kinds.contains(&kind) {
            return Err(invalid(
                field,
                format!("does not apply to a {kind} rule (only to {})", kinds.join(", ")),
            ));
        }
    }
    let max_price = given(input.max_price)
        .map(parse_max_price)
        .transpose()
        .map_err(|problem| invalid(RuleField::MaxPrice, problem))?;
    if kind == "max_price" && max_price.is_none() {
        return Err(invalid(
            RuleField::MaxPrice,
            "is required by a max_price rule".into(),
        ));
    }
    let rearm_pct = match given(input.rearm_pct) {
        None => Decimal::ZERO,
        Some(text) => parse_rearm_pct(text).map_err(|problem| invalid(RuleField::RearmPct, problem))?,
    };
    let window_days = given(input.window_days)
        .map(|text| parse_whole(text, 1, 365))
        .transpose()
        .map_err(|problem| invalid(RuleField::WindowDays, problem))?;
    let deal_pct = given(input.deal_pct)
        .map(|text| parse_whole(text, 1, 90))
        .transpose()
        .map_err(|problem| invalid(RuleField::DealPct, problem))?;
    if kind == "deal" && deal_pct.is_none() {
        return Err(invalid(RuleField::DealPct, "is required by a deal rule".into()));
    }
    let cooldown_secs = match given(input.cooldown) {
        None => 0,
        Some(text) => parse_cooldown(text).map_err(|problem| invalid(RuleField::Cooldown, problem))?,
    };
    Ok(RuleSpec {
        kind: kind.to_owned(),
        max_price,
        rearm_pct,
        window_days: window_days.or((kind == "new_low").then_some(DEFAULT_WINDOW_DAYS)),
        deal_pct,
        cooldown_secs,
    })
}

/// A parameter as typed: `None` when absent or blank.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|text| !text.is_empty())
}

/// A whole number in `low..=high`.
fn parse_whole(text: &str, low: i32, high: i32) -> Result<i32, String> {
    let number = text
        .parse::<i32>()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    match number {
        Some(n) if (low..=high).contains(&n) => Ok(n),
        Some(n) => Err(format!("must be between {low} and {high}, got {n}")),
        None => Err(format!(
            "must be a whole number from {low} to {high}, got {text:?}"
        )),
    }
}

/// A percentage from 0 to 100 with at most 2 decimal places.
fn parse_rearm_pct(text: &str) -> Result<Decimal, String> {
    let plain = text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && !text.starts_with('.')
        && !text.ends_with('.');
    let value = plain.then(|| text.parse::<Decimal>().ok()).flatten();
    match value {
        None => Err(format!("must be a percentage such as 5 or 2.5, got {text:?}")),
        Some(value) if value.normalize().scale() > 2 => {
            Err(format!("must have at most 2 decimal places, got {text}"))
        }
        Some(value) if value < Decimal::ZERO || value > Decimal::from(100) => {
            Err(format!("must be between 0 and 100, got {text}"))
        }
        Some(value) => Ok(value.round_dp(2)),
    }
}

/// A duration such as `90s`, `10m`, `2h` or `1d` (or `0`), in seconds.
pub fn parse_cooldown(text: &str) -> Result<i64, String> {
    let bad = || format!("must be a duration such as 90s, 10m, 2h or 1d, got {text:?}");
    if text == "0" {
        return Ok(0);
    }
    let split = text.len().saturating_sub(1);
    let (digits, unit) = (
        text.get(..split).ok_or_else(bad)?,
        text.get(split..).ok_or_else(bad)?,
    );
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let seconds = digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|secs| *secs <= MAX_COOLDOWN_SECS)
        .ok_or_else(|| format!("must be at most 365d, got {text}"))?;
    Ok(seconds)
}

/// Seconds as the shortest exact `--cooldown` text: `90s`, `10m`, `2h`, `1d`.
pub fn duration_text(seconds: i64) -> String {
    for (unit, scale) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds % scale == 0 {
            return format!("{}{unit}", seconds / scale);
        }
    }
    format!("{seconds}s")
}

/// Parses a rule's max price exactly, by the rules of the input's `price` (SPEC §1:
/// greater than 0, ≤ 1000000, at most 2 decimal places; trailing zeros do not
/// count: `10.500` is 10.50), as a plain decimal (`199`, `199.5`, `199.99`: no
/// exponent). Returns it with scale 2; the error reads after the field's name.
fn parse_max_price(text: &str) -> Result<Decimal, String> {
    let trimmed = text.trim();
    let plain = !trimmed.is_empty()
        && trimmed
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'.' || byte == b'-');
    let cents = if plain {
        price_cents(trimmed)
    } else {
        Err(PriceProblem::NotANumber)
    };
    cents
        .map(|cents| Decimal::new(cents.0, 2))
        .map_err(|problem| match problem {
            PriceProblem::NotANumber => {
                format!("must be a decimal number such as 199.99, got {text:?}")
            }
            PriceProblem::NotPositive => format!("must be greater than 0, got {text}"),
            PriceProblem::TooManyDecimals => {
                format!("must have at most 2 decimal places, got {text}")
            }
            PriceProblem::TooLarge => format!("must be at most {MAX_PRICE_LIMIT}, got {text}"),
        })
}

/// Left-aligned columns separated by two spaces; the price column right-aligned.
fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            // Column 4 is MAX PRICE: numbers read best right-aligned.
            if column == 4 {
                let _ = write!(line, "{cell:>width$}");
            } else {
                let _ = write!(line, "{cell:<width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `max_price` rule without hysteresis or cooldown: the rule of SPEC §2.
    fn validate(
        event: &str,
        section: Option<&str>,
        currency: &str,
        max_price: &str,
    ) -> Result<NewRule, InvalidRule> {
        validate_kind(
            event,
            section,
            currency,
            &KindInput {
                kind: "max_price",
                max_price: Some(max_price),
                ..KindInput::default()
            },
        )
    }

    fn price(text: &str) -> Result<String, String> {
        validate("e", None, "USD", text)
            .map(|rule| rule.spec.max_price.map(|p| p.to_string()).unwrap_or_default())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn max_price_is_exact_and_bounded() {
        assert_eq!(price("200").as_deref(), Ok("200.00"));
        assert_eq!(price("199.9").as_deref(), Ok("199.90"));
        assert_eq!(price("0.01").as_deref(), Ok("0.01"));
        assert_eq!(price("10.500").as_deref(), Ok("10.50"));
        assert_eq!(price("1000000").as_deref(), Ok("1000000.00"));
        assert_eq!(price("1000000.00").as_deref(), Ok("1000000.00"));
        for (bad, word) in [
            ("0", "greater than 0"),
            ("0.00", "greater than 0"),
            ("-5", "greater than 0"),
            ("12.345", "2 decimal places"),
            ("1000000.01", "at most 1000000"),
            ("99999999999999999999999999999999", "at most 1000000"),
            ("abc", "decimal number"),
            ("1e3", "decimal number"),
            ("", "required"),
            (".5", "decimal number"),
            ("5.", "decimal number"),
            ("1_000", "decimal number"),
            ("NaN", "decimal number"),
        ] {
            let error = price(bad).expect_err(bad);
            assert!(error.contains(word), "{bad:?}: {error}");
            assert!(error.contains("--max-price"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn rule_fields_are_validated() {
        let rule = validate("taylor-2026", Some("Floor A"), "USD", "199.99").unwrap();
        assert_eq!(rule.event_id, "taylor-2026");
        assert_eq!(rule.section.as_deref(), Some("Floor A"));
        assert_eq!(
            rule.spec.max_price.map(|p| p.to_string()).as_deref(),
            Some("199.99")
        );
        let rule = validate("e", None, "EUR", "5").unwrap();
        assert_eq!(rule.section, None);
        assert_eq!(
            rule.spec.max_price.map(|p| p.to_string()).as_deref(),
            Some("5.00")
        );
        for (event, section, currency, word) in [
            ("", None, "USD", "--event"),
            ("a\0b", None, "USD", "--event"),
            ("e", Some("a\0"), "USD", "--section"),
            ("e", Some(""), "USD", "--section"),
            ("e", None, "usd", "--currency"),
            ("e", None, "US", "--currency"),
            ("e", None, "USDX", "--currency"),
            ("e", None, "U1D", "--currency"),
        ] {
            let error = validate(event, section, currency, "5")
                .expect_err(word)
                .to_string();
            assert!(
                error.contains(word),
                "{event:?} {section:?} {currency:?}: {error}"
            );
        }
        assert!(validate(&"x".repeat(129), None, "USD", "5").is_err());
        assert!(validate(&"x".repeat(128), None, "USD", "5").is_ok());
        assert!(validate("e", Some(&"s".repeat(65)), "USD", "5").is_err());
        assert!(validate("e", Some(&"é".repeat(64)), "USD", "5").is_ok());
    }

    fn kind(input: KindInput<'_>) -> Result<RuleSpec, String> {
        validate_kind("e", None, "USD", &input)
            .map(|rule| rule.spec)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn every_kind_takes_its_flags_and_refuses_the_others() {
        let spec = kind(KindInput {
            kind: "new_low",
            cooldown: Some("2h"),
            ..KindInput::default()
        })
        .unwrap();
        assert_eq!(
            (spec.window_days, spec.max_price, spec.cooldown_secs),
            (Some(30), None, 7200)
        );
        let spec = kind(KindInput {
            kind: "max_price",
            max_price: Some("10"),
            rearm_pct: Some("2.5"),
            ..KindInput::default()
        })
        .unwrap();
        assert_eq!(spec.rearm_pct.to_string(), "2.5");
        assert_eq!(spec.describe("USD"), "≤ 10.00 USD (re-arms above +2.5%)");
        let spec = kind(KindInput {
            kind: "deal",
            deal_pct: Some("20"),
            cooldown: Some("90s"),
            ..KindInput::default()
        })
        .unwrap();
        assert_eq!(spec.describe("USD"), "≥ 20% below section median, cooldown 90s");
        assert!(kind(KindInput {
            kind: "back_in_stock",
            ..KindInput::default()
        })
        .is_ok());
        for (input, words) in [
            (
                KindInput {
                    kind: "cheap",
                    ..KindInput::default()
                },
                ["--kind", "one of"],
            ),
            (
                KindInput {
                    kind: "max_price",
                    ..KindInput::default()
                },
                ["--max-price", "required"],
            ),
            (
                KindInput {
                    kind: "deal",
                    ..KindInput::default()
                },
                ["--deal-pct", "required"],
            ),
            (
                KindInput {
                    kind: "deal",
                    deal_pct: Some("20"),
                    max_price: Some("5"),
                    ..KindInput::default()
                },
                ["--max-price", "does not apply to a deal rule"],
            ),
            (
                KindInput {
                    kind: "new_low",
                    rearm_pct: Some("5"),
                    ..KindInput::default()
                },
                ["--rearm-pct", "does not apply"],
            ),
            (
                KindInput {
                    kind: "max_price",
                    max_price: Some("5"),
                    window_days: Some("3"),
                    ..KindInput::default()
                },
                ["--window-days", "does not apply"],
            ),
            (
                KindInput {
                    kind: "new_low",
                    window_days: Some("0"),
                    ..KindInput::default()
                },
                ["--window-days", "between 1 and 365"],
            ),
            (
                KindInput {
                    kind: "new_low",
                    window_days: Some("1.5"),
                    ..KindInput::default()
                },
                ["--window-days", "whole number"],
            ),
            (
                KindInput {
                    kind: "deal",
                    deal_pct: Some("91"),
                    ..KindInput::default()
                },
                ["--deal-pct", "between 1 and 90"],
            ),
            (
                KindInput {
                    kind: "max_price",
                    max_price: Some("5"),
                    rearm_pct: Some("101"),
                    ..KindInput::default()
                },
                ["--rearm-pct", "between 0 and 100"],
            ),
            (
                KindInput {
                    kind: "back_in_stock",
                    cooldown: Some("5 minutes"),
                    ..KindInput::default()
                },
                ["--cooldown", "90s, 10m"],
            ),
            (
                KindInput {
                    kind: "back_in_stock",
                    cooldown: Some("366d"),
                    ..KindInput::default()
                },
                ["--cooldown", "365d"],
            ),
        ] {
            let error = kind(input).expect_err(words[0]);
            for word in words {
                assert!(error.contains(word), "{input:?}: {error}");
            }
        }
    }

    #[test]
    fn cooldowns_parse_and_print_back() {
        for (text, seconds) in [
            ("0", 0),
            ("90s", 90),
            ("10m", 600),
            ("2h", 7200),
            ("1d", 86_400),
            ("365d", 31_536_000),
        ] {
            assert_eq!(parse_cooldown(text), Ok(seconds), "{text}");
        }
        assert_eq!(duration_text(90), "90s");
        assert_eq!(duration_text(600), "10m");
        assert_eq!(duration_text(86_400), "1d");
        for bad in ["", "s", "10", "-5m", "1w", "1.5h", "h1", "ä"] {
            assert!(parse_cooldown(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn table_is_aligned() {
        let rows = [
            ["ID".to_owned(), "EVENT".to_owned(), "X".to_owned()],
            ["7".to_owned(), "taylör".to_owned(), "y".to_owned()],
        ];
        assert_eq!(render_table(&rows), "ID  EVENT   X\n7   taylör  y\n");
    }
}
