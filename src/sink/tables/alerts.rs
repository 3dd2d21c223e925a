//! The `price_alerts` table: the batch's alerts, one row per `alert_id` (the
//! first in commit order); those the insert added become outbox rows for the
//! alerts topic.

use std::collections::HashSet;

use conscope_dataflows::model::Alert;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::copy::{copy_in, decimal, timestamp, Values};
use super::outbox::OutboxRow;
use crate::sink::config::WriterConfig;
use crate::sink::encode::{alert_headers, alert_json};
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// Inserts the batch's alerts; returns the outbox rows of those it inserted.
pub(super) async fn write_alerts<'a>(
    transaction: &Transaction<'_>,
    config: &'a WriterConfig,
    merged: &Merged,
) -> Result<Vec<OutboxRow<'a>>, WriteError> {
    let mut outbox: Vec<OutboxRow> = Vec::new();
    if !merged.alerts.is_empty() {
        let alerts = distinct_alerts(&merged.alerts);
        copy_in(
            transaction,
            "cannot copy into incoming_alerts",
            "COPY incoming_alerts FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::NUMERIC,
                Type::NUMERIC,
                Type::BPCHAR,
                Type::TIMESTAMPTZ,
            ],
            alerts.iter().map(|alert| -> Values<'_> {
                vec![
                    Box::new(alert.alert_id.as_str()),
                    Box::new(alert.kind.as_str()),
                    Box::new(alert.listing.event_id.as_str()),
                    Box::new(alert.listing.seat.section.as_str()),
                    Box::new(alert.listing.seat.row.as_str()),
                    Box::new(alert.listing.seat.seat.as_str()),
                    Box::new(alert.listing.seat.source.as_str()),
                    Box::new(alert.rule_id),
                    Box::new(alert.old_price.map(decimal)),
                    Box::new(decimal(alert.new_price)),
                    Box::new(alert.currency.as_str().to_owned()),
                    Box::new(timestamp(alert.observed_at)),
                ]
            }),
        )
        .await?;
        // An alert id stored by an earlier commit (a rule re-enabled on the same
        // observation) is not published again.
        let inserted: HashSet<String> = transaction
            .query(
                "INSERT INTO price_alerts SELECT * FROM incoming_alerts ON CONFLICT (alert_id) DO NOTHING
                 RETURNING alert_id",
                &[],
            )
            .await
            .map_err(WriteError::at("cannot insert alerts"))?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        for alert in alerts_to_publish(&merged.alerts, inserted) {
            let key = alert.listing.event_id.as_bytes();
            outbox.push(OutboxRow {
                topic: &config.alerts.topic,
                partition: config.alerts.partition_for(Some(key), 0),
                key: Some(key.to_vec()),
                payload: alert_json(alert),
                headers: alert_headers(alert),
            });
        }
    }
    Ok(outbox)
}

/// The alerts of a merged batch to insert: the first of each `alert_id` in
/// commit order. Merged epochs can hold one id twice (a rule disabled and
/// re-enabled while the writer is behind fires again on the same observation);
/// the table keeps one row per id, and which one must not depend on the order
/// PostgreSQL reads the temporary table in.
fn distinct_alerts(alerts: &[Alert]) -> Vec<&Alert> {
    let mut seen = HashSet::new();
    alerts
        .iter()
        .filter(|alert| seen.insert(alert.alert_id.as_str()))
        .collect()
}

/// The alerts of a merged batch that go to the outbox, ordered by time: one per
/// row the `INSERT` added (`inserted`: its `RETURNING` set), so one per id even
/// when the batch holds an id twice, and the first of them in commit order, as
/// `distinct_alerts` inserted.
fn alerts_to_publish(alerts: &[Alert], mut inserted: HashSet<String>) -> Vec<&Alert> {
    let mut alerts: Vec<&Alert> = alerts
        .iter()
        .filter(|alert| inserted.remove(&alert.alert_id))
        .collect();
    alerts.sort_by(|a, b| (a.observed_at, &a.alert_id).cmp(&(b.observed_at, &b.alert_id)));
    alerts
}

#[cfg(test)]
mod tests {
    use conscope_dataflows::model::{AlertKind, Cents, Currency, ListingKey, Micros, Seat, SinkRecord};

    use super::*;
    use crate::sink::merge::EpochBatch;

    fn rule_alert(alert_id: &str, old_price: Option<i64>, observed_at: Micros) -> Alert {
        Alert {
            alert_id: alert_id.to_owned(),
            kind: AlertKind::RuleMatch,
            listing: ListingKey {
                event_id: "e1".to_owned(),
                seat: Seat {
                    section: "A".to_owned(),
                    row: "1".to_owned(),
                    seat: "1".to_owned(),
                    source: "s1".to_owned(),
                },
            },
            rule_id: Some(7),
            max_price: Some(Cents(12500)),
            old_price: old_price.map(Cents),
            new_price: Cents(12000),
            currency: Currency::USD,
            observed_at,
            event_name: "e1".to_owned(),
        }
    }

    fn epoch(epoch: u64, alerts: Vec<Alert>) -> EpochBatch {
        EpochBatch {
            epoch,
            containers: vec![alerts.into_iter().map(SinkRecord::Alert).collect()],
        }
    }

    /// A rule disabled and re-enabled while the writer is behind fires twice on
    /// the same observation: two alerts with one id in one merged batch. The
    /// table keeps one row, so the outbox gets one message: the first firing's.
    #[test]
    fn alerts_sharing_an_id_in_one_merged_batch_are_published_once() {
        let mut merged = Merged::default();
        merged.absorb(epoch(
            1,
            vec![rule_alert("r7", None, 10), rule_alert("other", None, 5)],
        ));
        merged.absorb(epoch(2, vec![rule_alert("r7", Some(13000), 10)]));

        let inserted: HashSet<String> = ["r7".to_owned(), "other".to_owned()].into();
        let stored: Vec<Option<Cents>> = distinct_alerts(&merged.alerts)
            .iter()
            .map(|alert| alert.old_price)
            .collect();
        assert_eq!(stored, [None, None], "one row per id, the first firing's");
        let published = alerts_to_publish(&merged.alerts, inserted);
        let ids: Vec<&str> = published.iter().map(|alert| alert.alert_id.as_str()).collect();
        assert_eq!(ids, ["other", "r7"]);
        assert_eq!(
            published[1].old_price, None,
            "the first firing in commit order wins"
        );

        // An id the INSERT skipped (stored by an earlier commit) is not published.
        let published = alerts_to_publish(&merged.alerts, ["other".to_owned()].into());
        assert_eq!(published.len(), 1);
    }
}
