//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, which scripts/test.sh installs), driven through
//! chromedriver's WebDriver HTTP API. On a database seeded by the real job it
//! checks that the events list has rows (the hostile event's name shown as
//! text, no dialog), that the event page draws its chart, that signing in and
//! the rule form create a rule, and that the alerts page updates live (its
//! script runs under the Content-Security-Policy). Screenshots go to
//! `target/dashboard-*.png`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use conscope_testkit::dashboard::*;
use conscope_testkit::*;

const TOKEN: &str = "browser-token-0123456789";
/// The key WebDriver names element references with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver with one headless Chromium session.
struct Browser {
    base: String,
    session: String,
    _profile: tempfile::TempDir,
    _driver: KillOnDrop,
}

fn require(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "`{program}` is not installed: this test needs Debian's {package} \
         (scripts/test.sh installs it; by hand: apt-get update && apt-get install -y chromium chromium-driver)"
    );
}

fn webdriver(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let request = agent.request(method, url);
    let result = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("WebDriver {method} {url}: {error}"),
    };
    response.into_json().expect("WebDriver JSON")
}

impl Browser {
    fn start() -> Browser {
        require("chromium", "chromium");
        require("chromedriver", "chromium-driver");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = KillOnDrop(driver);
        let base = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(60), "chromedriver to answer", || {
            ureq::get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        let profile = tempfile::tempdir().expect("profile dir");
        let created = webdriver(
            "POST",
            &format!("{base}/session"),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        format!("--user-data-dir={}", profile.path().display()),
                        "--window-size=1280,1500", "--hide-scrollbars", "--force-device-scale-factor=1",
                    ],
                },
            }}})),
        );
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Browser {
            base,
            session,
            _profile: profile,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|reply| panic!("{method} {path}: {reply}"))
    }

    /// A call whose WebDriver error is the caller's to judge: while a page
    /// loads or its script redraws, an element found a moment ago goes stale.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let reply = webdriver(method, &url, body);
        if reply["value"]["error"].is_null() {
            Ok(reply["value"].clone())
        } else {
            Err(reply)
        }
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map(|found| {
            found
                .iter()
                .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    }

    fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element matches {css}"))
    }

    fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element's text, or `None` once it has left the page: for checks
    /// polled while the page changes under them.
    fn text_if_there(&self, element: &str) -> Option<String> {
        self.try_call("GET", &format!("/element/{element}/text"), None)
            .ok()
            .map(|text| text.as_str().unwrap_or_default().to_owned())
    }

    fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .as_str()
            .map(str::to_owned)
    }

    fn click(&self, element: &str) {
        self.call("POST", &format!("/element/{element}/click"), Some(json!({})));
    }

    fn clear_and_type(&self, element: &str, text: &str) {
        self.call("POST", &format!("/element/{element}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn current_url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether a JavaScript dialog (an executed `alert(...)`) is open.
    fn dialog_open(&self) -> bool {
        let url = format!("{}/session/{}/alert/text", self.base, self.session);
        webdriver("GET", &url, None)["value"]["error"].is_null()
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 PNG"))
            .expect("valid base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = ureq::delete(&url).call();
    }
}

#[test]
fn the_dashboard_in_headless_chromium() {
    let database = seeded_database("dash_browser");
    let dashboard = Dashboard::start(&database, Some(TOKEN));
    let browser = Browser::start();

    // The events list: rows, prices, the hostile name as plain text.
    browser.go(&dashboard.url("/"));
    let rows = browser.find_all("table.events tbody tr");
    assert!(rows.len() >= 3, "{} rows in the events list", rows.len());
    let names: Vec<String> = browser
        .find_all("td.name a")
        .iter()
        .map(|link| browser.text(link))
        .collect();
    assert!(names.iter().any(|n| n == AURORA_NAME), "{names:?}");
    assert!(
        names.iter().any(|n| n == XSS_NAME),
        "the hostile name shows as text: {names:?}"
    );
    assert!(!browser.dialog_open(), "a script from the data ran");
    let prices: Vec<String> = browser
        .find_all("td.price")
        .iter()
        .map(|cell| browser.text(cell))
        .collect();
    assert!(prices.iter().any(|p| p.starts_with('$')), "{prices:?}");
    let list_shot = browser.screenshot("dashboard-screenshot.png");

    // The event page: a chart with its get-in line and section lines.
    let aurora = browser
        .find_all("td.name a")
        .into_iter()
        .find(|link| browser.text(link) == AURORA_NAME)
        .expect("the Aurora link");
    browser.click(&aurora);
    browser.wait_for("the event page", Duration::from_secs(30), |b| {
        b.current_url().ends_with(&format!("/events/{AURORA_ID}"))
    });
    let chart = browser.find("svg.chart");
    assert!(browser.attribute(&chart, "viewBox").is_some());
    let line = browser.find("svg.chart path.line.primary");
    let path = browser.attribute(&line, "d").expect("a path");
    assert!(path.starts_with('M') && path.matches('V').count() > 5, "{path}");
    assert!(
        browser.find_all("svg.chart path.line").len() >= 3,
        "section lines"
    );
    assert!(browser.find_all("ul.legend li").len() >= 3);
    // The 30-day low next to the get-in price, and each listing's deal score
    // where its section has 5 or more available listings.
    let month_low = browser.text(&browser.find(".stat .month-low"));
    assert!(month_low.starts_with("30-day low $"), "{month_low}");
    let judged = query_i64(
        &database,
        &format!(
            "SELECT count(*) FROM listings l WHERE l.event_id = '{AURORA_ID}' AND l.available
               AND (SELECT count(*) FROM listings m WHERE m.event_id = l.event_id AND m.section = l.section
                    AND m.currency = l.currency AND m.available) >= 5"
        ),
    );
    let scores: Vec<String> = browser
        .find_all("td.deal-score")
        .iter()
        .map(|cell| browser.text(cell))
        .filter(|text| text != "—")
        .collect();
    assert_eq!(scores.len() as i64, judged, "{scores:?}");
    assert!(
        scores
            .iter()
            .all(|s| s.ends_with("% below") || s.ends_with("% above") || s == "at median"),
        "{scores:?}"
    );
    let event_shot = browser.screenshot("dashboard-event.png");
    // The window selector.
    browser.click(&browser.find(r#"nav.segmented a[href$="window=all"]"#));
    browser.wait_for("the all-time chart", Duration::from_secs(30), |b| {
        b.current_url().ends_with("window=all")
    });
    browser.find("svg.chart path.line.primary");

    // Sign in, create a rule through the form, see it listed.
    browser.go(&dashboard.url("/login"));
    browser.clear_and_type(&browser.find("input[name=token]"), TOKEN);
    browser.click(&browser.find("#login-form button"));
    browser.wait_for("the rules page", Duration::from_secs(30), |b| {
        b.current_url().ends_with("/rules")
    });
    browser.clear_and_type(&browser.find("input[name=event]"), AURORA_ID);
    browser.clear_and_type(&browser.find("input[name=section]"), "Floor");
    browser.clear_and_type(&browser.find("input[name=currency]"), "USD");
    browser.clear_and_type(&browser.find("input[name=max_price]"), "150.25");
    browser.click(&browser.find("#rule-form button"));
    browser.wait_for("the new rule", Duration::from_secs(30), |b| {
        b.current_url().contains("created=")
    });
    let notice = browser.text(&browser.find(".notice"));
    assert!(notice.starts_with("Created rule #"), "{notice}");
    let listed: Vec<String> = browser
        .find_all("#rules-body tr")
        .iter()
        .map(|row| browser.text(row))
        .collect();
    assert!(
        listed.iter().any(|row| row.contains(AURORA_ID)
            && row.contains("Floor")
            && row.contains("$150.25")
            && row.contains("active")),
        "{listed:?}"
    );
    let stored = query_strings(
        &database,
        "SELECT concat_ws('|', event_id, section, currency, max_price, active::text) FROM alert_rules",
    );
    assert_eq!(stored, vec![format!("{AURORA_ID}|Floor|USD|150.25|true")]);
    // Every kind is offered; a deal rule with a cooldown.
    let kinds: Vec<String> = browser
        .find_all("select[name=kind] option")
        .iter()
        .filter_map(|option| browser.attribute(option, "value"))
        .collect();
    assert_eq!(kinds, ["max_price", "new_low", "back_in_stock", "deal"]);
    browser.clear_and_type(&browser.find("input[name=event]"), AURORA_ID);
    browser.click(&browser.find("select[name=kind] option[value=deal]"));
    browser.clear_and_type(&browser.find("input[name=deal_pct]"), "20");
    browser.clear_and_type(&browser.find("input[name=cooldown]"), "2h");
    browser.click(&browser.find("#rule-form button"));
    browser.wait_for("the deal rule", Duration::from_secs(30), |b| {
        b.find_all("#rules-body tr").iter().any(|row| {
            b.text_if_there(row)
                .is_some_and(|t| t.contains("below section median"))
        })
    });
    let stored = query_strings(
        &database,
        "SELECT concat_ws('|', kind, coalesce(max_price::text, '-'), deal_pct, extract(epoch FROM cooldown)::bigint)
         FROM alert_rules ORDER BY rule_id",
    );
    assert_eq!(stored, ["max_price|150.25|0", "deal|-|20|7200"]);
    let rules_shot = browser.screenshot("dashboard-rules.png");

    // Live alerts: the page's script connects and shows a new alert on top.
    browser.go(&dashboard.url("/alerts"));
    browser.wait_for("the live stream", Duration::from_secs(30), |b| {
        b.find_all("#live-status")
            .first()
            .and_then(|status| b.text_if_there(status))
            .is_some_and(|status| status == "live")
    });
    // Let the poller see the table as it is before the new alert.
    std::thread::sleep(Duration::from_secs(3));
    execute(
        &database,
        &format!(
            "INSERT INTO price_alerts (alert_id, kind, event_id, section, \"row\", seat, source, old_price, new_price, currency, observed_at)
             VALUES ('browser-live', 'event_low', '{AURORA_ID}', 'Floor', '1', '1', 'stubhub', 180.00, 123.45, 'USD', '2099-01-01T00:00:00Z')"
        ),
    );
    let mut top = String::new();
    browser.wait_for("the live alert", Duration::from_secs(30), |b| {
        let fresh = b
            .find_all("#alerts-body tr.fresh")
            .first()
            .and_then(|row| b.text_if_there(row));
        let first = b
            .find_all("#alerts-body tr")
            .first()
            .and_then(|row| b.text_if_there(row));
        top = first.unwrap_or_default();
        fresh.is_some_and(|row| row.contains("$123.45"))
    });
    assert!(
        top.contains(AURORA_NAME) && top.contains("new get-in low"),
        "{top}"
    );
    let alerts_shot = browser.screenshot("dashboard-alerts.png");

    for shot in [list_shot, event_shot, rules_shot, alerts_shot] {
        eprintln!("screenshot: {}", shot.display());
    }
}
