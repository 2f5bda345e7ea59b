//! Stats sources: where the controller reads one rollout epoch's per-version
//! counters and histograms, merged across every Envoy into one [`Window`].
//!
//! ```text
//!  admin       GET every Envoy's /stats (bounded concurrency, per-endpoint timeout)  ─┐
//!                                                                                      ├─► per-endpoint samples
//!  prometheus  4 instant queries to Prometheus' /api/v1/query (one per Envoy fleet)  ─┘      │
//!                                                                    ResetTracker (restarts) ▼
//!                                                                   merge_reads ─► Window { versions, coverage }
//! ```
//!
//! Both produce the same [`Window`] from the same per-endpoint samples, with
//! the same restart correction and the same coverage (endpoints asked, answered,
//! applied, failed): the gates and the state machine cannot tell them apart.

pub mod admin;
pub mod prometheus;

pub use admin::*;

use crate::window::Window;

/// The configured stats source of a rollout.
pub enum Source {
    /// Every Envoy's admin API (the default).
    Admin(AdminSource),
    /// A Prometheus server that scrapes the Envoys' `/stats/prometheus`.
    Prometheus(prometheus::PrometheusSource),
}

/// Why a source produced no window at all (an endpoint's own failure is not
/// this: it goes into the window's coverage).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Prometheus(#[from] prometheus::QueryError),
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

    pub fn set_tracker(&mut self, t: ResetTracker) {
        match self {
            Source::Admin(s) => s.set_tracker(t),
            Source::Prometheus(s) => s.set_tracker(t),
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
