//! History that can live for a year (issue 13, SPEC §6 `history prune`):
//! migration 0010 moves an unpartitioned `price_history` into month partitions
//! keeping every row; `conscope history prune --before DATE` drops whole
//! months and nothing else; an observation that arrives later for a pruned
//! month is counted as stale and not stored; a running job rides through a
//! prune. Real PostgreSQL and broker.

use std::io::Write as _;
use std::process::Output;
use std::time::Duration;

use conscope_testkit::*;

/// The migrations before 0010, in order, as a database made before
/// partitioning has them: (name, SQL).
fn migrations_before_partitions() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("migrations directory")
        .map(|entry| entry.expect("migration file").path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_owned();
            (name.as_str() < "0010").then(|| {
                let sql = std::fs::read_to_string(&path).expect("read migration");
                (name, sql)
            })
        })
        .collect();
    files.sort();
    files
}

/// Every history row, ordered, times in UTC.
const HISTORY: &str =
    "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
     FROM price_history ORDER BY event_id, section, \"row\", seat, source, observed_at";

/// The partitions of price_history, by name.
const PARTITIONS: &str = "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'price_history'::regclass ORDER BY 1";

fn prune(url: &str, before: &str) -> String {
    let output: Output = conscope()
        .args(["history", "prune", "--before", before, "--database-url", url])
        .env_remove("CONSCOPE_PRUNE_BEFORE")
        .output()
        .expect("run conscope history prune");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "history prune failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One observation as a JSON line.
fn observation(seat: &str, price: &str, at: &str) -> String {
    format!(
        r#"{{"event_id":"p1","event_name":"Prune","section":"A","row":"1","seat":"{seat}","source":"s1","price":"{price}","timestamp":"{at}"}}"#
    )
}

fn input_file(lines: &[String]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for line in lines {
        writeln!(file, "{line}").expect("write input");
    }
    file.flush().expect("flush input");
    file
}

/// Seats 1-5, each observed on the 15th of every month from January to June
/// 2025: 30 observations, 5 per month.
fn half_a_year() -> Vec<String> {
    (1..=6)
        .flat_map(|month| {
            (1..=5).map(move |seat| {
                observation(
                    &seat.to_string(),
                    &format!("{}.00", 100 + month * 10 + seat),
                    &format!("2025-{month:02}-15T12:00:00Z"),
                )
            })
        })
        .collect()
}

#[test]
fn the_migration_moves_an_unpartitioned_table_keeping_every_row() {
    let job = Job::new("hist_migrate", "unused");
    let url = job.database_url.clone();
    execute(
        &url,
        "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    );
    let before_partitions = migrations_before_partitions();
    assert!(before_partitions.len() >= 8, "{before_partitions:?}");
    for (name, sql) in &before_partitions {
        execute(&url, sql);
        execute(
            &url,
            &format!("INSERT INTO schema_migrations (name) VALUES ('{name}')"),
        );
    }
    assert_eq!(
        query_strings(
            &url,
            "SELECT relkind::text FROM pg_class WHERE relname = 'price_history'"
        ),
        ["r"]
    );
    // 14 months of rows, some a microsecond either side of a month's start in
    // UTC, written in a session far from UTC (months are UTC months).
    execute(
        &url,
        "SET TIME ZONE 'Pacific/Auckland';
         INSERT INTO events (event_id, event_name, first_seen, last_seen) VALUES ('m1', 'M', now(), now());
         INSERT INTO price_history
         SELECT 'm1', 'S' || (i % 3), (i % 4)::text, (i % 7)::text, 'src', (1 + i % 9999) / 100.0 + i % 7,
                'USD', i % 5 <> 0, timestamptz '2025-01-01 00:00:00+00' + i * interval '97 minutes'
         FROM generate_series(0, 6000) AS i;
         INSERT INTO price_history VALUES
             ('m1', 'edge', '', '', 'src', 1.01, 'EUR', true, '2025-03-31 23:59:59.999999+00'),
             ('m1', 'edge', '', '', 'src', 1.02, 'EUR', false, '2025-04-01 00:00:00+00'),
             ('m1', 'edge', '', '', 'src', 999999.99, 'EUR', true, '2026-02-28 23:59:59.999999+00');",
    );
    let before = query_strings(&url, HISTORY);
    assert_eq!(before.len(), 6004);

    job.migrate();

    assert_eq!(query_strings(&url, HISTORY), before, "every row, unchanged");
    assert_eq!(
        query_strings(
            &url,
            "SELECT relkind::text FROM pg_class WHERE relname = 'price_history'"
        ),
        ["p"]
    );
    let partitions = query_strings(&url, PARTITIONS);
    let expected: Vec<String> = (0..14)
        .map(|m| format!("price_history_p{}{:02}", 2025 + m / 12, m % 12 + 1))
        .collect();
    assert_eq!(partitions, expected, "one partition per month with rows");
    assert_eq!(
        query_i64(
            &url,
            "SELECT count(*) FROM price_history
             WHERE tableoid::regclass::text <> 'price_history_p' || to_char(observed_at AT TIME ZONE 'UTC', 'YYYYMM')"
        ),
        0,
        "every row in its UTC month's partition"
    );
    assert_eq!(
        query_strings(
            &url,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'price_history'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        [
            "text",
            "text",
            "text",
            "text",
            "text",
            "numeric(12,2)",
            "character(3)",
            "boolean",
            "timestamp with time zone"
        ]
    );
    // The identity is still unique, across the whole table.
    assert_eq!(
        query_strings(
            &url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'price_history'::regclass AND contype = 'p'"
        ),
        ["PRIMARY KEY (event_id, section, \"row\", seat, source, observed_at)"]
    );
    assert_eq!(
        query_i64(
            &url,
            "SELECT count(*) FROM pg_class WHERE relname = 'price_history_unpartitioned'"
        ),
        0
    );
}

#[test]
fn prune_drops_whole_months_before_the_date_and_later_observations_for_them_are_stale() {
    let job = Job::new("hist_prune", "unused");
    let first = input_file(&half_a_year());
    let path = first.path().to_str().expect("utf-8 path");
    let stdout = job.run_to_end_within(Duration::from_secs(120), &["--input-file", path]);
    assert_summary(&stdout, &[("prices_stored", 30), ("stale", 0)]);
    let url = &job.database_url;
    let listings = query_strings(
        url,
        "SELECT concat_ws('|', seat, price, observed_at) FROM listings ORDER BY seat",
    );
    let events = query_strings(
        url,
        "SELECT concat_ws('|', event_id, first_seen, last_seen) FROM events",
    );

    let report = prune(url, "2025-03-20");

    assert!(
        report.contains("dropped price_history_p202501 [2025-01-01, 2025-02-01)"),
        "{report}"
    );
    assert!(
        report.contains("dropped price_history_p202502 [2025-02-01, 2025-03-01)"),
        "{report}"
    );
    assert!(
        report.contains("kept    price_history_p202503 [2025-03-01, 2025-04-01)")
            && report
                .contains("straddles 2025-03-20T00:00:00+00:00, so its 5 rows observed before then stay"),
        "{report}"
    );
    assert!(
        report.contains("kept    3 newer partition(s), [2025-04-01, 2025-07-01)"),
        "{report}"
    );
    assert_eq!(
        query_strings(url, PARTITIONS),
        [
            "price_history_p202503",
            "price_history_p202504",
            "price_history_p202505",
            "price_history_p202506"
        ]
    );
    assert_eq!(query_i64(url, "SELECT count(*) FROM price_history"), 20);
    assert_eq!(
        query_i64(
            url,
            "SELECT count(*) FROM price_history WHERE observed_at < '2025-03-01'"
        ),
        0
    );
    // Nothing from the other tables.
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', seat, price, observed_at) FROM listings ORDER BY seat"
        ),
        listings
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, first_seen, last_seen) FROM events"
        ),
        events
    );
    assert_eq!(
        query_strings(url, "SELECT pruned_before::text FROM history_retention"),
        ["2025-03-01 00:00:00+00"]
    );

    // An earlier date drops nothing more and never lowers the boundary.
    let again = prune(url, "2025-02-01");
    assert!(again.contains("dropped nothing"), "{again}");
    assert_eq!(
        query_strings(url, "SELECT pruned_before::text FROM history_retention"),
        ["2025-03-01 00:00:00+00"]
    );

    // Observations that arrive after the prune.
    let later = input_file(&[
        // older than seat 1's state, in a pruned month: stale, not stored
        observation("1", "50.00", "2025-02-20T00:00:00Z"),
        // a new listing, in a pruned month: its row is not stored either
        observation("9", "60.00", "2025-01-05T00:00:00Z"),
        // older than seat 2's state, in the kept straddling month: stored, stale
        observation("2", "70.00", "2025-03-05T00:00:00Z"),
        // newer than seat 3's state: stored, in a month made for it
        observation("3", "80.00", "2025-07-01T00:00:00Z"),
    ]);
    let path = later.path().to_str().expect("utf-8 path");
    let stdout = job.run_to_end_within(Duration::from_secs(120), &["--input-file", path]);
    assert_summary(
        &stdout,
        &[
            ("processed", 4),
            ("prices_stored", 2),
            ("stale", 3),
            ("duplicates", 0),
        ],
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', seat, price, observed_at) FROM price_history
             WHERE observed_at < '2025-03-15' OR observed_at >= '2025-07-01' ORDER BY observed_at"
        ),
        ["2|70.00|2025-03-05 00:00:00+00", "3|80.00|2025-07-01 00:00:00+00"]
    );
    assert_eq!(query_i64(url, "SELECT count(*) FROM price_history"), 22);
    let partitions = query_strings(url, PARTITIONS);
    assert_eq!(
        partitions.first().map(String::as_str),
        Some("price_history_p202503")
    );
    assert_eq!(
        partitions.last().map(String::as_str),
        Some("price_history_p202507")
    );
    assert_rows_have_their_events(url);
}

#[test]
fn a_running_job_rides_through_a_prune() {
    require_broker();
    let input = unique("hist_live");
    create_topic(&input, 2);
    let job = Job::new("hist_live", &input);
    let message = |line: String, partition: i32| (partition, Some("p1"), line.into_bytes());
    let first: Vec<_> = half_a_year()
        .into_iter()
        .enumerate()
        .map(|(n, line)| message(line, (n % 2) as i32))
        .collect();
    produce(&input, &first);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("job.log");
    let mut child = job
        .command(&["--epoch-ms", "50"])
        .env("CONSCOPE_LOG", "info")
        .stdout(std::fs::File::create(dir.path().join("job.out")).expect("stdout file"))
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn conscope run");
    let url = job.database_url.clone();
    let count = |sql: &str| query_i64(&url, sql);
    wait_until(Duration::from_secs(60), "the first half year stored", || {
        commit_no(&url).is_some() && count("SELECT count(*) FROM price_history") == 30
    });

    // Later observations stream in while the prune runs: for pruned months,
    // for the straddling month, for new months.
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || {
            for round in 0..20 {
                let lines = [
                    observation("1", "40.00", &format!("2025-01-{:02}T00:00:00Z", round + 1)),
                    observation("2", "41.00", &format!("2025-04-{:02}T00:00:00Z", round + 1)),
                    observation(
                        &format!("n{round}"),
                        "42.00",
                        &format!("2025-08-{:02}T00:00:00Z", round + 1),
                    ),
                ];
                let messages: Vec<_> = lines
                    .into_iter()
                    .map(|line| (round % 2, Some("p1"), line.into_bytes()))
                    .collect();
                produce(&input, &messages);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let report = prune(&url, "2025-04-01");
    producer.join().expect("producer thread");
    assert!(report.contains("dropped price_history_p202503"), "{report}");

    let end = high_watermarks(&input);
    wait_until(Duration::from_secs(60), "every message committed", || {
        stored_offsets(&url, &input) == end
    });
    assert!(
        child.try_wait().expect("job status").is_none(),
        "the job stopped: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(
        count("SELECT count(*) FROM price_history WHERE observed_at < '2025-04-01'"),
        0,
        "nothing stored for the pruned months, before or after the prune"
    );
    // April: seat 2's 20 older observations (stale, stored) and the 5 of the
    // first half year; May, June; August: 20 new listings.
    assert_eq!(
        count("SELECT count(*) FROM price_history WHERE observed_at >= '2025-04-01'"),
        5 + 20 + 5 + 5 + 20
    );
    assert_eq!(count("SELECT count(*) FROM listings"), 25);
    assert_rows_have_their_events(&url);
}
