//! canary-controller: the controller's I/O around the pure decisions of
//! [`canary_judge`]. The `canary` binary is [`cli`].
//!
//! ```text
//!  cli ──► control (the loop: read, decide, push, save, alert)
//!            │ source/  HTTP reads of Envoy stats (admin API, Prometheus) ──► canary_judge::evidence
//!            │ canary_judge::rollout::step (pure)
//!            │ sink/    the filter configuration out (ECDS file, ConfigMap, Istio WasmPlugin)
//!            │ store/   state directory: state, decision log, report files (atomic writes, lock)
//!            │ alert    webhooks
//!  http/  daemon API, dashboard, Prometheus metrics of the controller itself
//!  k8s/   the CanaryRollout resource and its reconciler (one rollout per resource)
//!  context  the process' metrics and pending alerts, made at start and passed down
//! ```

pub mod alert;
pub mod cli;
pub mod context;
pub mod control;
pub mod http;
pub mod k8s;
pub mod sink;
pub mod source;
pub mod store;
