//! Canary analysis reports: per stage and for the whole rollout, as a JSON
//! document (schema `canary.report/v1`, `controller/report.schema.json`), a
//! self-contained HTML page (inline CSS and SVG, no network fetch) and a
//! Markdown summary. Built only from what the controller recorded — the
//! decision log, the state and the spec — so a report can be rebuilt and
//! checked at any time.
//!
//! ```text
//!  decision log, state, spec ─► model (Report: the data, the JSON) ─┬─► markdown
//!                                                                    └─► html ◄─ svg (plots)
//!                               format: how numbers and gates read, for both
//! ```

mod format;
mod html;
mod markdown;
mod model;
mod svg;
#[cfg(test)]
mod tests;

pub use format::unreadable_numbers;
pub use html::html;
pub use markdown::markdown;
pub use model::*;
pub use svg::{forest, Forest};
