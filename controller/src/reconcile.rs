//! The Kubernetes reconciler: one rollout per `CanaryRollout` resource.
//!
//! ```text
//!  watch CanaryRollout ─► reconcile(ns/name)
//!     open <root>/<ns>/<name>  (the state directory: authoritative, on the Deployment's PersistentVolume)
//!     annotation command with a new id? ─► Controller::command (once per id)
//!     running? ─► Controller::tick (read stats, decide, push to the sinks)
//!     patch …/canaryrollouts/<name>/status  (a mirror of the state directory)
//!     requeue after spec.interval   (error: back off 5 s, 10 s, … 5 min)
//! ```
//!
//! State design: each rollout keeps the state directory the CLI and
//! `canary run` use (state, decision log, reports), under
//! `<root>/<namespace>/<name>`; the status subresource is rewritten from it
//! on every reconcile, so a lost status write is repaired by the next one
//! and nothing depends on the API server holding history. The controller
//! runs as a single-replica Deployment with `strategy: Recreate` and a
//! ReadWriteOnce volume: two replicas never drive one rollout. No finalizer:
//! deleting the resource stops the rollout where it is (the state
//! directory stays for the record).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller as Runtime};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::control::{ControlError, Controller};
use crate::crd::{self, CanaryRollout, CanaryRolloutStatus, CommandStatus};
use crate::rollout::Phase;
use crate::sink::configmap::FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the resource has no namespace")]
    NoNamespace,
    #[error("rollout {0}: {1}")]
    Control(String, #[source] ControlError),
    #[error("rollout {0}: the reconcile pass panicked: {1}")]
    Panicked(String, String),
    #[error("cannot write the status of {0}: {1}")]
    Status(String, #[source] kube::Error),
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    /// Parent of the per-rollout state directories.
    pub root: PathBuf,
    /// Consecutive failures per resource, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: kube::Client, root: PathBuf) -> Arc<Context> {
        Arc::new(Context { client, root, failures: Mutex::new(HashMap::new()) })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The wait after the n-th consecutive failure: 5 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// Watches every namespace's CanaryRollouts until a signal arrives.
pub async fn run(client: kube::Client, root: PathBuf) -> anyhow::Result<()> {
    let api: Api<CanaryRollout> = Api::all(client.clone());
    Runtime::new(api, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, Context::new(client, root))
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!("reconciled {obj}"),
                Err(e) => tracing::warn!("reconcile: {e}"),
            }
        })
        .await;
    Ok(())
}

pub fn error_policy(obj: Arc<CanaryRollout>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let n = {
        let mut failures = ctx.failures();
        let n = failures.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let wait = backoff(n);
    tracing::error!("{key}: {error}; retrying in {wait:?} (failure {n})");
    Action::requeue(wait)
}

/// One pass over one resource; see the module's diagram.
pub async fn reconcile(obj: Arc<CanaryRollout>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = obj.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = obj.name_any();
    let key = format!("{namespace}/{name}");
    let generation = obj.meta().generation;
    let previous = obj.status.clone().unwrap_or_default();
    let api: Api<CanaryRollout> = Api::namespaced(ctx.client.clone(), &namespace);
    let write = |status: CanaryRolloutStatus| {
        let (api, name, key) = (api.clone(), name.clone(), key.clone());
        async move { patch_status(&api, &name, &status).await.map_err(|e| ReconcileError::Status(key, e)) }
    };

    // A spec the rollout cannot run with waits for an edit: reported in the
    // status, no retry loop.
    if let Err(e) = obj.spec.validate() {
        write(CanaryRolloutStatus { message: Some(e.to_string()), observed_generation: generation, ..previous })
            .await?;
        return Ok(Action::await_change());
    }
    let pass = Pass {
        dir: ctx.root.join(&namespace).join(&name),
        spec: obj.spec.clone(),
        accept: obj.annotations().get(crd::ACCEPT_SPEC_CHANGE).is_some_and(|v| v == "true"),
        client: ctx.client.clone(),
        command: crd::pending_command(obj.annotations(), previous.last_command.as_ref().map(|c| c.id.as_str())),
        last_command: previous.last_command.clone(),
        generation,
    };
    // The state directory's lock is a blocking call and an evaluation holds
    // it throughout: a blocking thread drives the pass.
    let handle = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || handle.block_on(pass.run()))
        .await
        .map_err(|e| ReconcileError::Panicked(key.clone(), e.to_string()))?;
    match outcome {
        Err(e @ ControlError::SpecChanged(_)) => {
            let message =
                format!("{e} (for this resource: annotate {}=true to record the change)", crd::ACCEPT_SPEC_CHANGE);
            write(CanaryRolloutStatus { message: Some(message), ..previous }).await?;
            Ok(Action::await_change())
        }
        Err(e) => Err(ReconcileError::Control(key, e)),
        Ok(done) => {
            if let Some(m) = &done.status.message {
                tracing::warn!("{key}: {m}");
            }
            write(done.status).await?;
            ctx.failures().remove(&key);
            Ok(done.next)
        }
    }
}

/// What one reconcile does with the state directory.
struct Pass {
    dir: PathBuf,
    spec: crate::spec::RolloutSpec,
    accept: bool,
    client: kube::Client,
    command: Option<crd::PendingCommand>,
    last_command: Option<CommandStatus>,
    generation: Option<i64>,
}

struct Done {
    status: CanaryRolloutStatus,
    next: Action,
}

impl Pass {
    async fn run(self) -> Result<Done, ControlError> {
        let mut c = Controller::open(&self.dir, Some(self.spec), self.accept)?.with_kube(self.client);
        let mut last_command = self.last_command;
        if let Some(p) = &self.command {
            last_command = Some(apply_command(&mut c, p).await?);
        }
        let mut source = c.source();
        let message = c.tick(&mut source).await.err().map(|e| format!("evaluation failed, state unchanged: {e}"));
        let state = c.state()?;
        let missing = c.missing_sinks();
        let settled = missing.is_empty() && message.is_none();
        // Nothing moves when ended or paused; an edit or a command annotation wakes it.
        let next = if settled && (state.phase.is_final() || state.phase == Phase::Paused) {
            Action::await_change()
        } else {
            Action::requeue(c.interval())
        };
        let status = crd::status_of(&c.status()?, &state, missing, last_command, message, self.generation);
        Ok(Done { status, next })
    }
}

/// Applies an annotation command once: if the decision log already holds
/// its id (applied before a restart, status not yet written), it is only
/// recorded.
async fn apply_command(c: &mut Controller, p: &crd::PendingCommand) -> Result<CommandStatus, ControlError> {
    let record = |command: &str, result: String| CommandStatus { id: p.id.clone(), command: command.into(), result };
    let command = match p.command {
        Ok(command) => command,
        Err(ref why) => return Ok(record("", format!("refused: {why}"))),
    };
    let name = crd::command_name(command);
    let state = c.state()?;
    let logged = state.last_decision.iter().any(|d| d.manual && crd::carries_id(&d.reasons, &p.id))
        || c.store.decisions()?.iter().rev().take(1000).any(|d| d.manual && crd::carries_id(&d.reasons, &p.id));
    if logged {
        return Ok(record(name, "applied (found in the decision log)".into()));
    }
    match c.command(command, &crd::reason_with_id(&p.reason, &p.id)).await {
        Ok(d) => {
            Ok(record(name, format!("applied: decision #{} {name} → {} ({})", d.seq, d.to.stage_name, d.to.weight)))
        }
        Err(ControlError::Refused(r)) => Ok(record(name, format!("refused: {r}"))),
        Err(e) => Err(e),
    }
}

/// Writes the whole status through the status subresource (a merge patch:
/// absent optional fields are written as null, so stale values go).
pub async fn patch_status(
    api: &Api<CanaryRollout>,
    name: &str,
    status: &CanaryRolloutStatus,
) -> Result<(), kube::Error> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch_status(name, &params, &Patch::Merge(serde_json::json!({ "status": status }))).await?;
    Ok(())
}
