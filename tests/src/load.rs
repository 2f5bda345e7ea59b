//! Traffic: one request and what the client saw, one request per user, and
//! steady keyed load from background tasks.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;

/// What the client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// `x-model-version` on the response (the filter's tag).
    pub version: Option<String>,
    /// `x-canary-stage` on the response.
    pub stage: Option<String>,
    /// `x-canary-unkeyed` on the response.
    pub unkeyed: bool,
    /// `x-served-by`: the backend that really answered.
    pub served_by: Option<String>,
    pub body: String,
}

/// Sends one GET with the given headers.
pub async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (version, stage, unkeyed, served_by) =
        (h("x-model-version"), h("x-canary-stage"), h("x-canary-unkeyed").is_some(), h("x-served-by"));
    let status = resp.status().as_u16();
    Ok(Reply { status, version, stage, unkeyed, served_by, body: resp.text().await? })
}

/// One request per user (`x-user-id`), `concurrency` at a time; replies in
/// the users' order.
pub async fn route_users(
    client: &reqwest::Client,
    url: &str,
    users: &[String],
    concurrency: usize,
) -> Result<Vec<Reply>> {
    futures::stream::iter(users)
        .map(|u| async move { get(client, url, &[("x-user-id", u.as_str())]).await })
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// `n` distinct user ids with a prefix.
pub fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A keep-alive HTTP client for load against 127.0.0.1.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(256).build().unwrap_or_default()
}

/// Steady keyed load through an Envoy from background tasks, until dropped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` concurrent loops, each sending requests for users
    /// `prefix-0 .. prefix-<users>` in turn; `pause` between requests of one loop.
    pub fn start(url: String, clients: usize, users: usize, pause: Duration) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|worker| {
                let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let user = format!("load-{}", i % users.max(1));
                        match get(&c, &url, &[("x-user-id", &user)]).await {
                            Ok(r) if r.status < 500 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        i += clients;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    /// About `rps` requests a second in all (users `load-0 .. load-<users>`),
    /// from `clients` loops each ticking every `clients / rps` seconds: the
    /// steady low traffic a small service sees, not a flood.
    pub fn paced(url: String, rps: u32, clients: usize, users: usize) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let period = Duration::from_secs_f64(clients as f64 / f64::from(rps.max(1)));
        let tasks = (0..clients)
            .map(|worker| {
                let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let user = format!("load-{}", i % users.max(1));
                        match get(&c, &url, &[("x-user-id", &user)]).await {
                            Ok(r) if r.status < 500 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        i += clients;
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
