//! The Notifications pages: channels and routes (added, enabled, disabled,
//! removed with the dashboard token, CSRF-checked like the rules form), the
//! newest deliveries, and one alert's deliveries log (sent, failed with its
//! reason, digested). Handlers and their markup; every write goes through
//! `crate::notify::store`, the one implementation the CLI uses too.
//!
//! Secrets never reach these pages: a channel stores only the name of the
//! notifier's environment variable that holds its secret.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::format;
use super::html::{Esc, Seg};
use super::pages::{self, Nav, Viewer};
use super::routes::{authorize, client, error, html, unavailable, viewer};
use super::Shared;
use crate::notify::store::{self, Channel, ChannelKind, DeliveryLine, Route, StoreError};

/// Deliveries listed on the Notifications page.
const RECENT: i64 = 50;

#[derive(Debug, Deserialize, Default)]
pub struct NoticeParams {
    created_channel: Option<String>,
    created_route: Option<String>,
    changed: Option<String>,
    removed: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct ChannelFields {
    csrf: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    target: Option<String>,
    secret_env: Option<String>,
    max_per_hour: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RouteFields {
    csrf: Option<String>,
    channel: Option<String>,
    kinds: Option<String>,
    event: Option<String>,
    rule: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

pub async fn page(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<NoticeParams>,
) -> Response {
    let viewer = viewer(&state.auth, &headers);
    // Only numbers are echoed back, never request text.
    let number = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<i64>().ok());
    let notice = if let Some(id) = number(&params.created_channel) {
        Some(format!("Created channel #{id}. Route alerts to it below."))
    } else if let Some(id) = number(&params.created_route) {
        Some(format!("Created route #{id}."))
    } else if let Some(id) = number(&params.changed) {
        Some(format!("Changed channel #{id}."))
    } else {
        number(&params.removed).map(|id| format!("Removed route #{id}."))
    };
    respond(&state, &viewer, StatusCode::OK, None, notice.as_deref()).await
}

async fn respond(
    state: &Shared,
    viewer: &Viewer,
    status: StatusCode,
    problem: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let client = match client(state, viewer).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let loaded = async {
        Ok::<_, tokio_postgres::Error>((
            store::channels(&client).await?,
            store::routes(&client, true).await?,
            store::delivery_counts(&client).await?,
            store::recent_deliveries(&client, RECENT).await?,
        ))
    }
    .await;
    match loaded {
        Ok((channels, routes, counts, recent)) => html(
            status,
            render(viewer, &channels, &routes, &counts, &recent, problem, notice),
        ),
        Err(e) => unavailable(viewer, "notifications", &e),
    }
}

pub async fn create_channel(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(fields): Form<ChannelFields>,
) -> Response {
    if let Err(response) = authorize(&state.auth, &headers, &fields.csrf) {
        return response;
    }
    let viewer = viewer(&state.auth, &headers);
    let max = fields
        .max_per_hour
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let max = match max.map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => Some(0), // refused by validation, with the flag's message
    };
    let valid = store::validate_channel(
        fields.name.as_deref().unwrap_or_default(),
        fields.kind.as_deref().unwrap_or_default(),
        fields.target.as_deref().unwrap_or_default(),
        fields.secret_env.as_deref(),
        max,
    );
    let channel = match valid {
        Ok(channel) => channel,
        Err(invalid) => {
            let problem = format!("{}: {}", label(invalid.flag), invalid.problem);
            return respond(
                &state,
                &viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&problem),
                None,
            )
            .await;
        }
    };
    let client = match client(&state, &viewer).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    match store::insert_channel(&client, &channel).await {
        Ok(id) => {
            tracing::info!(channel_id = id, "dashboard: channel created");
            Redirect::to(&format!("/notifications?created_channel={id}")).into_response()
        }
        Err(StoreError::DuplicateName(name)) => {
            let problem = format!("Name: a channel named {name:?} already exists");
            respond(
                &state,
                &viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&problem),
                None,
            )
            .await
        }
        Err(e) => unavailable(&viewer, "insert channel", &e),
    }
}

/// A form field's label for a flag named in a validation error.
fn label(flag: &str) -> &'static str {
    match flag {
        "--name" => "Name",
        "--kind" => "Kind",
        "--target" => "Target",
        "--secret-env" => "Secret env",
        "--max-per-hour" => "Max per hour",
        "--kinds" => "Kinds",
        "--event" => "Event",
        "--rule" => "Rule",
        _ => "Field",
    }
}

pub async fn change_channel(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(fields): Form<CsrfOnly>,
) -> Response {
    if let Err(response) = authorize(&state.auth, &headers, &fields.csrf) {
        return response;
    }
    let viewer = viewer(&state.auth, &headers);
    let active = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => {
            return error(
                &viewer,
                StatusCode::NOT_FOUND,
                "Not found",
                "Channels can be enabled or disabled.",
            )
        }
    };
    let Ok(id) = id.parse::<i64>() else {
        return error(
            &viewer,
            StatusCode::NOT_FOUND,
            "No such channel",
            "No channel has this id.",
        );
    };
    let client = match client(&state, &viewer).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    match store::channel(&client, &id.to_string()).await {
        Ok(_) => {}
        Err(StoreError::NoSuchChannel(_)) => {
            return error(
                &viewer,
                StatusCode::NOT_FOUND,
                "No such channel",
                "No channel has this id.",
            )
        }
        Err(e) => return unavailable(&viewer, "read channel", &e),
    }
    match store::set_channel_active(&client, id, active).await {
        Ok(_) => {
            tracing::info!(channel_id = id, active, "dashboard: channel changed");
            Redirect::to(&format!("/notifications?changed={id}")).into_response()
        }
        Err(e) => unavailable(&viewer, "change channel", &e),
    }
}

pub async fn create_route(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(fields): Form<RouteFields>,
) -> Response {
    if let Err(response) = authorize(&state.auth, &headers, &fields.csrf) {
        return response;
    }
    let viewer = viewer(&state.auth, &headers);
    let Some(channel_id) = fields
        .channel
        .as_deref()
        .and_then(|c| c.trim().parse::<i64>().ok())
    else {
        return respond(
            &state,
            &viewer,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Channel: choose a channel"),
            None,
        )
        .await;
    };
    let rule = fields.rule.as_deref().map(str::trim).filter(|r| !r.is_empty());
    let rule = match rule.map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => Some(0),
    };
    let route =
        match store::validate_route(channel_id, fields.kinds.as_deref(), fields.event.as_deref(), rule) {
            Ok(route) => route,
            Err(invalid) => {
                let problem = format!("{}: {}", label(invalid.flag), invalid.problem);
                return respond(
                    &state,
                    &viewer,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some(&problem),
                    None,
                )
                .await;
            }
        };
    let client = match client(&state, &viewer).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    match store::insert_route(&client, &route).await {
        Ok(id) => {
            tracing::info!(route_id = id, "dashboard: route created");
            Redirect::to(&format!("/notifications?created_route={id}")).into_response()
        }
        Err(StoreError::NoSuchChannel(_)) => {
            respond(
                &state,
                &viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("Channel: no such channel"),
                None,
            )
            .await
        }
        Err(e) => unavailable(&viewer, "insert route", &e),
    }
}

pub async fn remove_route(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(fields): Form<CsrfOnly>,
) -> Response {
    if let Err(response) = authorize(&state.auth, &headers, &fields.csrf) {
        return response;
    }
    let viewer = viewer(&state.auth, &headers);
    let missing = || {
        error(
            &viewer,
            StatusCode::NOT_FOUND,
            "No such route",
            "No route has this id.",
        )
    };
    let Ok(id) = id.parse::<i64>() else {
        return missing();
    };
    let client = match client(&state, &viewer).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    match store::remove_route(&client, id).await {
        Ok(true) => {
            tracing::info!(route_id = id, "dashboard: route removed");
            Redirect::to(&format!("/notifications?removed={id}")).into_response()
        }
        Ok(false) => missing(),
        Err(e) => unavailable(&viewer, "remove route", &e),
    }
}

/// One alert's deliveries log.
pub async fn alert_deliveries(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(alert_id): Path<String>,
) -> Response {
    let viewer = viewer(&state.auth, &headers);
    if alert_id.is_empty() || alert_id.len() > 200 || alert_id.contains('\0') {
        return error(
            &viewer,
            StatusCode::NOT_FOUND,
            "No such alert",
            "No alert has this id.",
        );
    }
    let client = match client(&state, &viewer).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    match store::deliveries_of(&client, &alert_id).await {
        Ok(lines) => {
            let mut body = format!(
                r#"<div class="head"><h1>Deliveries of alert {}</h1></div><p class="meta"><a href="/notifications">All notifications</a></p>"#,
                Esc(&alert_id)
            );
            body.push_str(&deliveries_table(&lines, false));
            html(
                StatusCode::OK,
                pages::layout("Deliveries", Nav::Notifications, &viewer, &body),
            )
        }
        Err(e) => unavailable(&viewer, "deliveries", &e),
    }
}

fn status_badge(status: &str) -> String {
    let class = match status {
        "sent" => "ok",
        "digested" => "muted",
        _ => "bad",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, Esc(status))
}

fn deliveries_table(lines: &[DeliveryLine], with_alert: bool) -> String {
    let mut body = String::from(r#"<div class="card"><table class="data deliveries"><thead><tr>"#);
    if with_alert {
        body.push_str("<th>Alert</th>");
    }
    body.push_str(r#"<th>Channel</th><th>Status</th><th class="num">Attempts</th><th>Reason</th><th>When</th></tr></thead><tbody>"#);
    if lines.is_empty() {
        body.push_str(r#"<tr><td colspan="6" class="empty">No deliveries yet.</td></tr>"#);
    }
    for line in lines {
        body.push_str("<tr>");
        if with_alert {
            let _ = write!(
                body,
                r#"<td><a href="/notifications/alerts/{}">{}</a></td>"#,
                Seg(&line.alert_id),
                Esc(&line.alert_id)
            );
        }
        let _ = write!(
            body,
            r#"<td>{} <span class="muted">{}</span></td><td>{}</td><td class="num">{}</td><td>{}</td><td class="time">{}</td></tr>"#,
            Esc(&line.channel),
            Esc(&line.kind),
            status_badge(&line.status),
            line.attempts,
            Esc(line.last_error.as_deref().unwrap_or("")),
            Esc(&format::when(line.sent_at))
        );
    }
    body.push_str("</tbody></table></div>");
    body
}

fn render(
    viewer: &Viewer,
    channels: &[Channel],
    routes: &[Route],
    counts: &[(i64, String, i64)],
    recent: &[DeliveryLine],
    problem: Option<&str>,
    notice: Option<&str>,
) -> String {
    let mut body = String::from(
        r#"<div class="head"><h1>Notifications</h1></div><p class="meta">`conscope notify` delivers each alert once to every channel a matching route names. Secrets stay in the notifier's environment: a channel names the variable.</p>"#,
    );
    if let Some(notice) = notice {
        let _ = write!(body, r#"<p class="notice" role="status">{}</p>"#, Esc(notice));
    }
    if let Some(problem) = problem {
        let _ = write!(body, r#"<p class="error" role="alert">{}</p>"#, Esc(problem));
    }
    match &viewer.csrf {
        Some(csrf) => {
            let kinds: String = ChannelKind::ALL
                .iter()
                .map(|k| format!(r#"<option value="{0}">{0}</option>"#, k.as_str()))
                .collect();
            let _ = write!(
                body,
                r#"<section class="card"><h2>New channel</h2><form method="post" action="/notifications/channels" class="rule-form">
<input type="hidden" name="csrf" value="{csrf}">
<label>Name<input name="name" required maxlength="64"></label>
<label>Kind<select name="kind">{kinds}</select></label>
<label>Target<input name="target" required maxlength="2048" placeholder="URL, chat id or address"></label>
<label>Secret env<input name="secret_env" maxlength="128" placeholder="optional: variable name"></label>
<label>Max per hour<input name="max_per_hour" inputmode="numeric" pattern="[0-9]*" placeholder="optional"></label>
<button type="submit">Add channel</button></form></section>"#,
                csrf = Esc(csrf)
            );
            let options: String = channels
                .iter()
                .map(|c| format!(r#"<option value="{}">{}</option>"#, c.channel_id, Esc(&c.name)))
                .collect();
            let _ = write!(
                body,
                r#"<section class="card"><h2>New route</h2><form method="post" action="/notifications/routes" class="rule-form">
<input type="hidden" name="csrf" value="{csrf}">
<label>Channel<select name="channel">{options}</select></label>
<label>Kinds<input name="kinds" maxlength="512" placeholder="optional: listing_drop,rule_match"></label>
<label>Event id<input name="event" maxlength="128" placeholder="optional: all events"></label>
<label>Rule<input name="rule" inputmode="numeric" pattern="[0-9]*" placeholder="optional: any rule"></label>
<button type="submit">Add route</button></form></section>"#,
                csrf = Esc(csrf)
            );
        }
        None if viewer.writable => body.push_str(
            r#"<p class="notice"><a href="/login">Sign in</a> with the dashboard token to change channels and routes.</p>"#,
        ),
        None => body.push_str(r#"<p class="notice">This dashboard is read-only: it was started without a token.</p>"#),
    }
    let mut per: HashMap<(i64, &str), i64> = HashMap::new();
    for (id, status, n) in counts {
        per.insert((*id, status.as_str()), *n);
    }
    body.push_str(r#"<h2>Channels</h2><div class="card"><table class="data channels"><thead><tr><th class="num">#</th><th>Name</th><th>Kind</th><th>Target</th><th>Secret env</th><th class="num">Max/h</th><th class="num">Sent</th><th class="num">Failed</th><th class="num">Digested</th><th>Status</th><th></th></tr></thead><tbody>"#);
    if channels.is_empty() {
        body.push_str(r#"<tr><td colspan="11" class="empty">No channels yet.</td></tr>"#);
    }
    for c in channels {
        let action = match &viewer.csrf {
            Some(csrf) => {
                let (verb, label) = if c.active {
                    ("disable", "Disable")
                } else {
                    ("enable", "Enable")
                };
                format!(
                    r#"<form method="post" action="/notifications/channels/{}/{verb}" class="inline"><input type="hidden" name="csrf" value="{}"><button class="small">{label}</button></form>"#,
                    c.channel_id,
                    Esc(csrf)
                )
            }
            None => String::new(),
        };
        let count = |status: &str| per.get(&(c.channel_id, status)).copied().unwrap_or(0);
        let _ = write!(
            body,
            r#"<tr class="{}"><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td><td class="actions">{action}</td></tr>"#,
            if c.active { "" } else { "gone" },
            c.channel_id,
            Esc(&c.name),
            c.kind.as_str(),
            Esc(&c.target),
            Esc(c.secret_env.as_deref().unwrap_or("")),
            c.max_per_hour.map_or_else(|| "—".to_owned(), |n| n.to_string()),
            count("sent"),
            count("failed"),
            count("digested"),
            if c.active {
                r#"<span class="badge ok">active</span>"#
            } else {
                r#"<span class="badge muted">disabled</span>"#
            },
        );
    }
    body.push_str("</tbody></table></div>");
    body.push_str(r#"<h2>Routes</h2><div class="card"><table class="data routes"><thead><tr><th class="num">#</th><th>Channel</th><th>Kinds</th><th>Event</th><th>Rule</th><th></th></tr></thead><tbody>"#);
    if routes.is_empty() {
        body.push_str(
            r#"<tr><td colspan="6" class="empty">No routes yet: no alert is sent anywhere.</td></tr>"#,
        );
    }
    for r in routes {
        let name = channels
            .iter()
            .find(|c| c.channel_id == r.channel_id)
            .map_or_else(|| r.channel_id.to_string(), |c| c.name.clone());
        let action = match &viewer.csrf {
            Some(csrf) => format!(
                r#"<form method="post" action="/notifications/routes/{}/remove" class="inline"><input type="hidden" name="csrf" value="{}"><button class="small">Remove</button></form>"#,
                r.route_id,
                Esc(csrf)
            ),
            None => String::new(),
        };
        let _ = write!(
            body,
            r#"<tr><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="actions">{action}</td></tr>"#,
            r.route_id,
            Esc(&name),
            Esc(&r
                .kinds
                .as_ref()
                .map_or_else(|| "every kind".to_owned(), |k| k.join(", "))),
            Esc(r.event_id.as_deref().unwrap_or("all events")),
            r.rule_id.map_or_else(|| "any".to_owned(), |id| format!("#{id}")),
        );
    }
    body.push_str("</tbody></table></div>");
    body.push_str("<h2>Newest deliveries</h2>");
    body.push_str(&deliveries_table(recent, true));
    pages::layout("Notifications", Nav::Notifications, viewer, &body)
}
