//! The daemon's dashboard: a page at `/`, the JSON behind it, live updates by
//! server-sent events, the stage reports, the controller's own metrics and
//! the operator's controls.
//!
//! ```text
//!  GET  /                      the page (HTML, JS and CSS compiled into the binary)
//!  GET  /assets/dashboard.{js,css}
//!  GET  /api/state             the snapshot the page draws (JSON)
//!  GET  /api/events            the same snapshot, pushed on every change (text/event-stream)
//!  POST /api/{pause,resume,advance,rollback}   Authorization: Bearer <token>
//!  GET  /reports/ , /reports/NAME              STATE_DIR/reports, read-only
//!  GET  /metrics               Prometheus text format
//! ```
//!
//! The [`Hub`] follows the state directory: it reads the decision log as it
//! grows (only the new lines), keeps a compact time series per version
//! (interval deltas of the epoch's cumulative window), and publishes a new
//! snapshot when anything changed. The daemon wakes it after every
//! evaluation and every command, so a decision reaches the page within
//! milliseconds; it also looks every 250 ms for changes made by the CLI.
//!
//! ```text
//!  auth.rs    the operator token (digest, constant-time compare, Bearer header)
//!  hub.rs     Hub: follows the state directory, publishes snapshots
//!  series.rs  the per-version time series and the expected time left
//!  view.rs    the view model the page is sent
//!  routes.rs  the routes
//! ```

mod auth;
mod hub;
mod routes;
mod series;
#[cfg(test)]
mod tests;
mod view;

pub use auth::Token;
pub use hub::{Hub, Snapshot};
pub use routes::{router, App};
