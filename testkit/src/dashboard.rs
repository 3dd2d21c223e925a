//! For `tests/dashboard.rs` and `tests/dashboard_browser.rs`: a seeded
//! database (the real job over a generated JSON-lines file, hostile strings
//! included), a running `conscope dashboard`, and a small HTTP client.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::{conscope, unique, Job, KillOnDrop};

/// The hostile event: its id needs encoding in a path, its strings in HTML.
pub const XSS_ID: &str = "xss/1?a=b&c";
pub const XSS_NAME: &str = "<script>alert(1)</script>";
pub const XSS_VENUE: &str = r#"Bob's "Big" Arena & Co"#;
pub const XSS_SECTION: &str = "<img src=x onerror=alert(2)>";
pub const XSS_ROW: &str = r#""><svg onload=alert(3)>"#;
pub const XSS_SOURCE: &str = "evil'src\"";

/// The event with a long, lively history.
pub const AURORA_ID: &str = "aurora-2026";
pub const AURORA_NAME: &str = "Aurora — Northern Lights Tour";
/// A second event, in euros.
pub const BERLIN_ID: &str = "berlin-philharmonic";

fn at(hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
        .single()
        .expect("base time")
        + chrono::Duration::hours(hours)
}

/// Cents as a decimal string.
fn price(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A small deterministic generator (no dependency on `rand`'s value stream).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as i64
    }
}

/// JSON lines: two events with random-walk prices over 4 days (one
/// observation per listing every 2 h, some sold, some back), and the hostile
/// event with a drop.
pub fn seed_lines() -> String {
    let mut lines = Vec::new();
    let mut rng = Lcg(20260301);
    let events = [
        (
            AURORA_ID,
            AURORA_NAME,
            r#"Olympia Hall, Oslo"#,
            "USD",
            ["Floor", "Lower 101", "Upper 305", "Balcony"],
            18_000,
        ),
        (
            BERLIN_ID,
            "Berliner Philharmoniker — Mahler 5",
            "Philharmonie, Berlin",
            "EUR",
            ["Parkett", "Block A", "Block K", "Empore"],
            9_000,
        ),
    ];
    for (event_id, name, venue, currency, sections, base) in events {
        for (s, section) in sections.iter().enumerate() {
            for seat in 0..5 {
                let mut cents: i64 = base + (s as i64) * 4_000 + rng.next(3_000);
                let mut available = true;
                for step in 0..48 {
                    // Cheaper sections drift down over time; a few big drops.
                    let walk = rng.next(1_600) - 850 - if rng.next(20) == 0 { 2_500 } else { 0 };
                    cents = (cents + walk).clamp(2_000, 90_000);
                    if rng.next(25) == 0 {
                        available = !available;
                    }
                    let source = ["stubhub", "seatgeek", "vividseats"][seat as usize % 3];
                    lines.push(
                        serde_json::json!({
                            "event_id": event_id,
                            "event_name": name,
                            "venue": venue,
                            "event_date": "2026-06-20T19:30:00Z",
                            "section": section,
                            "row": format!("{}", 1 + seat / 2),
                            "seat": format!("{}", 1 + seat),
                            "source": source,
                            "price": price(cents),
                            "currency": currency,
                            "available": available,
                            "timestamp": (at(step * 2) + chrono::Duration::minutes(s as i64 * 7 + seat)).to_rfc3339(),
                        })
                        .to_string(),
                    );
                }
            }
        }
    }
    for (hours, cents) in [(0, 12_000), (30, 11_500), (60, 9_000)] {
        lines.push(
            serde_json::json!({
                "event_id": XSS_ID,
                "event_name": XSS_NAME,
                "venue": XSS_VENUE,
                "section": XSS_SECTION,
                "row": XSS_ROW,
                "seat": "7",
                "source": XSS_SOURCE,
                "price": price(cents),
                "timestamp": at(hours).to_rfc3339(),
            })
            .to_string(),
        );
    }
    lines.join("\n") + "\n"
}

/// A fresh database filled by the real job (`conscope run --input-file`).
pub fn seeded_database(name: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("seed.jsonl");
    std::fs::write(&path, seed_lines()).expect("write seed");
    let job = Job::new(name, &unique("dash-unused"));
    let path = path.to_str().expect("utf-8 path").to_owned();
    job.run_to_end_within(Duration::from_secs(180), &["--input-file", &path]);
    job.database_url
}

/// A running `conscope dashboard` on a free port; killed when dropped.
pub struct Dashboard {
    pub base: String,
    pub database_url: String,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl Dashboard {
    /// Starts the dashboard on `database_url`, with the token in
    /// CONSCOPE_DASHBOARD_TOKEN when given.
    pub fn start(database_url: &str, token: Option<&str>) -> Dashboard {
        Dashboard::start_with(database_url, token, &[])
    }

    /// Like `start`, with more flags.
    pub fn start_with(database_url: &str, token: Option<&str>, flags: &[&str]) -> Dashboard {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr_path = dir.path().join("stderr");
        let mut command = conscope();
        command
            .args([
                "dashboard",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .args(flags)
            .env("CONSCOPE_LOG", "info")
            .env_remove("CONSCOPE_DASHBOARD_TOKEN")
            .env_remove("CONSCOPE_LISTEN")
            .env_remove("CONSCOPE_SECURE_COOKIES")
            .env_remove("CONSCOPE_TRUSTED_PROXIES")
            .env_remove("CONSCOPE_CHART_ROWS")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        if let Some(token) = token {
            command.env("CONSCOPE_DASHBOARD_TOKEN", token);
        }
        let mut child = command.spawn().expect("spawn conscope dashboard");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let child = KillOnDrop(child);
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "the dashboard printed no address within 60 s: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            });
        let base = line
            .rsplit_once(' ')
            .map(|(_, url)| url.to_owned())
            .filter(|url| url.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        Dashboard {
            base,
            database_url: database_url.to_owned(),
            stderr_path,
            _dir: dir,
            _child: child,
        }
    }

    /// Opens the live alerts stream (`/alerts/stream`), checked to be one.
    pub fn open_stream(&self) -> ureq::Response {
        let response = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(30))
            .build()
            .get(&self.url("/alerts/stream"))
            .call()
            .expect("stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        response
    }

    /// Sends SIGTERM and waits up to `limit` for the exit: its status, or
    /// `None` if it is still running (it is then killed on drop).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        crate::terminate(&mut self._child.0, limit)
    }

    /// host:port, as browsers send it in `Host`.
    pub fn host(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the dashboard logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Reply {
        send("GET", &self.url(path), &[], None)
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        send("GET", &self.url(path), headers, None)
    }

    /// A form POST from this origin, with `cookie` when given.
    pub fn post_form(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let origin = self.base.clone();
        let mut headers = vec![("Origin", origin.as_str())];
        if let Some(cookie) = cookie {
            headers.push(("Cookie", cookie));
        }
        send("POST", &self.url(path), &headers, Some(Body::Form(form)))
    }

    /// Signs in with `token`; returns the `name=value` of the session cookie.
    pub fn sign_in(&self, token: &str) -> String {
        let reply = self.post_form("/login", None, &[("token", token)]);
        assert_eq!(reply.status, 303, "sign-in: {}", reply.body);
        let cookie = reply.header("set-cookie").expect("a session cookie");
        cookie.split(';').next().expect("name=value").to_owned()
    }

    /// The CSRF token in the forms of `path`, for the session of `cookie`.
    pub fn csrf(&self, path: &str, cookie: &str) -> String {
        let reply = self.get_with(path, &[("Cookie", cookie)]);
        csrf_in(&reply.body).unwrap_or_else(|| panic!("no CSRF field on {path}: {}", reply.body))
    }
}

pub fn csrf_in(page: &str) -> Option<String> {
    let marker = r#"name="csrf" value=""#;
    let start = page.find(marker)? + marker.len();
    let end = page[start..].find('"')? + start;
    Some(page[start..end].to_owned())
}

pub enum Body<'a> {
    Form(&'a [(&'a str, &'a str)]),
    Raw(&'a str, &'a [u8]),
}

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

/// One request, never following redirects.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Body<'_>>) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(60))
        .build();
    let mut request = agent.request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        None => request.call(),
        Some(Body::Form(form)) => request.send_form(form),
        Some(Body::Raw(content_type, bytes)) => request.set("Content-Type", content_type).send_bytes(bytes),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .flat_map(|name| {
            response
                .all(&name)
                .into_iter()
                .map(|value| (name.clone(), value.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let body = response.into_string().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends raw bytes on a fresh connection and returns what comes back (for
/// requests no HTTP client would send).
pub fn raw(host: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}
