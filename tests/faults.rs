//! Fault tests (placeholder while being written).
