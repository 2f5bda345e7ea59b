//! What one process shares between its control loop, its HTTP routes and its
//! alerters: the controller's own metrics and the count of alerts still being
//! delivered. Made once where the process starts (`canary run`, the operator,
//! a CLI command) and handed down by value (its parts are `Arc`s), so a test
//! gets fresh counters and nothing is process-wide.
//!
//! ```text
//!  cli ── ProcessContext ──┬─► Controller (sinks count pushes, the loop counts reads; alerter)
//!                          ├─► daemon loop (evaluations) ─► dashboard Hub (decisions, SSE, controls)
//!                          └─► GET /metrics (renders the same counters)
//! ```

use std::sync::Arc;

use crate::alert::PendingAlerts;
use crate::http::metrics::Metrics;

/// A process' metrics and pending alerts. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct ProcessContext {
    /// Counters and histograms served at `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Alerts spawned and not yet delivered or given up on.
    pub alerts: PendingAlerts,
}
