//! What a failed PostgreSQL call means for the writer, decided where the call is
//! made (as Materialize's sinks label an error transient or definite where it
//! arises, instead of guessing later from an error chain).
//!
//! - **Transient**: the database or the way to it is unwell (connection lost or
//!   closed, server shutting down, serialization failure, deadlock, out of
//!   resources, IO): reconnect with backoff and retry the same batch.
//! - **Definite**: the database refuses the data itself (classes 22 data
//!   exception, 23 integrity constraint, ...): retrying gives the same answer,
//!   so the writer isolates the messages behind the refused rows and rejects
//!   them (`isolate`).
//! - **Fenced**: another instance of the job owns the database: stop at once,
//!   write nothing more.
//!
//! Touches nothing; pure classification.

use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{context}: {detail}")]
    Transient { context: &'static str, detail: String },
    #[error("{context}: {reason}")]
    Definite {
        context: &'static str,
        /// Short, for a dead letter's `conscope.error`: the server's message
        /// and SQLSTATE.
        reason: String,
    },
    #[error("fenced: {0}")]
    Fenced(String),
}

impl WriteError {
    /// Classifies `error`, which arose doing `context`.
    pub fn classify(context: &'static str, error: tokio_postgres::Error) -> WriteError {
        match class_of(&error) {
            Class::Transient => WriteError::Transient {
                context,
                detail: error.to_string(),
            },
            Class::Definite => WriteError::Definite {
                context,
                reason: reason(&error),
            },
        }
    }

    /// For `map_err`: `client.execute(...).await.map_err(WriteError::at("..."))`.
    pub fn at(context: &'static str) -> impl Fn(tokio_postgres::Error) -> WriteError {
        move |error| WriteError::classify(context, error)
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, WriteError::Transient { .. })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Transient,
    Definite,
}

fn class_of(error: &tokio_postgres::Error) -> Class {
    if error.is_closed() {
        return Class::Transient;
    }
    match error.code() {
        Some(code) => class_of_sqlstate(code),
        None => class_without_sqlstate(error),
    }
}

/// By SQLSTATE (PostgreSQL's Appendix A).
fn class_of_sqlstate(code: &SqlState) -> Class {
    let transient_codes = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        // A lock or statement timeout: the contention passes.
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        // Connected to a standby during a failover.
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ];
    if transient_codes.contains(code) {
        return Class::Transient;
    }
    match &code.code()[..2] {
        // 08 connection exception, 53 insufficient resources, 57 operator
        // intervention (57P01 admin shutdown, 57P03 cannot connect now), 58
        // system error (IO on the server).
        "08" | "53" | "57" | "58" => Class::Transient,
        // Everything else is an answer about the statement or the data: the
        // same statement gets the same answer.
        _ => Class::Definite,
    }
}

/// Errors that never reached the server's SQL layer: the way to the server
/// failed (IO, a timeout, the connection closing) or the data could not be
/// encoded (a value our types cannot send: the same data fails again).
fn class_without_sqlstate(error: &tokio_postgres::Error) -> Class {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        if current.downcast_ref::<std::io::Error>().is_some() {
            return Class::Transient;
        }
        cause = current.source();
    }
    // tokio-postgres names its error kinds only in the text.
    let text = error.to_string();
    let transient = [
        "error connecting",
        "timeout",
        "communicating with the server",
        "unexpected message",
    ];
    if transient.iter().any(|marker| text.contains(marker)) {
        Class::Transient
    } else {
        Class::Definite
    }
}

/// `invalid byte sequence for encoding "UTF8": 0x00 (22021)`.
fn reason(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_split_into_transient_and_definite() {
        for code in [
            "57P01", // admin_shutdown: a Postgres restart
            "57P03", // cannot_connect_now: still starting
            "08006", // connection_failure
            "08003", "40001", // serialization_failure
            "40P01", // deadlock_detected
            "53100", // disk_full
            "53200", // out_of_memory
            "53300", // too_many_connections
            "55P03", // lock_not_available
            "57014", // query_canceled (statement_timeout)
            "58030", // io_error
            "25006", // read_only_sql_transaction
        ] {
            assert_eq!(
                class_of_sqlstate(&SqlState::from_code(code)),
                Class::Transient,
                "{code}"
            );
        }
        for code in [
            "22021", // character_not_in_repertoire (NUL in text)
            "22003", // numeric_value_out_of_range
            "22001", // string_data_right_truncation
            "23514", // check_violation
            "23505", // unique_violation
            "23503", // foreign_key_violation
            "23502", // not_null_violation
            "42P01", // undefined_table: a schema problem, not a passing one
            "XX000", // internal_error
        ] {
            assert_eq!(
                class_of_sqlstate(&SqlState::from_code(code)),
                Class::Definite,
                "{code}"
            );
        }
    }

    /// A live server gives real errors: a refused row is definite and its reason
    /// names the server's message and SQLSTATE; a connection the server ends
    /// (what a restart does) is transient.
    #[test]
    fn errors_from_a_real_server_are_classified() {
        let url = std::env::var("CONSCOPE_TEST_PG")
            .map(|base| format!("{base}/postgres"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let runtime = crate::runtime::current_thread().unwrap();
        runtime.block_on(async {
            let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                panic!("no PostgreSQL at {url}; start one with scripts/stack-up.sh");
            };
            tokio::spawn(connection);
            let refused = client
                .batch_execute("SELECT 'a\\x'::bytea")
                .await
                .map_err(WriteError::at("decoding"))
                .unwrap_err();
            match refused {
                WriteError::Definite { context, reason } => {
                    assert_eq!(context, "decoding");
                    assert!(reason.ends_with("(22P02)"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
            let lost = client
                .batch_execute("SELECT 1")
                .await
                .map_err(WriteError::at("after termination"))
                .unwrap_err();
            assert!(lost.is_transient(), "{lost:?}");
        });
    }
}
