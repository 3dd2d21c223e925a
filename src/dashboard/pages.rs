//! The dashboard's HTML pages, rendered on the server. Pure: data in, markup
//! out; every value from the database goes through [`Esc`] (text and
//! attributes) or [`Seg`] (links). No inline script or style: the CSS and the
//! one small script are served from `/static/`, so the Content-Security-Policy
//! can forbid inline code.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::chart::PALETTE;
use super::format::{self, Trend};
use super::html::{Esc, Seg};
use super::queries::{Alert, CurrencyLine, Event, EventRow, Listing, SectionLine, Sort};
use crate::rules::Rule;

/// Who is looking, as the page header and the forms need it.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// False when the dashboard runs without a token.
    pub writable: bool,
    /// The session's CSRF token, when signed in.
    pub csrf: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Events,
    Alerts,
    Rules,
    Notifications,
    None,
}

/// The page around `body`.
pub fn layout(title: &str, nav: Nav, viewer: &Viewer, body: &str) -> String {
    let link = |target: Nav, href: &str, label: &str| {
        let current = if nav == target {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{current}>{label}</a>"#)
    };
    let account = match (&viewer.csrf, viewer.writable) {
        (Some(csrf), _) => format!(
            r#"<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{}"><span class="who">signed in</span> <button class="link">Sign out</button></form>"#,
            Esc(csrf)
        ),
        (None, true) => r#"<a href="/login" class="signin">Sign in</a>"#.to_owned(),
        (None, false) => {
            r#"<span class="badge muted" title="started without --token">read-only</span>"#.to_owned()
        }
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · conscope</title><link rel="stylesheet" href="/static/style.css"></head>
<body><header class="top"><div class="wrap"><a class="brand" href="/"><span class="mark">◆</span> conscope</a>
<nav>{events}{alerts}{rules}{notifications}</nav><div class="account">{account}</div></div></header>
<main class="wrap">{body}</main>
<footer class="wrap">conscope · prices exactly as observed · times in UTC</footer>
<script src="/static/live.js" defer></script></body></html>"#,
        title = Esc(title),
        events = link(Nav::Events, "/", "Events"),
        alerts = link(Nav::Alerts, "/alerts", "Alerts"),
        rules = link(Nav::Rules, "/rules", "Rules"),
        notifications = link(Nav::Notifications, "/notifications", "Notifications"),
    )
}

/// The events list's parameters, as parsed from the query string.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    pub search: String,
    pub sort: Sort,
    pub page: i64,
    pub per_page: i64,
}

impl EventsQuery {
    fn href(&self, sort: Sort, page: i64) -> String {
        let mut href = format!("/?sort={}", sort.key());
        if !self.search.is_empty() {
            let _ = write!(href, "&q={}", Seg(&self.search));
        }
        if page > 1 {
            let _ = write!(href, "&page={page}");
        }
        href
    }
}

fn trend_class(trend: Trend) -> &'static str {
    match trend {
        Trend::Down => "down",
        Trend::Up => "up",
        Trend::Flat => "flat",
    }
}

/// The 24 h change cell: green for a drop, red for a rise.
fn change_cell(line: &CurrencyLine) -> String {
    match (line.day_ago, line.get_in) {
        (Some(old), Some(new)) => {
            let (text, trend) = format::change(old, new, &line.currency);
            let arrow = match trend {
                Trend::Down => "▼ ",
                Trend::Up => "▲ ",
                Trend::Flat => "",
            };
            format!(
                r#"<span class="chg {}" title="get-in 24 h earlier: {}">{arrow}{}</span>"#,
                trend_class(trend),
                Esc(&format::money(old, &line.currency)),
                Esc(&text)
            )
        }
        (None, Some(_)) => {
            r#"<span class="chg flat" title="no available listing 24 h earlier">new</span>"#.to_owned()
        }
        (Some(old), None) => format!(
            r#"<span class="chg up" title="get-in 24 h earlier: {}">sold out</span>"#,
            Esc(&format::money(old, &line.currency))
        ),
        (None, None) => r#"<span class="muted">—</span>"#.to_owned(),
    }
}

/// A green badge saying `yes`, or a grey one saying `no`.
fn badge(ok: bool, yes: &str, no: &str) -> String {
    if ok {
        format!(r#"<span class="badge ok">{yes}</span>"#)
    } else {
        format!(r#"<span class="badge muted">{no}</span>"#)
    }
}

fn price_or_dash(price: Option<Decimal>, currency: &str) -> String {
    price.map_or_else(
        || r#"<span class="muted">—</span>"#.to_owned(),
        |p| Esc(&format::money(p, currency)).to_string(),
    )
}

fn event_href(event_id: &str) -> String {
    format!("/events/{}", Seg(event_id))
}

pub fn events_page(viewer: &Viewer, rows: &[EventRow], total: i64, query: &EventsQuery) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<div class="head"><h1>Events</h1><form class="search" method="get" action="/">
<input type="search" name="q" value="{}" placeholder="Search name, venue or id" maxlength="200" aria-label="search">
<input type="hidden" name="sort" value="{}"><button>Search</button></form></div>"#,
        Esc(&query.search),
        query.sort.key()
    );
    let first = (query.page - 1) * query.per_page + 1;
    let last = (first + rows.len() as i64 - 1).max(0);
    let _ = write!(
        body,
        r#"<p class="meta">{} · get-in = lowest available price · change over the last 24 h of observations</p>"#,
        if total == 0 {
            "no events".to_owned()
        } else {
            format!("{first}–{last} of {total} events")
        }
    );
    let header = |sort: Sort, label: &str, class: &str| {
        let mark = if query.sort == sort { " ↓" } else { "" };
        format!(
            r#"<th class="{class}"><a href="{}">{label}{mark}</a></th>"#,
            Esc(&query.href(sort, 1))
        )
    };
    let _ = write!(
        body,
        r#"<div class="card"><table class="data events"><thead><tr>{}<th>Venue</th>{}<th class="num">Listings</th>{}{}<th class="num">24 h</th></tr></thead><tbody>"#,
        header(Sort::Name, "Event", ""),
        header(Sort::Date, "Date", ""),
        header(Sort::Available, "Available", "num"),
        header(Sort::Price, "Get-in", "num"),
    );
    if rows.is_empty() {
        body.push_str(r#"<tr><td colspan="7" class="empty">No events match.</td></tr>"#);
    }
    for row in rows {
        let event = &row.event;
        let span = row.prices.len().max(1);
        let _ = write!(
            body,
            r#"<tr><td rowspan="{span}" class="name"><a href="{}">{}</a><div class="sub">{}</div></td><td rowspan="{span}">{}</td><td rowspan="{span}" class="date">{}</td>"#,
            Esc(&event_href(&event.event_id)),
            Esc(&event.event_name),
            Esc(&event.event_id),
            event.venue.as_deref().map_or_else(
                || r#"<span class="muted">—</span>"#.to_owned(),
                |v| Esc(v).to_string()
            ),
            event.event_date.map_or_else(
                || r#"<span class="muted">—</span>"#.to_owned(),
                |d| Esc(&format::date(d)).to_string()
            ),
        );
        if row.prices.is_empty() {
            body.push_str(r#"<td class="num muted">0</td><td class="num muted">0</td><td class="num muted">—</td><td class="num"></td></tr>"#);
        }
        for (index, line) in row.prices.iter().enumerate() {
            if index > 0 {
                body.push_str("<tr>");
            }
            let _ = write!(
                body,
                r#"<td class="num">{}</td><td class="num">{}</td><td class="num price">{}</td><td class="num">{}</td></tr>"#,
                line.listings,
                line.available,
                price_or_dash(line.get_in, &line.currency),
                change_cell(line)
            );
        }
    }
    body.push_str("</tbody></table></div>");
    let pages = (total + query.per_page - 1) / query.per_page;
    if pages > 1 {
        body.push_str(r#"<nav class="pager">"#);
        if query.page > 1 {
            let _ = write!(
                body,
                r#"<a href="{}">← Previous</a>"#,
                Esc(&query.href(query.sort, query.page - 1))
            );
        }
        let _ = write!(body, r#"<span>page {} of {pages}</span>"#, query.page);
        if query.page < pages {
            let _ = write!(
                body,
                r#"<a href="{}">Next →</a>"#,
                Esc(&query.href(query.sort, query.page + 1))
            );
        }
        body.push_str("</nav>");
    }
    layout("Events", Nav::Events, viewer, &body)
}

/// One chart of the event page: its currency, its SVG, and its legend
/// (label, palette index, last price).
pub struct ChartView {
    pub currency: String,
    pub svg: String,
    pub legend: Vec<(String, usize, Option<Decimal>)>,
}

/// The chart window choices: query value and label.
pub const WINDOWS: [(&str, &str); 4] = [
    ("24h", "24 h"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("all", "All"),
];

pub struct EventView<'a> {
    pub event: &'a Event,
    pub prices: &'a [CurrencyLine],
    /// Per currency, the lowest get-in price of the last 30 days.
    pub month_lows: &'a HashMap<String, Decimal>,
    pub sections: &'a [SectionLine],
    pub listings: &'a [Listing],
    pub listings_total: i64,
    pub alerts: &'a [Alert],
    pub charts: &'a [ChartView],
    pub window: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The chart's row limit and the time of the last row it read, when it
    /// stopped there.
    pub truncated: Option<(u64, DateTime<Utc>)>,
}

pub fn event_page(viewer: &Viewer, view: &EventView<'_>) -> String {
    let event = view.event;
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p class="crumbs"><a href="/">Events</a> / <span>{}</span></p><div class="head"><div><h1>{}</h1><p class="meta">{}{}</p></div>"#,
        Esc(&event.event_id),
        Esc(&event.event_name),
        event
            .venue
            .as_deref()
            .map_or_else(String::new, |v| format!("{} · ", Esc(v))),
        event.event_date.map_or_else(
            || "date unknown".to_owned(),
            |d| Esc(&format::date(d)).to_string()
        ),
    );
    if viewer.csrf.is_some() {
        let _ = write!(
            body,
            r#"<a class="button" href="/rules?event={}">+ Alert rule</a>"#,
            Seg(&event.event_id)
        );
    }
    body.push_str("</div>");
    // Key figures.
    body.push_str(r#"<div class="stats">"#);
    for line in view.prices {
        let _ = write!(
            body,
            r#"<div class="stat"><div class="label">Get-in {}</div><div class="value">{}</div><div class="delta">{}</div><div class="label month-low">30-day low {}</div><div class="label">{} of {} listings available</div></div>"#,
            Esc(&line.currency),
            price_or_dash(line.get_in, &line.currency),
            change_cell(line),
            price_or_dash(view.month_lows.get(&line.currency).copied(), &line.currency),
            line.available,
            line.listings
        );
    }
    if let Some(cheapest) = view
        .sections
        .iter()
        .filter_map(|s| s.low_price.map(|low| (s, low)))
        .min_by(|a, b| (a.0.currency.as_str(), a.1).cmp(&(b.0.currency.as_str(), b.1)))
    {
        let (section, low) = cheapest;
        let _ = write!(
            body,
            r#"<div class="stat"><div class="label">Cheapest section</div><div class="value small">{}</div><div class="label">{} · {} sections, {} available</div></div>"#,
            Esc(&section.section),
            Esc(&format::money(low, &section.currency)),
            view.sections.len(),
            view.sections.iter().filter(|s| s.available > 0).count()
        );
    }
    let _ = write!(
        body,
        r#"<div class="stat"><div class="label">Observed</div><div class="value small">{}</div><div class="label">first {}</div></div></div>"#,
        Esc(&format::when(event.last_seen)),
        Esc(&format::when(event.first_seen))
    );
    // Chart.
    body.push_str(
        r#"<section class="card"><div class="card-head"><h2>Price history</h2><nav class="segmented">"#,
    );
    for (key, label) in WINDOWS {
        let current = if key == view.window {
            r#" aria-current="true""#
        } else {
            ""
        };
        let _ = write!(
            body,
            r#"<a href="{}?window={key}"{current}>{label}</a>"#,
            Esc(&event_href(&event.event_id))
        );
    }
    let _ = write!(
        body,
        r#"</nav></div><p class="meta">{} → {} · step lines: a price holds until the next observation · thick line: get-in price</p>"#,
        Esc(&format::when(view.from)),
        Esc(&format::when(view.to))
    );
    if let Some((rows, stopped_at)) = view.truncated {
        let _ = write!(
            body,
            r#"<p class="warn">This window holds more than {rows} price observations, the most one chart reads: the chart stops at {}. Choose a shorter window to see the rest.</p>"#,
            Esc(&format::when(stopped_at))
        );
    }
    if view.charts.is_empty() {
        body.push_str(r#"<p class="empty">No price history yet.</p>"#);
    }
    for chart in view.charts {
        if view.charts.len() > 1 {
            let _ = write!(body, "<h3>{}</h3>", Esc(&chart.currency));
        }
        body.push_str(r#"<div class="chart-box">"#);
        body.push_str(&chart.svg);
        body.push_str(r#"</div><ul class="legend">"#);
        for (label, color, last) in &chart.legend {
            let _ = write!(
                body,
                r#"<li><svg width="14" height="14" aria-hidden="true"><rect width="14" height="4" y="5" rx="2" fill="{}"/></svg>{} <span class="muted">{}</span></li>"#,
                PALETTE[color % PALETTE.len()],
                Esc(label),
                last.map_or_else(
                    || "none available".to_owned(),
                    |p| Esc(&format::money(p, &chart.currency)).to_string()
                )
            );
        }
        body.push_str("</ul>");
    }
    body.push_str("</section>");
    // Sections and alerts side by side.
    body.push_str(r#"<div class="cols"><section class="card"><h2>Sections</h2><table class="data"><thead><tr><th>Section</th><th class="num">Available</th><th class="num">Lowest</th></tr></thead><tbody>"#);
    if view.sections.is_empty() {
        body.push_str(r#"<tr><td colspan="3" class="empty">No sections.</td></tr>"#);
    }
    for section in view.sections {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num price">{}</td></tr>"#,
            Esc(&section.section),
            section.available,
            price_or_dash(section.low_price, &section.currency)
        );
    }
    body.push_str(r#"</tbody></table></section><section class="card"><h2>Recent alerts</h2>"#);
    body.push_str(&alerts_table(view.alerts, false, "event-alerts"));
    body.push_str("</section></div>");
    // Listings.
    let _ = write!(
        body,
        r#"<section class="card"><h2>Listings <span class="count">{}</span></h2><table class="data"><thead><tr><th>Section</th><th>Row</th><th>Seat</th><th>Source</th><th class="num">Price</th><th class="num" title="How far below the median available price of its section (5 listings or more) a listing is">Deal score</th><th>Status</th><th>Observed</th></tr></thead><tbody>"#,
        view.listings_total
    );
    if view.listings.is_empty() {
        body.push_str(r#"<tr><td colspan="8" class="empty">No listings.</td></tr>"#);
    }
    for listing in view.listings {
        let _ = write!(
            body,
            r#"<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num price">{}</td>{}<td>{}</td><td class="time">{}</td></tr>"#,
            if listing.available { "" } else { "gone" },
            Esc(&listing.section),
            Esc(&listing.row),
            if listing.seat.is_empty() {
                "GA".to_owned()
            } else {
                Esc(&listing.seat).to_string()
            },
            Esc(&listing.source),
            Esc(&format::money(listing.price, &listing.currency)),
            deal_cell(listing.deal_score),
            badge(listing.available, "available", "sold"),
            Esc(&format::when(listing.observed_at))
        );
    }
    body.push_str("</tbody></table>");
    if view.listings_total > view.listings.len() as i64 {
        let _ = write!(
            body,
            r#"<p class="meta">Showing the first {} listings (available and cheapest first).</p>"#,
            view.listings.len()
        );
    }
    body.push_str("</section>");
    layout(&event.event_name, Nav::None, viewer, &body)
}

pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "listing_drop" => "price drop",
        "event_low" => "new get-in low",
        "rule_match" => "rule match",
        "new_low" => "new low",
        "back_in_stock" => "back in stock",
        "deal" => "deal",
        _ => "alert",
    }
}

/// The kind as people say it; a rule match names its rule.
pub fn kind_text(alert: &Alert) -> String {
    match (alert.kind.as_str(), alert.rule_id) {
        ("rule_match", Some(rule_id)) => format!("rule #{rule_id}"),
        (kind @ ("new_low" | "back_in_stock" | "deal"), Some(rule_id)) => {
            format!("{} · rule #{rule_id}", kind_label(kind))
        }
        (kind, _) => kind_label(kind).to_owned(),
    }
}

/// "A · Row 3 · Seat 12", the place of a listing.
pub fn place(section: &str, row: &str, seat: &str) -> String {
    let mut place = section.to_owned();
    if !row.is_empty() {
        let _ = write!(place, " · Row {row}");
    }
    if !seat.is_empty() {
        let _ = write!(place, " · Seat {seat}");
    }
    place
}

/// The change of an alert as text and trend, empty without an old price.
pub fn alert_change(alert: &Alert) -> (String, Trend) {
    match alert.old_price {
        Some(old) => format::change(old, alert.new_price, &alert.currency),
        None => (String::new(), Trend::Flat),
    }
}

/// The alerts table; `with_event` adds the event column, `id` names the tbody
/// the live script prepends to.
pub fn alerts_table(alerts: &[Alert], with_event: bool, id: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<table class="data alerts"><thead><tr><th>Observed</th><th>Kind</th>{}<th>Listing</th><th class="num">Price</th><th class="num">Change</th></tr></thead><tbody id="{id}">"#,
        if with_event { "<th>Event</th>" } else { "" }
    );
    if alerts.is_empty() {
        let _ = write!(
            out,
            r#"<tr class="placeholder"><td colspan="{}" class="empty">No alerts yet.</td></tr>"#,
            if with_event { 6 } else { 5 }
        );
    }
    for alert in alerts {
        let (change, trend) = alert_change(alert);
        let _ = write!(
            out,
            r#"<tr data-alert="{}"><td class="time" title="{}">{}</td><td><span class="kind {}">{}</span></td>"#,
            Esc(&alert.alert_id),
            Esc(&format::when(alert.observed_at)),
            Esc(&format::short(alert.observed_at)),
            Esc(&alert.kind),
            Esc(&kind_text(alert))
        );
        if with_event {
            let _ = write!(
                out,
                r#"<td><a href="{}">{}</a></td>"#,
                Esc(&event_href(&alert.event_id)),
                Esc(&alert.event_name)
            );
        }
        let _ = write!(
            out,
            r#"<td>{}<div class="sub">{}</div></td><td class="num price">{}</td><td class="num"><span class="chg {}">{}</span></td></tr>"#,
            Esc(&place(&alert.section, &alert.row, &alert.seat)),
            Esc(&alert.source),
            Esc(&format::money(alert.new_price, &alert.currency)),
            trend_class(trend),
            Esc(&change)
        );
    }
    out.push_str("</tbody></table>");
    out
}

pub fn alerts_page(viewer: &Viewer, alerts: &[Alert]) -> String {
    let mut body = String::new();
    body.push_str(r#"<div class="head"><h1>Alerts</h1><span class="live" id="live-status" data-stream="/alerts/stream">connecting…</span></div>"#);
    body.push_str(r#"<p class="meta">Newest first, by the time of the observation that triggered them. New alerts appear here as the job commits them.</p><div class="card">"#);
    body.push_str(&alerts_table(alerts, true, "alerts-body"));
    body.push_str("</div>");
    layout("Alerts", Nav::Alerts, viewer, &body)
}

/// What the rule form held, to show it again with an error.
#[derive(Debug, Clone, Default)]
pub struct RuleForm {
    pub event: String,
    pub section: String,
    pub currency: String,
    pub kind: String,
    pub max_price: String,
    pub rearm_pct: String,
    pub window_days: String,
    pub deal_pct: String,
    pub cooldown: String,
}

/// The kinds a rule form offers, with what each does for people.
const KIND_CHOICES: [(&str, &str); 4] = [
    ("max_price", "Price at or below max price"),
    ("new_low", "New low in a window of days"),
    ("back_in_stock", "Back in stock"),
    ("deal", "A deal: % below its section's median"),
];

pub fn rules_page(
    viewer: &Viewer,
    rules: &[Rule],
    form: &RuleForm,
    error: Option<&str>,
    notice: Option<&str>,
) -> String {
    let mut body = String::new();
    body.push_str(r#"<div class="head"><h1>Alert rules</h1></div><p class="meta">A rule watches a scope (an event, or one of its sections, in one currency). <b>Max price</b> fires when the scope's lowest available price drops to or below the max price (with a re-arm %, only after it rose that far above it again); <b>new low</b> when it drops below every price of the last N days; <b>back in stock</b> when listings become available again (under the max price, if given); <b>deal</b> when a listing is at least the deal % below its section's median (5 listings or more). A cooldown keeps a rule quiet for that long after each alert. Times are the event's observation times. The running job picks up changes within seconds.</p>"#);
    if let Some(notice) = notice {
        let _ = write!(body, r#"<p class="notice" role="status">{}</p>"#, Esc(notice));
    }
    if let Some(error) = error {
        let _ = write!(body, r#"<p class="error" role="alert">{}</p>"#, Esc(error));
    }
    match &viewer.csrf {
        Some(csrf) => {
            let _ = write!(
                body,
                r#"<section class="card"><h2>New rule</h2><form method="post" action="/rules" class="rule-form" id="rule-form">
<input type="hidden" name="csrf" value="{}">
<label>Event id<input name="event" required maxlength="128" value="{}" placeholder="e.g. taylor-2026-05-01"></label>
<label>Section<input name="section" maxlength="64" value="{}" placeholder="optional: whole event"></label>
<label>Currency<input name="currency" required pattern="[A-Z]{{3}}" maxlength="3" value="{}"></label>
<label>Kind<select name="kind">{}</select></label>
<label>Max price<input name="max_price" inputmode="decimal" pattern="[0-9]+(\.[0-9]{{1,2}})?" value="{}" placeholder="max price, new low, back in stock"></label>
<label>Re-arm %<input name="rearm_pct" inputmode="decimal" value="{}" placeholder="max price: optional"></label>
<label>Window (days)<input name="window_days" inputmode="numeric" value="{}" placeholder="new low: 30"></label>
<label>Deal %<input name="deal_pct" inputmode="numeric" value="{}" placeholder="deal: 1-90"></label>
<label>Cooldown<input name="cooldown" value="{}" placeholder="e.g. 90s, 10m, 2h, 1d"></label>
<button type="submit">Create rule</button></form></section>"#,
                Esc(csrf),
                Esc(&form.event),
                Esc(&form.section),
                Esc(if form.currency.is_empty() {
                    "USD"
                } else {
                    &form.currency
                }),
                kind_options(&form.kind),
                Esc(&form.max_price),
                Esc(&form.rearm_pct),
                Esc(&form.window_days),
                Esc(&form.deal_pct),
                Esc(&form.cooldown)
            );
        }
        None if viewer.writable => {
            body.push_str(r#"<p class="notice"><a href="/login">Sign in</a> with the dashboard token to create, disable or enable rules.</p>"#);
        }
        None => {
            body.push_str(
                r#"<p class="notice">This dashboard is read-only: it was started without a token.</p>"#,
            );
        }
    }
    body.push_str(r#"<div class="card"><table class="data rules"><thead><tr><th class="num">#</th><th>Event</th><th>Section</th><th class="num">Max price</th><th>Kind</th><th>Fires on</th><th>Status</th><th>Created</th><th></th></tr></thead><tbody id="rules-body">"#);
    if rules.is_empty() {
        body.push_str(r#"<tr><td colspan="9" class="empty">No rules yet.</td></tr>"#);
    }
    for rule in rules {
        let action = match &viewer.csrf {
            Some(csrf) => {
                let (verb, label) = if rule.active {
                    ("disable", "Disable")
                } else {
                    ("enable", "Enable")
                };
                format!(
                    r#"<form method="post" action="/rules/{}/{verb}" class="inline"><input type="hidden" name="csrf" value="{}"><button class="small">{label}</button></form>"#,
                    rule.rule_id,
                    Esc(csrf)
                )
            }
            None => String::new(),
        };
        let _ = write!(
            body,
            r#"<tr class="{}" data-rule="{}"><td class="num">{}</td><td><a href="{}">{}</a></td><td>{}</td><td class="num price">{}</td><td class="kind">{}</td><td>{}</td><td>{}</td><td class="time">{}</td><td class="actions">{action}</td></tr>"#,
            if rule.active { "" } else { "gone" },
            rule.rule_id,
            rule.rule_id,
            Esc(&event_href(&rule.event_id)),
            Esc(&rule.event_id),
            rule.section.as_deref().map_or_else(
                || r#"<span class="muted">all sections</span>"#.to_owned(),
                |s| Esc(s).to_string()
            ),
            rule.spec.max_price.map_or_else(
                || r#"<span class="muted">—</span>"#.to_owned(),
                |price| Esc(&format::money(price, &rule.currency)).to_string()
            ),
            Esc(&rule.spec.kind),
            Esc(&rule.spec.describe(&rule.currency)),
            badge(rule.active, "active", "disabled"),
            Esc(&format::when(rule.created_at))
        );
    }
    body.push_str("</tbody></table></div>");
    layout("Rules", Nav::Rules, viewer, &body)
}

/// A listing's deal score: `25.0% below` the median of its section, or
/// `4.0% above`; a dash where none can be judged.
fn deal_cell(score: Option<Decimal>) -> String {
    match score {
        None => r#"<td class="num deal-score muted">—</td>"#.to_owned(),
        Some(score) if score > Decimal::ZERO => {
            format!(r#"<td class="num deal-score good">{score}% below</td>"#)
        }
        Some(score) if score < Decimal::ZERO => {
            format!(r#"<td class="num deal-score">{}% above</td>"#, -score)
        }
        Some(_) => r#"<td class="num deal-score">at median</td>"#.to_owned(),
    }
}

/// The `<option>`s of the kind select, `chosen` selected (the first when none).
fn kind_options(chosen: &str) -> String {
    let mut options = String::new();
    for (kind, label) in KIND_CHOICES {
        let selected = if kind == chosen { " selected" } else { "" };
        let _ = write!(
            options,
            r#"<option value="{kind}"{selected}>{}</option>"#,
            Esc(label)
        );
    }
    options
}

pub fn login_page(viewer: &Viewer, error: Option<&str>) -> String {
    let mut body = String::from(r#"<section class="card narrow"><h1>Sign in</h1>"#);
    if let Some(error) = error {
        let _ = write!(body, r#"<p class="error" role="alert">{}</p>"#, Esc(error));
    }
    if !viewer.writable {
        body.push_str(r#"<p>This dashboard was started without <code>--token</code> (<code>CONSCOPE_DASHBOARD_TOKEN</code>): it is read-only and nobody can sign in.</p>"#);
    } else if viewer.csrf.is_some() {
        body.push_str(r#"<p>You are signed in. <a href="/rules">Manage rules →</a></p>"#);
    } else {
        body.push_str(r#"<p class="meta">Writes (alert rules) need the dashboard token. Reading needs nothing.</p><form method="post" action="/login" class="rule-form" id="login-form"><label>Token<input type="password" name="token" required autocomplete="current-password" autofocus></label><button type="submit">Sign in</button></form>"#);
    }
    body.push_str("</section>");
    layout("Sign in", Nav::None, viewer, &body)
}

pub fn error_page(viewer: &Viewer, title: &str, message: &str) -> String {
    let body = format!(
        r#"<section class="card narrow"><h1>{}</h1><p>{}</p><p><a href="/">← Events</a></p></section>"#,
        Esc(title),
        Esc(message)
    );
    layout(title, Nav::None, viewer, &body)
}
