//! One line of `decisions.jsonl`: a [`Decision`] as JSON with its layout's
//! name first, `{"schema":"canary.decision/v1","seq":1,…}`, described by
//! `controller/decisions.schema.json`.
//!
//! A line without `schema` was written before the log was versioned, in the
//! version 1 layout, and reads as version 1. A line naming another layout (a
//! newer controller's) is refused, never skipped or rewritten: the log is
//! the audit trail.

use serde::{Deserialize, Serialize};

use canary_judge::rollout::Decision;

/// The layout of the lines this controller writes and reads. A change to
/// what a line holds (a field renamed, removed, or given another meaning)
/// gets a new name here and in the schema file's `const`.
pub const DECISION_SCHEMA: &str = "canary.decision/v1";

#[derive(Serialize)]
struct Written<'a> {
    schema: &'static str,
    #[serde(flatten)]
    decision: &'a Decision,
}

/// Only the layout's name of a line (every other field ignored).
#[derive(Deserialize)]
struct Layout {
    #[serde(default)]
    schema: Option<String>,
}

/// A line that is not a decision of this controller's layout.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON, or not a decision (a torn last line, a hand edit).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A decision in a layout this controller does not read.
    #[error("written as `{found}`, a layout this controller does not read (it reads `{DECISION_SCHEMA}`): a newer controller wrote it")]
    Schema { found: String },
}

/// The log line of `d`, without its newline.
pub fn to_line(d: &Decision) -> serde_json::Result<String> {
    serde_json::to_string(&Written { schema: DECISION_SCHEMA, decision: d })
}

/// The decision on a line; a line without `schema` is version 1.
pub fn from_line(line: &[u8]) -> Result<Decision, LineError> {
    let layout: Layout = serde_json::from_slice(line)?;
    match layout.schema {
        None => {}
        Some(s) if s == DECISION_SCHEMA => {}
        Some(found) => return Err(LineError::Schema { found }),
    }
    Ok(serde_json::from_slice(line)?)
}
