//! Input written by a transactional producer, on the real broker: commit and
//! abort markers, and the records of aborted transactions, occupy offsets that a
//! `read_committed` consumer never receives. The job must store only committed
//! messages, store the consumer's position (past the markers) as the next offset,
//! reach the end of a bounded replay, and report no lag once done.

use std::time::Duration;

use conscope_testkit::*;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const TIMEOUT: Duration = Duration::from_secs(30);

fn observation(event: &str, seat: u32, price: &str, minute: u32) -> String {
    format!(
        r#"{{"event_id":"{event}","section":"A","seat":"{seat}","price":"{price}","timestamp":"2026-01-01T00:{minute:02}:00Z"}}"#
    )
}

/// Sends `messages` (`(partition, event, value)`) inside one transaction, waits
/// until the broker has every record, then commits or aborts it.
fn transaction(producer: &FutureProducer, topic: &str, messages: &[(i32, &str, String)], commit: bool) {
    producer.begin_transaction().expect("begin transaction");
    let deliveries: Vec<_> = messages
        .iter()
        .map(|(partition, event, value)| {
            let record = FutureRecord::to(topic)
                .partition(*partition)
                .key(event.as_bytes())
                .payload(value.as_bytes());
            match producer.send_result(record) {
                Ok(delivery) => delivery,
                Err((error, _)) => panic!("cannot queue: {error}"),
            }
        })
        .collect();
    runtime().block_on(async {
        for delivery in deliveries {
            delivery.await.expect("not cancelled").expect("delivered");
        }
    });
    if commit {
        producer.commit_transaction(TIMEOUT).expect("commit transaction");
    } else {
        producer.abort_transaction(TIMEOUT).expect("abort transaction");
    }
}

#[test]
fn transactional_input_is_read_committed_to_its_end() {
    require_broker();
    let input = unique("txn_input");
    create_topic(&input, 2);
    let producer: FutureProducer = client_config()
        .set("transactional.id", unique("txn_producer"))
        .create()
        .expect("transactional producer");
    producer.init_transactions(TIMEOUT).expect("init transactions");
    // Partition 0 carries e1, partition 1 e2. Aborted records carry price 999.
    transaction(
        &producer,
        &input,
        &[
            (0, "e1", observation("e1", 1, "100", 0)),
            (0, "e1", observation("e1", 1, "90", 1)),
            (1, "e2", observation("e2", 1, "50", 0)),
        ],
        true,
    );
    transaction(
        &producer,
        &input,
        &[
            (0, "e1", observation("e1", 2, "999", 2)),
            (1, "e2", observation("e2", 2, "999", 2)),
            (1, "e2", observation("e2", 3, "999", 3)),
        ],
        false,
    );
    transaction(
        &producer,
        &input,
        &[
            (0, "e1", observation("e1", 1, "80", 4)),
            (1, "e2", observation("e2", 1, "45", 4)),
        ],
        true,
    );
    let highs = high_watermarks(&input);
    // 3 committed messages and 3 markers on partition 0; 2 + 2 aborted + 3 markers on 1.
    assert_eq!(highs, [(0, 7), (1, 7)].into_iter().collect());

    let job = Job::new("txn_input", &input);
    let summary = job.run_to_end_within(Duration::from_secs(120), &["-w", "2"]);
    assert_summary(&summary, &[("processed", 5), ("lag", 0)]);

    assert_eq!(
        query_strings(
            &job.database_url,
            "SELECT concat_ws('|', event_id, seat, price, observed_at) FROM price_history
             ORDER BY event_id, seat, observed_at"
        ),
        [
            "e1|1|100.00|2026-01-01 00:00:00+00",
            "e1|1|90.00|2026-01-01 00:01:00+00",
            "e1|1|80.00|2026-01-01 00:04:00+00",
            "e2|1|50.00|2026-01-01 00:00:00+00",
            "e2|1|45.00|2026-01-01 00:04:00+00",
        ],
        "exactly the committed messages"
    );
    assert_eq!(
        stored_offsets(&job.database_url, &input),
        highs,
        "the stored next offsets are past the last commit markers"
    );

    let again = job.run_to_end_within(Duration::from_secs(120), &["-w", "2"]);
    // A second run does nothing, and knows it is at the end.
    assert_summary(&again, &[("processed", 0), ("lag", 0)]);
    assert_eq!(stored_offsets(&job.database_url, &input), highs);

    // Reading uncommitted input would store what the producer aborted: refused.
    let refused = job
        .command(&["--exit-at-end", "--kafka", "isolation.level=read_uncommitted"])
        .output()
        .expect("run conscope");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("isolation.level=read_committed only"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
