//! `conscope run --metrics-addr HOST:PORT`: serves the job's metrics in
//! Prometheus text format at `/metrics`, and `/healthz` (200 while the process
//! runs and its writer, if it has one, can write; 503 naming the refusal while
//! PostgreSQL blocks the writes). Reads [`Metrics`] only; touches nothing else.
//! `conscope notify` serves its own figures the same way (anything that is
//! [`Exposition`]).
//!
//! A plain HTTP/1.1 server on its own threads, one short-lived thread per
//! connection (a scrape every few seconds needs no more). Never blocks a worker.
//!
//! # Requests are hostile
//! - A connection has [`DEADLINE`] in all to send its request head (at most
//!   8 KiB) and take its response: one deadline for the whole exchange, not a
//!   timeout per read, so a client that sends a byte now and then is cut off
//!   all the same.
//! - At most [`MAX_CONNECTIONS`] are open at once. A new one past that closes
//!   the oldest open one rather than being refused: a scrape sends its head at
//!   once and is answered in milliseconds, so it is never the oldest for long,
//!   while slow clients holding every slot are the oldest and go first. A
//!   scrape is therefore never locked out by slow clients; only a flood of
//!   new connections faster than scrapes are answered could crowd one out.
//! - Anything but `GET /metrics` and `GET /healthz` gets 400, 404 or 405.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

const MAX_HEAD_BYTES: u64 = 8 * 1024;
/// The whole life of a connection: its request head in, its response out.
const DEADLINE: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start the metrics server thread: {0}")]
    Thread(std::io::Error),
}

/// Figures that print themselves in Prometheus text format, and say whether
/// the process is healthy.
pub trait Exposition: Send + Sync + 'static {
    fn prometheus(&self) -> String;
    /// Why `/healthz` answers 503, if it does.
    fn unhealthy(&self) -> Option<String> {
        None
    }
}

impl Exposition for Metrics {
    fn prometheus(&self) -> String {
        Metrics::prometheus(self)
    }

    /// While PostgreSQL refuses the job's writes.
    fn unhealthy(&self) -> Option<String> {
        self.blocked().map(|blocked| {
            format!(
                "writes blocked for {}s: PostgreSQL refuses them ({}), the job waits and retries: {}\n",
                blocked.since.elapsed().as_secs(),
                blocked.sqlstate,
                conscope::text::printable(&blocked.reason)
            )
        })
    }
}

/// Binds `addr` now (so a bad address stops the job at start) and serves on a
/// thread of its own. Returns the bound address (port 0 picks a free one).
pub fn spawn<M: Exposition>(addr: &str, metrics: Arc<M>) -> Result<SocketAddr, ServeError> {
    let bind = |source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let open = Arc::new(Open::default());
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let deadline = Instant::now() + DEADLINE;
                let Some(id) = open.admit(&stream) else { continue };
                let metrics = Arc::clone(&metrics);
                let done = Arc::clone(&open);
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        serve(&stream, metrics.as_ref(), deadline);
                        done.leave(id);
                    });
                if spawned.is_err() {
                    open.leave(id);
                }
            }
        })
        .map_err(ServeError::Thread)?;
    tracing::info!(%local, "serving /metrics and /healthz");
    Ok(local)
}

/// The open connections, oldest first, each with a handle that can close it.
#[derive(Default)]
struct Open {
    connections: Mutex<(u64, Vec<(u64, TcpStream)>)>,
}

impl Open {
    /// Registers `stream`, closing the oldest connection when all slots are
    /// taken. `None` (and `stream` is dropped, which closes it) when it cannot
    /// be registered.
    fn admit(&self, stream: &TcpStream) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let mut guard = self.lock();
        let (next, open) = &mut *guard;
        if open.len() >= MAX_CONNECTIONS {
            let (_, oldest) = open.remove(0);
            // Wakes its thread from a blocked read or write; that thread ends.
            let _ = oldest.shutdown(std::net::Shutdown::Both);
        }
        *next += 1;
        open.push((*next, handle));
        Some(*next)
    }

    fn leave(&self, id: u64) {
        self.lock().1.retain(|(open, _)| *open != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<(u64, TcpStream)>)> {
        // Every operation is one push or one removal: a panic cannot leave the
        // list half-changed.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads and writes of one connection, each given only the time left before
/// the connection's deadline.
struct Timed<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Timed<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        let mut stream = self.stream;
        stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut stream = self.stream;
        stream.flush()
    }
}

/// What a request line asks for.
fn route(request_line: &str) -> (&'static str, &'static str) {
    let parts: Vec<&str> = request_line.split_ascii_whitespace().collect();
    let [method, target, version] = parts[..] else {
        return ("400 Bad Request", "bad");
    };
    if !version.starts_with("HTTP/") {
        return ("400 Bad Request", "bad");
    }
    // Query strings are ignored, as Prometheus may add some.
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", "metrics"),
        ("GET", "/healthz") => ("200 OK", "healthz"),
        (_, "/metrics" | "/healthz") => ("405 Method Not Allowed", "method"),
        _ => ("404 Not Found", "missing"),
    }
}

fn serve<M: Exposition>(stream: &TcpStream, metrics: &M, deadline: Instant) {
    let mut timed = Timed { stream, deadline };
    let mut head = BufReader::new(Read::by_ref(&mut timed).take(MAX_HEAD_BYTES));
    // Bytes, not `read_line`: a request that is not UTF-8 still gets an answer.
    let mut first = Vec::new();
    if head.read_until(b'\n', &mut first).is_err() {
        return;
    }
    let request_line = String::from_utf8_lossy(&first).into_owned();
    // Drain the headers (bounded by `take`), so the client sees a clean close.
    let mut line = Vec::new();
    loop {
        line.clear();
        match head.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == b"\r\n" || line == b"\n" => break,
            Ok(_) => {}
        }
    }
    drop(head);
    let out = &mut timed;
    let _ = match route(&request_line) {
        (status, "metrics") => respond(
            out,
            status,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.prometheus(),
        ),
        (status, "healthz") => match metrics.unhealthy() {
            None => respond(out, status, "text/plain", "ok\n"),
            Some(why) => respond(out, "503 Service Unavailable", "text/plain", &why),
        },
        (status, "method") => respond(out, status, "text/plain", "only GET\n"),
        (status, "bad") => respond(out, status, "text/plain", "bad request\n"),
        (status, _) => respond(out, status, "text/plain", "not found: try /metrics or /healthz\n"),
    };
}

fn respond(out: &mut impl Write, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        // A head over the limit is cut off by the server: the rest may not go.
        let _ = stream.write_all(request);
        // End of request: the server need not wait for its read timeout.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    }

    #[test]
    fn serves_metrics_and_health_and_nothing_else() {
        let metrics = Metrics::new("alerts", 0);
        metrics.parked(2);
        let addr = spawn("127.0.0.1:0", Arc::clone(&metrics)).expect("bind");

        let reply = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("text/plain; version=0.0.4"), "{reply}");
        assert!(
            reply.contains("\n# TYPE conscope_messages_processed_total counter\n"),
            "{reply}"
        );
        assert!(reply.contains("\nconscope_outbox_parked_total 2\n"), "{reply}");
        assert!(
            reply.contains("\nconscope_alerts_total{kind=\"rule_match\"} 0\n"),
            "{reply}"
        );
        let (head, body) = reply.split_once("\r\n\r\n").expect("head and body");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .and_then(|value| value.parse().ok())
            .expect("Content-Length");
        assert_eq!(length, body.len());
        // Every sample line is `name{labels} value`; every metric has HELP and TYPE.
        for line in body.lines().filter(|line| !line.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("conscope_"), "{line}");
            assert!(value == "NaN" || value.parse::<f64>().is_ok(), "{line}");
        }

        assert!(get(addr, b"GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        assert!(get(addr, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, b"GET /../etc/passwd HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        // Hostile: binary garbage, a head far over the limit, an empty request.
        assert!(get(addr, &[0xff, 0x00, 0x13, b'\n']).starts_with("HTTP/1.1 400"));
        assert!(get(addr, b"GET /metrics\r\n\r\n").starts_with("HTTP/1.1 400"));
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 100_000));
        let _ = get(addr, &huge);
        let _ = get(addr, b"");
        // Still serving.
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").contains("\nconscope_writer_blocked 0\n"));

        // Writes refused for a reason no message explains: unhealthy, saying why.
        metrics.writer_blocked("42501", "permission denied for table price_history");
        let health = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(
            health.contains("(42501)") && health.contains("permission denied for table price_history"),
            "{health}"
        );
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
            .contains("\nconscope_writer_blocked{sqlstate=\"42501\"} 1\n"));
        assert!(metrics.writer_unblocked());
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
    }

    /// A slow-loris attack: twice as many clients as there are slots, each
    /// sending its head a byte a second (well under any per-read timeout) and
    /// reconnecting a second after it is cut off, as slow-loris tools top up
    /// their connections. Every scrape meanwhile is answered at once, and no
    /// slow connection lives past the deadline.
    #[test]
    fn slow_clients_never_lock_out_a_scrape() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let addr = spawn("127.0.0.1:0", Metrics::new("alerts", 0)).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let slow: Vec<_> = (0..2 * MAX_CONNECTIONS)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    // How long each connection lived before the server cut it.
                    let mut lifetimes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(mut stream) = TcpStream::connect(addr) else {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        let opened = Instant::now();
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: "
                            .iter()
                            .chain(std::iter::repeat(&b'a'))
                        {
                            if stop.load(Ordering::SeqCst) {
                                // Still open: its age counts too.
                                lifetimes.push(opened.elapsed());
                                return lifetimes;
                            }
                            let _ = stream.write_all(&[*byte]);
                            // Waits a second, or sees the server close the connection.
                            match stream.read(&mut [0u8; 64]) {
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                _ => {
                                    lifetimes.push(opened.elapsed());
                                    break;
                                }
                            }
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    lifetimes
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let mut scrapes = 0;
        while started.elapsed() < DEADLINE + Duration::from_secs(4) {
            let asked = Instant::now();
            let reply = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            let took = asked.elapsed();
            assert!(
                reply.starts_with("HTTP/1.1 200 OK\r\n"),
                "scrape {scrapes}: {reply:?}"
            );
            assert!(took < Duration::from_secs(2), "scrape {scrapes} took {took:?}");
            scrapes += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        stop.store(true, Ordering::SeqCst);
        let lifetimes: Vec<Duration> = slow
            .into_iter()
            .flat_map(|client| client.join().expect("slow client"))
            .collect();
        // Every slow connection was cut off (by the deadline, or by a newer
        // connection), or was younger than the deadline when the test ended.
        assert!(lifetimes.len() >= 2 * MAX_CONNECTIONS, "{lifetimes:?}");
        let longest = lifetimes.iter().max().copied().unwrap_or_default();
        assert!(
            longest <= DEADLINE + Duration::from_millis(2500),
            "a slow client was served for {longest:?}"
        );
    }

    #[test]
    fn a_bad_address_is_an_error_naming_it() {
        let error = spawn("127.0.0.1:notaport", Metrics::new("alerts", 0)).unwrap_err();
        assert!(
            error.to_string().contains("--metrics-addr 127.0.0.1:notaport"),
            "{error}"
        );
    }
}
