//! The controller: reads Envoy's stats, decides, and pushes the filter's
//! configuration. This first part holds the configuration sinks.

pub mod alert;
pub mod anytime;
pub mod calibration;
pub mod control;
pub mod crd;
pub mod daemon;
pub mod dashboard;
pub mod durable;
#[cfg(test)]
mod fixtures;
pub mod gates;
pub mod labels;
pub mod metrics;
pub mod plan;
pub mod psi;
pub mod reconcile;
pub mod replay;
pub mod report;
pub mod rollout;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod spec;
pub mod stats;
pub mod store;
pub mod window;
