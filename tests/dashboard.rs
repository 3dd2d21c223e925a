//! `conscope dashboard` over HTTP, against a database filled by the real job
//! (`tests/dashboard_support`): every endpoint's status, content type and key
//! content; hostile strings rendered inert on every page; writes refused
//! without the token, a session, the CSRF token or this origin; rules made
//! through HTTP seen in `alert_rules` and by `conscope rules list`; hostile
//! requests answered with 4xx while the server keeps serving.

use std::io::{BufRead, BufReader};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use conscope_testkit::dashboard::*;
use conscope_testkit::*;

const TOKEN: &str = "test-token-0123456789abcdef";

/// One seeded database for the whole file: each test starts its own dashboard
/// on it, and writes only rules for events of its own.
fn database() -> &'static str {
    static DATABASE: OnceLock<String> = OnceLock::new();
    DATABASE.get_or_init(|| seeded_database("dash"))
}

fn encoded(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn rules_for(event: &str) -> Vec<String> {
    query_strings(
        database(),
        &format!(
            "SELECT concat_ws('|', rule_id, coalesce(section, '*'), currency, max_price, active::text, generation)
             FROM alert_rules WHERE event_id = '{event}' ORDER BY rule_id"
        ),
    )
}

fn cli_rules(args: &[&str]) -> String {
    let output = conscope()
        .args(["rules", "list"])
        .args(args)
        .args(["--database-url", database()])
        .output()
        .expect("run conscope rules list");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_html(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type(), "text/html; charset=utf-8");
    let csp = reply.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert!(reply.body.starts_with("<!doctype html>"), "{}", reply.body);
}

#[test]
fn every_page_renders_with_its_content() {
    let dashboard = Dashboard::start(database(), Some(TOKEN));

    let health = dashboard.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert!(health.content_type().starts_with("text/plain"));

    // Events list: every event, its get-in price and 24 h change.
    let events = dashboard.get("/");
    assert_html(&events, 200);
    for needle in [
        AURORA_NAME,
        "Berliner Philharmoniker",
        "1–3 of 3 events",
        "Get-in",
        "24 h",
    ] {
        assert!(
            events.body.contains(needle),
            "{needle} missing from the events list"
        );
    }
    let aurora_get_in = query_strings(
        database(),
        &format!("SELECT get_in_price::text FROM event_summary WHERE event_id = '{AURORA_ID}'"),
    );
    let get_in = aurora_get_in.first().expect("aurora summary");
    let (whole, cents) = get_in.split_once('.').expect("two decimals");
    let shown = format!("${}.{cents}", whole.parse::<u64>().map(group).expect("number"));
    assert!(events.body.contains(&shown), "get-in {shown} missing");
    // The 24 h change starts from the get-in price as of the latest
    // observation minus 24 h, computed here the slow, obvious way.
    let day_ago = query_strings(
        database(),
        &format!(
            "SELECT (min(price) FILTER (WHERE available))::text FROM (
                 SELECT DISTINCT ON (section, \"row\", seat, source) price, available
                 FROM price_history
                 WHERE event_id = '{AURORA_ID}'
                   AND observed_at <= (SELECT last_seen - interval '24 hours' FROM events WHERE event_id = '{AURORA_ID}')
                 ORDER BY section, \"row\", seat, source, observed_at DESC) last"
        ),
    );
    let day_ago = format!(
        "get-in 24 h earlier: ${}",
        day_ago.first().expect("a price 24 h earlier")
    );
    assert!(events.body.contains(&day_ago), "{day_ago} missing");
    assert!(events.body.contains("€"), "euro prices");

    // Search, sorts and pages: any value is accepted.
    let found = dashboard.get("/?q=aurora");
    assert_html(&found, 200);
    assert!(found.body.contains(AURORA_NAME) && !found.body.contains("Berliner"));
    let none = dashboard.get("/?q=%25_nothing_%25");
    assert!(none.body.contains("No events match."), "% and _ are literal");
    for query in [
        "?sort=name",
        "?sort=price",
        "?sort=available",
        "?sort=updated",
        "?sort=bogus&page=-3",
        "?page=abc",
        "?page=99999999999999999999",
    ] {
        assert_html(&dashboard.get(&format!("/{query}")), 200);
    }

    // Event page: the chart with a get-in line, sections, listings, alerts.
    for window in [
        "",
        "?window=24h",
        "?window=7d",
        "?window=30d",
        "?window=all",
        "?window=%00",
    ] {
        let page = dashboard.get(&format!("/events/{AURORA_ID}{window}"));
        assert_html(&page, 200);
        assert!(
            page.body.contains(r#"<svg class="chart""#),
            "no chart for {window}"
        );
        assert!(
            page.body.contains(r#"<path class="line primary""#),
            "no get-in line for {window}"
        );
        assert!(
            page.body.contains("Section Floor"),
            "no section line for {window}"
        );
    }
    let page = dashboard.get(&format!("/events/{AURORA_ID}?window=all"));
    // The chart's get-in line ends at the price the job keeps.
    assert!(
        page.body
            .contains(&format!(r#"Get-in price <span class="muted">{shown}</span>"#)),
        "the chart's get-in price is not {shown}"
    );
    assert!(
        page.body.contains(&day_ago),
        "{day_ago} missing from the event page"
    );
    for needle in [
        "Price history",
        "Sections",
        "Listings",
        "Recent alerts",
        "stubhub",
        "Lower 101",
    ] {
        assert!(page.body.contains(needle), "{needle} missing from the event page");
    }
    let listings = query_i64(
        database(),
        &format!("SELECT count(*) FROM listings WHERE event_id = '{AURORA_ID}'"),
    );
    assert_eq!(
        page.body.matches("<tr class=\"gone\"><td>").count()
            + page.body.matches("<tr class=\"\"><td>").count(),
        listings as usize
    );

    // Alerts, newest first.
    let newest = query_strings(
        database(),
        "SELECT to_char(observed_at AT TIME ZONE 'UTC', 'Mon DD HH24:MI') FROM price_alerts ORDER BY observed_at DESC, alert_id DESC LIMIT 1",
    );
    let alerts = dashboard.get("/alerts");
    assert_html(&alerts, 200);
    let first_time = alerts.body.find(r#"<td class="time""#).expect("an alert row");
    assert!(
        alerts.body[first_time..].contains(newest.first().expect("an alert")),
        "newest first"
    );
    assert!(alerts.body.contains(r#"data-stream="/alerts/stream""#));

    // Rules: listed, no form before signing in.
    let rules = dashboard.get("/rules");
    assert_html(&rules, 200);
    assert!(rules.body.contains("Sign in</a> with the dashboard token"));
    assert!(!rules.body.contains(r#"name="csrf""#));
    assert_html(&dashboard.get("/login"), 200);

    // Static files and misses.
    let css = dashboard.get("/static/style.css");
    assert_eq!((css.status, css.content_type()), (200, "text/css; charset=utf-8"));
    let js = dashboard.get("/static/live.js");
    assert_eq!(
        (js.status, js.content_type()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(js.body.contains("textContent") && !js.body.contains("innerHTML"));
    assert_html(&dashboard.get("/nope"), 404);
    assert_html(&dashboard.get("/events/no-such-event"), 404);
    // NUL, which PostgreSQL refuses in a parameter: not a database error (503).
    assert_html(&dashboard.get("/events/a%00b"), 404);
    assert_html(&dashboard.get("/?q=a%00b"), 200);
    assert_eq!(send("DELETE", &dashboard.url("/rules"), &[], None).status, 405);
}

fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The hostile event's strings appear escaped on every page that shows them,
/// and no page has a script but the one served from /static/.
#[test]
fn scraped_strings_are_inert_everywhere() {
    let dashboard = Dashboard::start(database(), Some(TOKEN));
    let cookie = dashboard.sign_in(TOKEN);
    let csrf = dashboard.csrf("/rules", &cookie);
    // A rule on the hostile event and section, so the rules page shows them too.
    let made = dashboard.post_form(
        "/rules",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("event", XSS_ID),
            ("section", XSS_SECTION),
            ("currency", "USD"),
            ("max_price", "1"),
        ],
    );
    assert_eq!(made.status, 303, "{}", made.body);

    let xss_page = format!("/events/{}", encoded(XSS_ID));
    for (path, shows) in [
        ("/".to_owned(), vec![XSS_NAME, XSS_VENUE, XSS_ID]),
        (
            format!("{xss_page}?window=all"),
            vec![XSS_NAME, XSS_VENUE, XSS_SECTION, XSS_ROW, XSS_SOURCE],
        ),
        (
            "/alerts".to_owned(),
            vec![XSS_NAME, XSS_SECTION, XSS_ROW, XSS_SOURCE],
        ),
        ("/rules".to_owned(), vec![XSS_ID, XSS_SECTION]),
    ] {
        let page = dashboard.get_with(&path, &[("Cookie", &cookie)]);
        assert_html(&page, 200);
        assert_eq!(
            page.body.matches("<script").count(),
            1,
            "{path}: a script besides live.js"
        );
        assert!(page
            .body
            .contains(r#"<script src="/static/live.js" defer></script>"#));
        for raw in [
            XSS_NAME,
            XSS_SECTION,
            XSS_ROW,
            XSS_SOURCE,
            XSS_VENUE,
            "<img src=x",
            "<svg onload",
        ] {
            assert!(!page.body.contains(raw), "{path}: {raw:?} unescaped");
        }
        for shown in shows {
            let escaped = shown
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;");
            assert!(page.body.contains(&escaped), "{path}: {escaped:?} not shown");
        }
    }
    // The event's link carries its id percent-encoded, and leads to it.
    let list = dashboard.get("/");
    assert!(
        list.body.contains(&format!(r#"href="{xss_page}""#)),
        "link to {xss_page}"
    );
    // The chart's labels are escaped too.
    let page = dashboard.get(&format!("{xss_page}?window=all"));
    let svg = &page.body[page.body.find("<svg class=\"chart\"").expect("chart")..];
    let svg = &svg[..svg.find("</svg>").expect("end of chart")];
    assert!(
        svg.contains("<title>Section &lt;img src=x onerror=alert(2)&gt;</title>"),
        "{svg}"
    );
}

/// Writes need a token configured, this origin, a session and its CSRF
/// token; each refusal changes nothing. The token never shows in the log.
#[test]
fn writes_are_refused_without_token_session_csrf_or_origin() {
    let event = "refusals-event";
    let form = |csrf: &str| -> Vec<(String, String)> {
        vec![
            ("csrf".into(), csrf.into()),
            ("event".into(), event.into()),
            ("currency".into(), "USD".into()),
            ("max_price".into(), "10".into()),
        ]
    };
    let post = |dashboard: &Dashboard, path: &str, headers: &[(&str, &str)], csrf: &str| {
        let fields = form(csrf);
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        send("POST", &dashboard.url(path), headers, Some(Body::Form(&pairs)))
    };

    // Read-only: no token, no sign-in, no writes.
    let read_only = Dashboard::start(database(), None);
    let origin = read_only.base.clone();
    assert_eq!(read_only.post_form("/login", None, &[("token", "")]).status, 403);
    assert_eq!(
        read_only.post_form("/login", None, &[("token", TOKEN)]).status,
        403
    );
    let refused = post(&read_only, "/rules", &[("Origin", &origin)], "x");
    assert_html(&refused, 403);
    assert!(refused.body.contains("read-only"), "{}", refused.body);
    assert!(read_only.get("/login").body.contains("read-only"));
    assert!(read_only.get("/").body.contains(">read-only<"));
    assert_eq!(
        post(&read_only, "/rules/1/disable", &[("Origin", &origin)], "x").status,
        403
    );

    let dashboard = Dashboard::start(database(), Some(TOKEN));
    let origin = dashboard.base.clone();
    // A wrong token: 401 and no cookie.
    let wrong = dashboard.post_form("/login", None, &[("token", "test-token-0123456789abcdeX")]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("wrong token"));
    // Signing in from another origin is refused.
    let cross_login = send(
        "POST",
        &dashboard.url("/login"),
        &[("Origin", "http://evil.example")],
        Some(Body::Form(&[("token", TOKEN)])),
    );
    assert_eq!(cross_login.status, 403);
    assert!(cross_login.header("set-cookie").is_none());

    let cookie = dashboard.sign_in(TOKEN);
    let set_cookie = dashboard.post_form("/login", None, &[("token", TOKEN)]);
    let attributes = set_cookie.header("set-cookie").expect("cookie");
    assert!(
        attributes.contains("HttpOnly") && attributes.contains("SameSite=Strict"),
        "{attributes}"
    );
    let csrf = dashboard.csrf("/rules", &cookie);
    assert_eq!(csrf.len(), 64);

    let mut wrong_csrf = csrf.clone();
    wrong_csrf.replace_range(0..1, if csrf.starts_with('0') { "1" } else { "0" });
    let forged = "conscope_session=forged".to_owned();
    let evil = "http://evil.example".to_owned();
    let evil_referer = "http://evil.example/rules".to_owned();
    // (path, headers, CSRF token, expected status)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a String)>, &'a str, u16);
    let refusals: Vec<Case<'_>> = vec![
        // No session.
        ("/rules", vec![("Origin", &origin)], &csrf, 401),
        (
            "/rules",
            vec![("Origin", &origin), ("Cookie", &forged)],
            &csrf,
            401,
        ),
        // A session but a missing or wrong CSRF token.
        ("/rules", vec![("Origin", &origin), ("Cookie", &cookie)], "", 403),
        (
            "/rules",
            vec![("Origin", &origin), ("Cookie", &cookie)],
            &wrong_csrf,
            403,
        ),
        // Everything right but the origin, or no origin at all.
        ("/rules", vec![("Origin", &evil), ("Cookie", &cookie)], &csrf, 403),
        (
            "/rules",
            vec![("Referer", &evil_referer), ("Cookie", &cookie)],
            &csrf,
            403,
        ),
        ("/rules", vec![("Cookie", &cookie)], &csrf, 403),
        (
            "/rules/1/disable",
            vec![("Origin", &evil), ("Cookie", &cookie)],
            &csrf,
            403,
        ),
    ];
    for (path, headers, token, status) in refusals {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = post(&dashboard, path, &headers, token);
        assert_eq!(reply.status, status, "{path} {headers:?}: {}", reply.body);
    }
    assert!(rules_for(event).is_empty(), "a refused write changed alert_rules");

    // The same request with everything right goes through; a Referer suffices.
    let accepted = post(
        &dashboard,
        "/rules",
        &[("Referer", &dashboard.url("/rules")), ("Cookie", &cookie)],
        &csrf,
    );
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    assert_eq!(rules_for(event).len(), 1);

    // Signing out ends the session: its cookie no longer writes.
    let out = dashboard.post_form("/logout", Some(&cookie), &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(
        post(
            &dashboard,
            "/rules",
            &[("Origin", &origin), ("Cookie", &cookie)],
            &csrf
        )
        .status,
        401
    );
    assert_eq!(rules_for(event).len(), 1);

    for dashboard in [&read_only, &dashboard] {
        let log = dashboard.log();
        assert!(log.contains("dashboard serving"), "{log}");
        assert!(!log.contains(TOKEN), "the token is in the log");
    }
}

/// Rules created, disabled and enabled through HTTP are rows of
/// `alert_rules`, as `conscope rules list` shows them.
#[test]
fn rules_made_over_http_are_the_rules_of_the_cli() {
    let event = "rules-http-event";
    let dashboard = Dashboard::start(database(), Some(TOKEN));
    let cookie = dashboard.sign_in(TOKEN);
    let csrf = dashboard.csrf("/rules", &cookie);

    // Invalid input: 422, the form again with the reason, nothing stored.
    for (max_price, currency, reason) in [
        ("12.345", "USD", "Max price must have at most 2 decimal places"),
        ("0", "USD", "Max price must be greater than 0"),
        ("1e3", "USD", "Max price must be a decimal number"),
        ("10", "usd", "Currency must be 3 upper-case letters"),
    ] {
        let reply = dashboard.post_form(
            "/rules",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("event", event),
                ("currency", currency),
                ("max_price", max_price),
            ],
        );
        assert_html(&reply, 422);
        assert!(reply.body.contains(reason), "{reason}: {}", reply.body);
        assert!(
            reply.body.contains(&format!(r#"value="{event}""#)),
            "the form keeps its values"
        );
    }
    // A kind's parameters: required where the kind needs them, refused where
    // it does not take them.
    for (fields, reason) in [
        (&[("kind", "deal")][..], "Deal % is required by a deal rule"),
        (
            &[("kind", "deal"), ("deal_pct", "20"), ("max_price", "5")],
            "Max price does not apply to a deal rule",
        ),
        (
            &[("kind", "new_low"), ("window_days", "0")],
            "Window (days) must be between 1 and 365",
        ),
        (
            &[("kind", "back_in_stock"), ("cooldown", "soon")],
            "Cooldown must be a duration",
        ),
    ] {
        let mut form = vec![("csrf", csrf.as_str()), ("event", event), ("currency", "USD")];
        form.extend_from_slice(fields);
        let reply = dashboard.post_form("/rules", Some(&cookie), &form);
        assert_html(&reply, 422);
        assert!(reply.body.contains(reason), "{reason}: {}", reply.body);
    }
    let empty = dashboard.post_form("/rules", Some(&cookie), &[("csrf", &csrf)]);
    assert_eq!(empty.status, 422);
    assert!(empty.body.contains("Event must not be empty"));
    assert!(rules_for(event).is_empty());

    // Create: whole event, exact decimal; and one for a section.
    let created = dashboard.post_form(
        "/rules",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("event", event),
            ("section", ""),
            ("currency", "USD"),
            ("max_price", "150.5"),
        ],
    );
    assert_eq!(created.status, 303, "{}", created.body);
    let location = created.header("location").expect("location").to_owned();
    let id: i64 = location
        .strip_prefix("/rules?created=")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("location {location}"));
    let shown = dashboard.get_with(&location, &[("Cookie", &cookie)]);
    assert!(shown.body.contains(&format!("Created rule #{id}.")));
    assert!(shown.body.contains(&format!(r#"data-rule="{id}""#)));
    let section = dashboard.post_form(
        "/rules",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("event", event),
            ("section", "Floor A"),
            ("currency", "EUR"),
            ("max_price", "99.99"),
        ],
    );
    assert_eq!(section.status, 303);
    assert_eq!(
        rules_for(event),
        vec![
            format!("{id}|*|USD|150.50|true|0"),
            format!("{}|Floor A|EUR|99.99|true|0", id + 1)
        ]
    );
    let listed = cli_rules(&[]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .expect("the rule in `rules list`");
    assert!(
        line.contains(event) && line.contains("150.50") && line.contains("yes"),
        "{line}"
    );

    // Disable: gone from `rules list`, shown as "no" with --all.
    let disabled = dashboard.post_form(&format!("/rules/{id}/disable"), Some(&cookie), &[("csrf", &csrf)]);
    assert_eq!(disabled.status, 303);
    assert_eq!(
        disabled.header("location"),
        Some(format!("/rules?disabled={id}").as_str())
    );
    assert_eq!(rules_for(event)[0], format!("{id}|*|USD|150.50|false|0"));
    assert!(!cli_rules(&[]).lines().any(|l| l.starts_with(&format!("{id} "))));
    let all = cli_rules(&["--all"]);
    let line = all
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .expect("listed with --all");
    assert!(line.contains(" no "), "{line}");
    // Twice is no error and changes nothing.
    assert_eq!(
        dashboard
            .post_form(&format!("/rules/{id}/disable"), Some(&cookie), &[("csrf", &csrf)])
            .status,
        303
    );
    assert_eq!(rules_for(event)[0], format!("{id}|*|USD|150.50|false|0"));

    // Enable: active again, as a new generation (as `conscope rules enable`).
    let enabled = dashboard.post_form(&format!("/rules/{id}/enable"), Some(&cookie), &[("csrf", &csrf)]);
    assert_eq!(enabled.status, 303);
    assert_eq!(rules_for(event)[0], format!("{id}|*|USD|150.50|true|1"));
    assert!(cli_rules(&[]).lines().any(|l| l.starts_with(&format!("{id} "))));

    // Bad ids and actions: 404, nothing changes.
    for path in [
        "/rules/abc/disable",
        "/rules/99999999/enable",
        "/rules/-1/enable",
        &format!("/rules/{id}/explode"),
        "/rules/99999999999999999999999/enable",
    ] {
        let reply = dashboard.post_form(path, Some(&cookie), &[("csrf", &csrf)]);
        assert_eq!(reply.status, 404, "{path}");
    }
    assert_eq!(rules_for(event)[0], format!("{id}|*|USD|150.50|true|1"));
}

/// Requests no browser sends: 4xx, never a crash, and the server goes on.
#[test]
fn hostile_requests_get_4xx() {
    let dashboard = Dashboard::start(database(), Some(TOKEN));
    let cookie = dashboard.sign_in(TOKEN);
    let csrf = dashboard.csrf("/rules", &cookie);
    let origin = dashboard.base.clone();

    // Ids: too long, not UTF-8, path tricks.
    let long = "x".repeat(300);
    for path in [
        format!("/events/{long}"),
        "/events/%FF%FE".to_owned(),
        "/events/..%2F..%2Fetc%2Fpasswd".to_owned(),
        "/events/".to_owned(),
    ] {
        let status = dashboard.get(&path).status;
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    // An oversized body (small enough to be in the socket buffers before the
    // server answers, so the answer is not lost to a reset).
    let big = format!("csrf={csrf}&event={}", "e".repeat(40_000));
    let reply = raw(
        dashboard.host(),
        format!(
            "POST /rules HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            dashboard.host(),
            big.len()
        )
        .as_bytes(),
    );
    assert!(
        reply.starts_with("HTTP/1.1 413"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    // Not a form; a form that is not UTF-8; a field given twice.
    let json = send(
        "POST",
        &dashboard.url("/rules"),
        &[("Origin", &origin), ("Cookie", &cookie)],
        Some(Body::Raw("application/json", b"{\"event\":\"x\"}")),
    );
    assert!((400..500).contains(&json.status), "json: {}", json.status);
    let bad = send(
        "POST",
        &dashboard.url("/rules"),
        &[("Origin", &origin), ("Cookie", &cookie)],
        Some(Body::Raw(
            "application/x-www-form-urlencoded",
            b"csrf=%FF%FE&event=%00",
        )),
    );
    assert!((400..500).contains(&bad.status), "bad form: {}", bad.status);
    let twice = format!("csrf={csrf}&event=a&event=b&currency=USD&max_price=5");
    let reply = send(
        "POST",
        &dashboard.url("/rules"),
        &[("Origin", &origin), ("Cookie", &cookie)],
        Some(Body::Raw("application/x-www-form-urlencoded", twice.as_bytes())),
    );
    assert!(
        (400..500).contains(&reply.status),
        "a field twice: {}",
        reply.status
    );
    // Huge query strings: a long search is cut, an enormous one refused.
    assert_eq!(dashboard.get(&format!("/?q={}", "a".repeat(20_000))).status, 200);
    let enormous = raw(
        dashboard.host(),
        format!(
            "GET /?q={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(2_000_000),
            dashboard.host()
        )
        .as_bytes(),
    );
    assert!(
        enormous.is_empty() || enormous.starts_with("HTTP/1.1 4"),
        "{}",
        &enormous[..enormous.len().min(200)]
    );
    // Garbage instead of HTTP.
    let garbage = raw(dashboard.host(), b"\xff\xfe\x00 nonsense\r\n\r\n");
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 4"),
        "{garbage}"
    );
    let query = dashboard.get("/?q=%FF&sort=%00&page=%");
    assert!(
        query.status == 200 || (400..500).contains(&query.status),
        "{}",
        query.status
    );

    // A client that never finishes its request head is cut off.
    let mut slow = std::net::TcpStream::connect(dashboard.host()).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::io::Write::write_all(&mut slow, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut slow, &mut rest);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "a slow client held its connection {waited:?}"
    );
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&rest)
    );

    // Still serving.
    assert_eq!(dashboard.get("/healthz").status, 200);
    assert_eq!(dashboard.get("/").status, 200);
}

/// The live stream delivers an alert committed after the page was opened.
#[test]
fn live_alerts_arrive_over_server_sent_events() {
    let dashboard = Dashboard::start(database(), None);
    let response = dashboard.open_stream();
    // Let the poller see the table as it is before the new alert.
    std::thread::sleep(Duration::from_secs(3));
    let alert_id = unique("live-alert");
    execute(
        database(),
        &format!(
            "INSERT INTO price_alerts (alert_id, kind, event_id, section, \"row\", seat, source, old_price, new_price, currency, observed_at)
             SELECT '{alert_id}', 'listing_drop', event_id, section, \"row\", seat, source, 20.00, 12.50, 'USD', '2099-01-01T00:00:00Z'
             FROM listings WHERE event_id = 'xss/1?a=b&c' LIMIT 1"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = BufReader::new(response.into_reader()).lines();
    let mut event = String::new();
    let data = loop {
        assert!(Instant::now() < deadline, "the alert never arrived");
        let line = lines.next().expect("stream open").expect("a line");
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if data.contains(&alert_id) {
                assert_eq!(event, "alert");
                break data.to_owned();
            }
        }
    };
    let value: serde_json::Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(
        value["event_name"], XSS_NAME,
        "raw text: the page sets it as text"
    );
    assert_eq!(value["price"], "$12.50");
    assert_eq!(value["change"], "−$7.50 (−37.5%)");
    assert_eq!(value["trend"], "down");
    assert_eq!(value["event_href"], format!("/events/{}", encoded(XSS_ID)));
    // The alerts page shows it on top too.
    let page = dashboard.get("/alerts");
    let first = page.body.find("<td class=\"time\"").expect("a row");
    assert!(page.body[first..].starts_with("<td class=\"time\" title=\"2099-01-01 00:00 UTC\""));
}

/// SIGTERM (what systemd and Kubernetes send) stops the dashboard cleanly:
/// it stops accepting, lets requests in progress finish, cuts a live stream
/// after the grace period, and exits with status 0.
#[test]
fn sigterm_stops_the_dashboard_cleanly_even_with_a_live_stream_open() {
    let mut dashboard = Dashboard::start(database(), None);
    let stream = dashboard.open_stream();
    let started = Instant::now();
    let status = dashboard
        .terminate(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running 20 s after SIGTERM: {}", dashboard.log()));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        dashboard.log()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "the open stream got no grace period ({took:?})"
    );
    assert!(
        dashboard.log().contains("dashboard stopped"),
        "{}",
        dashboard.log()
    );
    assert!(
        std::net::TcpStream::connect(dashboard.host()).is_err(),
        "still accepting after the stop"
    );
    drop(stream);
}
