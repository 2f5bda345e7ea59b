//! Where a new filter configuration goes: one or more sinks, each retried
//! with backoff, all pushed at once.
//!
//! ```text
//!                                   ┌─► file        DIR/canary.json ── Envoy watched_directory
//!  FilterConfig ─validate─► Sinks ──┼─► configmap   data["canary.json"] ── kubelet ── sidecar's watched_directory
//!   (the filter's own rules)        └─► wasmplugin  spec.pluginConfig ── istiod ── ECDS to every sidecar
//!                          each: attempt, wait backoff, ×2 … (bounded), concurrently
//! ```
//!
//! What counts as delivered depends on the change ([`Need`]): a rollback
//! succeeds when any sink took it (traffic leaves the challenger wherever a
//! path works; the others are retried later), every other change needs all
//! of them (a stage must not start on half the fleet). Each sink remembers
//! the epoch it last took, so a retry only writes where it is missing.

pub mod configmap;
pub mod file;
pub mod wasmplugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use canary_core::{ConfigError, FilterConfig};
use serde_json::json;

pub use configmap::ConfigMapSink;
pub use file::EcdsFileSink;
pub use wasmplugin::WasmPluginSink;

use crate::http::metrics::Metrics;
use canary_judge::spec::{RetrySpec, RolloutSpec, SinkSpec};

/// The filter's name in Envoy's `http_filters` and in the ECDS resource.
pub const FILTER_NAME: &str = "canary";
pub use canary_judge::ECDS_FILE_NAME;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("refusing to push an invalid filter configuration: {0}")]
    Invalid(#[from] ConfigError),
    #[error("cannot write the ECDS file in {dir}: {source}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {bytes} bytes is over the {limit}-byte limit; shorten the configuration")]
    TooLarge { what: String, bytes: usize, limit: usize },
    #[error("{what} does not exist: {hint}")]
    NotFound { what: String, hint: &'static str },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("no Kubernetes client (in-cluster service account or KUBECONFIG) for the Kubernetes sinks: {0}")]
    NoClient(#[source] Box<kube::Error>),
    #[error("{what}: still conflicting after {attempts} fresh reads (another writer keeps changing it)")]
    Conflict { what: String, attempts: u32 },
    #[error("not delivered ({needed}): {}", failures.join("; "))]
    Undelivered { needed: &'static str, failures: Vec<String> },
}

impl SinkError {
    /// Errors no retry can cure.
    fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Invalid(_) | SinkError::TooLarge { .. })
    }
}

/// The `version_info` Envoy reports for a configuration
/// (`extension_config_discovery.http_filter.canary.version_text`).
pub fn version_info(config: &FilterConfig) -> String {
    format!("{}/{}", config.rollout, config.epoch)
}

/// The ECDS DiscoveryResponse carrying a plugin configuration string, with
/// the filter at `wasm` (its path as Envoy sees it).
pub fn ecds_resource(wasm: &Path, version_info: &str, plugin_config: &str) -> serde_json::Value {
    json!({
        "version_info": version_info,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": FILTER_NAME,
                    "vm_config": {
                        "vm_id": FILTER_NAME,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": wasm } }
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_config
                    }
                }
            }
        }]
    })
}

/// What a sink holds, next to the configuration the rollout's state wants
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Exactly that configuration.
    Wanted,
    /// A later epoch of the same rollout: another process of ours (a CLI
    /// command holding the state lock) wrote it and is about to save it.
    /// Never overwritten: that could undo a rollback.
    Ahead,
    /// Anything else (an older epoch, another rollout, a hand edit, nothing):
    /// someone changed it behind the controller's back (a GitOps sync, a
    /// manual edit), or it was never written.
    Other,
}

impl Held {
    /// `holding`: the rollout and epoch the sink's content names, if it
    /// names any; `equal`: the content is byte for byte what `config` gives.
    pub fn classify(holding: Option<(&str, u64)>, equal: bool, config: &FilterConfig) -> Held {
        match holding {
            _ if equal => Held::Wanted,
            Some((rollout, epoch)) if rollout == config.rollout && epoch > config.epoch => Held::Ahead,
            _ => Held::Other,
        }
    }
}

/// The rollout and epoch an ECDS file's text names (its `version_info`).
pub fn ecds_holding(body: &str) -> Option<(String, u64)> {
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    let (rollout, epoch) = doc.get("version_info")?.as_str()?.rsplit_once('/')?;
    Some((rollout.to_string(), epoch.parse().ok()?))
}

/// [`Held`] for an ECDS file's text (the file and ConfigMap sinks).
fn classify_ecds(current: Option<&str>, wanted: &str, config: &FilterConfig) -> Held {
    let holding = current.and_then(ecds_holding);
    Held::classify(holding.as_ref().map(|(r, e)| (r.as_str(), *e)), current == Some(wanted), config)
}

/// The ECDS file's text for `config`: what the file and ConfigMap sinks write.
pub fn render_body(wasm: &Path, config: &FilterConfig) -> String {
    serde_json::to_string_pretty(&ecds_resource(wasm, &version_info(config), &config.to_json())).unwrap_or_default()
}

/// A Kubernetes client, made on first use (from the in-cluster service
/// account or KUBECONFIG), so that specs without Kubernetes sinks never
/// need one.
#[derive(Clone, Default)]
pub struct KubeClient(Arc<tokio::sync::OnceCell<kube::Client>>);

impl KubeClient {
    pub fn new(client: kube::Client) -> KubeClient {
        KubeClient(Arc::new(tokio::sync::OnceCell::new_with(Some(client))))
    }

    pub async fn get(&self) -> Result<kube::Client, SinkError> {
        self.0
            .get_or_try_init(|| async { kube::Client::try_default().await })
            .await
            .cloned()
            .map_err(|e| SinkError::NoClient(Box::new(e)))
    }
}

/// One place a configuration is written.
#[derive(Debug, Clone)]
pub enum Sink {
    File(EcdsFileSink),
    ConfigMap(ConfigMapSink),
    WasmPlugin(WasmPluginSink),
}

impl Sink {
    pub fn from_spec(spec: &SinkSpec, wasm: &Path) -> Sink {
        match spec {
            SinkSpec::File { dir } => Sink::File(EcdsFileSink::new(dir, wasm)),
            SinkSpec::ConfigMap { namespace, name, key } => {
                Sink::ConfigMap(ConfigMapSink::new(namespace, name, key, wasm))
            }
            SinkSpec::WasmPlugin { namespace, name } => Sink::WasmPlugin(WasmPluginSink::new(namespace, name)),
        }
    }

    /// For logs, metrics and alerts: `file /var/run/canary`, `configmap mesh/canary-ecds`, …
    pub fn name(&self) -> String {
        match self {
            Sink::File(s) => format!("file {}", s.dir().display()),
            Sink::ConfigMap(s) => format!("configmap {}", s.id()),
            Sink::WasmPlugin(s) => format!("wasmplugin {}", s.id()),
        }
    }

    /// What the sink holds now, next to `config`.
    async fn held(&self, config: &FilterConfig, kube: &KubeClient) -> Result<Held, SinkError> {
        match self {
            Sink::File(s) => Ok(s.held(config)),
            Sink::ConfigMap(s) => s.held(&kube.get().await?, config).await,
            Sink::WasmPlugin(s) => s.held(&kube.get().await?, config).await,
        }
    }

    async fn push_once(&self, config: &FilterConfig, kube: &KubeClient) -> Result<(), SinkError> {
        match self {
            // A small local write: not worth a blocking-pool hop.
            Sink::File(s) => s.push(config),
            Sink::ConfigMap(s) => s.push(&kube.get().await?, config).await,
            Sink::WasmPlugin(s) => s.push(&kube.get().await?, config).await,
        }
    }
}

/// What a push must achieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Every sink carries the configuration (stage changes).
    All,
    /// At least one does (a rollback: any working path takes traffic away
    /// from the challenger).
    Any,
}

impl Need {
    /// Whether `carrying` sinks out of `total` is enough.
    pub fn met(self, carrying: usize, total: usize) -> bool {
        match self {
            Need::All => carrying == total,
            Need::Any => carrying > 0 || total == 0,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Need::All => "every sink must take a stage change",
            Need::Any => "no sink took the rollback",
        }
    }
}

/// The waits between attempts: `backoff`, doubling, capped at `max_backoff`;
/// `attempts - 1` of them.
pub fn backoff_delays(retry: &RetrySpec) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut next = retry.backoff;
    for _ in 1..retry.attempts.max(1) {
        delays.push(next.min(retry.max_backoff));
        next = next.saturating_mul(2);
    }
    delays
}

/// The sinks of a rollout, with what each last took.
pub struct Sinks {
    sinks: Vec<Sink>,
    retry: RetrySpec,
    kube: KubeClient,
    /// Per sink, the epoch it last took from this process.
    carrying: Vec<Option<u64>>,
    /// Where attempts and drifts are counted (the process').
    metrics: Arc<Metrics>,
}

impl Sinks {
    pub fn from_spec(spec: &RolloutSpec, metrics: Arc<Metrics>) -> Sinks {
        Sinks::new(
            spec.sinks().iter().map(|s| Sink::from_spec(s, &spec.envoy.wasm)).collect(),
            spec.envoy.sink_retry.clone(),
            metrics,
        )
    }

    pub fn new(sinks: Vec<Sink>, retry: RetrySpec, metrics: Arc<Metrics>) -> Sinks {
        let carrying = vec![None; sinks.len()];
        Sinks { sinks, retry, kube: KubeClient::default(), carrying, metrics }
    }

    /// Uses this client for the Kubernetes sinks (the reconciler's, or a test's mock).
    pub fn with_kube(mut self, client: kube::Client) -> Sinks {
        self.kube = KubeClient::new(client);
        self
    }

    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(Sink::name).collect()
    }

    /// Sinks that do not carry `epoch` yet.
    pub fn missing(&self, epoch: u64) -> Vec<String> {
        self.sinks.iter().zip(&self.carrying).filter(|(_, c)| **c != Some(epoch)).map(|(s, _)| s.name()).collect()
    }

    /// Checks the sinks that took `config` from this process still hold it.
    /// Those that hold something else (see [`Held::Other`]) count as missing
    /// it again, so the next push writes it back; their names are returned.
    /// A sink that cannot be read is left as it is (logged).
    pub async fn verify(&mut self, config: &FilterConfig) -> Vec<String> {
        let carrying: Vec<usize> = (0..self.sinks.len()).filter(|&i| self.carrying[i] == Some(config.epoch)).collect();
        let kube = &self.kube;
        let sinks = &self.sinks;
        let checks = carrying.iter().map(|&i| async move { (i, sinks[i].held(config, kube).await) });
        let mut drifted = Vec::new();
        for (i, held) in futures::future::join_all(checks).await {
            match held {
                Ok(Held::Wanted | Held::Ahead) => {}
                Ok(Held::Other) => {
                    self.metrics.sink_drift(&self.sinks[i].name());
                    self.carrying[i] = None;
                    drifted.push(self.sinks[i].name());
                }
                Err(e) => tracing::warn!(sink = %self.sinks[i].name(), "cannot check what the sink holds: {e}"),
            }
        }
        drifted
    }

    /// Pushes `config` to every sink that does not carry its epoch yet,
    /// concurrently, each retried with backoff. `Ok` with the names of the
    /// sinks written when `need` is met, else `Undelivered` naming each
    /// failure. An invalid configuration is written nowhere.
    pub async fn push(&mut self, config: &FilterConfig, need: Need) -> Result<Vec<String>, SinkError> {
        config.validate()?;
        let pending: Vec<usize> = (0..self.sinks.len()).filter(|&i| self.carrying[i] != Some(config.epoch)).collect();
        let delays = backoff_delays(&self.retry);
        let attempts = pending.iter().map(|&i| {
            let sink = &self.sinks[i];
            let kube = &self.kube;
            let delays = &delays;
            let metrics = &*self.metrics;
            async move { (i, push_with_retry(sink, config, kube, delays, metrics).await) }
        });
        let results = futures::future::join_all(attempts).await;
        let mut written = Vec::new();
        let mut failures = Vec::new();
        for (i, result) in results {
            match result {
                Ok(()) => {
                    self.carrying[i] = Some(config.epoch);
                    written.push(self.sinks[i].name());
                }
                Err(e) => {
                    self.carrying[i] = None;
                    failures.push(format!("{}: {e}", self.sinks[i].name()));
                }
            }
        }
        let carrying = self.carrying.iter().filter(|c| **c == Some(config.epoch)).count();
        if need.met(carrying, self.sinks.len()) {
            Ok(written)
        } else {
            Err(SinkError::Undelivered { needed: need.describe(), failures })
        }
    }
}

/// One sink: attempts until one succeeds or the delays run out. Every
/// failed attempt is logged and counted.
async fn push_with_retry(
    sink: &Sink,
    config: &FilterConfig,
    kube: &KubeClient,
    delays: &[Duration],
    metrics: &Metrics,
) -> Result<(), SinkError> {
    let name = sink.name();
    let mut attempt = 0;
    loop {
        let result = sink.push_once(config, kube).await;
        metrics.sink_attempt(&name, result.is_ok());
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(delay) = delays.get(attempt).filter(|_| !e.is_permanent()) else {
            tracing::error!(sink = %name, epoch = config.epoch, "push failed after {} attempts: {e}", attempt + 1);
            return Err(e);
        };
        tracing::warn!(sink = %name, epoch = config.epoch, "push attempt {} failed, retrying in {delay:?}: {e}", attempt + 1);
        tokio::time::sleep(*delay).await;
        attempt += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;

    use super::*;

    pub(crate) fn config(epoch: u64, weight: u64) -> FilterConfig {
        FilterConfig::from_json(
            format!(
                r#"{{"rollout":"r","epoch":{epoch},"stage":"s","salt":"x","champion":"a","challenger":"b","challenger_weight_bp":{weight}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn quick() -> RetrySpec {
        RetrySpec { attempts: 3, backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(2) }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_is_bounded() {
        let r = RetrySpec { attempts: 5, backoff: Duration::from_millis(100), max_backoff: Duration::from_millis(300) };
        let ms: Vec<u128> = backoff_delays(&r).iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 300, 300]);
        assert!(backoff_delays(&RetrySpec { attempts: 1, ..r }).is_empty());
    }

    #[test]
    fn a_rollback_needs_one_sink_and_a_stage_change_needs_all() {
        let cases =
            [(Need::All, 2, 2, true), (Need::All, 1, 2, false), (Need::Any, 1, 2, true), (Need::Any, 0, 2, false)];
        for (need, carrying, total, met) in cases {
            assert_eq!(need.met(carrying, total), met, "{need:?} {carrying}/{total}");
        }
    }

    /// A directory nobody can write, even root: its parent is a regular file.
    fn broken_dir(tmp: &Path) -> PathBuf {
        fs::write(tmp.join("not-a-dir"), "x").unwrap();
        tmp.join("not-a-dir/ecds")
    }

    #[tokio::test]
    async fn a_rollback_reaches_the_working_sink_and_the_broken_one_is_retried_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good");
        fs::create_dir(&good).unwrap();
        let bad = broken_dir(tmp.path());
        let mut sinks = Sinks::new(
            vec![Sink::File(EcdsFileSink::new(&bad, "/x.wasm")), Sink::File(EcdsFileSink::new(&good, "/x.wasm"))],
            quick(),
            Arc::default(),
        );
        let written = sinks.push(&config(3, 0), Need::Any).await.unwrap();
        assert_eq!(written, [format!("file {}", good.display())]);
        assert!(good.join(ECDS_FILE_NAME).exists());
        assert_eq!(sinks.missing(3), [format!("file {}", bad.display())]);
        // A stage change needs both: refused, naming the broken sink.
        let e = sinks.push(&config(4, 500), Need::All).await.unwrap_err();
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        // Once the path works again, only the sink that missed it is written.
        fs::remove_file(tmp.path().join("not-a-dir")).unwrap();
        fs::create_dir_all(&bad).unwrap();
        fs::remove_file(good.join(ECDS_FILE_NAME)).unwrap();
        let written = sinks.push(&config(4, 500), Need::All).await.unwrap();
        assert_eq!(written, [format!("file {}", bad.display())], "the good sink already carried epoch 4");
    }

    #[test]
    fn what_a_sink_holds_is_judged_by_content_then_by_rollout_and_epoch() {
        let c = config(4, 500);
        let body = render_body(Path::new("/x.wasm"), &c);
        assert_eq!(classify_ecds(Some(&body), &body, &c), Held::Wanted);
        let other = |epoch, weight| render_body(Path::new("/x.wasm"), &config(epoch, weight));
        assert_eq!(classify_ecds(Some(&other(5, 0)), &body, &c), Held::Ahead, "a rollback of ours, not saved yet");
        assert_eq!(classify_ecds(Some(&other(3, 100)), &body, &c), Held::Other, "GitOps put an old one back");
        assert_eq!(classify_ecds(Some(&other(4, 9000)), &body, &c), Held::Other, "edited by hand");
        assert_eq!(classify_ecds(Some("garbage"), &body, &c), Held::Other);
        assert_eq!(classify_ecds(None, &body, &c), Held::Other);
        let mut foreign = config(9, 0);
        foreign.rollout = "another".into();
        let foreign = render_body(Path::new("/x.wasm"), &foreign);
        assert_eq!(classify_ecds(Some(&foreign), &body, &c), Held::Other);
        assert_eq!(ecds_holding(&body), Some(("r".to_string(), 4)));
    }

    #[tokio::test]
    async fn a_sink_changed_behind_the_controllers_back_is_found_and_written_back() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = EcdsFileSink::new(tmp.path(), "/x.wasm");
        let mut sinks = Sinks::new(vec![Sink::File(sink.clone())], quick(), Arc::default());
        sinks.push(&config(4, 500), Need::All).await.unwrap();
        assert!(sinks.verify(&config(4, 500)).await.is_empty());
        // A later epoch of ours (a CLI rollback not saved yet) is left alone.
        sink.push(&config(5, 0)).unwrap();
        assert!(sinks.verify(&config(4, 500)).await.is_empty());
        assert_eq!(sink.held(&config(4, 500)), Held::Ahead);
        // An older one (a GitOps sync) is drift: missing again, written back.
        sink.push(&config(2, 100)).unwrap();
        assert_eq!(sinks.verify(&config(4, 500)).await, [format!("file {}", tmp.path().display())]);
        assert_eq!(sinks.missing(4).len(), 1);
        sinks.push(&config(4, 500), Need::All).await.unwrap();
        assert_eq!(sink.held(&config(4, 500)), Held::Wanted);
    }

    #[tokio::test]
    async fn an_invalid_configuration_is_written_nowhere() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sinks = Sinks::new(vec![Sink::File(EcdsFileSink::new(tmp.path(), "/x.wasm"))], quick(), Arc::default());
        let mut bad = config(1, 100);
        bad.challenger = bad.champion.clone();
        assert!(matches!(sinks.push(&bad, Need::Any).await, Err(SinkError::Invalid(_))));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
