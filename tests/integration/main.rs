//! The integration tests: one binary (one link of the controller instead of
//! one per file), one module per concern. Run one with
//! `cargo test -p canary-tests --test integration -- MODULE::`.

mod capture;
mod cluster_counts;
mod configmap_mount;
mod controller;
mod dashboard;
mod demo;
mod docs;
mod envoy_configs;
mod faults;
mod faults_kill;
mod hostile;
mod images;
mod incident;
mod k8s_schemas;
mod load_change;
mod local_replies;
mod low_traffic;
mod many_envoys;
mod predictions;
mod prometheus;
mod readme_steps;
mod reconfigure;
mod reports;
mod segments;
mod sink_failure;
mod source;
mod split;
