//! State files written when the reset tracker lived inside `state.json`
//! (free JSON, then typed) still load: the tracker is read, and the state
//! saves back the same JSON without it (the controller moves it into the
//! tracker's own shard files): a controller upgraded mid-rollout carries on
//! with its restart bookkeeping.

// Test helpers too: a failure here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canary_judge::rollout::RolloutState;
use serde_json::{json, Value};

/// A real `state.json` written by the controller before the change (one
/// Envoy read, so the tracker holds its series).
const UNTYPED: &str = include_str!("data/state-untyped-tracker.json");

fn with_tracker(tracker: Option<Value>) -> Value {
    let mut state: Value = serde_json::from_str(UNTYPED).unwrap();
    let map = state.as_object_mut().unwrap();
    match tracker {
        Some(t) => map.insert("source_tracker".into(), t),
        None => map.remove("source_tracker"),
    };
    state
}

#[test]
fn a_state_with_a_saved_tracker_loads_and_saves_the_same_json() {
    let old: Value = serde_json::from_str(UNTYPED).unwrap();
    let state: RolloutState = serde_json::from_value(old.clone()).unwrap();
    let tracker = state.source_tracker.as_ref().expect("the saved tracker is read");
    assert_eq!(tracker.resets("http://127.0.0.1:18991"), 0);
    assert_eq!(tracker.endpoint_count(), 1);
    assert!(tracker.key_count() > 0, "its series are read");
    let mut without = old.clone();
    without.as_object_mut().unwrap().remove("source_tracker");
    assert_eq!(serde_json::to_value(&state).unwrap(), without);
}

#[test]
fn a_state_saved_before_any_read_loads_with_no_tracker() {
    for old in [with_tracker(Some(Value::Null)), with_tracker(None)] {
        let state: RolloutState = serde_json::from_value(old).unwrap();
        assert!(state.source_tracker.is_none());
        assert!(serde_json::to_value(&state).unwrap().get("source_tracker").is_none());
    }
}

#[test]
fn an_unreadable_tracker_is_dropped_not_the_state() {
    // As when it was free JSON: the controller ignored a tracker it could not read.
    let state: RolloutState = serde_json::from_value(with_tracker(Some(json!({"endpoints": 5})))).unwrap();
    assert!(state.source_tracker.is_none());
    assert_eq!(state.seq, 10);
}
