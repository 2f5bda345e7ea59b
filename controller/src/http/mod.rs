//! The controller's HTTP surface: the daemon's API (what the CLI talks to
//! while `canary run` is up), the dashboard, and the controller's own
//! Prometheus metrics.

pub mod daemon;
pub mod dashboard;
pub mod metrics;
