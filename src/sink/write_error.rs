//! What a failed PostgreSQL call means for the writer, decided where the call is
//! made (as Materialize's sinks label an error transient or definite where it
//! arises, instead of guessing later from an error chain).
//!
//! - **Transient**: the database or the way to it is unwell (connection lost or
//!   closed, server shutting down, serialization failure, deadlock, out of
//!   resources, IO): reconnect with backoff and retry the same batch.
//! - **Refused**: the database refuses values (classes 22 data exception and 23
//!   integrity constraint violation): the same statement with other rows
//!   passes, so the writer isolates the messages behind the refused rows and
//!   quarantines them (`isolate`).
//! - **Blocked**: the database says the statement or the database itself is
//!   wrong (a privilege revoked, a table renamed, corruption, ...): every batch
//!   would get the same answer, no message is behind it, so the writer keeps
//!   the batch, waits with capped backoff (reported by `/healthz` and
//!   `conscope_writer_blocked`) and retries until an operator fixes it.
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
    Refused {
        context: &'static str,
        /// Short, for a dead letter's `conscope.error`: the server's message
        /// and SQLSTATE.
        reason: String,
        sqlstate: String,
    },
    #[error("{context}: {reason}")]
    Blocked {
        context: &'static str,
        reason: String,
        sqlstate: String,
    },
    #[error("fenced: {0}")]
    Fenced(String),
    /// The job was asked to stop while the writer waited out a failure: what
    /// it held is not committed, and is read again at the next start.
    #[error("stopped on request while waiting for PostgreSQL")]
    Stopping,
}

impl WriteError {
    /// Classifies `error`, which arose doing `context`.
    pub fn classify(context: &'static str, error: tokio_postgres::Error) -> WriteError {
        let sqlstate = error
            .code()
            .map_or_else(String::new, |code| code.code().to_owned());
        match class_of(&error) {
            Class::Transient => WriteError::Transient {
                context,
                detail: error.to_string(),
            },
            Class::Refused => WriteError::Refused {
                context,
                reason: reason(&error),
                sqlstate,
            },
            Class::Blocked => WriteError::Blocked {
                context,
                reason: reason(&error),
                sqlstate,
            },
        }
    }

    /// For `map_err`: `client.execute(...).await.map_err(WriteError::at("..."))`.
    pub fn at(context: &'static str) -> impl Fn(tokio_postgres::Error) -> WriteError {
        move |error| WriteError::classify(context, error)
    }

    /// A refusal of a statement before it saw any row (a `COPY` refused at its
    /// start): whatever its class, about the statement, not the data.
    pub fn before_any_row(self) -> WriteError {
        match self {
            WriteError::Refused {
                context,
                reason,
                sqlstate,
            } => WriteError::Blocked {
                context,
                reason,
                sqlstate,
            },
            other => other,
        }
    }

    /// Worth waiting for and retrying: the database is unwell, or refuses
    /// what no message explains.
    pub fn is_retried(&self) -> bool {
        matches!(self, WriteError::Transient { .. } | WriteError::Blocked { .. })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Transient,
    Refused,
    Blocked,
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
        // 22 data exception (a value out of range, bad text), 23 integrity
        // constraint violation (a CHECK, a unique or foreign key): about the
        // rows, so other rows pass and the messages behind these can be found.
        "22" | "23" => Class::Refused,
        // Everything else says the statement or the database is wrong, and
        // every batch would get it: 42 access and syntax (42501 a REVOKE,
        // 42P01 a table dropped or renamed, 42703 a column), XX internal (XX001
        // data or XX002 index corruption), 0A, 25, 3D, 3F, 55 (the state of
        // an object), 54 (a limit of the statement), P0 (a trigger's RAISE:
        // the operator's rule, not a message's fault until they say so), ...
        _ => Class::Blocked,
    }
}

/// Errors that never reached the server's SQL layer: the way to the server
/// failed (IO, a timeout, the connection closing or out of step) or the data
/// could not be encoded (a value our types cannot send: the same data fails
/// again, other data passes).
fn class_without_sqlstate(error: &tokio_postgres::Error) -> Class {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        if current.downcast_ref::<std::io::Error>().is_some() {
            return Class::Transient;
        }
        cause = current.source();
    }
    // tokio-postgres names its error kinds only in the text. After a
    // transient failure the writer always opens a new connection, so a
    // connection out of step ("unexpected message") is left behind.
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
        Class::Refused
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
    fn sqlstates_split_into_transient_refused_and_blocked() {
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
        ] {
            assert_eq!(
                class_of_sqlstate(&SqlState::from_code(code)),
                Class::Refused,
                "{code}"
            );
        }
        for code in [
            "42501", // insufficient_privilege: a REVOKE
            "42P01", // undefined_table: a table dropped or renamed
            "42703", // undefined_column
            "XX000", // internal_error
            "XX001", // data_corrupted
            "XX002", // index_corrupted
            "0A000", // feature_not_supported
            "P0001", // raise_exception (a trigger)
        ] {
            assert_eq!(
                class_of_sqlstate(&SqlState::from_code(code)),
                Class::Blocked,
                "{code}"
            );
        }
    }

    /// A live server gives real errors: a refused value is refused and its
    /// reason names the server's message and SQLSTATE; a missing table blocks;
    /// a connection the server ends (what a restart does) is transient.
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
                WriteError::Refused {
                    context,
                    reason,
                    sqlstate,
                } => {
                    assert_eq!(context, "decoding");
                    assert!(reason.ends_with("(22P02)"), "{reason}");
                    assert_eq!(sqlstate, "22P02");
                }
                other => panic!("{other:?}"),
            }
            let missing = client
                .batch_execute("INSERT INTO no_such_table VALUES (1)")
                .await
                .map_err(WriteError::at("inserting"))
                .unwrap_err();
            assert!(
                matches!(&missing, WriteError::Blocked { sqlstate, .. } if sqlstate == "42P01"),
                "{missing:?}"
            );
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
            assert!(matches!(lost, WriteError::Transient { .. }), "{lost:?}");
        });
    }
}
