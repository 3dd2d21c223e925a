//! `conscope dashboard`: a web page over the job's database: events with their
//! get-in prices, price-history charts, live alerts, alert rules, and the
//! notifier's channels, routes and deliveries.
//!
//! # Layout
//! - `mod.rs` (this file): flags, the HTTP server, the routes and the
//!   middleware every response passes (security headers, time limit).
//! - `routes`: the request handlers: parse the request, query, render.
//! - `notifications`: the Notifications pages (channels, routes, deliveries),
//!   writes through `crate::notify::store`.
//! - `queries`: every SQL statement (reads only; rule writes go through
//!   `crate::rules`, the same code as `conscope rules`).
//! - `history`: rebuilds an event's prices over time from `price_history`.
//! - `chart`: the inline SVG chart. `pages`: the HTML pages. `html`: escaping.
//!   `format`: money and times.
//! - `auth`: the token, sessions, CSRF and origin checks. `backoff`: the
//!   sign-in backoff per client.
//! - `client`: who a request comes from (the peer, or what a trusted proxy
//!   says). `limits`: the per-client caps on connections and requests.
//! - `live`: the poller behind the live alerts stream.
//! - `static/`: the stylesheet and the one small script, served from `/static/`.
//!
//! # Requests are hostile
//! At most [`MAX_CONNECTIONS`] connections at once, and
//! [`MAX_CONNECTIONS_PER_CLIENT`] from one client address (more are closed at
//! once); a request head must arrive within [`HEADER_TIMEOUT`] (an idle
//! keep-alive connection is closed after it too) and fit in [`MAX_HEAD`];
//! bodies are capped at [`MAX_BODY`]; one client has at most
//! [`MAX_REQUESTS_PER_CLIENT`] requests in progress (429 past that), and at
//! most [`CHART_SLOTS`] event pages are built at once, so neither one client
//! nor many heavy charts can hold the whole database pool; each response must
//! be ready within [`REQUEST_TIMEOUT`], each query within PostgreSQL's
//! `statement_timeout` of [`STATEMENT_TIMEOUT`], and a chart reads at most
//! `--chart-rows` rows (the page says where it stopped); every
//! scraper-supplied string is escaped. The Content-Security-Policy allows no
//! inline script or style.
//!
//! Touches: the database at `--database-url` (applies the migrations at start;
//! reads; writes `alert_rules` only through `crate::rules`, the notifier's
//! channels and routes only through `crate::notify::store`), the socket at
//! `--listen`, and SIGINT/SIGTERM (through `crate::shutdown`), which stop it
//! after a grace period ([`GRACE`]).

mod auth;
mod backoff;
mod chart;
mod client;
mod format;
mod history;
mod html;
mod limits;
mod live;
mod notifications;
mod pages;
mod queries;
mod routes;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;

use crate::config::{redact_url, DbArgs};
use crate::db;
use crate::shutdown::Shutdown;

/// Connections served at once; a live stream holds one.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one client address (a trusted proxy is not
/// capped: it carries every client). Browsers open about six per site.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 32;
/// Requests of one client in progress at once (static files aside): fewer
/// than the pool's connections, so one client cannot hold them all.
pub const MAX_REQUESTS_PER_CLIENT: usize = 3;
/// Event pages (the chart's history replay is the heaviest read) built at
/// once, from all clients: half the pool stays for everything else.
pub const CHART_SLOTS: usize = 3;
/// How long an event page waits for a chart slot before answering 503.
pub const CHART_WAIT: Duration = Duration::from_secs(10);
/// The longest a client may take to send a request head (slow-loris clients).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line, query string, headers) read.
pub const MAX_HEAD: usize = 64 * 1024;
/// The largest request body accepted (the forms are a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// The longest a response may take to start.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// After SIGINT/SIGTERM, how long requests in progress may take to finish
/// (a live stream never does: it is cut after this).
pub const GRACE: Duration = Duration::from_secs(5);
/// PostgreSQL's limit for one statement of the dashboard. Every page query is
/// an index read of milliseconds; the longest is a chart's replay of its rows
/// (at most `--chart-rows`; the README measured 400 000 rows in 2.7-3.3 s).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled database connections.
const POOL_SIZE: usize = 6;

#[derive(Args)]
pub struct DashboardArgs {
    /// Address to serve on (port 0 picks a free one; the address is printed).
    #[arg(long, env = "CONSCOPE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    db: DbArgs,
    /// The secret that signs in for writes (alert rules). Without it the
    /// dashboard is read-only. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "CONSCOPE_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Mark the session cookie `Secure` on every response: for a dashboard
    /// that browsers reach over HTTPS only (through a TLS-terminating proxy).
    #[arg(long, env = "CONSCOPE_SECURE_COOKIES")]
    secure_cookies: bool,
    /// The address of a reverse proxy in front of the dashboard (repeatable,
    /// or comma-separated in the variable). From it, and only from it,
    /// `X-Forwarded-For` names the client (for the per-client limits) and
    /// `X-Forwarded-Proto: https` marks the session cookie `Secure`.
    #[arg(
        long = "trusted-proxy",
        env = "CONSCOPE_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<IpAddr>,
    /// The most `price_history` rows one chart reads; past this the chart
    /// stops and the page says where.
    #[arg(long, env = "CONSCOPE_CHART_ROWS", default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    chart_rows: u64,
}

// The token never reaches a log line, even through `{:?}`.
impl std::fmt::Debug for DashboardArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardArgs")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.db.database_url))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("secure_cookies", &self.secure_cookies)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("chart_rows", &self.chart_rows)
            .finish()
    }
}

/// What every handler shares.
pub struct AppState {
    pool: deadpool_postgres::Pool,
    auth: auth::Auth,
    live: live::Live,
    backoff: backoff::Backoff,
    proxies: client::Proxies,
    secure_cookies: bool,
    requests: Arc<limits::PerClient>,
    charts: tokio::sync::Semaphore,
    chart_rows: u64,
}

type Shared = Arc<AppState>;

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let stop = Shutdown::on_signals("closing the dashboard")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let served = runtime.block_on(serve(args, stop));
    // Whatever still runs (a live stream past the grace period) ends here.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served
}

async fn serve(args: DashboardArgs, stop: Shutdown) -> anyhow::Result<()> {
    let url = &args.db.database_url;
    db::migrate(url).await?;
    let pool = pool(url)?;
    let token = args.token.as_deref().filter(|t| !t.is_empty());
    match token {
        None => tracing::warn!("no --token (CONSCOPE_DASHBOARD_TOKEN): the dashboard is read-only"),
        Some(token) if token.chars().count() < 16 => {
            tracing::warn!("the dashboard token is shorter than 16 characters: easy to guess")
        }
        Some(_) => {}
    }
    let proxies = client::Proxies::new(&args.trusted_proxies);
    let state = Arc::new(AppState {
        live: live::Live::spawn(pool.clone()),
        auth: auth::Auth::new(token),
        pool,
        backoff: backoff::Backoff::default(),
        proxies: proxies.clone(),
        secure_cookies: args.secure_cookies,
        requests: limits::PerClient::new(MAX_REQUESTS_PER_CLIENT),
        charts: tokio::sync::Semaphore::new(CHART_SLOTS),
        chart_rows: args.chart_rows,
    });
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let local = listener.local_addr()?;
    // On stdout, for scripts and tests that asked for port 0.
    println!("conscope dashboard listening on http://{local}");
    tracing::info!(%local, writable = token.is_some(), database = %redact_url(url), "dashboard serving");
    let app = router(state);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_client = limits::PerClient::new(MAX_CONNECTIONS_PER_CLIENT);
    // Tells open connections to finish their current request and close.
    let (closing, closed) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait, do not spin.
                Err(error) => {
                    tracing::warn!(%error, "dashboard: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.triggered() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%peer, "dashboard: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let held = if proxies.trusts(peer.ip()) {
            None
        } else {
            let key = client::ClientKey::of(peer.ip());
            match per_client.try_hold(key) {
                Some(held) => Some(held),
                None => {
                    tracing::warn!(client = %key, "dashboard: {MAX_CONNECTIONS_PER_CLIENT} connections open from one client; closing a new one");
                    continue;
                }
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(client::Peer(peer))),
        );
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { drop(closed.wait_for(|closing| *closing).await) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "dashboard: connection ended");
            }
            drop((permit, held));
        });
    }
    // Requests in progress get a grace period; a live stream never ends by
    // itself, so the wait is bounded.
    drop(listener);
    let _ = closing.send(true);
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let finished = tokio::time::timeout(GRACE, permits.acquire_many(all))
        .await
        .is_ok();
    tracing::info!(finished, "dashboard stopped");
    Ok(())
}

/// A few connections, each with a statement timeout, recycled when broken.
fn pool(url: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("bad --database-url {}", redact_url(url)))?;
    // Appended to any options the URL carries (such as a search_path).
    let options = format!(
        "{} -c statement_timeout={}",
        config.get_options().unwrap_or_default(),
        STATEMENT_TIMEOUT.as_millis()
    );
    config.options(options.trim());
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("cannot build the database pool")
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(routes::events))
        .route("/events/{id}", get(routes::event))
        .route("/alerts", get(routes::alerts))
        .route("/alerts/stream", get(routes::alert_stream))
        .route("/rules", get(routes::rules).post(routes::create_rule))
        .route("/rules/{id}/{action}", post(routes::change_rule))
        .route("/notifications", get(notifications::page))
        .route("/notifications/channels", post(notifications::create_channel))
        .route(
            "/notifications/channels/{id}/{action}",
            post(notifications::change_channel),
        )
        .route("/notifications/routes", post(notifications::create_route))
        .route(
            "/notifications/routes/{id}/remove",
            post(notifications::remove_route),
        )
        .route("/notifications/alerts/{id}", get(notifications::alert_deliveries))
        .route("/login", get(routes::login_form).post(routes::login))
        .route("/logout", post(routes::logout))
        .route("/healthz", get(routes::healthz))
        .route("/static/style.css", get(routes::style))
        .route("/static/live.js", get(routes::script))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            per_client,
        ))
        .layer(axum::middleware::from_fn(time_limit))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Names the request's [`client::Client`] (for the handlers), and holds one of
/// its [`MAX_REQUESTS_PER_CLIENT`] slots while the response is made (static
/// files aside: they touch nothing). A client over its cap gets 429 at once.
async fn per_client(
    axum::extract::State(state): axum::extract::State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<client::Peer>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |peer| peer.0.ip());
    let client = state.proxies.client(peer, request.headers());
    request.extensions_mut().insert(client);
    if request.uri().path().starts_with("/static/") {
        return next.run(request).await;
    }
    let Some(_held) = state.requests.try_hold(client.key) else {
        tracing::warn!(client = %client.key, "dashboard: too many requests at once from one client");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            format!(
                "too many requests at once from your address (at most {}); try again in a moment\n",
                state.requests.cap()
            ),
        )
            .into_response();
    };
    next.run(request).await
}

/// A response not ready within [`REQUEST_TIMEOUT`] becomes a 503. (The body of
/// the live stream is not bounded: only the time to its first byte is.)
async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the request took too long\n").into_response(),
    }
}

/// No inline script or style anywhere; no framing; no sniffing; nothing cached
/// but the static files.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if is_static {
                "public, max-age=300"
            } else {
                "no-store"
            }),
        );
    }
    response
}
