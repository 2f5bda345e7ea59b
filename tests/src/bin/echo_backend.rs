//! An upstream whose answer the client dictates, for testing what the filter
//! reads from responses. Request headers:
//!
//! - `x-echo-prediction: V` — the response carries `x-prediction: V` and, with
//!   `x-echo-body: json`, the body `{"prediction": V, "version": …}` (V as a
//!   JSON number when it parses as one, else a string);
//! - `x-echo-body: raw` — the request's `x-echo-raw` header value is the body;
//! - `x-echo-pad: N` — N bytes of padding in the JSON body.
//!
//! Flags make it a challenger with known behaviour: `--flip-rate p` changes
//! the prediction (x → 1 − x, a label → `flipped`) for a fixed share p of
//! users (by a hash of `x-user-id`), `--delay-ms` answers late, `--fail`
//! answers 500. `GET /_stats` counts requests and shadow copies
//! (`x-canary-shadow: 1`). Prints `listening on 127.0.0.1:PORT`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    version: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long)]
    fail: bool,
    #[arg(long, default_value_t = 0.0)]
    flip_rate: f64,
}

struct Echo {
    args: Args,
    requests: AtomicU64,
    shadow_requests: AtomicU64,
}

/// Whether this user's prediction is flipped: a fixed share of users.
pub fn flipped(user: &str, rate: f64) -> bool {
    let h = fnv1a(user.as_bytes());
    (h % 1_000_000) as f64 / 1_000_000.0 < rate
}

fn fnv1a(bytes: &[u8]) -> u64 {
    // Stable, dependency-free, good enough to pick a share of users (and
    // unrelated to the filter's xxh3 split, on purpose).
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listen = args.listen.clone();
    let echo = Arc::new(Echo { args, requests: AtomicU64::new(0), shadow_requests: AtomicU64::new(0) });
    let app = Router::new().route("/_stats", get(stats)).fallback(answer).with_state(echo);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn stats(State(e): State<Arc<Echo>>) -> Response {
    Json(json!({
        "requests": e.requests.load(Ordering::Relaxed),
        "shadow_requests": e.shadow_requests.load(Ordering::Relaxed),
        "errors": 0,
        "last_request_unix_ms": 0,
    }))
    .into_response()
}

async fn answer(State(e): State<Arc<Echo>>, headers: HeaderMap) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    e.requests.fetch_add(1, Ordering::Relaxed);
    if h("x-canary-shadow").is_some() {
        e.shadow_requests.fetch_add(1, Ordering::Relaxed);
    }
    if e.args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(e.args.delay_ms)).await;
    }
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&e.args.version) {
        out.insert("x-served-by", v);
    }
    if e.args.fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, out, "failing on purpose").into_response();
    }
    let flip = flipped(&h("x-user-id").unwrap_or_default(), e.args.flip_rate);
    let prediction = h("x-echo-prediction").map(|p| match (p.parse::<f64>(), flip) {
        (Ok(x), true) => json!(1.0 - x),
        (Ok(x), false) => json!(x),
        (Err(_), true) => json!("flipped"),
        (Err(_), false) => json!(p),
    });
    if let Some(p) = &prediction {
        let text = p.as_str().map_or_else(|| p.to_string(), str::to_owned);
        if let Ok(v) = HeaderValue::from_str(&text) {
            out.insert("x-prediction", v);
        }
    }
    let body = match h("x-echo-body").as_deref() {
        Some("json") => {
            let pad = "p".repeat(h("x-echo-pad").and_then(|n| n.parse().ok()).unwrap_or(0usize));
            out.insert("content-type", HeaderValue::from_static("application/json"));
            json!({"version": e.args.version, "prediction": prediction, "pad": pad}).to_string()
        }
        Some("raw") => h("x-echo-raw").unwrap_or_default(),
        _ => String::new(),
    };
    (StatusCode::OK, out, body).into_response()
}
