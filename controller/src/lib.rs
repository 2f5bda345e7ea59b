//! The controller: reads Envoy's stats, decides, and pushes the filter's
//! configuration. This first part holds the configuration sinks.

pub mod alert;
pub mod durable;
pub mod gates;
pub mod labels;
pub mod rollout;
pub mod sink;
pub mod spec;
pub mod store;
pub mod source;
pub mod window;
