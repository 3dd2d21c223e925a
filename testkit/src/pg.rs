//! The PostgreSQL side of the tests: a fresh database per job, queries, a
//! transaction held open (its locks with it), the
//! deterministic dump of the output tables, and checks over them.

use std::collections::BTreeMap;

use tokio_postgres::NoTls;

use crate::runtime;

pub fn pg_base() -> String {
    std::env::var("CONSCOPE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh database for one job; its URL.
pub fn fresh_database(name: &str) -> String {
    let base = pg_base();
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(&format!("{base}/postgres"), NoTls)
            .await
            .expect("postgres");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
            .expect("drop db");
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create db");
    });
    format!("{base}/{name}")
}

pub fn query_strings(url: &str, sql: &str) -> Vec<String> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .batch_execute("SET TIME ZONE 'UTC'")
            .await
            .expect("set time zone");
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|row| row.get::<_, String>(0))
            .collect()
    })
}

/// A transaction of the test's own, open after `statements` (so holding the
/// locks they took) until [`OpenTransaction::commit`].
pub struct OpenTransaction {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl OpenTransaction {
    /// `BEGIN`, then `statements`.
    pub fn begin(url: &str, statements: &str) -> OpenTransaction {
        let runtime = runtime();
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("BEGIN; {statements}"))
                .await
                .unwrap_or_else(|e| panic!("{statements}: {e}"));
            client
        });
        OpenTransaction { runtime, client }
    }

    pub fn commit(self) {
        self.runtime
            .block_on(self.client.batch_execute("COMMIT"))
            .expect("commit");
    }
}

pub fn execute(url: &str, sql: &str) {
    try_execute(url, sql).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `sql`, retrying while PostgreSQL answers "tuple concurrently updated":
/// a GRANT, REVOKE or ALTER on `price_history` updates its catalog row without
/// a lock that waits, so it loses that race against the job attaching a month's
/// partition (which updates the same row), as an operator's would; the operator
/// runs it again, and so do the tests.
pub fn try_execute(url: &str, sql: &str) -> Result<(), String> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| format!("connect for {sql}: {e}"))?;
        tokio::spawn(connection);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.batch_execute(sql).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let message = e.as_db_error().map(|db| db.message().to_owned());
                    if attempts < 50 && message.as_deref() == Some("tuple concurrently updated") {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    return Err(format!("{sql}: {}", message.unwrap_or_else(|| e.to_string())));
                }
            }
        }
    })
}

pub fn query_i64(url: &str, sql: &str) -> i64 {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    })
}

/// The deterministic contents of every output table, one string per row,
/// ordered (wall-clock columns left out).
pub fn dump(url: &str) -> BTreeMap<&'static str, Vec<String>> {
    let mut tables = BTreeMap::new();
    tables.insert(
        "events",
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, event_name, venue, event_date, first_seen, last_seen)
             FROM events ORDER BY event_id",
        ),
    );
    tables.insert(
        "price_history",
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM price_history ORDER BY event_id, section, \"row\", seat, source, observed_at",
        ),
    );
    tables.insert(
        "listings",
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM listings ORDER BY event_id, section, \"row\", seat, source",
        ),
    );
    tables.insert(
        "price_alerts",
        query_strings(
            url,
            "SELECT concat_ws('|', alert_id, kind, event_id, section, \"row\", seat, source, rule_id,
                              coalesce(old_price::text, 'null'), new_price, currency, observed_at)
             FROM price_alerts ORDER BY alert_id",
        ),
    );
    for (table, [stored, _]) in SUMMARIES {
        tables.insert(table, query_strings(url, stored));
    }
    tables
}

/// Per summary table: its rows, and the same aggregates computed over `listings`
/// (SPEC §3), each row as one string, in the same order.
const SUMMARIES: [(&str, [&str; 2]); 2] = [
    (
        "event_summary",
        [
            "SELECT concat_ws('|', event_id, currency, listings, available, coalesce(get_in_price::text, 'null'))
             FROM event_summary ORDER BY event_id, currency",
            "SELECT concat_ws('|', event_id, currency, count(*), count(*) FILTER (WHERE available),
                              coalesce((min(price) FILTER (WHERE available))::text, 'null'))
             FROM listings GROUP BY event_id, currency ORDER BY event_id, currency",
        ],
    ),
    (
        "section_summary",
        [
            "SELECT concat_ws('|', event_id, section, currency, available, coalesce(low_price::text, 'null'))
             FROM section_summary ORDER BY event_id, section, currency",
            "SELECT concat_ws('|', event_id, section, currency, count(*) FILTER (WHERE available),
                              coalesce((min(price) FILTER (WHERE available))::text, 'null'))
             FROM listings GROUP BY event_id, section, currency ORDER BY event_id, section, currency",
        ],
    ),
];

/// Every row that names an event names one in `events`: history, listings,
/// alerts and summaries (no foreign key checks them row by row: migrations
/// 0006 and 0015).
pub fn assert_rows_have_their_events(url: &str) {
    for table in [
        "price_history",
        "listings",
        "price_alerts",
        "event_summary",
        "section_summary",
    ] {
        let orphans = query_i64(
            url,
            &format!(
                "SELECT count(*) FROM {table} t WHERE NOT EXISTS
                     (SELECT 1 FROM events e WHERE e.event_id = t.event_id)"
            ),
        );
        assert_eq!(orphans, 0, "{table} rows without their event in {url}");
    }
}

/// Checks that `event_summary` and `section_summary` equal the aggregates over
/// `listings`, and are not empty when `listings` is not.
pub fn assert_summaries_match_listings(url: &str) {
    for (table, [stored, computed]) in SUMMARIES {
        let stored = query_strings(url, stored);
        let computed = query_strings(url, computed);
        if stored != computed {
            let missing: Vec<_> = computed
                .iter()
                .filter(|row| !stored.contains(row))
                .take(5)
                .collect();
            let extra: Vec<_> = stored
                .iter()
                .filter(|row| !computed.contains(row))
                .take(5)
                .collect();
            panic!(
                "{table} differs from the aggregates over listings ({} rows, {} expected); \
                 missing {missing:?}, unexpected {extra:?}",
                stored.len(),
                computed.len()
            );
        }
    }
}

/// `kafka_offsets` of a job's database, by partition.
pub fn stored_offsets(url: &str, topic: &str) -> BTreeMap<i32, i64> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
        tokio::spawn(connection);
        client
            .query(
                "SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1",
                &[&topic],
            )
            .await
            .expect("kafka_offsets")
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    })
}

/// `job_progress.commit_no` of the job database at `url`; None while it is not
/// migrated yet or does not answer (a Postgres restarting).
pub fn commit_no(url: &str) -> Option<i64> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
        tokio::spawn(connection);
        let row = client
            .query_opt("SELECT commit_no FROM job_progress", &[])
            .await
            .ok()??;
        row.try_get(0).ok()
    })
}

/// A login role of its own for one job's database, with the privileges a job
/// needs and nothing more: not a superuser, not the owner of the tables, so a
/// test can REVOKE one privilege and GRANT it back. Dropped with the value.
pub struct JobRole {
    pub name: String,
    /// The job's database as this role (a password login: the dev stack trusts
    /// only `postgres` without one).
    pub url: String,
    admin_url: String,
}

impl JobRole {
    /// Creates the role for the migrated database at `url` (as `postgres`).
    pub fn create(url: &str) -> JobRole {
        let name = crate::unique("conscope_role");
        let password = "conscope-test";
        let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
        let host_and_db = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let database = host_and_db.rsplit('/').next().expect("a database in the URL");
        // Identifiers from `unique` and the test's own database name: no data.
        execute(
            url,
            &format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{password}';
                 GRANT CONNECT, TEMPORARY ON DATABASE \"{database}\" TO {name};
                 GRANT USAGE, CREATE ON SCHEMA public TO {name};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name};
                 GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {name};"
            ),
        );
        JobRole {
            url: format!("{scheme}://{name}:{password}@{host_and_db}"),
            name,
            admin_url: url.to_owned(),
        }
    }
}

impl Drop for JobRole {
    fn drop(&mut self) {
        let name = &self.name;
        let _ = runtime().block_on(async {
            let (client, connection) = tokio_postgres::connect(&self.admin_url, NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP OWNED BY {name}; DROP ROLE {name}"))
                .await
        });
    }
}
