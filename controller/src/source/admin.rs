//! The Envoy admin-API stats source: asks every Envoy's `/stats` for one
//! rollout epoch, with bounded concurrency and one deadline for the whole
//! read, and
//! hands the answers to the pure parser, reset tracker and merge of
//! [`canary_judge::evidence::admin`] (what the answer looks like, and why it
//! is read the way it is, is documented there).
//!
//! ```text
//!  for each endpoint (bounded concurrency, one deadline: the read's start + timeout):
//!    GET /stats?format=json&usedonly&histogram_buckets=detailed&filter=<epoch E of rollout R, uptime, ECDS version>
//!      ──parse_stats──► EndpointSample ──ResetTracker::observe──► corrected series
//!  merge_reads ──► Window { versions, coverage }
//! ```
//!
//! `filter` is an RE2 regex matched anywhere in the name (hence the anchors
//! in [`stats_query`]); an invalid one gets HTTP 400 `Invalid re2 regex`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use canary_core::metrics::rollout_prefix_in_envoy;
use canary_judge::evidence::admin::{
    clip, parse_stats, ParseError, ReadError, MAX_BODY_BYTES, UPTIME_STAT, VERSION_TEXT_STAT,
};
use canary_judge::evidence::cluster::{self, parse_cluster_stats, ClusterCounts};
use canary_judge::evidence::merge::{merge_reads, EndpointRead};
use canary_judge::evidence::tracker::ResetTracker;
use canary_judge::window::Window;
use futures::StreamExt;

/// How to reach the Envoys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSourceConfig {
    /// Admin base URLs, e.g. `http://127.0.0.1:9901` (plain HTTP only).
    pub endpoints: Vec<String>,
    /// For the whole read: every endpoint's connect, answer and body must
    /// be in by the read's start plus this, whatever its place in the list
    /// (a hanging Envoy costs one timeout, not one per slot it waits for).
    pub timeout: Duration,
    /// Endpoints read at the same time (0 counts as 1).
    pub max_concurrency: usize,
}

impl Default for AdminSourceConfig {
    fn default() -> Self {
        AdminSourceConfig { endpoints: vec![], timeout: Duration::from_secs(2), max_concurrency: 16 }
    }
}

/// Reads windows from Envoys' admin APIs.
pub struct AdminSource {
    config: AdminSourceConfig,
    client: reqwest::Client,
    tracker: ResetTracker,
    /// With `envoy.counts: cluster`: the versions (their clusters are named
    /// after them) and the stage baselines of their cumulative counts.
    cluster: Option<Box<(Vec<String>, ClusterCounts)>>,
}

impl AdminSource {
    /// Endpoints are normalized (no trailing `/`) and listed once each: the
    /// same Envoy counted twice would double its traffic.
    pub fn new(config: AdminSourceConfig) -> AdminSource {
        let mut seen = BTreeSet::new();
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| seen.insert(e.clone()))
            .collect();
        let config = AdminSourceConfig { endpoints, ..config };
        let client = reqwest::Client::builder()
            // Admin ports are local or in-cluster: an HTTP(S)_PROXY meant for
            // the internet must not apply.
            .no_proxy()
            // A fresh connection per read: an Envoy restarted since the last
            // read must not be asked over a dead pooled connection.
            .pool_max_idle_per_host(0)
            .connect_timeout(config.timeout)
            .build()
            // Cannot fail without TLS backends; the default client is equivalent.
            .unwrap_or_default();
        AdminSource { config, client, tracker: ResetTracker::default(), cluster: None }
    }

    /// Reads the versions' response counts and latency from Envoy's
    /// per-cluster stats (`envoy.counts: cluster`; one cluster per version,
    /// named after it), in the same answer as the filter's stats. See
    /// [`canary_judge::evidence::cluster`].
    pub fn with_cluster_counts(mut self, versions: Vec<String>) -> AdminSource {
        self.cluster = Some(Box::new((versions, ClusterCounts::default())));
        self
    }

    pub fn config(&self) -> &AdminSourceConfig {
        &self.config
    }

    /// The stage baselines of `envoy.counts: cluster`, to persist.
    pub fn cluster_counts_mut(&mut self) -> Option<&mut ClusterCounts> {
        self.cluster.as_deref_mut().map(|(_, c)| c)
    }

    /// Reads epoch `epoch` of rollout `rollout` from every endpoint, with
    /// bounded concurrency and one deadline for all, and merges it into one
    /// window. `expected_version` is the `version_info` the endpoints should
    /// report as active; `coverage.applied` counts those that do. Endpoints
    /// that fail go to `coverage.failures` with the reason and contribute
    /// nothing. Never panics.
    pub async fn read(&mut self, rollout: &str, epoch: u64, expected_version: &str) -> Window {
        let versions: Option<Vec<&str>> = self.cluster.as_deref().map(|(v, _)| v.iter().map(String::as_str).collect());
        let query = stats_query_with(rollout, epoch, versions.as_deref());
        let (client, timeout) = (&self.client, self.config.timeout);
        // One deadline from the read's start: an endpoint waiting for a
        // free slot behind a hanging one gets what is left, not a fresh timeout.
        let deadline = tokio::time::Instant::now() + timeout;
        #[allow(clippy::type_complexity)]
        let mut reads: Vec<(usize, EndpointRead, Option<EndpointRead>)> =
            futures::stream::iter(self.config.endpoints.iter().enumerate())
                .map(|(i, endpoint)| {
                    let (query, versions) = (&query, versions.as_deref());
                    async move {
                        let body = read_endpoint(client, endpoint, query, deadline, timeout).await;
                        let outcome =
                            body.as_ref().map_err(Clone::clone).and_then(|b| Ok(parse_stats(b, rollout, epoch)?));
                        let cluster = versions.map(|v| EndpointRead {
                            endpoint: endpoint.clone(),
                            outcome: body.and_then(|b| Ok(parse_cluster_stats(&b, rollout, v)?)),
                        });
                        (i, EndpointRead { endpoint: endpoint.clone(), outcome }, cluster)
                    }
                })
                .buffer_unordered(self.config.max_concurrency.max(1))
                .collect()
                .await;
        // The configured order, so the tracker sees the same sequence every time.
        reads.sort_by_key(|(i, ..)| *i);
        let (reads, cluster_reads): (Vec<EndpointRead>, Vec<Option<EndpointRead>>) =
            reads.into_iter().map(|(_, r, c)| (r, c)).unzip();
        let mut window = merge_reads(rollout, epoch, expected_version, &reads, &mut self.tracker);
        if let Some((_, counts)) = self.cluster.as_deref_mut() {
            let cluster_reads: Vec<EndpointRead> = cluster_reads.into_iter().flatten().collect();
            counts.apply(&cluster_reads, &mut window);
        }
        for f in &window.coverage.failures {
            tracing::warn!(endpoint = %f.endpoint, error = %f.error, "stats read failed");
        }
        for endpoint in &window.coverage.departed {
            tracing::debug!(%endpoint, "no longer in the fleet: its last counts of the epoch stay in the window");
        }
        for endpoint in &window.coverage.resets {
            tracing::info!(%endpoint, "Envoy restarted since the last read: earlier counts carried over");
        }
        window
    }

    /// Reset-tracking state, to persist across controller restarts.
    pub fn tracker(&self) -> &ResetTracker {
        &self.tracker
    }

    pub fn tracker_mut(&mut self) -> &mut ResetTracker {
        &mut self.tracker
    }

    pub fn set_tracker(&mut self, t: ResetTracker) {
        self.tracker = t;
    }
}

/// `/stats` path and query for one rollout epoch.
pub fn stats_query(rollout: &str, epoch: u64) -> String {
    stats_query_with(rollout, epoch, None)
}

/// [`stats_query`], and with `cluster_versions` the cluster stats of those
/// versions (`envoy.counts: cluster`).
pub fn stats_query_with(rollout: &str, epoch: u64, cluster_versions: Option<&[&str]>) -> String {
    // Envoy matches `filter` with RE2 anywhere in the name: anchor every branch.
    let mut regex = format!(
        "^{}epoch\\.{epoch}\\.version\\.|^{}$|^{}$",
        regex_escape(&rollout_prefix_in_envoy(rollout)),
        regex_escape(UPTIME_STAT),
        regex_escape(VERSION_TEXT_STAT)
    );
    if let Some(versions) = cluster_versions {
        let _ = write!(regex, "|{}", cluster::stats_filter(versions));
    }
    format!("/stats?format=json&usedonly&histogram_buckets=detailed&filter={}", url_encode(&regex))
}

async fn read_endpoint(
    client: &reqwest::Client,
    endpoint: &str,
    query: &str,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    let url = admin_url(endpoint, query)?;
    tokio::time::timeout_at(deadline, fetch(client, url)).await.map_err(|_| ReadError::Timeout(timeout))?
}

fn admin_url(endpoint: &str, query: &str) -> Result<reqwest::Url, ReadError> {
    let base = reqwest::Url::parse(endpoint).map_err(|e| ReadError::BadUrl(format!("{}: {e}", clip(endpoint, 100))))?;
    if base.scheme() != "http" || base.host().is_none() {
        return Err(ReadError::BadUrl(format!("{}: expected http://HOST:PORT", clip(endpoint, 100))));
    }
    reqwest::Url::parse(&format!("{endpoint}{query}"))
        .map_err(|e| ReadError::BadUrl(format!("{}: {e}", clip(endpoint, 100))))
}

async fn fetch(client: &reqwest::Client, url: reqwest::Url) -> Result<Vec<u8>, ReadError> {
    let mut response = client.get(url).send().await.map_err(request_error)?;
    let status = response.status().as_u16();
    if status != 200 {
        let mut body = Vec::new();
        // A short excerpt is enough for the reason (Envoy: "Invalid re2 regex ...").
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > 200 {
                break;
            }
        }
        let body = clip(String::from_utf8_lossy(&body).trim(), 200);
        return Err(ReadError::Status { status, body });
    }
    if let Some(n) = response.content_length().filter(|n| *n > MAX_BODY_BYTES as u64) {
        return Err(ParseError::TooLarge { bytes: usize::try_from(n).unwrap_or(usize::MAX) }.into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ParseError::TooLarge { bytes: body.len() + chunk.len() }.into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The reason without reqwest's outer "error sending request for url (...)"
/// (the URL is long and the endpoint is named anyway).
fn request_error(e: reqwest::Error) -> ReadError {
    let connect = e.is_connect();
    let mut causes = vec![];
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        // hyper's "client error (Connect)" layer says nothing the variant does not.
        if !text.starts_with("client error (") && !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    let reason = if causes.is_empty() { e.without_url().to_string() } else { causes.join(": ") };
    let reason = clip(&reason, 300);
    if connect {
        ReadError::Connect(reason)
    } else {
        ReadError::Request(reason)
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ecds_version_stat_carries_the_filter_name() {
        let want = format!("extension_config_discovery.http_filter.{}.version_text", crate::sink::FILTER_NAME);
        assert_eq!(VERSION_TEXT_STAT, want);
    }

    #[test]
    fn the_query_selects_the_epoch_the_uptime_and_the_ecds_version() {
        let q = stats_query("recs-v2", 7);
        assert!(q.starts_with("/stats?format=json&usedonly&histogram_buckets=detailed&filter="));
        let filter = q.rsplit("filter=").next().unwrap();
        assert_eq!(
            filter,
            url_encode(
                r"^wasmcustom\.canary\.rollout\.recs-v2\.epoch\.7\.version\.|^server\.uptime$|^extension_config_discovery\.http_filter\.canary\.version_text$"
            )
        );
        assert!(!filter.contains(['^', '|', '\\', '$']));
    }

    #[test]
    fn endpoints_are_deduplicated_and_bad_urls_fail_cleanly() {
        let source = AdminSource::new(AdminSourceConfig {
            endpoints: vec!["http://127.0.0.1:1/".into(), "http://127.0.0.1:1".into(), "https://x:1".into()],
            ..AdminSourceConfig::default()
        });
        assert_eq!(source.config().endpoints, vec!["http://127.0.0.1:1", "https://x:1"]);
        for bad in ["", "not a url", "https://x:1", "file:///etc/passwd", "http://"] {
            assert!(matches!(admin_url(bad, "/stats"), Err(ReadError::BadUrl(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn hanging_endpoints_cost_one_timeout_wherever_they_sit() {
        // Listeners that never accept: the connection is made (backlog), the
        // request sent, and no answer ever comes.
        let hanging: Vec<std::net::TcpListener> =
            (0..4).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let endpoints = hanging.iter().map(|l| format!("http://{}", l.local_addr().unwrap())).collect();
        // One at a time: with a timeout per endpoint this read took 4 timeouts.
        let timeout = Duration::from_millis(500);
        let mut source = AdminSource::new(AdminSourceConfig { endpoints, timeout, max_concurrency: 1 });
        let started = std::time::Instant::now();
        let w = source.read("r", 1, "r/1").await;
        let took = started.elapsed();
        assert_eq!((w.coverage.endpoints, w.coverage.failures.len()), (4, 4));
        assert!(w.coverage.failures.iter().all(|f| f.error.starts_with("no complete answer")), "{w:?}");
        assert!(took < timeout * 3, "the read took {took:?} for a {timeout:?} deadline");
    }

    #[tokio::test]
    async fn unreachable_and_malformed_endpoints_become_failures() {
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut source = AdminSource::new(AdminSourceConfig {
            endpoints: vec![format!("http://127.0.0.1:{port}"), "no-scheme".into()],
            timeout: Duration::from_secs(2),
            max_concurrency: 0,
        });
        let w = source.read("r", 1, "r/1").await;
        assert_eq!((w.coverage.endpoints, w.coverage.answered), (2, 0));
        assert!(w.coverage.failures[0].error.starts_with("cannot connect: "), "{:?}", w.coverage.failures);
        assert!(w.coverage.failures[1].error.starts_with("not a usable admin URL"), "{:?}", w.coverage.failures);
        assert!(w.versions.is_empty());
    }
}
