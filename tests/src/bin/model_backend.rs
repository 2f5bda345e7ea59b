//! A model server for tests and the demo. Answers every request with its
//! version name (header `x-served-by` and a JSON body that also echoes the
//! routing headers it received), after a latency drawn from a log-normal
//! distribution (long right tail), failing a configurable share with 500.
//!
//! Every answer carries a prediction, a deterministic function of the
//! request's `x-user-id` (so two backends agree user by user):
//!
//! ```text
//! u     = unit(hash(user))                     uniform in [0, 1)
//! flip  = unit(hash("disagree/" + user)) < disagree_rate
//! u'    = flip ? (u + 0.5) mod 1 : u
//! x     = u' + prediction_shift                header `x-prediction`, body `"prediction"`
//! label = cat if u' < 0.5, dog if u' < 0.8, bird otherwise          body `"label"`
//! ```
//!
//! `hash` is FNV-1a 64 then the splitmix64 finaliser; `unit` takes its top
//! 53 bits. With shift 0 and no disagreement two backends give identical
//! predictions. `disagree_rate p` changes the prediction of a fixed share p
//! of users (the same users on every request): `(u + 0.5) mod 1` is still
//! uniform, so the distribution (and PSI) does not move, and it always lands
//! in another label and in another quartile bin (edges 0.25/0.5/0.75) or
//! half, so agreement with an honest backend is 1 − p for those bins. A
//! shift s moves the distribution: with quartile edges PSI is
//! s · ln((1 + 4s) / (1 − 4s)) (0.5 at s ≈ 0.2085).
//!
//! Knobs can change while it runs: `POST /_control` with any of
//! `{"error_rate": 0.2, "timeout_rate": 0.01, "latency_ms": 50, "latency_sigma": 0.5,
//! "prediction_shift": 0.2, "disagree_rate": 0.1, "segment_error_rate": {"ent": 0.06}}`
//! (`segment_error_rate`: by value of the `x-tier` header, replacing
//! `error_rate` for those requests; `timeout_rate`: a share answered 504, as
//! a gateway that timed out would, drawn after the 500s).
//! `GET /_stats` returns `{"requests", "errors", "timeouts",
//! "last_request_unix_ms"}` (model requests only; `errors` are the 500s,
//! `timeouts` the 504s). Prints `listening on 127.0.0.1:PORT` once it
//! accepts connections.

use std::collections::BTreeMap;
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
    /// Added to every numeric prediction (moves the distribution).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    prediction_shift: f64,
    /// Share of users (fixed by their id) whose prediction differs from an
    /// honest backend's (0..=1).
    #[arg(long, default_value_t = 0.0)]
    disagree_rate: f64,
}

/// Header carrying the backend's own version name.
const SERVED_BY: &str = "x-served-by";

/// Header carrying the numeric prediction.
const PREDICTION: &str = "x-prediction";

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Knobs {
    error_rate: f64,
    #[serde(default)]
    timeout_rate: f64,
    latency_ms: f64,
    latency_sigma: f64,
    prediction_shift: f64,
    disagree_rate: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobUpdate {
    error_rate: Option<f64>,
    timeout_rate: Option<f64>,
    latency_ms: Option<f64>,
    latency_sigma: Option<f64>,
    prediction_shift: Option<f64>,
    disagree_rate: Option<f64>,
    /// 5xx rate by value of the `x-tier` header (the tests' segment
    /// header), replacing `error_rate` for requests of those segments.
    segment_error_rate: Option<BTreeMap<String, f64>>,
}

/// FNV-1a 64 of `salt` then `key`, finished with splitmix64 (FNV alone
/// mixes its last bytes poorly: ids differing in a final digit would get
/// close values).
fn hash(salt: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Uniform in [0, 1) from the top 53 bits.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The prediction for a user: `(x, label)`, see the module docs.
fn prediction(user: &str, shift: f64, disagree_rate: f64) -> (f64, &'static str) {
    let u = unit(hash("", user));
    let flip = disagree_rate > 0.0 && unit(hash("disagree/", user)) < disagree_rate;
    let u = if flip { (u + 0.5).fract() } else { u };
    let label = if u < 0.5 {
        "cat"
    } else if u < 0.8 {
        "dog"
    } else {
        "bird"
    };
    (u + shift, label)
}

struct Backend {
    version: String,
    knobs: Mutex<Knobs>,
    segment_error_rate: Mutex<BTreeMap<String, f64>>,
    rng: Mutex<rand::rngs::StdRng>,
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    last_request_unix_ms: AtomicU64,
}

impl Backend {
    /// This request's fate: its delay and whether it fails (at its
    /// segment's rate when one is set for `tier`), and whether it answers
    /// 504 instead.
    fn draw(&self, tier: Option<&str>) -> (Duration, bool, bool) {
        let k = *self.knobs.lock().unwrap_or_else(|e| e.into_inner());
        let by_segment =
            tier.and_then(|t| self.segment_error_rate.lock().unwrap_or_else(|e| e.into_inner()).get(t).copied());
        let error_rate = by_segment.unwrap_or(k.error_rate);
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let fail = error_rate > 0.0 && rng.random::<f64>() < error_rate;
        let timeout = !fail && k.timeout_rate > 0.0 && rng.random::<f64>() < k.timeout_rate;
        let delay_ms = if k.latency_ms > 0.0 {
            LogNormal::new(k.latency_ms.ln(), k.latency_sigma.max(0.0)).map_or(k.latency_ms, |d| d.sample(&mut *rng))
        } else {
            0.0
        };
        (Duration::from_secs_f64(delay_ms.min(60_000.0) / 1000.0), fail, timeout)
    }
}

fn check(k: &Knobs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&k.error_rate) {
        return Err(format!("error_rate {} is outside 0..=1", k.error_rate));
    }
    if !(0.0..=1.0).contains(&k.timeout_rate) {
        return Err(format!("timeout_rate {} is outside 0..=1", k.timeout_rate));
    }
    if !(k.latency_ms >= 0.0 && k.latency_sigma >= 0.0 && k.latency_ms.is_finite() && k.latency_sigma.is_finite()) {
        return Err("latency_ms and latency_sigma must be finite and >= 0".into());
    }
    if !k.prediction_shift.is_finite() {
        return Err(format!("prediction_shift {} must be finite", k.prediction_shift));
    }
    if !(0.0..=1.0).contains(&k.disagree_rate) {
        return Err(format!("disagree_rate {} is outside 0..=1", k.disagree_rate));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let knobs = Knobs {
        error_rate: args.error_rate,
        timeout_rate: 0.0,
        latency_ms: args.latency_ms,
        latency_sigma: args.latency_sigma,
        prediction_shift: args.prediction_shift,
        disagree_rate: args.disagree_rate,
    };
    check(&knobs).map_err(anyhow::Error::msg)?;
    let backend = Arc::new(Backend {
        version: args.version.clone(),
        knobs: Mutex::new(knobs),
        segment_error_rate: Mutex::new(BTreeMap::new()),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(args.seed)),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        last_request_unix_ms: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/_control", post(control))
        .route("/_stats", get(stats))
        .fallback(predict)
        // Read whole request bodies (up to 8 MiB) before answering: a server
        // that answers first and closes makes Envoy report a reset (503).
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
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
    next.timeout_rate = update.timeout_rate.unwrap_or(next.timeout_rate);
    next.latency_ms = update.latency_ms.unwrap_or(next.latency_ms);
    next.latency_sigma = update.latency_sigma.unwrap_or(next.latency_sigma);
    next.prediction_shift = update.prediction_shift.unwrap_or(next.prediction_shift);
    next.disagree_rate = update.disagree_rate.unwrap_or(next.disagree_rate);
    if let Some(rates) = &update.segment_error_rate {
        if let Some((t, r)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(*r)) {
            return (StatusCode::BAD_REQUEST, format!("segment_error_rate {t}: {r} is outside 0..=1")).into_response();
        }
    }
    match check(&next) {
        Ok(()) => {
            *knobs = next;
            if let Some(rates) = update.segment_error_rate {
                *b.segment_error_rate.lock().unwrap_or_else(|e| e.into_inner()) = rates;
            }
            (StatusCode::OK, format!("{next:?}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn stats(State(b): State<Arc<Backend>>) -> Response {
    Json(json!({
        "requests": b.requests.load(Ordering::Relaxed),
        "errors": b.errors.load(Ordering::Relaxed),
        "timeouts": b.timeouts.load(Ordering::Relaxed),
        "last_request_unix_ms": b.last_request_unix_ms.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn predict(State(b): State<Arc<Backend>>, headers: HeaderMap, _body: axum::body::Bytes) -> Response {
    let tier = headers.get("x-tier").and_then(|v| v.to_str().ok());
    let (delay, fail, timeout) = b.draw(tier);
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
    if timeout {
        b.timeouts.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::GATEWAY_TIMEOUT, out, json!({"error": "injected timeout"}).to_string()).into_response();
    }
    let k = *b.knobs.lock().unwrap_or_else(|e| e.into_inner());
    let (x, label) = prediction(&seen("x-user-id").unwrap_or_default(), k.prediction_shift, k.disagree_rate);
    if let Ok(v) = HeaderValue::from_str(&x.to_string()) {
        out.insert(PREDICTION, v);
    }
    let body = json!({
        "version": b.version,
        "prediction": x,
        "label": label,
        "seen": {
            "x-model-version": seen("x-model-version"),
            "x-canary-stage": seen("x-canary-stage"),
            "x-canary-unkeyed": seen("x-canary-unkeyed"),
        }
    });
    (StatusCode::OK, out, body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_uniform_per_user_and_deterministic() {
        let users: Vec<String> = (0..20_000).map(|i| format!("load-{i}")).collect();
        let mut quartiles = [0usize; 4];
        let mut labels = std::collections::BTreeMap::new();
        for u in &users {
            let (x, label) = prediction(u, 0.0, 0.0);
            assert_eq!(prediction(u, 0.0, 0.0), (x, label));
            quartiles[(x * 4.0) as usize] += 1;
            *labels.entry(label).or_insert(0usize) += 1;
        }
        for q in quartiles {
            assert!((4700..5300).contains(&q), "{quartiles:?}");
        }
        assert!((9700..10_300).contains(&labels["cat"]), "{labels:?}");
        assert!((5700..6300).contains(&labels["dog"]), "{labels:?}");
    }

    #[test]
    fn disagreeing_users_change_label_and_quartile_and_the_share_is_the_rate() {
        let users: Vec<String> = (0..20_000).map(|i| format!("u{i}")).collect();
        let mut flipped = 0;
        for u in &users {
            let (a, la) = prediction(u, 0.0, 0.0);
            let (b, lb) = prediction(u, 0.0, 0.3);
            if (a, la) != (b, lb) {
                flipped += 1;
                assert_ne!(la, lb, "{u}");
                assert_ne!((a * 4.0) as usize, (b * 4.0) as usize, "{u}: same quartile");
            }
        }
        assert!((5700..6300).contains(&flipped), "{flipped} of 20000 at 0.3");
        // A shift moves every value, not the label.
        assert_eq!(prediction("u1", 0.2, 0.0).1, prediction("u1", 0.0, 0.0).1);
        assert!((prediction("u1", 0.2, 0.0).0 - prediction("u1", 0.0, 0.0).0 - 0.2).abs() < 1e-12);
    }
}
