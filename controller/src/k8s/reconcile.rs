//! The Kubernetes reconciler: one rollout per `CanaryRollout` resource.
//!
//! ```text
//!  watch CanaryRollout (untyped) ─► decode this one object
//!     cannot? ─► status {phase: Invalid, message: the field} + a Warning Event; wait for an edit
//!     reconcile(ns/name)
//!     open <root>/<ns>/<name>  (the state directory: authoritative, on the Deployment's PersistentVolume)
//!     annotation command with a new id? ─► Controller::command (once per id)
//!     an interval since the last evaluation? ─► Controller::tick (read stats, decide, push to the sinks)
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
//!
//! Why untyped: the API server accepts objects the controller cannot decode
//! (a CRD older than the controller, `--validate=false`, a value the schema
//! cannot express). A typed watcher decodes each list page as a whole, so one
//! such object would fail the initial list and stop every rollout; watched
//! as `DynamicObject`s, each object is decoded on its own and a bad one is
//! told why in its own status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller as Runtime};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::context::ProcessContext;
use crate::control::{ControlError, Controller};
use crate::k8s::crd::{self, CanaryRollout, CanaryRolloutStatus, CommandStatus};
use crate::sink::configmap::FIELD_MANAGER;
use canary_judge::rollout::Phase;

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

/// `status.phase` of a resource the controller cannot decode.
pub const INVALID: &str = "Invalid";

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    /// Parent of the per-rollout state directories.
    pub root: PathBuf,
    /// Consecutive failures per resource, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When each resource was last evaluated: a reconcile triggered by
    /// anything else (the watch event of our own status write, an
    /// annotation) evaluates only once an interval has passed.
    evaluated: Mutex<HashMap<String, Instant>>,
    /// Each resource's controller, kept between reconciles: it knows which
    /// sinks carry which configuration.
    controllers: Mutex<HashMap<String, Controller>>,
    /// Publishes the Events about resources that cannot be decoded.
    recorder: Recorder,
    /// The operator process' metrics (served at its `/metrics`) and pending
    /// alerts, shared by every rollout's controller.
    process: ProcessContext,
}

impl Context {
    pub fn new(client: kube::Client, root: PathBuf, process: ProcessContext) -> Arc<Context> {
        Arc::new(Context {
            process,
            client: client.clone(),
            root,
            failures: Mutex::new(HashMap::new()),
            evaluated: Mutex::new(HashMap::new()),
            controllers: Mutex::new(HashMap::new()),
            recorder: Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER)),
        })
    }

    fn controllers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Controller>> {
        self.controllers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evaluated(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.evaluated.lock().unwrap_or_else(|e| e.into_inner())
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
pub async fn run(client: kube::Client, root: PathBuf, process: ProcessContext) -> anyhow::Result<()> {
    run_until(client, root, process, std::future::pending::<()>()).await;
    Ok(())
}

/// The CanaryRollout resource, addressed without its types.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<CanaryRollout>(&())
}

/// Watches every namespace's CanaryRollouts until `shutdown` completes (or a
/// signal arrives).
pub async fn run_until<F>(client: kube::Client, root: PathBuf, process: ProcessContext, shutdown: F)
where
    F: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let ar = api_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    Runtime::new_with(api, watcher::Config::default(), ar)
        .shutdown_on_signal()
        .graceful_shutdown_on(shutdown)
        .run(reconcile_object, error_policy, Context::new(client, root, process))
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!("reconciled {obj}"),
                Err(e) => tracing::warn!("reconcile: {e}"),
            }
        })
        .await;
}

pub fn error_policy(obj: Arc<DynamicObject>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
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

/// The typed resource, or a message naming the field that cannot be read,
/// e.g. ``spec.interval: time unit needed, for example 60sec or 60ms``.
pub fn decode(obj: &DynamicObject) -> Result<CanaryRollout, String> {
    let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    // List items may come without their type; the typed resource wants it.
    let ar = api_resource();
    value["apiVersion"] = ar.api_version.into();
    value["kind"] = ar.kind.into();
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("cannot read `{path}`: {}", e.into_inner())
    })
}

/// Decodes one resource on its own: a resource the controller cannot read
/// is marked `Invalid` and waits for an edit; every other one is reconciled.
pub async fn reconcile_object(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    match decode(&obj) {
        Ok(typed) => reconcile(Arc::new(typed), ctx).await,
        Err(message) => mark_invalid(&obj, &message, &ctx).await,
    }
}

/// `status: {phase: Invalid, message}` through an untyped status patch (the
/// typed one would decode the answer, the same undecodable object), and a
/// Warning Event. Idempotent: the watch event of its own write changes
/// nothing.
async fn mark_invalid(obj: &DynamicObject, message: &str, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = obj.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = obj.name_any();
    let key = format!("{namespace}/{name}");
    let generation = obj.meta().generation;
    let status = obj.data.get("status");
    let field = |f: &str| status.and_then(|s| s.get(f));
    let told = field("phase").and_then(|v| v.as_str()) == Some(INVALID)
        && field("message").and_then(|v| v.as_str()) == Some(message)
        && field("observedGeneration").and_then(|v| v.as_i64()) == generation;
    if told {
        return Ok(Action::await_change());
    }
    tracing::warn!("{key}: {message}");
    let ar = api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &ar);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let patch =
        serde_json::json!({ "status": { "phase": INVALID, "message": message, "observedGeneration": generation } });
    api.patch_status(&name, &params, &Patch::Merge(patch)).await.map_err(|e| ReconcileError::Status(key.clone(), e))?;
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidSpec".into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Decode".into(),
        secondary: None,
    };
    // The status carries the message; a missing Event grant only costs the Event.
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&ar)).await {
        tracing::warn!("{key}: cannot publish the Event: {e}");
    }
    Ok(Action::await_change())
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
    let since = ctx.evaluated().get(&key).map(Instant::elapsed);
    let interval = obj.spec.interval;
    let pass = Pass {
        cached: ctx.controllers().remove(&key),
        evaluate: since.is_none_or(|e| e >= interval),
        wait: since.map_or(interval, |e| interval.saturating_sub(e).max(Duration::from_millis(100))),
        dir: ctx.root.join(&namespace).join(&name),
        spec: obj.spec.clone(),
        accept: obj.annotations().get(crd::ACCEPT_SPEC_CHANGE).is_some_and(|v| v == "true"),
        client: ctx.client.clone(),
        process: ctx.process.clone(),
        command: crd::pending_command(obj.annotations(), previous.last_command.as_ref().map(|c| c.id.as_str())),
        last_command: previous.last_command.clone(),
        generation,
    };
    // The state directory's lock is a blocking call and an evaluation holds
    // it throughout: a blocking thread drives the pass.
    let handle = tokio::runtime::Handle::current();
    let (outcome, controller) = tokio::task::spawn_blocking(move || handle.block_on(pass.run()))
        .await
        .map_err(|e| ReconcileError::Panicked(key.clone(), e.to_string()))?;
    if let Some(c) = controller {
        ctx.controllers().insert(key.clone(), c);
    }
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
            if done.evaluated {
                ctx.evaluated().insert(key.clone(), Instant::now());
            }
            write(done.status).await?;
            ctx.failures().remove(&key);
            Ok(done.next)
        }
    }
}

/// What one reconcile does with the state directory.
struct Pass {
    /// The controller of the previous reconcile, if its spec is unchanged.
    cached: Option<Controller>,
    /// Whether an interval has passed since the last evaluation.
    evaluate: bool,
    /// Otherwise, the time left until the next one.
    wait: Duration,
    dir: PathBuf,
    spec: canary_judge::spec::RolloutSpec,
    accept: bool,
    client: kube::Client,
    process: ProcessContext,
    command: Option<crd::PendingCommand>,
    last_command: Option<CommandStatus>,
    generation: Option<i64>,
}

struct Done {
    status: CanaryRolloutStatus,
    next: Action,
    evaluated: bool,
}

impl Pass {
    /// The outcome, and the controller to keep for the next reconcile.
    async fn run(mut self) -> (Result<Done, ControlError>, Option<Controller>) {
        let mut c = match self.cached.take() {
            Some(c) if c.spec == self.spec && !self.accept => c,
            _ => match Controller::open(&self.dir, Some(self.spec.clone()), self.accept, &self.process) {
                Ok(c) => c.with_kube(self.client.clone()),
                Err(e) => return (Err(e), None),
            },
        };
        let done = self.drive(&mut c).await;
        (done, Some(c))
    }

    async fn drive(self, c: &mut Controller) -> Result<Done, ControlError> {
        let mut last_command = self.last_command;
        if let Some(p) = &self.command {
            last_command = Some(apply_command(c, p).await?);
        }
        let mut message = None;
        let wait = if self.evaluate {
            let mut source = c.source();
            message = c.tick(&mut source).await.err().map(|e| format!("evaluation failed, state unchanged: {e}"));
            c.interval()
        } else {
            self.wait
        };
        let state = c.state()?;
        let missing = c.missing_sinks();
        let settled = missing.is_empty() && message.is_none();
        // Nothing moves when ended or paused; an edit or a command annotation wakes it.
        let next = if settled && (state.phase.is_final() || state.phase == Phase::Paused) {
            Action::await_change()
        } else {
            Action::requeue(wait)
        };
        let status = crd::status_of(&c.status()?, &state, missing, last_command, message, self.generation);
        Ok(Done { status, next, evaluated: self.evaluate })
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
    let name = command.name();
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::crd::tests::resource;
    use crate::k8s::fixtures::{client, serve, Exchange};

    const STATUS: &str = "/apis/canary.dev/v1alpha1/namespaces/shop/canaryrollouts/recs/status";
    const MERGE: &str = "application/merge-patch+json";

    /// The status patch for the state directory as it is now: what the
    /// reconciler must have written.
    fn expected(root: &std::path::Path, last_command: Option<CommandStatus>) -> serde_json::Value {
        let store = crate::store::Store::open(root.join("shop/recs")).unwrap();
        let spec = store.load_spec().unwrap().unwrap();
        let state = store.load_state().unwrap().unwrap();
        let s = crate::control::status(&store, &spec).unwrap();
        json!({ "status": crd::status_of(&s, &state, vec![], last_command, None, Some(3)) })
    }

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let ecds = tmp.path().join("ecds");
        std::fs::create_dir(&ecds).unwrap();
        (tmp, ecds)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconcile_runs_one_evaluation_and_writes_the_status_subresource() {
        let (tmp, ecds) = setup();
        let root = tmp.path().join("root");
        let obj = Arc::new(resource(&ecds, json!({})));
        let (client, handle) = client();
        // The body is checked against the state directory afterwards.
        let mut patch = Exchange::patch(STATUS, MERGE, json!(null), 200, serde_json::to_value(&*obj).unwrap());
        patch.body = None;
        let api = serve(handle, vec![patch]);
        let action = reconcile(obj, Context::new(client, root.clone(), ProcessContext::default())).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(30)), "requeued at the spec's interval");
        let seen = api.await.unwrap();
        assert_eq!(seen[0].path, STATUS);
        assert_eq!(seen[0].body, expected(&root, None));
        let status = &seen[0].body["status"];
        assert_eq!((status["phase"].as_str(), status["weight"].as_str()), (Some("running"), Some("5%")));
        // The Envoy admin is down: the evaluation holds and says so.
        assert_eq!(status["lastDecision"]["action"], "hold");
        // The file sink got the stage's configuration.
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(ecds.join("canary.json")).unwrap()).unwrap();
        assert_eq!(doc["version_info"], "recs-v2/1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_event_of_its_own_status_write_does_not_evaluate_again() {
        let (tmp, ecds) = setup();
        let root = tmp.path().join("root");
        let obj = resource(&ecds, json!({}));
        let (client, handle) = client();
        let answer = serde_json::to_value(&obj).unwrap();
        let patches = (0..2)
            .map(|_| Exchange { body: None, ..Exchange::patch(STATUS, MERGE, json!(null), 200, answer.clone()) })
            .collect();
        let api = serve(handle, patches);
        let ctx = Context::new(client, root.clone(), ProcessContext::default());
        reconcile(Arc::new(obj.clone()), ctx.clone()).await.unwrap();
        let action = reconcile(Arc::new(obj), ctx).await.unwrap();
        let store = crate::store::Store::open(root.join("shop/recs")).unwrap();
        assert_eq!(store.decisions().unwrap().len(), 1, "one evaluation per interval");
        let seen = api.await.unwrap();
        assert_eq!(seen[0].body, seen[1].body, "the same status again: a no-op for the API server");
        // Requeued for what is left of the 30 s interval.
        let left = match action {
            a if a == Action::requeue(Duration::from_secs(30)) => panic!("requeued a whole interval again"),
            a => a,
        };
        assert_ne!(left, Action::await_change());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_annotation_command_is_applied_once() {
        let (tmp, ecds) = setup();
        let root = tmp.path().join("root");
        let ann = json!({"canary.dev/command": "advance", "canary.dev/command-id": "x7", "canary.dev/command-reason": "looks fine"});
        let obj = resource(&ecds, ann);
        let (c, handle) = client();
        let mut patches = vec![];
        for _ in 0..3 {
            let answer = serde_json::to_value(&obj).unwrap();
            patches.push(Exchange { body: None, ..Exchange::patch(STATUS, MERGE, json!(null), 200, answer) });
        }
        let api = serve(handle, patches);
        let ctx = Context::new(c, root.clone(), ProcessContext::default());

        // First pass: applied.
        reconcile(Arc::new(obj.clone()), ctx.clone()).await.unwrap();
        let store = crate::store::Store::open(root.join("shop/recs")).unwrap();
        let advances = || store.decisions().unwrap().iter().filter(|d| d.manual).count();
        assert_eq!(advances(), 1);
        let state = store.load_state().unwrap().unwrap();
        assert_eq!((state.stage, state.epoch), (1, 2), "advanced once");

        // Second pass with the status the first wrote: nothing new.
        let mut seen_status = obj.clone();
        seen_status.status = Some(crd::CanaryRolloutStatus {
            last_command: Some(CommandStatus { id: "x7".into(), command: "advance".into(), result: "applied".into() }),
            ..Default::default()
        });
        reconcile(Arc::new(seen_status), ctx.clone()).await.unwrap();
        assert_eq!(advances(), 1);

        // Third pass as if the status write had been lost: the decision
        // log knows the id, so it is still not applied twice.
        reconcile(Arc::new(obj), ctx).await.unwrap();
        assert_eq!(advances(), 1);
        assert_eq!(store.load_state().unwrap().unwrap().stage, 1);

        let seen = api.await.unwrap();
        let commands: Vec<&serde_json::Value> = seen.iter().map(|s| &s.body["status"]["lastCommand"]).collect();
        assert_eq!(commands[0]["id"], "x7");
        assert!(commands[0]["result"].as_str().unwrap().starts_with("applied: decision #"), "{}", commands[0]);
        assert_eq!(commands[1]["result"], "applied", "carried over unchanged");
        assert_eq!(commands[2]["result"], "applied (found in the decision log)");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spec_the_rollout_refuses_is_reported_and_waits_for_an_edit() {
        let (tmp, ecds) = setup();
        let mut obj = resource(&ecds, json!({}));
        obj.spec.challenger = obj.spec.champion.clone();
        let refusal = obj.spec.validate().unwrap_err().to_string();
        assert!(refusal.contains("challenger"), "{refusal}");
        let (client, handle) = client();
        let api = serve(
            handle,
            vec![Exchange::patch(
                STATUS,
                MERGE,
                json!({"status": crd::CanaryRolloutStatus {
                    message: Some(refusal.clone()),
                    observed_generation: Some(3),
                    ..Default::default()
                }}),
                200,
                serde_json::to_value(&obj).unwrap(),
            )],
        );
        let ctx = Context::new(client, tmp.path().join("root"), ProcessContext::default());
        let r = reconcile(Arc::new(obj), ctx).await;
        let seen = api.await;
        assert_eq!(r.unwrap(), Action::await_change());
        seen.unwrap();
        assert!(!tmp.path().join("root/shop/recs").exists(), "no rollout starts on a refused spec");
    }

    /// A CanaryRollout as the API server serves it, with its own ECDS
    /// directory; `edit` makes it one the controller cannot decode.
    fn served(tmp: &std::path::Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let ecds = tmp.join(name);
        std::fs::create_dir(&ecds).unwrap();
        let mut v = serde_json::to_value(resource(&ecds, json!({}))).unwrap();
        v["metadata"]["name"] = name.into();
        v["metadata"]["resourceVersion"] = "7".into();
        edit(&mut v["spec"]);
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_undecodable_rollout_is_marked_invalid_and_every_other_one_is_reconciled() {
        use crate::k8s::fixtures::{respond, status_error, Reply};
        let tmp = tempfile::tempdir().unwrap();
        let good = ["a", "b", "c"].map(|n| served(tmp.path(), n, |_| {}));
        // The three values the API server accepted under the old schema.
        let bad_interval = served(tmp.path(), "bad-interval", |s| s["interval"] = "60".into());
        let bad_retry = served(tmp.path(), "bad-retry", |s| s["alerts"] = json!({"retry_attempts": 5_000_000_000u64}));
        let bad_key = served(tmp.path(), "bad-key", |s| s["filter"]["key"] = json!([{"headr": "x-user-id"}]));
        let mut objects: HashMap<String, serde_json::Value> = HashMap::new();
        for o in good.iter().chain([&bad_interval, &bad_retry, &bad_key]) {
            objects.insert(o["metadata"]["name"].as_str().unwrap().into(), o.clone());
        }
        // Listed: a, bad-interval, b, bad-retry. Over the watch: bad-key, c.
        let list = json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "CanaryRolloutList", "metadata": {"resourceVersion": "7"},
            "items": [&good[0], &bad_interval, &good[1], &bad_retry],
        });
        let added = |o: &serde_json::Value| json!({"type": "ADDED", "object": o});
        let mut watched = false;
        let (client, handle) = client();
        let mut seen = respond(handle, move |r| {
            let rollout = r.path.strip_prefix("/apis/canary.dev/v1alpha1/namespaces/shop/canaryrollouts/");
            match (r.method.as_str(), r.path.as_str(), rollout.and_then(|p| p.strip_suffix("/status"))) {
                ("GET", "/apis/canary.dev/v1alpha1/canaryrollouts", _) if r.query.contains("watch=true") => {
                    if std::mem::replace(&mut watched, true) {
                        Reply::Hold
                    } else {
                        Reply::Events(vec![added(&bad_key), added(&good[2])])
                    }
                }
                ("GET", "/apis/canary.dev/v1alpha1/canaryrollouts", _) => Reply::Json(200, list.clone()),
                ("PATCH", _, Some(name)) if objects.contains_key(name) => Reply::Json(200, objects[name].clone()),
                ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", _) => Reply::Json(201, r.body.clone()),
                _ => Reply::Json(404, status_error(404, "NotFound", "not served by this test")),
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let root = tmp.path().join("root");
        let runtime = tokio::spawn(run_until(client, root.clone(), ProcessContext::default(), async move {
            stopped.await.ok();
        }));

        let (mut statuses, mut events) = (HashMap::new(), HashMap::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while statuses.len() < 6 || events.len() < 3 {
            let r = tokio::time::timeout_at(deadline, seen.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("statuses written: {:?}; events: {:?}", statuses.keys(), events.keys()));
            if let Some(name) = r.path.strip_suffix("/status").and_then(|p| p.rsplit('/').next()) {
                statuses.insert(name.to_string(), r.body["status"].clone());
            } else if r.method == http::Method::POST {
                let regarding = r.body["regarding"]["name"].as_str().unwrap().to_string();
                events.insert(regarding, r.body.clone());
            }
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), runtime).await.unwrap().unwrap();

        for name in ["a", "b", "c"] {
            assert_eq!(statuses[name]["phase"], "running", "{name}: {}", statuses[name]);
            assert!(root.join("shop").join(name).join("state.json").is_file(), "{name}: the rollout started");
        }
        for (name, field) in [
            ("bad-interval", "spec.interval"),
            ("bad-retry", "spec.alerts.retry_attempts"),
            ("bad-key", "spec.filter.key"),
        ] {
            let status = &statuses[name];
            assert_eq!(status["phase"], INVALID, "{name}");
            let message = status["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{field}")), "{name}: {message}");
            assert_eq!(status["observedGeneration"], 3);
            let event = &events[name];
            assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
            assert_eq!(event["note"].as_str(), Some(message));
            assert!(!root.join("shop").join(name).exists(), "no rollout starts for {name}");
        }
    }

    #[tokio::test]
    async fn an_invalid_resource_already_told_is_not_patched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut v = served(tmp.path(), "bad", |s| s["interval"] = "60".into());
        let obj: DynamicObject = serde_json::from_value(v.clone()).unwrap();
        let message = decode(&obj).unwrap_err();
        v["status"] = json!({"phase": INVALID, "message": message, "observedGeneration": 3});
        let told: DynamicObject = serde_json::from_value(v).unwrap();
        // The mock expects no request at all.
        let (client, handle) = client();
        let api = serve(handle, vec![]);
        let action =
            reconcile_object(Arc::new(told), Context::new(client, tmp.path().join("root"), ProcessContext::default()))
                .await
                .unwrap();
        assert_eq!(action, Action::await_change());
        assert!(api.await.unwrap().is_empty());
    }

    #[test]
    fn errors_back_off_doubling_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
