//! The job lease: at most one live instance of each process of a job.
//!
//! ```text
//!  conscope run (process I) ──dedicated connection──► pg_try_advisory_lock(JOB, I)
//!        │ held: restore, write, publish                 │ refused: exit, naming the holder
//!        └── connection lost: writer and publisher wait; re-take the lock;
//!            someone else has it: stop
//! ```
//!
//! One database holds one job's state, so the lock is keyed by the process
//! index within the database: the processes of one timely cluster hold
//! different keys, a second `conscope run` of the same process (a rolling
//! deploy, a mistake) is refused before it restores state or publishes
//! anything. The lock is a session-level advisory lock on a connection of its
//! own, held for the process's whole life: a process that dies, even by
//! `kill -9`, closes its socket and PostgreSQL releases the lock, so a restart
//! after a crash is never refused. The connection's `application_name` names
//! the holder (host, pid and a random id of this run) for the refusal message
//! and for operators (`pg_stat_activity`).
//!
//! # Orphans
//! A connection reset that only the client saw (a NAT or proxy dropping the
//! flow, a cable pulled and put back) leaves the old backend alive and holding
//! the lock: the server has not noticed, and may not for hours. Two things
//! keep that from refusing the job its own lease:
//! - the lease re-takes the lock after losing its connection; a holder whose
//!   `application_name` carries this run's id is provably this instance's own
//!   orphan (the id is random per run and never leaves this process), so it
//!   is ended with `pg_terminate_backend` and the lock taken;
//! - an orphan of an instance that is gone (a crashed host: nobody is left to
//!   recognise it) is bounded by the session settings of the lease connection:
//!   `idle_session_timeout` ends it once it has been idle for
//!   [`ORPHAN_IDLE_LIMIT`] (a live lease pings every [`CHECK_EVERY`]), and
//!   server-side TCP keepalives and `tcp_user_timeout` end it once its peer's
//!   host stops answering.
//!
//! The writer checks, in each commit's transaction, that the lease's backend
//! still holds the lock (`pg_locks`), so a commit never lands for an instance
//! that lost it; together with `job_progress.commit_no` this fences a writer
//! whose lease lapsed while another instance took over. After a PostgreSQL
//! restart the lease reconnects and takes the lock again; if another instance
//! took it meanwhile, this one stops.
//!
//! Touches: its own connection; `pg_locks` and `pg_stat_activity` (read);
//! `pg_terminate_backend` of its own orphan only.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio_postgres::{Client, Config, GenericClient, NoTls};

use crate::config::redact_url;

/// The first key of the lock (`classid` in `pg_locks`): "cons" in ASCII, so no
/// other user of advisory locks in the database collides by accident.
pub const LOCK_CLASS: i32 = 0x636f_6e73;

/// The first key of the publish lock: "conp". The outbox publisher of process
/// `I` holds `(PUBLISH_LOCK_CLASS, I)` for its session, so a new instance's
/// publisher starts only once the old one's has stopped (`sink::publisher`).
pub const PUBLISH_LOCK_CLASS: i32 = 0x636f_6e70;

/// How long another holder must stay before this instance is refused.
const REFUSE_AFTER: Duration = Duration::from_secs(3);

/// How long the first take waits for PostgreSQL to answer.
const FIRST_TAKE_PATIENCE: Duration = Duration::from_secs(120);

/// How often the lease checks its connection.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long the lease's session may stay idle before PostgreSQL ends it: far
/// above `CHECK_EVERY`, so only a session nobody talks to any more (an orphan)
/// reaches it.
const ORPHAN_IDLE_LIMIT: Duration = Duration::from_secs(60);

/// The lease connection's session settings (libpq `options`), each bounding
/// how long an orphaned session keeps the lock:
/// - `idle_session_timeout`: see [`ORPHAN_IDLE_LIMIT`];
/// - `tcp_keepalives_*`: the server probes a silent peer after 10 s, every
///   5 s, and drops it after 3 unanswered probes (the defaults defer to the
///   kernel's two hours);
/// - `tcp_user_timeout`: data the server sent that stays unacknowledged for
///   30 s drops the connection (off by default).
fn session_options() -> String {
    format!(
        "-c idle_session_timeout={} -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
         -c tcp_keepalives_count=3 -c tcp_user_timeout=30000",
        ORPHAN_IDLE_LIMIT.as_millis()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another `conscope run` holds this job (process {process}) on this database: {holder}. \
         One database holds one job's state; stop that instance first (a crashed one releases \
         the job by itself)"
    )]
    Held { process: usize, holder: String },
    #[error("cannot take the job lease at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot start the job lease thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the job lease thread stopped before taking the lease")]
    Gone,
}

/// A held lease, shared by the writer and the publisher.
#[derive(Clone, Debug)]
pub struct Lease {
    process: i32,
    /// Random per run: in the holder's `application_name`, so this instance
    /// recognises a session of its own that it lost.
    run_id: String,
    /// The backend pid of the connection holding the lock; 0 while the lease
    /// is being re-taken (after the connection was lost).
    holder_pid: Arc<AtomicI32>,
}

impl Lease {
    /// Takes the lease of `process` or fails with who holds it. Keeps it on a
    /// thread of its own for the life of the process; if it is lost to another
    /// instance, `on_lost` runs (the job stops).
    pub fn acquire(
        database_url: &str,
        process: usize,
        on_lost: impl FnOnce(LeaseError) + Send + 'static,
    ) -> Result<Lease, LeaseError> {
        let lease = Lease {
            process: i32::try_from(process).unwrap_or(i32::MAX),
            run_id: format!("{:016x}", rand::random::<u64>()),
            holder_pid: Arc::new(AtomicI32::new(0)),
        };
        let (first, taken) = mpsc::channel();
        let url = database_url.to_owned();
        let keeper = lease.clone();
        std::thread::Builder::new()
            .name("job-lease".into())
            .spawn(move || {
                let runtime = match crate::runtime::current_thread() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = first.send(Err(LeaseError::Thread(error)));
                        return;
                    }
                };
                runtime.block_on(keeper.keep(url, first, on_lost));
            })?;
        taken.recv().map_err(|_| LeaseError::Gone)??;
        Ok(lease)
    }

    /// A lease that holds nothing, as `pid` (tests of fencing).
    #[cfg(test)]
    pub(crate) fn detached(process: i32, pid: i32) -> Lease {
        Lease {
            process,
            run_id: "detached".to_owned(),
            holder_pid: Arc::new(AtomicI32::new(pid)),
        }
    }

    /// The backend pid holding the lock for this process, `None` while the
    /// lease is being re-taken.
    pub fn holder_pid(&self) -> Option<i32> {
        Some(self.holder_pid.load(Ordering::SeqCst)).filter(|pid| *pid != 0)
    }

    pub fn is_held(&self) -> bool {
        self.holder_pid().is_some()
    }

    /// The lock's second key (`objid` in `pg_locks`).
    pub fn process_key(&self) -> i32 {
        self.process
    }

    /// This run's id: what the writer stamps its commits with (`committed_by`).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether the lease's session holds the lock now, as the database sees it
    /// from `client`'s snapshot: `false` while the lease is being taken again.
    /// Run in a transaction, it fences what that transaction writes.
    pub async fn is_held_in(&self, client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        let Some(pid) = self.holder_pid() else {
            return Ok(false);
        };
        Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                                AND classid::bigint = $1 AND objid::bigint = $2 AND pid = $3
                                AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                &[&i64::from(LOCK_CLASS), &i64::from(self.process), &pid],
            )
            .await?
            .get(0))
    }

    async fn keep(
        self,
        url: String,
        first: mpsc::Sender<Result<(), LeaseError>>,
        on_lost: impl FnOnce(LeaseError),
    ) {
        let process = usize::try_from(self.process).unwrap_or(0);
        // PostgreSQL may be restarting as the job starts: wait for it a while.
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut client = loop {
            match take(&url, self.process, &self.run_id).await {
                Ok(Taken::Held(client, pid)) => {
                    self.holder_pid.store(pid, Ordering::SeqCst);
                    let _ = first.send(Ok(()));
                    break client;
                }
                Ok(Taken::Refused(holder)) => {
                    let _ = first.send(Err(LeaseError::Held { process, holder }));
                    return;
                }
                Err(error) if started.elapsed() < FIRST_TAKE_PATIENCE => {
                    tracing::warn!("{error}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    let _ = first.send(Err(error));
                    return;
                }
            }
        };
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if Arc::strong_count(&self.holder_pid) == 1 {
                // Every other handle is gone: the job has ended (in-process
                // runs end without the process). Closing the session
                // releases the lock.
                return;
            }
            if client.simple_query("").await.is_ok() {
                continue;
            }
            // The session is gone, and the lock with it: nobody may commit for
            // this process until it is ours again.
            self.holder_pid.store(0, Ordering::SeqCst);
            tracing::warn!("lost the job lease's PostgreSQL connection; taking the lease again");
            loop {
                match take(&url, self.process, &self.run_id).await {
                    Ok(Taken::Held(retaken, pid)) => {
                        client = retaken;
                        self.holder_pid.store(pid, Ordering::SeqCst);
                        delay = Duration::from_millis(100);
                        tracing::info!("job lease taken again");
                        break;
                    }
                    Ok(Taken::Refused(holder)) => {
                        on_lost(LeaseError::Held { process, holder });
                        return;
                    }
                    Err(error) => {
                        tracing::warn!("{error}; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

enum Taken {
    /// The lock is ours: the connection holding it and its backend pid.
    Held(Client, i32),
    /// Someone else holds it: who.
    Refused(String),
}

/// What this run's lease sessions' `application_name` starts with: the run id
/// first, since PostgreSQL cuts the name at 63 bytes (a long host name).
fn run_prefix(run_id: &str) -> String {
    format!("conscope run {run_id} ")
}

/// The `application_name` of this run's lease sessions.
fn application_name(process: i32, run_id: &str) -> String {
    format!(
        "{}process={process} pid={} host={}",
        run_prefix(run_id),
        std::process::id(),
        hostname()
    )
}

async fn take(url: &str, process: i32, run_id: &str) -> Result<Taken, LeaseError> {
    let connect_error = |source| LeaseError::Connect {
        url: redact_url(url),
        source,
    };
    let mut config: Config = url.parse().map_err(connect_error)?;
    let ours = run_prefix(run_id);
    config.application_name(application_name(process, run_id));
    config.options(session_options());
    let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "job lease connection closed");
        }
    });
    // A holder that was just killed may still show for a moment, until its
    // backend notices the closed socket: only one still there after
    // `REFUSE_AFTER` is a live instance.
    let mut holder = None;
    for _ in 0..REFUSE_AFTER.as_millis() / 200 {
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
                &[&LOCK_CLASS, &process],
            )
            .await
            .map_err(connect_error)?;
        if row.get::<_, bool>(0) {
            return Ok(Taken::Held(client, row.get(1)));
        }
        let found = client
            .query_opt(
                "SELECT format('backend pid %s, %s, client %s, connected since %s',
                               a.pid, coalesce(nullif(a.application_name, ''), 'no application_name'),
                               coalesce(host(a.client_addr), 'local socket'), a.backend_start),
                        a.pid, a.application_name
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2
                   -- pg_locks lists every database's locks: other jobs on this
                   -- server hold the same key in theirs.
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&i64::from(LOCK_CLASS), &i64::from(process)],
            )
            .await
            .map_err(connect_error)?;
        if let Some(row) = found {
            let (pid, name): (i32, Option<String>) = (row.get(1), row.get(2));
            if name.is_some_and(|name| name.starts_with(&ours)) {
                // This run's own session, lost on our side only: provably
                // ours (the run id never leaves this process), so end it.
                tracing::warn!(
                    backend_pid = pid,
                    "the job lease is held by this instance's own lost session; ending it"
                );
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(connect_error)?;
            } else {
                holder = Some(row.get(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Taken::Refused(holder.unwrap_or_else(|| {
        "a session that keeps ending and coming back".to_owned()
    })))
}

/// This machine's name, for the holder's `application_name`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> String {
        let base =
            std::env::var("CONSCOPE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        format!("{base}/postgres")
    }

    /// A process key no other test uses at the same time.
    fn key() -> usize {
        1_000_000 + std::process::id() as usize % 1_000_000
    }

    /// A TCP proxy to the test's PostgreSQL. `cut` closes the client side of
    /// every connection made so far and keeps the server side open: a reset
    /// that only the client sees, whose backend lives on.
    struct Proxy {
        port: u16,
        clients: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    }

    impl Proxy {
        fn start(target: (String, u16)) -> Proxy {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let clients = Arc::new(std::sync::Mutex::new(Vec::new()));
            let accepted = Arc::clone(&clients);
            std::thread::spawn(move || {
                // Every server side stays here, open, for the life of the test.
                let mut servers = Vec::new();
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let server = std::net::TcpStream::connect((target.0.as_str(), target.1)).unwrap();
                    let (mut from_client, mut to_server) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (mut from_server, mut to_client) =
                        (server.try_clone().unwrap(), client.try_clone().unwrap());
                    std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
                    std::thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
                    accepted.lock().unwrap().push(client);
                    servers.push(server);
                }
            });
            Proxy { port, clients }
        }

        fn cut(&self) {
            for client in self.clients.lock().unwrap().drain(..) {
                let _ = client.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// After a reset only the client saw, the lease's old backend still holds
    /// the lock. The lease recognises that session as its own (its run id) and
    /// takes the lock back, instead of stopping the job for "another instance".
    #[test]
    fn a_lost_session_of_its_own_does_not_cost_the_lease() {
        let config: Config = url().parse().unwrap();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let proxy = Proxy::start((host, port));
        let through_proxy = format!("postgres://{user}@127.0.0.1:{}/postgres", proxy.port);

        let (lost, stopped) = mpsc::channel();
        let lease = Lease::acquire(&through_proxy, key() + 1, move |error| {
            let _ = lost.send(error.to_string());
        })
        .unwrap();
        let orphan = lease.holder_pid().unwrap();
        proxy.cut();

        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reason) = stopped.try_recv() {
                panic!("the lease was given up: {reason}");
            }
            if lease.holder_pid().is_some_and(|pid| pid != orphan) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lease was not taken back"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The orphan was ended, not left holding nothing in particular.
        let runtime = crate::runtime::current_thread().unwrap();
        let alive: i64 = runtime.block_on(async {
            let client = crate::db::connect(&url()).await.unwrap();
            client
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&orphan])
                .await
                .unwrap()
                .get(0)
        });
        assert_eq!(alive, 0, "the orphaned backend {orphan} is still there");
    }

    /// The lease of an instance whose session dies is taken by another; the
    /// first finds it taken when it reconnects, and stops.
    #[test]
    fn an_instance_that_lost_its_lease_to_another_stops() {
        let (lost, stopped) = mpsc::channel();
        let first = Lease::acquire(&url(), key(), move |error| {
            let _ = lost.send(error.to_string());
        })
        .unwrap();
        let refused = Lease::acquire(&url(), key(), |_| {}).unwrap_err();
        assert!(refused.to_string().contains("conscope run "), "{refused}");
        assert!(refused.to_string().contains(" process="), "{refused}");

        // The first instance's session ends (a PostgreSQL restart, a network cut).
        let pid = first.holder_pid().unwrap();
        let runtime = crate::runtime::current_thread().unwrap();
        runtime.block_on(async {
            let client = crate::db::connect(&url()).await.unwrap();
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
        });
        let second = Lease::acquire(&url(), key(), |_| {}).unwrap();
        assert!(second.is_held());

        let reason = stopped.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            reason.contains("another `conscope run` holds this job"),
            "{reason}"
        );
        assert!(!first.is_held(), "a lost lease must not look held");
    }
}
