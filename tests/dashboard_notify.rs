//! The dashboard's Notifications pages against a real `conscope dashboard` and
//! PostgreSQL: channels and routes are changed only by a signed-in session
//! with the page's CSRF token and from the dashboard's own origin, bad input is
//! refused naming the field, and an alert's deliveries log shows sent, failed
//! with its reason (escaped) and digested.

use conscope_testkit::dashboard::*;
use conscope_testkit::*;

const TOKEN: &str = "notify-dashboard-token";

#[test]
fn channels_routes_and_deliveries_on_the_dashboard() {
    let db = fresh_database(&unique("dash_notify"));
    let dashboard = Dashboard::start(&db, Some(TOKEN));

    let page = dashboard.get("/notifications");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("No channels yet") && page.body.contains("Sign in"),
        "{}",
        page.body
    );

    // Writes need a session, its CSRF token and our origin.
    let form = [
        ("csrf", "x"),
        ("name", "ops"),
        ("kind", "slack"),
        ("target", "https://hooks.example/{secret}"),
    ];
    assert_eq!(
        dashboard.post_form("/notifications/channels", None, &form).status,
        401
    );
    let cookie = dashboard.sign_in(TOKEN);
    assert_eq!(
        dashboard
            .post_form("/notifications/channels", Some(&cookie), &form)
            .status,
        403
    );
    let csrf = dashboard.csrf("/notifications", &cookie);
    let cross = send(
        "POST",
        &dashboard.url("/notifications/channels"),
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        Some(Body::Form(&[
            ("csrf", &csrf),
            ("name", "x"),
            ("kind", "slack"),
            ("target", "https://x"),
        ])),
    );
    assert_eq!(cross.status, 403);

    let bad = dashboard.post_form(
        "/notifications/channels",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("name", "ops"),
            ("kind", "pager"),
            ("target", "https://x"),
        ],
    );
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("Kind: must be one of"), "{}", bad.body);
    let created = dashboard.post_form(
        "/notifications/channels",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("name", "ops <b>"),
            ("kind", "slack"),
            ("target", "https://hooks.example/{secret}"),
            ("secret_env", "SLACK_TOKEN"),
            ("max_per_hour", "60"),
        ],
    );
    assert_eq!(created.status, 303, "{}", created.body);
    let page = dashboard.get_with("/notifications", &[("Cookie", &cookie)]).body;
    assert!(
        page.contains("ops &lt;b&gt;") && page.contains("SLACK_TOKEN"),
        "{page}"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM notify_channels WHERE max_per_hour = 60"
        ),
        1
    );

    let route = dashboard.post_form(
        "/notifications/routes",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("channel", "1"),
            ("kinds", "rule_match,deal"),
            ("event", "eras"),
            ("rule", ""),
        ],
    );
    assert_eq!(route.status, 303, "{}", route.body);
    let bad_route = dashboard.post_form(
        "/notifications/routes",
        Some(&cookie),
        &[("csrf", &csrf), ("channel", "1"), ("kinds", "Not A Kind")],
    );
    assert_eq!(bad_route.status, 422);
    assert!(bad_route.body.contains("Kinds:"), "{}", bad_route.body);
    let page = dashboard.get("/notifications").body;
    assert!(
        page.contains("rule_match, deal") && page.contains("eras"),
        "{page}"
    );

    assert_eq!(
        dashboard
            .post_form(
                "/notifications/channels/1/disable",
                Some(&cookie),
                &[("csrf", &csrf)]
            )
            .status,
        303
    );
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM notify_channels WHERE NOT active"),
        1
    );
    assert_eq!(
        dashboard
            .post_form(
                "/notifications/channels/99/enable",
                Some(&cookie),
                &[("csrf", &csrf)]
            )
            .status,
        404
    );
    assert_eq!(
        dashboard
            .post_form(
                "/notifications/routes/1/remove",
                Some(&cookie),
                &[("csrf", &csrf)]
            )
            .status,
        303
    );
    assert_eq!(query_i64(&db, "SELECT count(*) FROM notify_routes"), 0);

    // The deliveries log of one alert.
    execute(
        &db,
        "INSERT INTO notify_channels (name, kind, target) VALUES ('mail', 'email', 'ops@example.com');
         INSERT INTO notify_deliveries (alert_id, channel_id, status, attempts, last_error) VALUES
           ('a1', 1, 'failed', 1, 'HTTP 400 <script>bad</script>'),
           ('a1', 2, 'sent', 3, NULL),
           ('a2', 2, 'digested', 1, NULL)",
    );
    let log = dashboard.get("/notifications/alerts/a1");
    assert_eq!(log.status, 200);
    assert!(
        log.body.contains("failed") && log.body.contains("HTTP 400 &lt;script&gt;bad&lt;/script&gt;"),
        "{}",
        log.body
    );
    assert!(
        log.body.contains("sent") && !log.body.contains("<script>bad"),
        "{}",
        log.body
    );
    let page = dashboard.get("/notifications").body;
    assert!(
        page.contains("/notifications/alerts/a2") && page.contains("digested"),
        "{page}"
    );
    assert_eq!(dashboard.get("/notifications/alerts/").status, 404);
}
