//! The controller: reads Envoy's stats, decides, and pushes the filter's
//! configuration. This first part holds the configuration sinks.

pub mod sink;
pub mod source;
pub mod window;
