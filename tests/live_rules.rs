//! Live alert rules (SPEC §2 `rule_match`, §6 `conscope rules`): a running job,
//! started without `--exit-at-end`, picks up rules added and disabled with the
//! CLI within seconds, without a restart. Real broker and PostgreSQL.

use std::io::Read as _;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conscope_testkit::*;

const EVENT: &str = "live1";

/// Longest accepted time from `rules add` returning to the rule's alert row
/// (SPEC: "within seconds"; the issue says 2 s, plus slack for poll and commit).
const PICKUP_LIMIT: Duration = Duration::from_millis(2500);

fn obs(section: &str, seat: &str, price: &str, at: &str) -> (i32, Option<&'static str>, Vec<u8>) {
    (
        0,
        Some(EVENT),
        format!(
            r#"{{"event_id":"{EVENT}","section":"{section}","row":"1","seat":"{seat}","source":"s1","price":"{price}","timestamp":"{at}"}}"#
        )
        .into_bytes(),
    )
}

/// The running job: killed when dropped (also when an assertion fails), and its
/// output printed if the test is failing.
struct RunningJob {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl RunningJob {
    fn start(job: &Job, extra: &[&str]) -> RunningJob {
        let mut child = job
            .command(extra)
            .env("CONSCOPE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conscope run");
        let output = Arc::new(Mutex::new(String::new()));
        // Drain both pipes so a chatty job never blocks on a full pipe.
        let mut readers = Vec::new();
        let pipes: Vec<(&str, Box<dyn std::io::Read + Send>)> = vec![
            ("stdout", Box::new(child.stdout.take().expect("stdout"))),
            ("stderr", Box::new(child.stderr.take().expect("stderr"))),
        ];
        for (name, mut pipe) in pipes {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    match pipe.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let text = String::from_utf8_lossy(&buffer[..n]);
                            let mut output = output.lock().unwrap_or_else(|e| e.into_inner());
                            if name == "stdout" {
                                output.push_str("[stdout] ");
                            }
                            output.push_str(&text);
                        }
                    }
                }
            }));
        }
        RunningJob {
            child,
            output,
            readers,
        }
    }

    /// Fails the test if the job exited on its own.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the job exited on its own with {status}");
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("---- conscope run output ----\n{output}\n---- end of conscope run output ----");
        }
    }
}

/// Runs `conscope rules ARGS` against `url`; its stdout.
fn rules(url: &str, args: &[&str]) -> String {
    let output = conscope()
        .arg("rules")
        .arg("--database-url")
        .arg(url)
        .args(args)
        .env_remove("CONSCOPE_RULE_EVENT")
        .env_remove("CONSCOPE_RULE_SECTION")
        .env_remove("CONSCOPE_RULE_CURRENCY")
        .env_remove("CONSCOPE_RULE_MAX_PRICE")
        .env_remove("CONSCOPE_RULES_ALL")
        .output()
        .expect("run conscope rules");
    assert!(
        output.status.success(),
        "conscope rules {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `rules add`, returning the new rule id (printed bare on stdout).
fn add_rule(url: &str, args: &[&str]) -> i64 {
    let mut all = vec!["add"];
    all.extend_from_slice(args);
    let stdout = rules(url, &all);
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("rules add printed {stdout:?}, not an id"))
}

fn rule_matches(url: &str, rule_id: i64) -> Vec<String> {
    query_strings(
        url,
        &format!(
            "SELECT concat_ws('|', kind, event_id, section, \"row\", seat, source, rule_id,
                              coalesce(old_price::text, 'null'), new_price, currency, observed_at)
             FROM price_alerts WHERE kind = 'rule_match' AND rule_id = {rule_id}
             ORDER BY observed_at, alert_id"
        ),
    )
}

fn rule_match_count(url: &str, rule_id: i64) -> i64 {
    query_i64(
        url,
        &format!("SELECT count(*) FROM price_alerts WHERE kind = 'rule_match' AND rule_id = {rule_id}"),
    )
}

fn listing_price(url: &str, section: &str, seat: &str) -> Option<String> {
    query_strings(
        url,
        &format!(
            "SELECT price::text FROM listings
             WHERE event_id = '{EVENT}' AND section = '{section}' AND seat = '{seat}'"
        ),
    )
    .into_iter()
    .next()
}

/// Waits for the rule_match rows of `rule_id` to reach `count`; the time waited.
fn wait_for_matches(url: &str, rule_id: i64, count: i64, limit: Duration) -> Duration {
    let started = Instant::now();
    wait_until(
        limit,
        &format!("{count} rule_match row(s) of rule {rule_id}"),
        || rule_match_count(url, rule_id) >= count,
    );
    started.elapsed()
}

/// Waits for the job to have migrated its database and stored listing A-1.
fn wait_for_first_listing(url: &str) {
    wait_until(Duration::from_secs(30), "A-1 stored", || {
        // The job migrates the database first; before that the table is missing.
        query_strings(
            url,
            "SELECT count(*)::text FROM information_schema.tables WHERE table_name = 'listings'",
        ) == ["1"]
            && listing_price(url, "A", "1").is_some()
    });
}

/// Waits for every row of `price_alerts` to be on the job's alerts topic, then
/// checks each is there exactly once.
fn assert_alerts_published_once(job: &Job) {
    let table_ids = || {
        query_strings(
            &job.database_url,
            "SELECT alert_id FROM price_alerts ORDER BY alert_id",
        )
    };
    wait_until(Duration::from_secs(20), "the publisher to catch up", || {
        alert_ids_on_topic(&job.alerts).into_keys().collect::<Vec<_>>() == table_ids()
    });
    // A little longer: a late duplicate (or a second copy published with the
    // first) would show by now.
    std::thread::sleep(Duration::from_millis(500));
    let on_topic = alert_ids_on_topic(&job.alerts);
    assert_eq!(on_topic.keys().cloned().collect::<Vec<_>>(), table_ids());
    assert!(
        on_topic.values().all(|count| *count == 1),
        "duplicates on the alerts topic: {on_topic:?}"
    );
}

#[test]
fn running_job_picks_up_rule_changes() {
    require_broker();
    let test_started = Instant::now();
    let input = unique("live_rules");
    create_topic(&input, 2);
    let job = Job::new("live_rules", &input);
    let url = job.database_url.clone();

    // 1. Two listings of one event, then the job, running (no --exit-at-end).
    produce(
        &input,
        &[
            obs("A", "1", "120.00", "2026-01-01T00:00:00Z"),
            obs("A", "2", "150.00", "2026-01-01T00:01:00Z"),
        ],
    );
    let mut running = RunningJob::start(&job, &["-w", "2", "--rules-poll-ms", "500"]);
    wait_until(Duration::from_secs(30), "both listings stored", || {
        // The job migrates the database first; before that the table is missing.
        query_strings(
            &url,
            "SELECT count(*)::text FROM information_schema.tables WHERE table_name = 'listings'",
        ) == ["1"]
            && query_i64(&url, "SELECT count(*) FROM listings WHERE event_id = 'live1'") == 2
    });
    assert_eq!(
        query_i64(
            &url,
            "SELECT count(*) FROM price_alerts WHERE kind = 'rule_match'"
        ),
        0
    );

    // 2. A whole-event rule whose scope is already low enough fires at once,
    // naming the listing with the lowest price, old_price NULL.
    let whole = add_rule(&url, &["--event", EVENT, "--max-price", "125"]);
    let whole_latency = wait_for_matches(&url, whole, 1, Duration::from_secs(20));
    eprintln!("rule #{whole} (added while the scope was at 120 <= 125) fired {whole_latency:?} after `rules add` returned");
    assert!(
        whole_latency <= PICKUP_LIMIT,
        "rule #{whole} took {whole_latency:?} to fire, more than {PICKUP_LIMIT:?}"
    );
    assert_eq!(
        rule_matches(&url, whole),
        [format!(
            "rule_match|live1|A|1|1|s1|{whole}|null|120.00|USD|2026-01-01 00:00:00+00"
        )]
    );

    // 3. A section rule with an empty scope fires nothing until a listing in that
    // section is at or below it; then it re-arms above and fires again below.
    let section = add_rule(&url, &["--event", EVENT, "--section", "B", "--max-price", "100"]);
    // Several poll intervals: the rule is live by now, and must not have fired.
    std::thread::sleep(Duration::from_millis(1500));
    running.assert_alive();
    assert_eq!(rule_match_count(&url, section), 0, "section B is empty");

    produce(&input, &[obs("B", "1", "99.00", "2026-01-01T00:02:00Z")]);
    let first_fire = wait_for_matches(&url, section, 1, Duration::from_secs(20));
    eprintln!("rule #{section} fired {first_fire:?} after the observation crossing it was produced");

    produce(&input, &[obs("B", "1", "130.00", "2026-01-01T00:03:00Z")]);
    wait_until(Duration::from_secs(20), "B-1 at 130 stored", || {
        listing_price(&url, "B", "1").as_deref() == Some("130.00")
    });
    assert_eq!(
        rule_match_count(&url, section),
        1,
        "going above max_price re-arms, it does not alert"
    );

    produce(&input, &[obs("B", "1", "95.00", "2026-01-01T00:04:00Z")]);
    wait_for_matches(&url, section, 2, Duration::from_secs(20));
    assert_eq!(
        rule_matches(&url, section),
        [
            format!("rule_match|live1|B|1|1|s1|{section}|null|99.00|USD|2026-01-01 00:02:00+00"),
            format!("rule_match|live1|B|1|1|s1|{section}|130.00|95.00|USD|2026-01-01 00:04:00+00"),
        ]
    );

    // 4. A disabled rule stops firing. B-1 holds the event's lowest price (95),
    // so first lift it to 300: the event's lowest becomes 150 > 125 once A-1 is
    // at 200 (the whole-event rule would re-arm), then A-1 at 110 would fire it
    // again if it were still active.
    let disabled = rules(&url, &["disable", &whole.to_string()]);
    assert!(
        disabled.contains(&format!("disabled rule #{whole}")),
        "{disabled}"
    );
    std::thread::sleep(Duration::from_secs(2));
    running.assert_alive();
    produce(
        &input,
        &[
            obs("B", "1", "300.00", "2026-01-01T00:04:30Z"),
            obs("A", "1", "200.00", "2026-01-01T00:05:00Z"),
            obs("A", "1", "110.00", "2026-01-01T00:06:00Z"),
        ],
    );
    wait_until(Duration::from_secs(20), "A-1 at 110 stored", || {
        listing_price(&url, "A", "1").as_deref() == Some("110.00")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        rule_matches(&url, whole).len(),
        1,
        "rule #{whole} fired after it was disabled: {:?}",
        rule_matches(&url, whole)
    );
    // The section rule is still live: B-1 at 300 re-armed it, no new alert.
    assert_eq!(rule_match_count(&url, section), 2);

    // 5. Every alert row reaches the alerts topic exactly once.
    assert_alerts_published_once(&job);
    assert_eq!(
        query_i64(
            &url,
            "SELECT count(*) FROM price_alerts WHERE kind = 'rule_match'"
        ),
        3
    );

    // 6. The job ran the whole time; kill it (the guard also does on failure).
    running.assert_alive();
    drop(running);
    eprintln!("live_rules took {:?}", test_started.elapsed());
}

/// `rules enable` starts a rule afresh, the same in a running job and after a
/// restart: a rule disabled while its scope went lower fires at once on being
/// enabled, naming the new lowest listing, rather than keeping its old "below"
/// state and staying silent.
#[test]
fn a_reenabled_rule_starts_afresh_running_or_restarted() {
    require_broker();
    let input = unique("reenable");
    create_topic(&input, 1);
    let job = Job::new("reenable", &input);
    let url = job.database_url.clone();
    let run_args = ["-w", "1", "--rules-poll-ms", "200"];

    produce(&input, &[obs("A", "1", "100.00", "2026-01-01T00:00:00Z")]);
    let mut running = RunningJob::start(&job, &run_args);
    wait_for_first_listing(&url);
    let rule = add_rule(&url, &["--event", EVENT, "--max-price", "150"]);
    wait_for_matches(&url, rule, 1, Duration::from_secs(20));

    // Disabled, the scope goes lower, the job stops; enabled while it is down.
    assert!(rules(&url, &["disable", &rule.to_string()]).contains("disabled rule"));
    std::thread::sleep(Duration::from_secs(1)); // several polls: the job saw it
    produce(&input, &[obs("A", "2", "90.00", "2026-01-01T00:01:00Z")]);
    wait_until(Duration::from_secs(20), "A-2 stored", || {
        listing_price(&url, "A", "2").is_some()
    });
    running.assert_alive();
    drop(running);
    assert!(rules(&url, &["enable", &rule.to_string()]).contains("enabled rule"));
    assert!(rules(&url, &["enable", &rule.to_string()]).contains("already enabled"));

    // The restarted job fires it at once, as a running job would.
    let mut running = RunningJob::start(&job, &run_args);
    wait_for_matches(&url, rule, 2, Duration::from_secs(30));
    assert_eq!(
        rule_matches(&url, rule)[1],
        format!("rule_match|live1|A|1|2|s1|{rule}|null|90.00|USD|2026-01-01 00:01:00+00")
    );

    // The same in the running job. (A disable and enable between two of its
    // polls is a new generation too; the poller compares generations.)
    running.assert_alive();
    assert!(rules(&url, &["disable", &rule.to_string()]).contains("disabled rule"));
    std::thread::sleep(Duration::from_secs(1));
    produce(&input, &[obs("A", "3", "80.00", "2026-01-01T00:02:00Z")]);
    wait_until(Duration::from_secs(20), "A-3 stored", || {
        listing_price(&url, "A", "3").is_some()
    });
    assert_eq!(rule_match_count(&url, rule), 2, "a disabled rule fired");
    assert!(rules(&url, &["enable", &rule.to_string()]).contains("enabled rule"));
    wait_for_matches(&url, rule, 3, Duration::from_secs(20));
    assert_eq!(
        rule_matches(&url, rule)[2],
        format!("rule_match|live1|A|1|3|s1|{rule}|null|80.00|USD|2026-01-01 00:02:00+00")
    );
    running.assert_alive();
}

/// Holds a row lock on `job_progress` in an open transaction, which makes the
/// job's writer wait at the start of its next commit, so the epochs after it
/// queue up and are merged into one transaction once the lock is released.
fn block_writer(url: &str) -> OpenTransaction {
    OpenTransaction::begin(url, "SELECT 1 FROM job_progress WHERE id = 1 FOR UPDATE")
}

/// Issue 9 (b): a rule disabled and re-enabled while the writer is behind fires
/// twice on the same observation, two alerts with one id, and both epochs are
/// merged into one transaction. The table holds one row, and the alerts topic
/// must hold that alert once, not once per firing.
#[test]
fn one_alert_id_twice_in_one_commit_is_published_once() {
    require_broker();
    let input = unique("same_id_commit");
    create_topic(&input, 1);
    let job = Job::new("same_id_commit", &input);
    let url = job.database_url.clone();

    produce(&input, &[obs("A", "1", "100.00", "2026-01-01T00:00:00Z")]);
    let mut running = RunningJob::start(&job, &["-w", "1", "--rules-poll-ms", "100"]);
    wait_for_first_listing(&url);

    // The writer waits on the lock with A-2's epoch; what comes after queues.
    let block = block_writer(&url);
    produce(&input, &[obs("A", "2", "200.00", "2026-01-01T00:01:00Z")]);
    wait_until(Duration::from_secs(20), "the writer to wait on the lock", || {
        query_i64(
            &url,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ) >= 1
    });

    // Fires on being added (A-1 at 100 <= 150), and again, on the same
    // observation, on being re-enabled: the same alert id twice.
    let rule = add_rule(&url, &["--event", EVENT, "--max-price", "150"]);
    std::thread::sleep(Duration::from_millis(600)); // several polls
    assert!(rules(&url, &["disable", &rule.to_string()]).contains("disabled rule"));
    std::thread::sleep(Duration::from_millis(600));
    assert!(rules(&url, &["enable", &rule.to_string()]).contains("enabled rule"));
    std::thread::sleep(Duration::from_millis(600));
    running.assert_alive();
    assert_eq!(rule_match_count(&url, rule), 0, "the writer was blocked");
    block.commit();

    wait_for_matches(&url, rule, 1, Duration::from_secs(20));
    assert_alerts_published_once(&job);
    assert_eq!(
        rule_matches(&url, rule),
        [format!(
            "rule_match|live1|A|1|1|s1|{rule}|null|100.00|USD|2026-01-01 00:00:00+00"
        )]
    );
    running.assert_alive();
}
