//! `conscope run --metrics-addr HOST:PORT`: serves the job's metrics in
//! Prometheus text format at `/metrics`, and `/healthz` (200 while the process
//! runs). Reads [`Metrics`] only; touches nothing else. `conscope notify`
//! serves its own figures the same way (anything that is [`Exposition`]).
//!
//! A plain HTTP/1.1 server on its own threads, one short-lived thread per
//! connection (a scrape every few seconds needs no more). Requests are hostile:
//! the request head is read up to 8 KiB with a 5 s timeout, anything but
//! `GET /metrics` and `GET /healthz` gets 404 or 405, and at most
//! `MAX_CONNECTIONS` are served at once (503 past that). Never blocks a worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

const MAX_HEAD_BYTES: u64 = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start the metrics server thread: {0}")]
    Thread(std::io::Error),
}

/// Figures that print themselves in Prometheus text format.
pub trait Exposition: Send + Sync + 'static {
    fn prometheus(&self) -> String;
}

impl Exposition for Metrics {
    fn prometheus(&self) -> String {
        Metrics::prometheus(self)
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
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    let _ = respond(stream, "503 Service Unavailable", "text/plain", "busy\n");
                    continue;
                }
                let metrics = Arc::clone(&metrics);
                let done = Arc::clone(&open);
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        serve(stream, metrics.as_ref());
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(ServeError::Thread)?;
    tracing::info!(%local, "serving /metrics and /healthz");
    Ok(local)
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

fn serve<M: Exposition>(stream: TcpStream, metrics: &M) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(reader) = stream.try_clone() else { return };
    let mut head = BufReader::new(reader.take(MAX_HEAD_BYTES));
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
    let _ = match route(&request_line) {
        (status, "metrics") => respond(
            stream,
            status,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.prometheus(),
        ),
        (status, "healthz") => respond(stream, status, "text/plain", "ok\n"),
        (status, "method") => respond(stream, status, "text/plain", "only GET\n"),
        (status, "bad") => respond(stream, status, "text/plain", "bad request\n"),
        (status, _) => respond(
            stream,
            status,
            "text/plain",
            "not found: try /metrics or /healthz\n",
        ),
    };
}

fn respond(mut stream: TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
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
