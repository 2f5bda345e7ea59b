//! The filter's decisions, with no proxy-wasm in sight.
//!
//! ```text
//!   plugin configuration (JSON, from the controller via Envoy)
//!        │ config::Plan::from_json  — parse, refuse unknown fields, validate, precompute
//!        ▼
//!   Plan ──► request::route_request(plan, host)  — key → bucket → arm, tag, count
//!        └─► request::tag_response(plan, host, routed)
//! ```
//!
//! This crate is also the contract with the controller: the controller builds
//! [`config::FilterConfig`] values, validates them with the same code the filter
//! runs, and reads the counters named by [`metrics`].

pub mod config;
pub mod headers;
pub mod metrics;
pub mod predict;
pub mod request;
pub mod shadow;
pub mod split;

pub use config::{ConfigError, Counts, FilterConfig, Plan};
pub use split::{Arm, Weight};
