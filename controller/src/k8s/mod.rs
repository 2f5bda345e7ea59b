//! Kubernetes: the `CanaryRollout` custom resource (its spec is the judge's
//! rollout spec) and the reconciler that runs one rollout per resource.

pub mod crd;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod reconcile;
