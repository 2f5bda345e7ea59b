//! A model server for tests and the demo. Answers every request with its
//! version name (header `x-served-by` and a JSON body that also echoes the
//! routing headers it received), after a latency drawn from a log-normal
//! distribution (long right tail), failing a configurable share with 500.
//!
//! Knobs can change while it runs: `POST /_control` with any of
//! `{"error_rate": 0.2, "latency_ms": 50, "latency_sigma": 0.5}`.
//! `GET /_stats` returns `{"requests", "errors", "last_request_unix_ms"}`
//! (model requests only). Prints `listening on 127.0.0.1:PORT` once it
//! accepts connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser, Clone)]
struct Args {
    /// Version name this backend answers with.
    #[arg(long)]
    version: String,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Share of requests answered with a 500 (0..=1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Median latency in milliseconds (0: answer at once).
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Log-normal sigma of the latency: p99 = median × e^(2.326 σ).
    #[arg(long, default_value_t = 0.5)]
    latency_sigma: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Header carrying the backend's own version name.
const SERVED_BY: &str = "x-served-by";

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Knobs {
    error_rate: f64,
    latency_ms: f64,
    latency_sigma: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobUpdate {
    error_rate: Option<f64>,
    latency_ms: Option<f64>,
    latency_sigma: Option<f64>,
}

struct Backend {
    version: String,
    knobs: Mutex<Knobs>,
    rng: Mutex<rand::rngs::StdRng>,
    requests: AtomicU64,
    errors: AtomicU64,
    last_request_unix_ms: AtomicU64,
}

impl Backend {
    /// This request's fate: its delay and whether it fails.
    fn draw(&self) -> (Duration, bool) {
        let k = *self.knobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let fail = k.error_rate > 0.0 && rng.random::<f64>() < k.error_rate;
        let delay_ms = if k.latency_ms > 0.0 {
            LogNormal::new(k.latency_ms.ln(), k.latency_sigma.max(0.0)).map_or(k.latency_ms, |d| d.sample(&mut *rng))
        } else {
            0.0
        };
        (Duration::from_secs_f64(delay_ms.min(60_000.0) / 1000.0), fail)
    }
}

fn check(k: &Knobs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&k.error_rate) {
        return Err(format!("error_rate {} is outside 0..=1", k.error_rate));
    }
    if !(k.latency_ms >= 0.0 && k.latency_sigma >= 0.0 && k.latency_ms.is_finite() && k.latency_sigma.is_finite()) {
        return Err("latency_ms and latency_sigma must be finite and >= 0".into());
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let knobs = Knobs { error_rate: args.error_rate, latency_ms: args.latency_ms, latency_sigma: args.latency_sigma };
    check(&knobs).map_err(anyhow::Error::msg)?;
    let backend = Arc::new(Backend {
        version: args.version.clone(),
        knobs: Mutex::new(knobs),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(args.seed)),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_request_unix_ms: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/_control", post(control))
        .route("/_stats", get(stats))
        .fallback(predict)
        .with_state(backend);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn control(State(b): State<Arc<Backend>>, Json(update): Json<KnobUpdate>) -> Response {
    let mut knobs = b.knobs.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = *knobs;
    next.error_rate = update.error_rate.unwrap_or(next.error_rate);
    next.latency_ms = update.latency_ms.unwrap_or(next.latency_ms);
    next.latency_sigma = update.latency_sigma.unwrap_or(next.latency_sigma);
    match check(&next) {
        Ok(()) => {
            *knobs = next;
            (StatusCode::OK, format!("{next:?}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn stats(State(b): State<Arc<Backend>>) -> Response {
    Json(json!({
        "requests": b.requests.load(Ordering::Relaxed),
        "errors": b.errors.load(Ordering::Relaxed),
        "last_request_unix_ms": b.last_request_unix_ms.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn predict(State(b): State<Arc<Backend>>, headers: HeaderMap) -> Response {
    let (delay, fail) = b.draw();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    b.requests.fetch_add(1, Ordering::Relaxed);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    b.last_request_unix_ms.fetch_max(now_ms, Ordering::Relaxed);
    let seen = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&b.version) {
        out.insert(SERVED_BY, v);
    }
    out.insert("content-type", HeaderValue::from_static("application/json"));
    if fail {
        b.errors.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::INTERNAL_SERVER_ERROR, out, json!({"error": "injected failure"}).to_string())
            .into_response();
    }
    let body = json!({
        "version": b.version,
        "seen": {
            "x-model-version": seen("x-model-version"),
            "x-canary-stage": seen("x-canary-stage"),
            "x-canary-unkeyed": seen("x-canary-unkeyed"),
        }
    });
    (StatusCode::OK, out, body.to_string()).into_response()
}
