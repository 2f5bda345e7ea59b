//! Evidence: Envoy's stats, as the admin API or Prometheus answers them,
//! read into one [`Window`](crate::window::Window) per rollout epoch.
//! Parsing, restart correction and merging are pure; the HTTP that fetches
//! the answers is the controller's `source`.
//!
//! ```text
//!  admin API /stats answer ──admin::parse_stats──────┐
//!                                                    ├─► per-endpoint EndpointSample
//!  Prometheus answers ─────prometheus::reads_from────┘          │
//!                                       ResetTracker (restarts) ▼
//!                                     merge_reads ─► Window { versions, coverage }
//! ```
//!
//! Both paths produce the same window from the same per-endpoint samples,
//! with the same restart correction and the same coverage: the gates and the
//! state machine cannot tell them apart.

pub mod admin;
pub mod cluster;
pub mod merge;
pub mod prometheus;
pub mod tracker;

/// A sample of `rollout` epoch `epoch` whose Envoy reports that epoch applied.
#[cfg(test)]
pub(crate) fn sample(rollout: &str, epoch: u64, uptime: Option<u64>, series: &[(&str, u64)]) -> admin::EndpointSample {
    admin::EndpointSample {
        rollout: rollout.into(),
        epoch,
        uptime_s: uptime,
        active_version: Some(format!("{rollout}/{epoch}")),
        series: series.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

/// Why a stats source produced no window at all (an endpoint's own failure
/// is not this: it goes into the window's coverage). The state machine
/// holds on it, and alerts when it repeats.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Prometheus(#[from] prometheus::QueryError),
}
