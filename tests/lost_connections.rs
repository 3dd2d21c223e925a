//! SPEC §4: PostgreSQL going away makes the job wait and retry, never stop or
//! skip data. Every session of the job's database is terminated again and
//! again while a bounded replay runs (`pg_terminate_backend`: what a server
//! shutting down does to its sessions, SQLSTATE 57P01), so failures land
//! everywhere: mid-transaction, at COMMIT, while the writer prepares a fresh
//! connection, in the publisher and in the job lease. The replay still ends,
//! with the tables and topics of an uninterrupted run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conscope_testkit::*;

/// Rounds of terminations: more than the run would last without them.
const ROUNDS: usize = 12;

/// Small transactions, so the terminations find commits in flight, each split
/// over the writer's connections (as many as `-w`): terminations also land
/// between a commit's prepared parts and its main transaction.
const SLOW: [&str; 10] = [
    "--epoch-ms",
    "10",
    "--max-batch",
    "200",
    "--max-in-flight",
    "1000",
    "--max-commit-records",
    "300",
    "--writer-split-rows",
    "1",
];

/// Terminates every other session of `url`'s database every `every`, from the
/// job's start (migrations, restore) on, `rounds` times or until `stop`;
/// returns how many sessions each round ended.
fn terminator(
    url: String,
    every: Duration,
    rounds: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut ended = Vec::new();
        let database = url.rsplit('/').next().unwrap_or_default().to_owned();
        let admin = format!("{}/postgres", pg_base());
        for _ in 0..rounds {
            std::thread::sleep(every);
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let count = runtime().block_on(async {
                let Ok((client, connection)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                else {
                    return 0;
                };
                tokio::spawn(connection);
                client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&database],
                    )
                    .await
                    .map(|rows| rows.len() as u64)
                    .unwrap_or(0)
            });
            ended.push(count);
        }
        ended
    })
}

#[test]
fn sessions_terminated_over_and_over_change_nothing_in_the_result() {
    require_broker();
    let input = unique("lost_conn");
    // Enough input that even a fast (release) run spans several rounds of
    // the terminator: 16 000 messages were read in under 1.5 s, two rounds.
    produce_generated(&input, 2, 80_000, 11, &[]);

    let reference = Job::new("lost_conn_ref", &input);
    reference.run_to_end_within(Duration::from_secs(300), &["-w", "2"]);

    let job = Job::new("lost_conn", &input);
    job.migrate();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = terminator(
        job.database_url.clone(),
        Duration::from_millis(700),
        ROUNDS,
        Arc::clone(&stop),
    );
    let mut args = vec!["-w", "2"];
    args.extend_from_slice(&SLOW);
    let outcome = std::panic::catch_unwind(|| job.run_to_end_within(Duration::from_secs(300), &args));
    stop.store(true, Ordering::SeqCst);
    let ended = killer.join().expect("terminator");
    let stdout = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    println!("sessions terminated in each round during the run: {ended:?}");
    // Each round that finds the job ends its lease's session at least.
    let rounds = ended.iter().filter(|count| **count > 0).count();
    assert!(
        rounds >= 4,
        "too few rounds of terminations during the run ({ended:?}) to mean anything"
    );
    assert!(stdout.contains("summary:"), "{stdout}");

    assert_eq!(dump(&job.database_url), dump(&reference.database_url));
    assert_summaries_match_listings(&job.database_url);
    let expected: Vec<String> = alert_ids_on_topic(&reference.alerts).into_keys().collect();
    let published = alert_ids_on_topic(&job.alerts);
    assert!(
        published.values().all(|count| *count == 1),
        "alerts published twice"
    );
    assert_eq!(published.into_keys().collect::<Vec<_>>(), expected);
    assert_eq!(read_all(&job.dlq).len(), read_all(&reference.dlq).len());
    assert_eq!(query_i64(&job.database_url, "SELECT count(*) FROM outbox"), 0);
}
