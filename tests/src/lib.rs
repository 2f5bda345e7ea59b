//! Harness for tests and the demo: starts real processes (Envoy with the built
//! .wasm, model backends) on free ports of 127.0.0.1, talks to them, and stops
//! every one of them by PID when dropped.
//!
//! One module per concern, every item re-exported here (`canary_tests::Envoy`):
//! `process` (paths, binaries, child processes, ports), `backend` (the model
//! backend), `envoy` (Envoy with the filter, ECDS, admin API, the rig, the
//! admin proxy), `load` (requests and load), `daemon` (the `canary` CLI and
//! daemon, its state directory, specs, waits, webhooks), `browser` (headless
//! Chromium), `cdp` (the DevTools protocol), `fleet` (many Envoys).

mod backend;
mod browser;
pub mod cdp;
mod daemon;
mod envoy;
pub mod fleet;
mod load;
mod process;

pub use backend::*;
pub use browser::*;
pub use daemon::*;
pub use envoy::*;
pub use load::*;
pub use process::*;
