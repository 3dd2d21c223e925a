//! One live instance per job (SPEC §6: one database holds one job's state): a
//! second `conscope run` on the same database while the first is alive (a
//! rolling deploy, a mistake) is refused before it restores state or publishes
//! anything, and the first goes on; after the first is killed (`kill -9`), a new
//! one starts at once.

use std::io::Read as _;
use std::time::Duration;

use conscope_testkit::*;

fn obs(event: &str, seat: u32, cents: u64, second: u32) -> (i32, Option<&'static str>, Vec<u8>) {
    let key = if event == "e1" { "e1" } else { "e2" };
    let value = format!(
        r#"{{"event_id":"{event}","section":"A","seat":"{seat}","price":"{}.{:02}","timestamp":"2026-01-01T00:{:02}:{:02}Z"}}"#,
        cents / 100,
        cents % 100,
        second / 60,
        second % 60
    );
    (i32::from(event != "e1"), Some(key), value.into_bytes())
}

/// Falling prices, so every batch raises alerts (something to publish).
fn batch(first_second: u32) -> Vec<(i32, Option<&'static str>, Vec<u8>)> {
    (0..20u32)
        .flat_map(|i| {
            let second = first_second + i;
            let cents = 200_000 - u64::from(second) * 500;
            [obs("e1", i % 3, cents, second), obs("e2", i % 3, cents, second)]
        })
        .collect()
}

fn wait_committed(job: &Job, what: &str) {
    wait_until(Duration::from_secs(60), what, || {
        stored_offsets(&job.database_url, &job.input) == high_watermarks(&job.input)
            && query_i64(&job.database_url, "SELECT count(*) FROM outbox") == 0
    });
}

/// Waits for `child` to exit within `limit`; its status and stderr.
fn exit_of(mut child: std::process::Child, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
    let status = exit_within(&mut child, limit);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn a_second_instance_is_refused_before_it_restores_and_a_crash_frees_the_job() {
    require_broker();
    let input = unique("fencing");
    create_topic(&input, 2);
    produce(&input, &batch(0));
    let job = Job::new("fencing", &input);
    job.migrate();

    let mut first = KillOnDrop(job.spawn(&[]));
    wait_committed(&job, "the first instance to commit the first batch");
    let alerts_before = read_all(&job.alerts).len();
    let commits_before = query_i64(&job.database_url, "SELECT commit_no FROM job_progress");
    assert!(alerts_before > 0, "the first batch raised no alert");

    // Another job on this server holds the same lease key in its own database:
    // it must not pass for this job's holder.
    let neighbour = Job::new("fencing_neighbour", &input);
    neighbour.migrate();
    let _neighbour = KillOnDrop(neighbour.spawn(&[]));
    wait_committed(&neighbour, "the neighbouring job to commit");

    // The second instance: info logs, to see that it never restored anything.
    let second = job
        .command(&[])
        .env("CONSCOPE_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the second instance");
    let (status, stderr) = exit_of(second, Duration::from_secs(30));
    let status =
        status.unwrap_or_else(|| panic!("the second instance was not refused within 30 s:\n{stderr}"));
    assert!(!status.success(), "the second instance succeeded:\n{stderr}");
    assert!(
        stderr.contains("another `conscope run` holds this job (process 0)")
            && stderr.contains("backend pid"),
        "no clear refusal naming the holder:\n{stderr}"
    );
    let holder_pid = first.0.id().to_string();
    assert!(
        stderr.contains(&format!("pid={holder_pid}")),
        "the refusal does not name the first instance's pid {holder_pid}:\n{stderr}"
    );
    assert!(
        !stderr.contains("restored state"),
        "the second instance restored state:\n{stderr}"
    );
    assert!(
        !stderr.contains("recover"),
        "the second instance ran publisher recovery:\n{stderr}"
    );
    // Nothing published or committed by it: the alerts topic is as it was.
    assert_eq!(read_all(&job.alerts).len(), alerts_before);
    assert!(
        first.0.try_wait().expect("wait").is_none(),
        "the first instance stopped"
    );

    // The first goes on.
    produce(&input, &batch(100));
    wait_committed(&job, "the first instance to commit the second batch");
    assert!(query_i64(&job.database_url, "SELECT commit_no FROM job_progress") > commits_before);

    // kill -9: the lease goes with the process; a new instance starts at once.
    first.0.kill().expect("kill -9 the first instance");
    let _ = first.0.wait();
    let _third = KillOnDrop(job.spawn(&[]));
    produce(&input, &batch(200));
    wait_committed(&job, "a new instance after the crash to commit the third batch");

    let ids = alert_ids_on_topic(&job.alerts);
    assert!(
        ids.values().all(|count| *count == 1),
        "alerts published twice: {:?}",
        ids.iter().filter(|(_, count)| **count > 1).collect::<Vec<_>>()
    );
    assert_eq!(
        ids.len() as i64,
        query_i64(&job.database_url, "SELECT count(*) FROM price_alerts")
    );
}

/// The first key of the publish lock (`lease::PUBLISH_LOCK_CLASS`, "conp").
const PUBLISH_LOCK_CLASS: i32 = 0x636f_6e70;

/// An instance's publisher starts only once the previous instance's has
/// stopped: the publish lock. The test holds process 0's publish lock, as a
/// fenced instance's publisher that has not yet noticed would: the job
/// commits (its alerts wait in the outbox) but publishes nothing; once the
/// lock is free, every alert is published, once.
#[test]
fn a_publisher_waits_while_another_holds_the_publish_lock() {
    require_broker();
    let input = unique("fencing_publish");
    create_topic(&input, 2);
    produce(&input, &batch(0));
    let job = Job::new("fencing_publish", &input);
    job.migrate();

    let runtime = runtime();
    let (holder, connection) = runtime
        .block_on(tokio_postgres::connect(&job.database_url, tokio_postgres::NoTls))
        .expect("postgres");
    let connection = runtime.spawn(connection);
    runtime
        .block_on(holder.execute("SELECT pg_advisory_lock($1, $2)", &[&PUBLISH_LOCK_CLASS, &0i32]))
        .expect("take the publish lock");

    let mut running = KillOnDrop(job.spawn(&[]));
    wait_until(Duration::from_secs(60), "the job to commit the batch", || {
        stored_offsets(&job.database_url, &job.input) == high_watermarks(&job.input)
    });
    // Time for a publisher that ignored the lock to publish.
    std::thread::sleep(Duration::from_secs(3));
    let waiting = query_i64(&job.database_url, "SELECT count(*) FROM outbox");
    assert!(waiting > 0, "the batch raised no alert");
    assert_eq!(
        read_all(&job.alerts).len(),
        0,
        "published while another publisher held the lock"
    );
    assert_eq!(
        query_i64(&job.database_url, "SELECT count(*) FROM outbox"),
        waiting
    );
    assert!(
        running.0.try_wait().expect("wait").is_none(),
        "the job stopped while its publisher waited"
    );

    // The other publisher stops: its session ends, the lock goes with it.
    drop(holder);
    let _ = runtime.block_on(connection);
    wait_committed(&job, "the publisher to publish once the lock was free");
    let ids = alert_ids_on_topic(&job.alerts);
    assert!(ids.values().all(|count| *count == 1), "{ids:?}");
    assert_eq!(
        ids.len() as i64,
        query_i64(&job.database_url, "SELECT count(*) FROM price_alerts")
    );
}
