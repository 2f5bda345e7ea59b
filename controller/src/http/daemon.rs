//! `canary run`: the evaluation loop and the daemon's HTTP server (labels
//! intake, a JSON status, the dashboard and its API, `/metrics`), until the
//! rollout ends or a signal arrives.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::control::{self, now_millis, Controller};
use crate::http::dashboard::{Hub, Token};
use crate::store::Store;
use canary_judge::labels::LabelRecord;
use canary_judge::rollout::{Action, Decision};
use canary_judge::spec::RolloutSpec;

/// What the HTTP handlers need: the state directory and the spec, not the
/// controller (its lock is held across a whole evaluation).
type Shared = Arc<(Store, RolloutSpec)>;

/// The daemon's HTTP API as OpenAPI 3.1, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../assets/openapi.json");

/// The largest `POST /labels` body; a larger one is answered 413.
pub const LABELS_LIMIT: usize = 10 * 1024 * 1024;

/// One line per decision, for people watching the terminal.
pub fn progress_line(d: &Decision, started: u64) -> String {
    let t = d.at.saturating_sub(started) as f64 / 1000.0;
    let counts = d.window.as_ref().map_or(String::new(), |w| {
        format!(" [champion {} / challenger {} responses]", w.champion.answered(), w.challenger.answered())
    });
    let what = match d.action {
        Action::Hold => format!("hold at {} ({})", d.from.stage_name, d.from.weight),
        _ => {
            let action = canary_judge::wire_name(&d.action);
            format!("{action} {} ({}) → {} ({})", d.from.stage_name, d.from.weight, d.to.stage_name, d.to.weight)
        }
    };
    format!("[{t:7.1}s] #{} {what}{counts}: {}", d.seq, d.reasons.join("; "))
}

/// Runs the loop until the rollout ends (promoted or rolled back). With a
/// `token`, the dashboard's controls accept it; without, they are disabled.
pub async fn run(controller: Controller, token: Option<Token>) -> anyhow::Result<()> {
    let store = controller.store.clone();
    let listen = controller.spec.server.listen.clone();
    let interval = controller.interval();
    let mut source = controller.source();
    tracing::info!("reading stats from {}", source.describe());
    let controls = if token.is_some() { "enabled" } else { "disabled (no --token-file or CANARY_TOKEN)" };
    let ctx = controller.context().clone();
    let hub = Hub::new(store.clone(), controller.spec.clone(), token.is_some(), ctx.clone());
    tokio::spawn(hub.clone().run());
    let app = Router::new()
        .route("/labels", post(labels).layer(DefaultBodyLimit::max(LABELS_LIMIT)))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .with_state(Arc::new((store.clone(), controller.spec.clone())))
        .merge(crate::http::dashboard::router(hub.clone(), token))
        .fallback(|uri: Uri| async move {
            error(StatusCode::NOT_FOUND, format!("no such endpoint: {uri} (see /openapi.json)"))
        });
    let mut c = controller;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    crate::store::durable::write_atomic(&store.addr_path(), addr.to_string().as_bytes())?;
    crate::store::durable::write_atomic(&store.pid_path(), std::process::id().to_string().as_bytes())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "daemon pid {} serving http://{addr} (dashboard at /, POST /labels, GET /status, GET /metrics; controls {controls}); state in {}",
        std::process::id(),
        store.dir().display()
    );

    let started = now_millis();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let evaluation_started = std::time::Instant::now();
        let ticked = c.tick(&mut source).await;
        let took = evaluation_started.elapsed();
        if took > interval {
            // Said, not silently absorbed: the next evaluation starts late.
            ctx.metrics.evaluation_overrun();
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                interval_ms = interval.as_millis() as u64,
                "evaluation took longer than the interval: the next one starts late"
            );
        }
        match ticked {
            Ok(Some(d)) => {
                ctx.metrics.evaluation(true);
                hub.wake();
                println!("{}", progress_line(&d, started));
            }
            Ok(None) => {}
            Err(e) => {
                ctx.metrics.evaluation(false);
                eprintln!("evaluation failed, state unchanged: {e}");
            }
        }
        match c.state() {
            // Ended, and every sink carries the final configuration (a
            // rollback some sink missed is retried every interval).
            Ok(s) if s.phase.is_final() && c.missing_sinks().is_empty() => {
                println!("rollout {} ended: {}", c.spec.rollout, s.phase);
                break;
            }
            Ok(s) if s.phase.is_final() => {
                eprintln!(
                    "rollout {} ended ({}), but these sinks still miss its final configuration: {}",
                    c.spec.rollout,
                    s.phase,
                    c.missing_sinks().join(", ")
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("cannot read the state: {e}"),
        }
    }
    // The final state reaches open dashboards; alerts still being retried
    // (a webhook down when the rollback happened) finish before the process
    // ends, at most the retry window.
    hub.refresh();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let undelivered = c.alerter().drain().await;
    if undelivered > 0 {
        eprintln!("{undelivered} alert(s) still undelivered at exit; see the errors above");
    }
    store.remove_daemon_files();
    Ok(())
}

/// Every error the daemon answers: `{"error": "..."}`.
pub fn error(code: StatusCode, message: String) -> Response {
    (code, [(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({ "error": message }))).into_response()
}

async fn labels(State(c): State<Shared>, body: Result<axum::body::Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = LABELS_LIMIT / (1024 * 1024);
            return error(e.status(), format!("a labels batch may be at most {limit} MiB: send smaller batches"));
        }
        Err(e) => return error(e.status(), e.body_text()),
    };
    let records: Vec<LabelRecord> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected a JSON array of label records: {e}")),
    };
    match control::add_labels(&c.0, &c.1, &records) {
        Ok(intake) => {
            let code =
                if intake.rejected > 0 && intake.accepted == 0 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
            (code, Json(intake)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn status(State(c): State<Shared>) -> Response {
    match control::status(&c.0, &c.1) {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes registered in a source file (its axum route calls), with their methods.
    fn routes(source: &str) -> Vec<(String, String)> {
        source
            .split(".route(\"")
            .skip(1)
            .map(|r| {
                let (path, rest) = r.split_once('"').unwrap();
                let method = rest.trim_start_matches([',', ' ']).split('(').next().unwrap().to_string();
                (path.to_string(), method)
            })
            .collect()
    }

    #[test]
    fn the_openapi_file_documents_every_route_and_only_those() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let served: Vec<(String, String)> =
            [include_str!("daemon.rs"), include_str!("dashboard/routes.rs")].iter().flat_map(|s| routes(s)).collect();
        assert!(served.len() >= 14, "{served:?}");
        for (path, method) in &served {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} is served but not in openapi.json");
        }
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                assert!(
                    served.iter().any(|(p, m)| p == path && m == method),
                    "{method} {path} is in openapi.json but not served"
                );
            }
        }
    }
}
