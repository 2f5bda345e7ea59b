//! A model server small enough to start in tests: answers every request with
//! its version name, in a header and in a JSON body that also echoes the
//! routing headers it received (so tests can see what reached the upstream).
//!
//! Prints `listening on 127.0.0.1:PORT` once it accepts connections.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use clap::Parser;
use serde_json::json;

#[derive(Parser, Clone)]
struct Args {
    /// Version name this backend answers with.
    #[arg(long)]
    version: String,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

/// Header carrying the backend's own version name.
const SERVED_BY: &str = "x-served-by";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let version = args.version.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let version = version.clone();
        async move { answer(&version, &headers) }
    });
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn answer(version: &str, headers: &HeaderMap) -> impl IntoResponse {
    let seen = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = json!({
        "version": version,
        "seen": {
            "x-model-version": seen("x-model-version"),
            "x-canary-stage": seen("x-canary-stage"),
            "x-canary-unkeyed": seen("x-canary-unkeyed"),
        }
    });
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(version) {
        out.insert(SERVED_BY, v);
    }
    out.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, out, body.to_string())
}
