//! `conscope rules add|list|disable|enable`: manage the alert rules of SPEC §2
//! (`alert_rules`, SPEC §3).
//!
//! Touches the database named by `--database-url`: applies the migrations first
//! (idempotent, so it works on a fresh database), then inserts, lists or
//! deactivates rules. Every value reaches SQL as a parameter. Input is validated
//! before the database is touched, with errors that name the offending field.
//!
//! [`validate`], [`insert`], [`list`] and [`set_active`] are the one
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

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Add a rule: alert when the lowest available price in its scope drops to
    /// or below --max-price. Prints the new rule id.
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
        /// Fire at or below this price: a decimal > 0 and ≤ 1000000, at most 2 decimal places.
        #[arg(long, env = "CONSCOPE_RULE_MAX_PRICE", allow_negative_numbers = true)]
        max_price: String,
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

/// A rule as validated, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub event_id: String,
    pub section: Option<String>,
    pub currency: String,
    pub max_price: Decimal,
}

/// A stored rule, as `rules list` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub rule_id: i64,
    pub event_id: String,
    pub section: Option<String>,
    pub currency: String,
    pub max_price: Decimal,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// The field of a rule a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleField {
    Event,
    Section,
    Currency,
    MaxPrice,
}

impl RuleField {
    /// The `rules add` flag that sets this field.
    pub fn flag(self) -> &'static str {
        match self {
            RuleField::Event => "--event",
            RuleField::Section => "--section",
            RuleField::Currency => "--currency",
            RuleField::MaxPrice => "--max-price",
        }
    }

    /// The field's name for people filling in a form.
    pub fn label(self) -> &'static str {
        match self {
            RuleField::Event => "Event",
            RuleField::Section => "Section",
            RuleField::Currency => "Currency",
            RuleField::MaxPrice => "Max price",
        }
    }
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
            max_price,
        } => Some(validate(event, section.as_deref(), currency, max_price)?),
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
                    "added rule #{rule_id}: {} · {} · {} ≤ {}",
                    rule.event_id,
                    rule.section.as_deref().unwrap_or("all sections"),
                    rule.currency,
                    rule.max_price
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
            "INSERT INTO alert_rules (event_id, section, currency, max_price)
             VALUES ($1, $2, $3, $4)
             RETURNING rule_id",
            &[&rule.event_id, &rule.section, &rule.currency, &rule.max_price],
        )
        .await?;
    row.try_get(0)
}

/// The active rules (every rule with `all`), by id.
pub async fn list(client: &tokio_postgres::Client, all: bool) -> Result<Vec<Rule>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rule_id, event_id, section, currency, max_price, active, created_at
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
                max_price: row.try_get("max_price")?,
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
        "ACTIVE".to_owned(),
        "CREATED".to_owned(),
    ]];
    for rule in rules {
        table.push([
            rule.rule_id.to_string(),
            printable(&rule.event_id),
            rule.section.as_deref().map_or_else(|| "*".to_owned(), printable),
            rule.currency,
            money(rule.max_price),
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

/// Checks every field of a new rule; the error names the field at fault.
pub fn validate(
    event: &str,
    section: Option<&str>,
    currency: &str,
    max_price: &str,
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
    let max_price = parse_max_price(max_price).map_err(|problem| invalid(RuleField::MaxPrice, problem))?;
    Ok(NewRule {
        event_id: event.to_owned(),
        section: section.map(str::to_owned),
        currency: currency.to_owned(),
        max_price,
    })
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

    fn price(text: &str) -> Result<String, String> {
        validate("e", None, "USD", text)
            .map(|rule| rule.max_price.to_string())
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
            ("", "decimal number"),
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
        assert_eq!(rule.max_price.to_string(), "199.99");
        let rule = validate("e", None, "EUR", "5").unwrap();
        assert_eq!(rule.section, None);
        assert_eq!(rule.max_price.to_string(), "5.00");
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

    #[test]
    fn table_is_aligned() {
        let rows = [
            ["ID".to_owned(), "EVENT".to_owned(), "X".to_owned()],
            ["7".to_owned(), "taylör".to_owned(), "y".to_owned()],
        ];
        assert_eq!(render_table(&rows), "ID  EVENT   X\n7   taylör  y\n");
    }
}
