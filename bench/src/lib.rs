//! `make bench`: what the canary filter costs on Envoy's request path,
//! measured side by side with no filter, a no-op proxy-wasm filter and
//! Envoy's native hash split, all in one run (see `bench/README.md`).
//!
//! The pieces: [`upstream`] (a tiny fixed-answer HTTP server), [`envoy`]
//! (starting Envoys from `envoy/bench-*.yaml`, reading their CPU time and
//! RSS from `/proc`), [`load`] (wrk at saturation, an open-loop fixed-rate
//! client for latency), [`stats`] (percentiles, t-intervals) and [`report`]
//! (results.json, results.md, an SVG chart); [`scale`] times one controller
//! evaluation cycle over thousands of simulated admin endpoints. Every process started is
//! registered in [`procs`] and killed by PID at the end, on error and on
//! Ctrl-C.

pub mod bodies;
pub mod envoy;
pub mod http;
pub mod load;
pub mod procs;
pub mod report;
pub mod scale;
pub mod stats;
pub mod upstream;
