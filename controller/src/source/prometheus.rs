//! The Prometheus stats source: four instant queries to a Prometheus server
//! that scrapes the Envoys' `/stats/prometheus`, concurrently and under one
//! timeout; the answers are read into the same `Window` as the admin source by
//! the pure half in [`canary_judge::evidence::prometheus`] (which documents the
//! queries, the names and why raw per-epoch counters are read).
//!
//! With `envoy.counts: cluster` a fifth query, at the same time, reads the
//! versions' cumulative status codes and latency (Envoy's per-cluster stats,
//! or Istio's per-version metrics, as Prometheus holds them;
//! [`canary_judge::evidence::cluster::prometheus`]), windowed per stage by
//! [`ClusterCounts`] as the admin source does.
//!
//! Missing data never counts as healthy: Prometheus unreachable, slow, or
//! answering anything but a well-formed vector fails the whole read.

use std::time::Duration;

use canary_judge::evidence::admin::clip;
use canary_judge::evidence::cluster::prometheus::{cluster_query, cluster_reads, ClusterMetrics};
use canary_judge::evidence::cluster::ClusterCounts;
use canary_judge::evidence::merge::merge_reads;
use canary_judge::evidence::prometheus::{
    parse_vector, queries, reads_from, PromSample, QueryError, ResponseError, MAX_BODY_BYTES,
};
use canary_judge::evidence::tracker::ResetTracker;
use canary_judge::window::Window;

/// How to reach Prometheus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusSourceConfig {
    /// Base URL, e.g. `http://prometheus:9090` (a path prefix is kept).
    pub url: String,
    /// For the whole read (the four queries run at once); also passed to
    /// Prometheus as the queries' own `timeout`.
    pub timeout: Duration,
    /// PromQL label matchers selecting this rollout's Envoys, without braces,
    /// e.g. `job="canary-envoys"`.
    pub selector: String,
}

/// Reads windows from Prometheus.
pub struct PrometheusSource {
    config: PrometheusSourceConfig,
    client: reqwest::Client,
    tracker: ResetTracker,
    /// With `envoy.counts: cluster`: the versions, the names to read them
    /// under, and the stage baselines of their cumulative counts.
    cluster: Option<Box<(Vec<String>, ClusterMetrics, ClusterCounts)>>,
}

impl PrometheusSource {
    pub fn new(config: PrometheusSourceConfig) -> PrometheusSource {
        let url = config.url.trim().trim_end_matches('/').to_string();
        let config = PrometheusSourceConfig { url, ..config };
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(config.timeout)
            .build()
            // Cannot fail without TLS backends; the default client is equivalent.
            .unwrap_or_default();
        PrometheusSource { config, client, tracker: ResetTracker::default(), cluster: None }
    }

    /// Reads the versions' response counts and latency from their
    /// cumulative per-version stats in Prometheus (`envoy.counts: cluster`),
    /// under `metrics`' names. See [`canary_judge::evidence::cluster`].
    pub fn with_cluster_counts(mut self, versions: Vec<String>, metrics: ClusterMetrics) -> PrometheusSource {
        self.cluster = Some(Box::new((versions, metrics, ClusterCounts::default())));
        self
    }

    /// The stage baselines of `envoy.counts: cluster`, to persist.
    pub fn cluster_counts_mut(&mut self) -> Option<&mut ClusterCounts> {
        self.cluster.as_deref_mut().map(|(_, _, c)| c)
    }

    pub fn config(&self) -> &PrometheusSourceConfig {
        &self.config
    }

    /// Reads epoch `epoch` of rollout `rollout`. A failed query fails the
    /// read; Envoys whose last scrape failed go to `coverage.failures`.
    pub async fn read(&mut self, rollout: &str, epoch: u64, expected_version: &str) -> Result<Window, QueryError> {
        let q = queries(rollout, epoch, &self.config.selector);
        let timeout = self.config.timeout;
        let all = async {
            futures::try_join!(
                self.query("up", &q.up),
                self.query("uptime", &q.uptime),
                self.query("version", &q.version),
                self.query("data", &q.data),
            )
        };
        let versions: Option<Vec<&str>> =
            self.cluster.as_deref().map(|(v, _, _)| v.iter().map(String::as_str).collect());
        let cluster_q = self
            .cluster
            .as_deref()
            .zip(versions.as_deref())
            .map(|((_, metrics, _), v)| cluster_query(*metrics, v, &self.config.selector));
        let cluster = async {
            match &cluster_q {
                Some(q) => self.query("cluster", q).await.map(Some),
                None => Ok(None),
            }
        };
        let ((up, uptime, version, data), cluster) =
            tokio::time::timeout(timeout, futures::future::try_join(all, cluster))
                .await
                .map_err(|_| QueryError::Timeout(timeout))??;
        let reads = reads_from(rollout, epoch, &up, &uptime, &version, &data)
            .map_err(|error| QueryError::Response { query: "answers", error })?;
        let cluster_reads = match (self.cluster.as_deref(), versions.as_deref(), cluster) {
            (Some((_, metrics, _)), Some(v), Some(answer)) => Some(
                cluster_reads(rollout, v, *metrics, &up, &uptime, &answer)
                    .map_err(|error| QueryError::Response { query: "cluster", error })?,
            ),
            _ => None,
        };
        let mut window = merge_reads(rollout, epoch, expected_version, &reads, &mut self.tracker);
        if let (Some((_, _, counts)), Some(reads)) = (self.cluster.as_deref_mut(), cluster_reads) {
            counts.apply(&reads, &mut window);
        }
        for f in &window.coverage.failures {
            tracing::warn!(endpoint = %f.endpoint, error = %f.error, "stats read failed");
        }
        for endpoint in &window.coverage.departed {
            tracing::debug!(%endpoint, "no longer in the fleet: its last counts of the epoch stay in the window");
        }
        Ok(window)
    }

    async fn query(&self, name: &'static str, promql: &str) -> Result<Vec<PromSample>, QueryError> {
        let url = reqwest::Url::parse(&format!("{}/api/v1/query", self.config.url))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| QueryError::BadUrl(clip(&self.config.url, 100)))?;
        let timeout = format!("{}ms", self.config.timeout.as_millis().max(1));
        let response = self
            .client
            .post(url)
            .form(&[("query", promql), ("timeout", timeout.as_str())])
            .send()
            .await
            .map_err(|e| request_error(name, e))?;
        let status = response.status().as_u16();
        let body = read_body(response).await.map_err(|e| request_error(name, e))?;
        // Prometheus answers a refused query with 400/422/503 and an error document: show its reason.
        if status != 200 {
            if let Err(error @ ResponseError::Refused { .. }) = parse_vector(&body) {
                return Err(QueryError::Response { query: name, error });
            }
            return Err(QueryError::Status {
                query: name,
                status,
                body: clip(String::from_utf8_lossy(&body).trim(), 200),
            });
        }
        parse_vector(&body).map_err(|error| QueryError::Response { query: name, error })
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

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        // Past the limit, keep one byte more so that the parser reports the size.
        if body.len() > MAX_BODY_BYTES {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn request_error(query: &'static str, e: reqwest::Error) -> QueryError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    let reason = clip(&reason, 200);
    if e.is_connect() {
        QueryError::Connect { query, reason }
    } else {
        QueryError::Request { query, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_prometheus_fails_the_read() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut source = PrometheusSource::new(PrometheusSourceConfig {
            url: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_secs(2),
            selector: r#"job="x""#.into(),
        });
        let err = source.read("r", 1, "r/1").await.unwrap_err();
        assert!(matches!(err, QueryError::Connect { .. }), "{err}");
        let mut bad = PrometheusSource::new(PrometheusSourceConfig { url: "nope".into(), ..source.config().clone() });
        assert!(matches!(bad.read("r", 1, "r/1").await, Err(QueryError::BadUrl(_))));
    }
}
