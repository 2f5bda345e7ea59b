//! canary-controller: the controller's I/O around the pure decisions of
//! [`canary_judge`]: stats sources, configuration sinks, the state store,
//! alerts, the daemon's HTTP API and dashboard, the Kubernetes resource and
//! reconciler, and the `canary` CLI.

pub mod alert;
pub mod control;
pub mod crd;
pub mod daemon;
pub mod dashboard;
pub mod durable;
#[cfg(test)]
mod fixtures;
pub mod metrics;
pub mod reconcile;
pub mod reports;
pub mod sink;
pub mod source;
pub mod store;
