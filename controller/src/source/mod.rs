//! Stats sources: the HTTP that reads one rollout epoch's per-version
//! counters and histograms from every Envoy; parsing, restart correction
//! and merging into one [`Window`] are the judge's
//! [`evidence`](canary_judge::evidence).
//!
//! ```text
//!  admin       GET every Envoy's /stats (bounded concurrency, per-endpoint timeout)  ─┐
//!                                                                                      ├─► evidence ─► Window
//!  prometheus  4 instant queries to Prometheus' /api/v1/query (one per Envoy fleet)  ─┘
//! ```

pub mod admin;
pub mod prometheus;

pub use admin::{stats_query, AdminSource, AdminSourceConfig};
pub use canary_judge::evidence::cluster::ClusterCounts;
pub use canary_judge::evidence::tracker::ResetTracker;
pub use canary_judge::evidence::SourceError;

use canary_judge::window::Window;

/// The configured stats source of a rollout.
pub enum Source {
    /// Every Envoy's admin API (the default).
    Admin(AdminSource),
    /// A Prometheus server that scrapes the Envoys' `/stats/prometheus`.
    Prometheus(prometheus::PrometheusSource),
}

impl Source {
    /// Reads epoch `epoch` of rollout `rollout`; `expected_version` is the
    /// ECDS `version_info` the Envoys should report as active.
    pub async fn read(&mut self, rollout: &str, epoch: u64, expected_version: &str) -> Result<Window, SourceError> {
        match self {
            Source::Admin(s) => Ok(s.read(rollout, epoch, expected_version).await),
            Source::Prometheus(s) => Ok(s.read(rollout, epoch, expected_version).await?),
        }
    }

    /// Reset-tracking state, to persist across controller restarts.
    pub fn tracker(&self) -> &ResetTracker {
        match self {
            Source::Admin(s) => s.tracker(),
            Source::Prometheus(s) => s.tracker(),
        }
    }

    pub fn tracker_mut(&mut self) -> &mut ResetTracker {
        match self {
            Source::Admin(s) => s.tracker_mut(),
            Source::Prometheus(s) => s.tracker_mut(),
        }
    }

    pub fn set_tracker(&mut self, t: ResetTracker) {
        match self {
            Source::Admin(s) => s.set_tracker(t),
            Source::Prometheus(s) => s.set_tracker(t),
        }
    }

    /// With `envoy.counts: cluster`: the stage baselines of the cumulative
    /// per-version counts and their reset tracker, to persist.
    pub fn cluster_counts_mut(&mut self) -> Option<&mut ClusterCounts> {
        match self {
            Source::Admin(s) => s.cluster_counts_mut(),
            Source::Prometheus(s) => s.cluster_counts_mut(),
        }
    }

    /// What the source reads, in words (for logs).
    pub fn describe(&self) -> String {
        match self {
            Source::Admin(s) => format!("{} Envoy admin endpoint(s)", s.config().endpoints.len()),
            Source::Prometheus(s) => format!("Prometheus at {}", s.config().url),
        }
    }
}
