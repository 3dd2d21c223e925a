//! `conscope dashboard` under load and attack: one client cannot take the
//! database pool (per-client request cap, statement timeout), a chart reads a
//! bounded number of rows and says where it stopped, wrong tokens slow down
//! the client that sends them and no other, and the session cookie is
//! `Secure` when the browser came over HTTPS (`--secure-cookies`, or
//! `X-Forwarded-Proto` from a `--trusted-proxy` only).
//!
//! Other clients are other loopback addresses: a socket bound to 127.0.0.2 is
//! another client to the dashboard, on the same machine.

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use conscope_testkit::dashboard::*;
use conscope_testkit::*;

const TOKEN: &str = "limits-token-0123456789abcdef";

/// The dashboard's own figures (src/dashboard/mod.rs), as a client sees them.
const REQUESTS_PER_CLIENT: usize = 3;
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

fn seeded() -> &'static str {
    static DATABASE: OnceLock<String> = OnceLock::new();
    DATABASE.get_or_init(|| seeded_database("dashlim"))
}

/// What came back: status, head (lower-cased header names kept as sent), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.0 request (so the answer is never chunked) from the local
/// address `source`.
fn request_from(
    source: &str,
    dashboard: &Dashboard,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let socket = runtime().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("source address"))
            .expect("bind the source address");
        socket
            .connect(dashboard.host().parse().expect("dashboard address"))
            .await
            .expect("connect")
            .into_std()
            .expect("std socket")
    });
    let mut stream = socket;
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\n",
        dashboard.host(),
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get_from(source: &str, dashboard: &Dashboard, path: &str) -> Answer {
    request_from(source, dashboard, "GET", path, &[], "")
}

/// `POST /login` from `source` with `token`, from this origin, with `headers` too.
fn sign_in_from(source: &str, dashboard: &Dashboard, token: &str, headers: &[(&str, &str)]) -> Answer {
    let origin = dashboard.base.clone();
    let mut all = vec![
        ("Origin", origin.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    all.extend_from_slice(headers);
    request_from(
        source,
        dashboard,
        "POST",
        "/login",
        &all,
        &format!("token={token}"),
    )
}

/// Six requests at once from one client, each stuck on a locked table: three
/// are served (and cut by the statement timeout), three get 429 at once, and
/// another client still finds a database connection.
#[test]
fn one_client_cannot_take_the_database_pool() {
    let url = fresh_database(&unique("dashlim_pool"));
    let dashboard = Dashboard::start(&url, None);
    assert_eq!(dashboard.get("/").status, 200);
    let lock = OpenTransaction::begin(&url, "LOCK TABLE events IN ACCESS EXCLUSIVE MODE");
    let started = Instant::now();
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let base = dashboard.base.clone();
            std::thread::spawn(move || {
                let reply = send("GET", &format!("{base}/"), &[], None);
                (
                    reply.status,
                    reply.header("retry-after").map(str::to_owned),
                    started.elapsed(),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // Another client: the pool still has connections for it.
    let asked = Instant::now();
    let health = get_from("127.0.0.2", &dashboard, "/healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "healthz took {:?}",
        asked.elapsed()
    );

    let answers: Vec<(u16, Option<String>, Duration)> =
        requests.into_iter().map(|r| r.join().expect("request")).collect();
    lock.commit();
    let refused: Vec<_> = answers.iter().filter(|(status, ..)| *status == 429).collect();
    let cut: Vec<_> = answers.iter().filter(|(status, ..)| *status == 503).collect();
    assert_eq!(refused.len(), 6 - REQUESTS_PER_CLIENT, "{answers:?}");
    assert_eq!(cut.len(), REQUESTS_PER_CLIENT, "{answers:?}");
    for (_, retry_after, took) in &refused {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(*took < Duration::from_secs(2), "a refusal took {took:?}");
    }
    // Cut by the statement timeout (5 s), not by the 20 s response limit.
    for (_, _, took) in &cut {
        assert!(
            *took >= STATEMENT_TIMEOUT && *took < STATEMENT_TIMEOUT + Duration::from_secs(4),
            "a stuck request ended after {took:?}"
        );
    }
    // Its slots came back.
    for _ in 0..REQUESTS_PER_CLIENT + 1 {
        assert_eq!(dashboard.get("/").status, 200);
    }
}

/// `--chart-rows`: a window with more rows stops there, and the page says so
/// and when; a window within the limit says nothing.
#[test]
fn a_chart_reads_at_most_chart_rows_and_says_where_it_stops() {
    let url = seeded();
    let rows = 100;
    let dashboard = Dashboard::start_with(url, None, &["--chart-rows", &rows.to_string()]);
    let page = dashboard.get(&format!("/events/{AURORA_ID}?window=all"));
    assert_eq!(page.status, 200, "{}", page.body);
    // Replayed in time order: the chart stops at the 100th observation's time.
    let stopped_at = query_strings(
        url,
        &format!(
            "SELECT to_char(observed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' FROM price_history
             WHERE event_id = '{AURORA_ID}' ORDER BY observed_at OFFSET {} LIMIT 1",
            rows - 1
        ),
    );
    let notice = format!(
        "This window holds more than {rows} price observations, the most one chart reads: the chart stops at {}.",
        stopped_at[0]
    );
    assert!(page.body.contains(&notice), "no {notice:?} in {}", page.body);

    let all = query_i64(
        url,
        &format!("SELECT count(*) FROM price_history WHERE event_id = '{AURORA_ID}'"),
    );
    let roomy = Dashboard::start_with(url, None, &["--chart-rows", &all.to_string()]);
    let page = roomy.get(&format!("/events/{AURORA_ID}?window=all"));
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("the most one chart reads"), "{}", page.body);
}

/// Three wrong tokens in a row are free; then the client waits 1 s, then 2 s
/// (429 with Retry-After, even with the right token), while another client
/// signs in at once; a success clears the count.
#[test]
fn wrong_tokens_slow_down_their_client_only() {
    let url = fresh_database(&unique("dashlim_login"));
    let dashboard = Dashboard::start(&url, Some(TOKEN));
    let me = "127.0.0.1";
    for attempt in 1..=2 {
        let answer = sign_in_from(me, &dashboard, "wrong", &[]);
        assert_eq!(answer.status, 401, "attempt {attempt}");
        assert_eq!(answer.header("retry-after"), None, "attempt {attempt}");
    }
    let third = sign_in_from(me, &dashboard, "wrong", &[]);
    assert_eq!(third.status, 401);
    assert_eq!(third.header("retry-after"), Some("1"));
    // Refused without looking at the token.
    let waiting = sign_in_from(me, &dashboard, TOKEN, &[]);
    assert_eq!(waiting.status, 429, "{}", waiting.body);
    assert_eq!(waiting.header("retry-after"), Some("1"));
    assert!(
        waiting.body.contains("Too many wrong tokens from your address"),
        "{}",
        waiting.body
    );
    // Another client is not slowed down.
    let other = sign_in_from("127.0.0.2", &dashboard, TOKEN, &[]);
    assert_eq!(other.status, 303, "{}", other.body);

    std::thread::sleep(Duration::from_millis(1100));
    let fourth = sign_in_from(me, &dashboard, "wrong", &[]);
    assert_eq!(fourth.status, 401);
    assert_eq!(fourth.header("retry-after"), Some("2"));
    assert_eq!(sign_in_from(me, &dashboard, TOKEN, &[]).status, 429);
    std::thread::sleep(Duration::from_millis(2100));
    let signed_in = sign_in_from(me, &dashboard, TOKEN, &[]);
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    // The count starts over.
    let again = sign_in_from(me, &dashboard, "wrong", &[]);
    assert_eq!(again.status, 401);
    assert_eq!(again.header("retry-after"), None);
}

fn cookie_of(answer: &Answer) -> String {
    assert_eq!(answer.status, 303, "{}", answer.body);
    answer
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie in {}", answer.head))
        .to_owned()
}

fn is_secure(cookie: &str) -> bool {
    cookie
        .split(';')
        .any(|part| part.trim().eq_ignore_ascii_case("secure"))
}

/// `Secure` with `--secure-cookies` (on sign-in and sign-out), or with
/// `X-Forwarded-Proto: https` from a trusted proxy; never from a header any
/// client could send.
#[test]
fn the_session_cookie_is_secure_behind_tls() {
    let url = fresh_database(&unique("dashlim_cookie"));
    let https = [("X-Forwarded-Proto", "https")];

    let plain = Dashboard::start(&url, Some(TOKEN));
    assert!(!is_secure(&cookie_of(&sign_in_from(
        "127.0.0.1",
        &plain,
        TOKEN,
        &[]
    ))));
    // Anyone can send the header: not trusted.
    assert!(!is_secure(&cookie_of(&sign_in_from(
        "127.0.0.1",
        &plain,
        TOKEN,
        &https
    ))));
    drop(plain);

    let secure = Dashboard::start_with(&url, Some(TOKEN), &["--secure-cookies"]);
    let cookie = cookie_of(&sign_in_from("127.0.0.1", &secure, TOKEN, &[]));
    assert!(is_secure(&cookie), "{cookie}");
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let csrf = secure.csrf("/rules", &session);
    let out = secure.post_form("/logout", Some(&session), &[("csrf", &csrf)]);
    assert_eq!(out.status, 303, "{}", out.body);
    let cleared = out.header("set-cookie").expect("a cleared cookie");
    assert!(cleared.contains("Max-Age=0") && is_secure(cleared), "{cleared}");
    drop(secure);

    let proxied = Dashboard::start_with(&url, Some(TOKEN), &["--trusted-proxy", "127.0.0.1"]);
    let cookie = cookie_of(&sign_in_from("127.0.0.1", &proxied, TOKEN, &https));
    assert!(is_secure(&cookie), "{cookie}");
    let plain_http = [("X-Forwarded-Proto", "http")];
    assert!(!is_secure(&cookie_of(&sign_in_from(
        "127.0.0.1",
        &proxied,
        TOKEN,
        &plain_http
    ))));
    // 127.0.0.2 is not the proxy: its header is ignored.
    assert!(!is_secure(&cookie_of(&sign_in_from(
        "127.0.0.2",
        &proxied,
        TOKEN,
        &https
    ))));
}

/// Behind a trusted proxy every client comes from its address: the backoff
/// keys on `X-Forwarded-For` (from the proxy only).
#[test]
fn behind_a_trusted_proxy_clients_are_told_apart() {
    let url = fresh_database(&unique("dashlim_proxy"));
    let dashboard = Dashboard::start_with(&url, Some(TOKEN), &["--trusted-proxy", "127.0.0.1"]);
    let guesser = [("X-Forwarded-For", "198.51.100.7")];
    for _ in 0..3 {
        assert_eq!(
            sign_in_from("127.0.0.1", &dashboard, "wrong", &guesser).status,
            401
        );
    }
    assert_eq!(sign_in_from("127.0.0.1", &dashboard, TOKEN, &guesser).status, 429);
    // Another client behind the same proxy, and one that writes the guesser's
    // address further left (only the entry the proxy wrote counts).
    let other = [("X-Forwarded-For", "198.51.100.7, 203.0.113.9")];
    assert_eq!(sign_in_from("127.0.0.1", &dashboard, TOKEN, &other).status, 303);
    // A stranger cannot pose as the guesser's victim: its header is ignored,
    // and it is judged by its own address.
    assert_eq!(sign_in_from("127.0.0.2", &dashboard, TOKEN, &guesser).status, 303);
}
