//! Partitions added to the input topic while the job runs, on the real broker:
//! a running `conscope run` picks them up without a restart (partition `p` by
//! worker `p % peers`, read from its earliest offset), and the sink stores their
//! offsets with their rows.

use std::time::{Duration, Instant};

use conscope_testkit::*;

fn observation(event: &str, price: u32, minute: u32) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{event}","section":"A","price":{price},"timestamp":"2026-01-01T00:{minute:02}:00Z"}}"#
    )
    .into_bytes()
}

fn rows(url: &str) -> Vec<String> {
    query_strings(
        url,
        "SELECT concat_ws('|', event_id, price) FROM price_history ORDER BY event_id, observed_at",
    )
}

#[test]
fn partitions_added_while_running_are_read_and_their_offsets_stored() {
    require_broker();
    let input = unique("grow");
    create_topic(&input, 2);
    produce(
        &input,
        &[
            (0, Some("p0"), observation("p0", 10, 0)),
            (1, Some("p1"), observation("p1", 11, 0)),
        ],
    );
    let job = Job::new("grow", &input);
    job.migrate();
    // Three workers for two partitions: worker 2 owns nothing at start and
    // partition 2 once it exists.
    let _running = KillOnDrop(job.spawn(&["-w", "3"]));
    wait_until(Duration::from_secs(60), "the first rows", || {
        rows(&job.database_url).len() == 2
    });

    add_partitions(&input, 4);
    produce(
        &input,
        &[
            (2, Some("p2"), observation("p2", 20, 1)),
            (2, Some("p2"), observation("p2", 21, 2)),
            (3, Some("p3"), observation("p3", 30, 1)),
            (0, Some("p0"), observation("p0", 12, 1)),
        ],
    );
    let expected = [
        "p0|10.00", "p0|12.00", "p1|11.00", "p2|20.00", "p2|21.00", "p3|30.00",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&job.database_url) != expected {
        assert!(
            Instant::now() < deadline,
            "rows of the added partitions never appeared: {:?}",
            rows(&job.database_url)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let highs = high_watermarks(&input);
    assert_eq!(highs, [(0, 2), (1, 1), (2, 2), (3, 1)].into_iter().collect());
    wait_until(Duration::from_secs(30), "the offsets of every partition", || {
        stored_offsets(&job.database_url, &input) == highs
    });
}
