//! `conscope rules add|list|disable` against a real PostgreSQL (127.0.0.1:5432,
//! user postgres, trust auth; override with CONSCOPE_TEST_PG). Each test uses a
//! database of its own, created by the binary's migrations and dropped at the end.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

fn server() -> String {
    std::env::var("CONSCOPE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn unique_database(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("conscope_test_{tag}_{}_{nanos}", std::process::id())
}

/// Runs `conscope rules ARGS` against `database`, with no rule-related
/// environment leaking in from the caller.
fn rules(database: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_conscope"));
    // The flag after the subcommand, where users put it.
    command
        .arg("rules")
        .args(args)
        .arg("--database-url")
        .arg(format!("{}/{database}", server()))
        .env("CONSCOPE_LOG", "warn");
    for variable in [
        "DATABASE_URL",
        "CONSCOPE_RULE_EVENT",
        "CONSCOPE_RULE_SECTION",
        "CONSCOPE_RULE_CURRENCY",
        "CONSCOPE_RULE_MAX_PRICE",
        "CONSCOPE_RULE_KIND",
        "CONSCOPE_RULE_REARM_PCT",
        "CONSCOPE_RULE_WINDOW_DAYS",
        "CONSCOPE_RULE_DEAL_PCT",
        "CONSCOPE_RULE_COOLDOWN",
        "CONSCOPE_RULES_ALL",
    ] {
        command.env_remove(variable);
    }
    command.output().expect("cannot run the conscope binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(database: &str) -> tokio_postgres::Client {
    let url = format!("{}/{database}", server());
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// (event_id, section, currency, max_price as text, active) of every rule, by id.
fn stored_rules(database: &str) -> Vec<(String, Option<String>, String, String, bool)> {
    runtime().block_on(async {
        let client = connect(database).await;
        client
            .query(
                "SELECT event_id, section, currency, max_price::text, active
                 FROM alert_rules ORDER BY rule_id",
                &[],
            )
            .await
            .expect("query alert_rules")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
            .collect()
    })
}

fn drop_database(database: &str) {
    runtime().block_on(async {
        let client = connect("postgres").await;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"))
            .await
            .expect("drop the test database");
    });
}

fn table_row<'a>(listing: &'a str, id: &str) -> &'a str {
    listing
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row for rule {id} in:\n{listing}"))
}

#[test]
fn add_list_disable() {
    let database = unique_database("rules");

    // A fresh database: the command migrates it first.
    let output = rules(
        &database,
        &[
            "add",
            "--event",
            "taylor-swift-2026",
            "--section",
            "Floor A",
            "--max-price",
            "199.5",
        ],
    );
    assert!(output.status.success(), "add failed: {}", stderr(&output));
    let first = stdout(&output).trim().to_owned();
    assert!(
        first.parse::<i64>().is_ok(),
        "add must print the new rule id, printed {first:?}"
    );

    let output = rules(
        &database,
        &[
            "add",
            "--event",
            "coldplay-2026",
            "--currency",
            "EUR",
            "--max-price",
            "80",
        ],
    );
    assert!(output.status.success(), "add failed: {}", stderr(&output));
    let second = stdout(&output).trim().to_owned();
    assert_ne!(first, second);

    let output = rules(&database, &["list"]);
    assert!(output.status.success(), "list failed: {}", stderr(&output));
    let listing = stdout(&output);
    let header = listing.lines().next().unwrap_or_default();
    for column in [
        "ID",
        "EVENT",
        "SECTION",
        "CURRENCY",
        "MAX PRICE",
        "ACTIVE",
        "CREATED",
    ] {
        assert!(header.contains(column), "header lacks {column}:\n{listing}");
    }
    let row = table_row(&listing, &first);
    for cell in ["taylor-swift-2026", "Floor A", "USD", "199.50", "yes"] {
        assert!(row.contains(cell), "row lacks {cell:?}: {row}");
    }
    let row = table_row(&listing, &second);
    for cell in ["coldplay-2026", " * ", "EUR", "80.00", "yes"] {
        assert!(row.contains(cell), "row lacks {cell:?}: {row}");
    }

    let output = rules(&database, &["disable", &first]);
    assert!(output.status.success(), "disable failed: {}", stderr(&output));
    // Disabling twice is fine.
    let output = rules(&database, &["disable", &first]);
    assert!(
        output.status.success(),
        "second disable failed: {}",
        stderr(&output)
    );

    let output = rules(&database, &["list"]);
    let listing = stdout(&output);
    assert!(
        !listing
            .lines()
            .any(|line| line.split_whitespace().next() == Some(first.as_str())),
        "a disabled rule is not listed without --all:\n{listing}"
    );
    table_row(&listing, &second);

    let output = rules(&database, &["list", "--all"]);
    assert!(output.status.success(), "list --all failed: {}", stderr(&output));
    let listing = stdout(&output);
    let row = table_row(&listing, &first);
    assert!(row.contains(" no "), "rule {first} shows inactive: {row}");
    assert!(table_row(&listing, &second).contains(" yes "));

    let output = rules(&database, &["disable", "999999"]);
    assert!(!output.status.success(), "disabling a missing rule must fail");
    assert!(
        stderr(&output).contains("999999"),
        "the error names the id: {}",
        stderr(&output)
    );

    assert_eq!(
        stored_rules(&database),
        vec![
            (
                "taylor-swift-2026".to_owned(),
                Some("Floor A".to_owned()),
                "USD".to_owned(),
                "199.50".to_owned(),
                false
            ),
            (
                "coldplay-2026".to_owned(),
                None,
                "EUR".to_owned(),
                "80.00".to_owned(),
                true
            ),
        ]
    );
    drop_database(&database);
}

#[test]
fn bad_input_is_refused_before_the_database() {
    let database = unique_database("rules_bad");
    let cases: &[(&[&str], &str)] = &[
        (
            &["add", "--event", "e", "--currency", "usd", "--max-price", "10"],
            "--currency",
        ),
        (
            &["add", "--event", "e", "--currency", "US", "--max-price", "10"],
            "--currency",
        ),
        (&["add", "--event", "e", "--max-price", "-5"], "greater than 0"),
        (&["add", "--event", "e", "--max-price", "0"], "greater than 0"),
        (
            &["add", "--event", "e", "--max-price", "12.345"],
            "2 decimal places",
        ),
        (
            &["add", "--event", "e", "--max-price", "1000000.01"],
            "at most 1000000",
        ),
        (&["add", "--event", "e", "--max-price", "abc"], "--max-price"),
        (&["add", "--max-price", "10"], "--event"),
        (&["add", "--event", "", "--max-price", "10"], "--event"),
        (
            &["add", "--event", "e", "--section", "", "--max-price", "10"],
            "--section",
        ),
        (&["add", "--event", "e"], "--max-price"),
        (&["add", "--event", "e", "--kind", "cheapest"], "--kind"),
        (&["add", "--event", "e", "--kind", "deal"], "--deal-pct"),
        (
            &[
                "add",
                "--event",
                "e",
                "--kind",
                "deal",
                "--deal-pct",
                "20",
                "--max-price",
                "5",
            ],
            "does not apply to a deal rule",
        ),
        (
            &["add", "--event", "e", "--kind", "new_low", "--rearm-pct", "5"],
            "--rearm-pct",
        ),
        (
            &["add", "--event", "e", "--max-price", "5", "--window-days", "7"],
            "--window-days",
        ),
        (
            &["add", "--event", "e", "--kind", "new_low", "--window-days", "400"],
            "between 1 and 365",
        ),
        (
            &[
                "add",
                "--event",
                "e",
                "--kind",
                "back_in_stock",
                "--cooldown",
                "5 min",
            ],
            "--cooldown",
        ),
    ];
    for (args, word) in cases {
        let output = rules(&database, args);
        assert!(!output.status.success(), "{args:?} must fail");
        let error = stderr(&output);
        assert!(
            error.contains(word),
            "{args:?}: the error should mention {word:?}: {error}"
        );
    }
    // Validation comes first: none of the above even created the database.
    let exists = runtime().block_on(async {
        connect("postgres")
            .await
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .await
            .expect("query pg_database")
            .is_some()
    });
    assert!(!exists, "bad input must not touch the database");

    // And after a valid rule, bad ones still add nothing.
    let long_event = "x".repeat(129);
    let output = rules(&database, &["add", "--event", "e", "--max-price", "10"]);
    assert!(output.status.success(), "add failed: {}", stderr(&output));
    for args in [
        &["add", "--event", "e", "--currency", "usd", "--max-price", "10"][..],
        &["add", "--event", "e", "--max-price", "12.345"],
        &["add", "--event", &long_event, "--max-price", "10"],
    ] {
        assert!(!rules(&database, args).status.success(), "{args:?} must fail");
    }
    assert_eq!(stored_rules(&database).len(), 1);
    drop_database(&database);
}

#[test]
fn every_kind_is_added_and_listed() {
    let database = unique_database("rules_kinds");
    let adds: [&[&str]; 4] = [
        &[
            "add",
            "--event",
            "e",
            "--max-price",
            "80",
            "--rearm-pct",
            "5",
            "--cooldown",
            "10m",
        ],
        &[
            "add",
            "--event",
            "e",
            "--section",
            "A",
            "--kind",
            "new_low",
            "--max-price",
            "90",
        ],
        &["add", "--event", "e", "--kind", "back_in_stock"],
        &[
            "add",
            "--event",
            "e",
            "--kind",
            "deal",
            "--deal-pct",
            "20",
            "--cooldown",
            "1d",
        ],
    ];
    let mut ids = Vec::new();
    for args in adds {
        let output = rules(&database, args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        ids.push(stdout(&output).trim().to_owned());
    }
    let stored: Vec<String> = runtime().block_on(async {
        connect(&database)
            .await
            .query(
                "SELECT concat_ws('|', kind, coalesce(max_price::text, '-'), rearm_pct, coalesce(window_days::text, '-'),
                                  coalesce(deal_pct::text, '-'), extract(epoch FROM cooldown)::bigint)
                 FROM alert_rules ORDER BY rule_id",
                &[],
            )
            .await
            .expect("query alert_rules")
            .iter()
            .map(|row| row.get(0))
            .collect()
    });
    assert_eq!(
        stored,
        [
            "max_price|80.00|5.00|-|-|600",
            "new_low|90.00|0.00|30|-|0",
            "back_in_stock|-|0.00|-|-|0",
            "deal|-|0.00|-|20|86400",
        ]
    );
    let output = rules(&database, &["list"]);
    assert!(output.status.success(), "list failed: {}", stderr(&output));
    let listing = stdout(&output);
    for (id, cells) in ids.iter().zip([
        &["max_price", "≤ 80.00 USD (re-arms above +5%), cooldown 10m"][..],
        &["new_low", "lowest in 30 d ≤ 90.00 USD"],
        &["back_in_stock", "back in stock"],
        &["deal", "≥ 20% below section median, cooldown 1d"],
    ]) {
        let row = table_row(&listing, id);
        for cell in cells {
            assert!(row.contains(cell), "row lacks {cell:?}: {row}");
        }
    }
    drop_database(&database);
}
