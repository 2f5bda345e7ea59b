//! The dashboard's HTTP routes: the page and its assets, the snapshot as JSON
//! and as server-sent events, the token-guarded controls, the reports and
//! `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::*;
use super::hub::*;
use super::view::*;
use crate::control::{ControlError, Controller};
use crate::http::metrics::Metrics;
use canary_judge::rollout::Command;

pub(super) const INDEX_HTML: &str = include_str!("../../../assets/dashboard/index.html");
pub(super) const DASHBOARD_JS: &str = include_str!("../../../assets/dashboard/dashboard.js");
pub(super) const DASHBOARD_CSS: &str = include_str!("../../../assets/dashboard/dashboard.css");

/// A plain file name: no path, no hidden file.
pub(super) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// What the routes share.
pub struct App {
    pub hub: Arc<Hub>,
    pub(super) token: Option<Token>,
}

/// The dashboard's routes (the daemon merges them with its own).
pub fn router(hub: Arc<Hub>, token: Option<Token>) -> Router {
    let app = Arc::new(App { hub, token });
    Router::new()
        .route("/", get(index))
        .route("/assets/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/assets/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .route("/api/state", get(state_json))
        .route("/api/events", get(events))
        .route("/api/{command}", post(control_command))
        .route("/reports", get(reports_index))
        .route("/reports/", get(reports_index))
        .route("/reports/{name}", get(report_file))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Everything on the page comes from this server; nothing inline.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX_HTML);
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

pub(super) async fn state_json(State(app): State<Arc<App>>) -> Response {
    let snap = app.hub.current();
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], snap.json.clone())
        .into_response()
}

/// Counts a live page for as long as its stream exists.
pub(super) struct ClientGuard(Arc<Metrics>);

impl ClientGuard {
    pub(super) fn new(metrics: Arc<Metrics>) -> ClientGuard {
        metrics.sse_client(true);
        ClientGuard(metrics)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.sse_client(false);
    }
}

pub(super) async fn events(State(app): State<Arc<App>>) -> impl IntoResponse {
    let rx = app.hub.subscribe();
    let stream = futures::stream::unfold(
        (rx, true, ClientGuard::new(app.hub.ctx.metrics.clone())),
        |(mut rx, first, guard)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let snap = rx.borrow_and_update().clone();
            let event = Event::default().event("state").id(snap.version.to_string()).data(snap.json.as_str());
            Some((Ok::<Event, Infallible>(event), (rx, false, guard)))
        },
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

pub(super) fn text(code: StatusCode, message: String) -> Response {
    crate::http::daemon::error(code, message)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct ControlBody {
    #[serde(default)]
    pub(super) reason: String,
}

pub(super) async fn control_command(
    State(app): State<Arc<App>>,
    UrlPath(command): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(cmd) = Command::from_name(&command) else {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint: POST /api/{command}"));
    };
    let Some(token) = &app.token else {
        app.hub.ctx.metrics.control_request(&command, "disabled");
        return text(StatusCode::FORBIDDEN, CONTROLS_DISABLED.into());
    };
    if !bearer(&headers).is_some_and(|t| token.matches(t)) {
        app.hub.ctx.metrics.control_request(&command, "unauthorized");
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong operator token: send `Authorization: Bearer <token>`".into(),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"canary\""));
        return r;
    }
    let body: ControlBody = if body.iter().all(u8::is_ascii_whitespace) {
        ControlBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("expected {{\"reason\": \"...\"}}: {e}")),
        }
    };
    let reason: String = body.reason.trim().chars().take(500).collect();
    let reason =
        if reason.is_empty() { "from the dashboard".to_string() } else { format!("{reason} (from the dashboard)") };
    // The CLI's code path: open the state directory, lock, command, commit, alert.
    let dir = app.hub.store.dir().to_path_buf();
    let result = async {
        let mut c = Controller::open(&dir, None, false, &app.hub.ctx)?;
        c.command(cmd, &reason).await
    }
    .await;
    // Read-your-writes: the snapshot is rebuilt before the answer goes out,
    // so a GET /api/state after this reply already shows the command.
    let hub = app.hub.clone();
    if tokio::task::spawn_blocking(move || hub.refresh()).await.is_err() {
        app.hub.wake();
    }
    match result {
        Ok(d) => {
            app.hub.ctx.metrics.control_request(&command, "ok");
            (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(DecisionView::of(&d))).into_response()
        }
        Err(e @ ControlError::Refused(_)) => {
            app.hub.ctx.metrics.control_request(&command, "refused");
            text(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => {
            app.hub.ctx.metrics.control_request(&command, "error");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

pub(super) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(super) async fn reports_index(State(app): State<Arc<App>>) -> Response {
    let items: String = app
        .hub
        .reports()
        .iter()
        .map(|r| {
            format!("<li><a href=\"{0}\">{1}</a> ({2} bytes)</li>", html_escape(&r.url), html_escape(&r.name), r.bytes)
        })
        .collect();
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>reports — {0}</title><h1>Reports of {0}</h1><ul>{1}</ul><p><a href=\"/\">dashboard</a></p>",
        html_escape(&app.hub.spec.rollout),
        if items.is_empty() { "<li>none yet: a report is written when a stage ends</li>".to_string() } else { items }
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub(super) async fn report_file(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    let not_found = || text(StatusCode::NOT_FOUND, format!("no report named {name}"));
    if !safe_name(&name) {
        return not_found();
    }
    let path = app.hub.reports_dir().join(&name);
    // A regular file directly in the folder: no symlink out of it.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        _ => return not_found(),
    }
    let Ok(bytes) = tokio::fs::read(&path).await else { return not_found() };
    let content_type = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("md") => "text/markdown; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "text/plain; charset=utf-8",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response()
}

pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.hub.ctx.metrics.render(app.hub.gauges().as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], text)
        .into_response()
}
