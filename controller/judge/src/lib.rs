//! canary-judge: every decision of a rollout, as pure functions over values.
//!
//! ```text
//!  spec (what the operator wrote) ─┐
//!  evidence ──► window ────────────┼─► gates (stats, psi) ─► rollout::step ─► (state, decision)
//!  labels ─────────────────────────┘                                 │
//!                                        replay, simulate, report ◄──┘
//! ```
//!
//! No async runtime, HTTP, Kubernetes client or CLI in this crate's
//! dependencies (a test of the workspace checks `cargo tree`): the state
//! machine that `run`, `replay` and `simulate` share is testable with plain
//! values, and the controller crate around it does the I/O. The spec's
//! `CanaryRollout` custom-resource derive is behind the `kube` feature.

pub mod anytime;
pub mod calibration;
pub mod evidence;
pub mod gates;
pub mod labels;
pub mod mean_difference;
pub mod plan;
pub mod psi;
pub mod psi_calibration;
pub mod replay;
pub mod report;
pub mod rollout;
pub mod segment_calibration;
pub mod segments;
pub mod simulate;
pub mod spec;
pub mod stats;
pub mod status;
pub mod window;

/// The name a value has in JSON, its serde name (`rollback`, `no_data`,
/// `error_rate`): the stable id to show and to write, rather than a Rust
/// `Debug` rendering (`Rollback`, `NoData`), which is no contract. Empty for
/// a value that is not a string in JSON.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The file Envoy watches for the filter's configuration (file-based ECDS),
/// and the default ConfigMap key: one name wherever the configuration is
/// written.
pub const ECDS_FILE_NAME: &str = "canary.json";
