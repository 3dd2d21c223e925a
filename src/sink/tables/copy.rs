//! The binary `COPY` helpers every table's SQL goes through, and the encoding
//! of values: money as `NUMERIC` with two decimals, microseconds as
//! `TIMESTAMPTZ`. Touches only the transaction it is handed.

use chrono::{DateTime, Utc};
use conscope_dataflows::model::{Cents, ListingRow, Micros};
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use crate::sink::write_error::WriteError;

pub(super) fn timestamp(micros: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

pub(super) fn decimal(cents: Cents) -> Decimal {
    Decimal::new(cents.0, 2)
}

/// `COPY table (columns) FROM STDIN BINARY` of `rows`; `context` names the
/// table in errors.
pub(super) async fn copy_in<'a, I>(
    transaction: &Transaction<'_>,
    context: &'static str,
    statement: &str,
    types: &[Type],
    rows: I,
) -> Result<(), WriteError>
where
    I: IntoIterator<Item = Vec<Box<dyn ToSql + Sync + Send + 'a>>>,
{
    let mut copy = CopyIn::start(transaction, context, statement, types).await?;
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> =
            row.iter().map(|value| &**value as &(dyn ToSql + Sync)).collect();
        copy.write(&refs).await?;
    }
    copy.finish().await
}

/// One `COPY … FROM STDIN BINARY` in progress; `context` names the table in
/// errors.
struct CopyIn {
    context: &'static str,
    writer: std::pin::Pin<Box<BinaryCopyInWriter>>,
}

impl CopyIn {
    async fn start(
        transaction: &Transaction<'_>,
        context: &'static str,
        statement: &str,
        types: &[Type],
    ) -> Result<CopyIn, WriteError> {
        let statement = transaction
            .prepare(statement)
            .await
            .map_err(WriteError::at(context))?;
        // A COPY refused before its first row (a privilege, a missing table:
        // both checked when it runs, not when it is prepared) leaves
        // tokio-postgres's connection out of step: the copy it abandons sends
        // CopyFail and Sync, whose second ReadyForQuery the next request takes
        // for its own answer, and every answer after is the one before. Such
        // a refusal is about the statement (`before_any_row`): the writer
        // waits, then opens a new connection (`writer::Writer::reconnect`).
        let sink = transaction
            .copy_in(&statement)
            .await
            .map_err(|error| WriteError::classify(context, error).before_any_row())?;
        Ok(CopyIn {
            context,
            writer: Box::pin(BinaryCopyInWriter::new(sink, types)),
        })
    }

    async fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), WriteError> {
        self.writer
            .as_mut()
            .write(values)
            .await
            .map_err(WriteError::at(self.context))
    }

    async fn finish(mut self) -> Result<(), WriteError> {
        self.writer
            .as_mut()
            .finish()
            .await
            .map_err(WriteError::at(self.context))?;
        Ok(())
    }
}

pub(super) type Values<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

/// `COPY … FROM STDIN BINARY` of listing-shaped rows (history, listings), the
/// bulk of every commit: the values are borrowed on the stack, nothing is
/// allocated per row. `ordered`: a first column numbers the rows (partition
/// order, for `insert_maybe_stale`).
pub(super) async fn copy_listing_rows<'a>(
    transaction: &Transaction<'_>,
    context: &'static str,
    statement: &str,
    ordered: bool,
    rows: impl IntoIterator<Item = &'a ListingRow>,
) -> Result<(), WriteError> {
    let types: &[Type] = if ordered {
        &ORDERED_LISTING_TYPES
    } else {
        &ORDERED_LISTING_TYPES[1..]
    };
    let mut copy = CopyIn::start(transaction, context, statement, types).await?;
    for (ord, row) in rows.into_iter().enumerate() {
        let ord = ord as i64;
        let price = decimal(row.price);
        let currency = row.currency.as_str();
        let observed_at = timestamp(row.observed_at);
        let seat = &row.listing.seat;
        let values: [&(dyn ToSql + Sync); 10] = [
            &ord,
            &row.listing.event_id,
            &seat.section,
            &seat.row,
            &seat.seat,
            &seat.source,
            &price,
            &currency,
            &row.available,
            &observed_at,
        ];
        copy.write(if ordered { &values[..] } else { &values[1..] })
            .await?;
    }
    copy.finish().await
}

/// A row number, then the columns of a listing row.
const ORDERED_LISTING_TYPES: [Type; 10] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::BPCHAR,
    Type::BOOL,
    Type::TIMESTAMPTZ,
];
