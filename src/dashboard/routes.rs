//! The request handlers: each parses its request leniently (a bad parameter
//! falls back to its default, a bad id is a 404), runs its queries, and
//! renders a page. Writes check [`Auth::authorize_write`] before anything
//! else, and go through `crate::rules`. Sign-in goes through the client's
//! [`Backoff`](super::backoff::Backoff) first. Database failures answer 503
//! and are logged; nothing here panics on any input.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Duration;
use serde::Deserialize;

use super::auth::{self, Auth, Refusal};
use super::chart::{self, Line};
use super::client::Client;
use super::history::{History, SeriesKey};
use super::pages::{self, ChartView, EventView, EventsQuery, RuleForm, Viewer};
use super::queries::{self, Sort};
use super::{Shared, CHART_WAIT, STATEMENT_TIMEOUT};
use crate::rules::{self, Activation};
use conscope_dataflows::parse::MAX_EVENT_ID_CHARS;

/// `?` for handlers that answer with a `Response` either way.
macro_rules! or_respond {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(response) => return response,
        }
    };
}

const PER_PAGE: i64 = 50;
/// Pages past this are refused rather than scanned (50 000 events deep).
const MAX_PAGE: i64 = 1_000;
const MAX_SEARCH_CHARS: usize = 200;
/// Sections charted per currency, besides the get-in price.
const CHARTED_SECTIONS: usize = 6;
const LISTINGS_SHOWN: i64 = 500;

pub(super) fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

pub(super) fn viewer(auth: &Auth, headers: &HeaderMap) -> Viewer {
    Viewer {
        writable: auth.writable(),
        csrf: auth.session(headers).map(|s| s.csrf),
    }
}

pub(super) fn error(viewer: &Viewer, status: StatusCode, title: &str, message: &str) -> Response {
    html(status, pages::error_page(viewer, title, message))
}

/// A database failure: logged, and a 503 page that does not leak it.
pub(super) fn unavailable(viewer: &Viewer, what: &str, error: &dyn std::fmt::Display) -> Response {
    tracing::warn!("dashboard: {what}: {error}");
    error_page_503(viewer)
}

fn error_page_503(viewer: &Viewer) -> Response {
    error(
        viewer,
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
        "The database did not answer. Try again in a moment.",
    )
}

pub(super) async fn client(state: &Shared, viewer: &Viewer) -> Result<deadpool_postgres::Object, Response> {
    state
        .pool
        .get()
        .await
        .map_err(|e| unavailable(viewer, "no database connection", &e))
}

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    q: Option<String>,
    sort: Option<String>,
    page: Option<String>,
}

pub async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<EventsParams>,
) -> Response {
    let viewer = viewer(&state.auth, &headers);
    let search: String = params
        .q
        .unwrap_or_default()
        .chars()
        // Stored text never holds NUL, and PostgreSQL refuses it in a parameter.
        .filter(|c| *c != '\0')
        .take(MAX_SEARCH_CHARS)
        .collect();
    let query = EventsQuery {
        search,
        sort: params.sort.as_deref().and_then(Sort::parse).unwrap_or_default(),
        page: params
            .page
            .and_then(|p| p.trim().parse::<i64>().ok())
            .unwrap_or(1)
            .clamp(1, MAX_PAGE),
        per_page: PER_PAGE,
    };
    let client = or_respond!(client(&state, &viewer).await);
    let offset = (query.page - 1) * PER_PAGE;
    match queries::events(&client, &query.search, query.sort, offset, PER_PAGE).await {
        Ok((rows, total)) => html(StatusCode::OK, pages::events_page(&viewer, &rows, total, &query)),
        Err(e) => unavailable(&viewer, "events list", &e),
    }
}

#[derive(Debug, Deserialize)]
pub struct EventParams {
    window: Option<String>,
}

pub async fn event(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(event_id): Path<String>,
    Query(params): Query<EventParams>,
) -> Response {
    let viewer = viewer(&state.auth, &headers);
    let missing = || {
        error(
            &viewer,
            StatusCode::NOT_FOUND,
            "No such event",
            "No event has this id.",
        )
    };
    // No stored event id holds NUL, which PostgreSQL refuses in a parameter.
    if event_id.is_empty() || event_id.contains('\0') || event_id.chars().count() > MAX_EVENT_ID_CHARS {
        return missing();
    }
    let (window, span) = match params.window.as_deref() {
        Some("24h") => ("24h", Some(Duration::hours(24))),
        Some("30d") => ("30d", Some(Duration::days(30))),
        Some("all") => ("all", None),
        _ => ("7d", Some(Duration::days(7))),
    };
    // The slot before the pool connection: a page waiting for a slot holds none.
    let Ok(Ok(_slot)) = tokio::time::timeout(CHART_WAIT, state.charts.acquire()).await else {
        return error(
            &viewer,
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many charts are being drawn right now. Try again in a moment.",
        );
    };
    let client = or_respond!(client(&state, &viewer).await);
    let event = match queries::event(&client, &event_id).await {
        Ok(Some(event)) => event,
        Ok(None) => return missing(),
        Err(e) => return unavailable(&viewer, "event", &e),
    };
    let to = event.last_seen;
    let from = span.map_or(event.first_seen, |span| (to - span).max(event.first_seen));
    let loaded = async {
        let prices = queries::currency_lines(&client, std::slice::from_ref(&event))
            .await?
            .remove(&event.event_id)
            .unwrap_or_default();
        let month_lows = queries::month_lows(&client, &event).await?;
        let sections = queries::sections(&client, &event.event_id).await?;
        let listings = queries::listings(&client, &event.event_id, LISTINGS_SHOWN).await?;
        let alerts = queries::alerts(&client, Some(&event.event_id), 15).await?;
        // The sections with the most available listings, per currency.
        let mut charted = BTreeSet::new();
        let mut per_currency: BTreeMap<&str, usize> = BTreeMap::new();
        for section in &sections {
            let count = per_currency.entry(section.currency.as_str()).or_insert(0);
            if *count < CHARTED_SECTIONS {
                *count += 1;
                charted.insert((section.currency.clone(), section.section.clone()));
            }
        }
        let mut history = History::new(from, to, charted);
        queries::replay_history(
            &client,
            &event.event_id,
            Some(from),
            to,
            state.chart_rows,
            &mut history,
        )
        .await?;
        Ok::<_, tokio_postgres::Error>((prices, month_lows, sections, listings, alerts, history))
    };
    let (prices, month_lows, sections, listings, alerts, history) = match loaded.await {
        Ok(loaded) => loaded,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            tracing::warn!(
                event_id = %event_id,
                window,
                "dashboard: event page cut by the statement timeout"
            );
            return error(
                &viewer,
                StatusCode::SERVICE_UNAVAILABLE,
                "Too slow to chart",
                &format!(
                    "Reading this event's price history over this window took longer than {} s. Choose a shorter window.",
                    STATEMENT_TIMEOUT.as_secs()
                ),
            );
        }
        Err(e) => return unavailable(&viewer, "event page", &e),
    };
    let truncated = history.truncated.map(|stopped_at| (state.chart_rows, stopped_at));
    let charts = charts(history);
    let listings_total = prices.iter().map(|p| p.listings).sum();
    let view = EventView {
        event: &event,
        prices: &prices,
        month_lows: &month_lows,
        sections: &sections,
        listings: &listings,
        listings_total,
        alerts: &alerts,
        charts: &charts,
        window,
        from,
        to,
        truncated,
    };
    html(StatusCode::OK, pages::event_page(&viewer, &view))
}

/// One chart per currency: its get-in price and its charted sections.
fn charts(history: History) -> Vec<ChartView> {
    let (from, to) = history.window();
    let mut by_currency: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for (key, points) in history.finish() {
        let (currency, label, primary) = match key {
            SeriesKey::GetIn { currency } => (currency, "Get-in price".to_owned(), true),
            SeriesKey::Section { currency, section } => (currency, format!("Section {section}"), false),
        };
        let lines = by_currency.entry(currency).or_default();
        lines.push(Line {
            label,
            points,
            color: 0,
            primary,
        });
    }
    by_currency
        .into_iter()
        .map(|(currency, mut lines)| {
            // The get-in price first and blue; sections in palette order.
            lines.sort_by_key(|l| !l.primary);
            for (index, line) in lines.iter_mut().enumerate() {
                line.color = if line.primary { 0 } else { index.max(1) };
            }
            let legend = lines
                .iter()
                .map(|l| (l.label.clone(), l.color, l.points.last().and_then(|p| p.1)))
                .collect();
            ChartView {
                svg: chart::render(&currency, from, to, &lines),
                currency,
                legend,
            }
        })
        .collect()
}

pub async fn alerts(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let viewer = viewer(&state.auth, &headers);
    let client = or_respond!(client(&state, &viewer).await);
    match queries::alerts(&client, None, 100).await {
        Ok(alerts) => html(StatusCode::OK, pages::alerts_page(&viewer, &alerts)),
        Err(e) => unavailable(&viewer, "alerts", &e),
    }
}

pub async fn alert_stream(State(state): State<Shared>) -> Response {
    match state.live.subscribe() {
        Some(sse) => sse.into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "too many live streams open\n").into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct RulesParams {
    event: Option<String>,
    created: Option<String>,
    disabled: Option<String>,
    enabled: Option<String>,
}

pub async fn rules(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<RulesParams>,
) -> Response {
    let viewer = viewer(&state.auth, &headers);
    // Only numbers are echoed back, never request text.
    let id = |value: &Option<String>| value.as_deref().and_then(|v| v.parse::<i64>().ok());
    let notice = if let Some(id) = id(&params.created) {
        Some(format!("Created rule #{id}."))
    } else if let Some(id) = id(&params.disabled) {
        Some(format!("Disabled rule #{id}."))
    } else {
        id(&params.enabled).map(|id| {
            format!(
                "Enabled rule #{id}: it starts afresh and fires at once if its scope is already low enough."
            )
        })
    };
    let form = RuleForm {
        event: params
            .event
            .unwrap_or_default()
            .chars()
            .take(MAX_EVENT_ID_CHARS)
            .collect(),
        ..RuleForm::default()
    };
    rules_response(&state, &viewer, StatusCode::OK, &form, None, notice.as_deref()).await
}

async fn rules_response(
    state: &Shared,
    viewer: &Viewer,
    status: StatusCode,
    form: &RuleForm,
    problem: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let client = or_respond!(client(state, viewer).await);
    match rules::list(&client, true).await {
        Ok(list) => html(status, pages::rules_page(viewer, &list, form, problem, notice)),
        Err(e) => unavailable(viewer, "rules", &e),
    }
}

/// The refusal page unless the request may write.
// The error is the response itself, built only on the refusal path.
#[allow(clippy::result_large_err)]
pub(super) fn authorize(auth: &Auth, headers: &HeaderMap, csrf: &Option<String>) -> Result<(), Response> {
    auth.authorize_write(headers, csrf.as_deref().unwrap_or(""))
        .map(|_| ())
        .map_err(|refusal| refused(auth, headers, refusal))
}

fn refused(auth: &Auth, headers: &HeaderMap, refusal: Refusal) -> Response {
    let status = match refusal {
        Refusal::NoSession | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
        Refusal::ReadOnly | Refusal::BadCsrf | Refusal::CrossOrigin => StatusCode::FORBIDDEN,
    };
    error(
        &viewer(auth, headers),
        status,
        "Not allowed",
        &refusal.to_string(),
    )
}

#[derive(Debug, Deserialize)]
pub struct RuleFields {
    csrf: Option<String>,
    event: Option<String>,
    section: Option<String>,
    currency: Option<String>,
    kind: Option<String>,
    max_price: Option<String>,
    rearm_pct: Option<String>,
    window_days: Option<String>,
    deal_pct: Option<String>,
    cooldown: Option<String>,
}

pub async fn create_rule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(fields): Form<RuleFields>,
) -> Response {
    or_respond!(authorize(&state.auth, &headers, &fields.csrf));
    let viewer = viewer(&state.auth, &headers);
    let text = |field: Option<String>| field.unwrap_or_default().trim().to_owned();
    let form = RuleForm {
        event: text(fields.event),
        section: text(fields.section),
        currency: text(fields.currency),
        kind: text(fields.kind),
        max_price: text(fields.max_price),
        rearm_pct: text(fields.rearm_pct),
        window_days: text(fields.window_days),
        deal_pct: text(fields.deal_pct),
        cooldown: text(fields.cooldown),
    };
    let section = Some(form.section.as_str()).filter(|s| !s.is_empty());
    let input = rules::KindInput {
        // A form without the field (older pages, scripts) means today's rule.
        kind: if form.kind.is_empty() {
            "max_price"
        } else {
            &form.kind
        },
        max_price: Some(&form.max_price),
        rearm_pct: Some(&form.rearm_pct),
        window_days: Some(&form.window_days),
        deal_pct: Some(&form.deal_pct),
        cooldown: Some(&form.cooldown),
    };
    let rule = match rules::validate_kind(&form.event, section, &form.currency, &input) {
        Ok(rule) => rule,
        Err(invalid) => {
            let problem = format!("{} {}", invalid.field.label(), invalid.problem);
            return rules_response(
                &state,
                &viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                &form,
                Some(&problem),
                None,
            )
            .await;
        }
    };
    let client = or_respond!(client(&state, &viewer).await);
    match rules::insert(&client, &rule).await {
        Ok(rule_id) => {
            tracing::info!(rule_id, "dashboard: rule created");
            Redirect::to(&format!("/rules?created={rule_id}")).into_response()
        }
        Err(e) => unavailable(&viewer, "insert rule", &e),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfField {
    csrf: Option<String>,
}

pub async fn change_rule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(fields): Form<CsrfField>,
) -> Response {
    or_respond!(authorize(&state.auth, &headers, &fields.csrf));
    let viewer = viewer(&state.auth, &headers);
    let missing = || {
        error(
            &viewer,
            StatusCode::NOT_FOUND,
            "No such rule",
            "No rule has this id.",
        )
    };
    let Ok(id) = id.parse::<i64>() else {
        return missing();
    };
    let active = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => {
            return error(
                &viewer,
                StatusCode::NOT_FOUND,
                "Not found",
                "Rules can be enabled or disabled.",
            )
        }
    };
    let client = or_respond!(client(&state, &viewer).await);
    match rules::set_active(&client, id, active).await {
        Ok(Activation::NoSuchRule) => missing(),
        Ok(_) => {
            tracing::info!(rule_id = id, active, "dashboard: rule changed");
            Redirect::to(&format!("/rules?{action}d={id}")).into_response()
        }
        Err(e) => unavailable(&viewer, "change rule", &e),
    }
}

pub async fn login_form(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let viewer = viewer(&state.auth, &headers);
    html(StatusCode::OK, pages::login_page(&viewer, None))
}

#[derive(Debug, Deserialize)]
pub struct LoginFields {
    token: Option<String>,
}

/// Whether the session cookie gets `Secure`: always with `--secure-cookies`,
/// else when a trusted proxy says the browser came over HTTPS.
fn secure(state: &Shared, client: &Client) -> bool {
    state.secure_cookies || client.https
}

/// `wait` in whole seconds, rounded up, as `Retry-After` says it.
fn seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The login page with `message`, and `Retry-After` when the client must wait.
fn login_refused(viewer: &Viewer, status: StatusCode, message: &str, wait: std::time::Duration) -> Response {
    let mut response = html(status, pages::login_page(viewer, Some(message)));
    if !wait.is_zero() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds(wait)));
    }
    response
}

pub async fn login(
    State(state): State<Shared>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Form(fields): Form<LoginFields>,
) -> Response {
    // Signing in from another site would sign this browser into its session.
    if let Err(refusal) = auth::check_origin(&headers) {
        return refused(&state.auth, &headers, refusal);
    }
    let viewer = viewer(&state.auth, &headers);
    let now = std::time::Instant::now();
    // While a client waits, its token is not even looked at.
    if let Err(wait) = state.backoff.check(client.key, now) {
        let message = format!(
            "Too many wrong tokens from your address: try again in {} s.",
            seconds(wait)
        );
        return login_refused(&viewer, StatusCode::TOO_MANY_REQUESTS, &message, wait);
    }
    match state.auth.sign_in(fields.token.as_deref().unwrap_or("")) {
        Ok((id, _)) => {
            state.backoff.succeeded(client.key);
            tracing::info!("dashboard: signed in");
            let mut response = Redirect::to("/rules").into_response();
            if let Ok(cookie) = auth::session_cookie(&id, secure(&state, &client)).parse() {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(Refusal::ReadOnly) => html(
            StatusCode::FORBIDDEN,
            pages::login_page(&viewer, Some(&Refusal::ReadOnly.to_string())),
        ),
        Err(refusal) => {
            let wait = state.backoff.failed(client.key, now);
            tracing::warn!(client = %client.key, wait_s = wait.as_secs(), "dashboard: sign-in refused: {refusal}");
            let message = if wait.is_zero() {
                refusal.to_string()
            } else {
                format!("{refusal}: try again in {} s.", seconds(wait))
            };
            login_refused(&viewer, StatusCode::UNAUTHORIZED, &message, wait)
        }
    }
}

pub async fn logout(
    State(state): State<Shared>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Form(fields): Form<CsrfField>,
) -> Response {
    or_respond!(authorize(&state.auth, &headers, &fields.csrf));
    state.auth.sign_out(&headers);
    let mut response = Redirect::to("/").into_response();
    if let Ok(cookie) = auth::cleared_cookie(secure(&state, &client)).parse() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub async fn healthz(State(state): State<Shared>) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let ok = match state.pool.get().await {
        Ok(client) => queries::ping(&client).await.is_ok(),
        Err(_) => false,
    };
    if ok {
        (StatusCode::OK, text, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, text, "database unavailable\n").into_response()
    }
}

pub async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/style.css"),
    )
        .into_response()
}

pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/live.js"),
    )
        .into_response()
}

pub async fn not_found(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let viewer = viewer(&state.auth, &headers);
    error(
        &viewer,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page here.",
    )
}
