//! The ConfigMap sink: the ECDS file (the same text the file sink writes) as
//! one key of a ConfigMap that sidecars mount.
//!
//! ```text
//!  GET configmap ──(key already holds it)──► done
//!        └─► PATCH (merge) {"data": {"canary.json": …}} ──► kubelet refreshes the mount
//!            (atomic `..data` symlink swap) ──► Envoy's watched_directory reloads
//! ```
//! The ConfigMap must exist (the deploy bundle creates it): the controller
//! needs only `get` and `patch` on that one name, never `create`.

use std::path::{Path, PathBuf};

use canary_core::FilterConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{classify_ecds, render_body, Held, SinkError};

/// A ConfigMap's whole size limit (etcd's object limit for ConfigMaps).
pub const CONFIGMAP_LIMIT: usize = 1024 * 1024;

/// The field manager recorded for every write of the controller.
pub const FIELD_MANAGER: &str = "canary-controller";

#[derive(Debug, Clone)]
pub struct ConfigMapSink {
    namespace: String,
    name: String,
    key: String,
    wasm: PathBuf,
}

impl ConfigMapSink {
    /// `wasm` is the filter's path as the sidecar's Envoy sees it.
    pub fn new(namespace: &str, name: &str, key: &str, wasm: &Path) -> ConfigMapSink {
        ConfigMapSink { namespace: namespace.into(), name: name.into(), key: key.into(), wasm: wasm.into() }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The merge patch that sets the key (the other keys stay).
    pub fn patch_body(&self, config: &FilterConfig) -> serde_json::Value {
        json!({ "data": { &self.key: render_body(&self.wasm, config) } })
    }

    fn what(&self) -> String {
        format!("ConfigMap {}", self.id())
    }

    /// The key's current text (`None`: the key is not there).
    async fn current(&self, api: &Api<ConfigMap>) -> Result<Option<String>, SinkError> {
        let kube_err = |e| SinkError::Kube { what: self.what(), source: Box::new(e) };
        let current = api.get_opt(&self.name).await.map_err(kube_err)?.ok_or_else(|| SinkError::NotFound {
            what: self.what(),
            hint: "create it (deploy/sidecar/canary-ecds.yaml has one) in the namespace of the sidecars that mount it",
        })?;
        Ok(current.data.and_then(|mut d| d.remove(&self.key)))
    }

    /// What the key holds now, next to `config`.
    pub async fn held(&self, client: &kube::Client, config: &FilterConfig) -> Result<Held, SinkError> {
        let current = self.current(&Api::namespaced(client.clone(), &self.namespace)).await?;
        Ok(classify_ecds(current.as_deref(), &render_body(&self.wasm, config), config))
    }

    pub async fn push(&self, client: &kube::Client, config: &FilterConfig) -> Result<(), SinkError> {
        let body = render_body(&self.wasm, config);
        if body.len() > CONFIGMAP_LIMIT {
            return Err(SinkError::TooLarge { what: self.what(), bytes: body.len(), limit: CONFIGMAP_LIMIT });
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &self.namespace);
        if self.current(&api).await?.as_ref() == Some(&body) {
            return Ok(());
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch(&self.name, &params, &Patch::Merge(self.patch_body(config)))
            .await
            .map_err(|e| SinkError::Kube { what: self.what(), source: Box::new(e) })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::fixtures::{client, serve, status_error, Exchange};
    use crate::sink::tests::config;

    const PATH: &str = "/api/v1/namespaces/mesh/configmaps/canary-ecds";

    fn configmap(data: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "canary-ecds", "namespace": "mesh", "resourceVersion": "7"}, "data": data})
    }

    #[tokio::test]
    async fn push_patches_the_key_with_the_same_text_the_file_sink_writes() {
        let sink =
            ConfigMapSink::new("mesh", "canary-ecds", "canary.json", Path::new("/etc/canary/canary_filter.wasm"));
        let c = config(4, 500);
        let tmp = tempfile::tempdir().unwrap();
        crate::sink::EcdsFileSink::new(tmp.path(), "/etc/canary/canary_filter.wasm").push(&c).unwrap();
        let file_text = std::fs::read_to_string(tmp.path().join("canary.json")).unwrap();
        let (client, handle) = client();
        let api = serve(
            handle,
            vec![
                Exchange::get(PATH, 200, configmap(json!({"other": "kept", "canary.json": "old"}))),
                Exchange::patch(
                    PATH,
                    "application/merge-patch+json",
                    json!({"data": {"canary.json": file_text}}),
                    200,
                    configmap(json!({"canary.json": "new"})),
                ),
            ],
        );
        sink.push(&client, &c).await.unwrap();
        let seen = api.await.unwrap();
        assert_eq!(seen.len(), 2);
    }

    #[tokio::test]
    async fn an_unchanged_key_is_not_written_and_a_missing_configmap_is_named() {
        let sink = ConfigMapSink::new("mesh", "canary-ecds", "canary.json", Path::new("/x.wasm"));
        let c = config(4, 500);
        let (client, handle) = client();
        let current = configmap(json!({"canary.json": render_body(Path::new("/x.wasm"), &c)}));
        let api = serve(
            handle,
            vec![
                Exchange::get(PATH, 200, current),
                Exchange::get(PATH, 404, status_error(404, "NotFound", "configmaps \"canary-ecds\" not found")),
            ],
        );
        sink.push(&client, &c).await.unwrap();
        let e = sink.push(&client, &c).await.unwrap_err();
        assert!(matches!(e, SinkError::NotFound { .. }) && e.to_string().contains("ConfigMap mesh/canary-ecds"), "{e}");
        // The hint names a file the repository has.
        let text = e.to_string();
        let named = text.split(['(', ' ']).find(|w| w.starts_with("deploy/")).unwrap();
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(named).is_file(), "{text}");
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_over_the_configmap_limit_is_refused_before_any_request() {
        let sink = ConfigMapSink::new("mesh", "canary-ecds", "canary.json", Path::new(&"/w".repeat(CONFIGMAP_LIMIT)));
        let (client, _handle) = client();
        let e = sink.push(&client, &config(1, 100)).await.unwrap_err();
        assert!(matches!(e, SinkError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn held_reads_the_key_back_and_judges_it() {
        let sink = ConfigMapSink::new("mesh", "canary-ecds", "canary.json", Path::new("/x.wasm"));
        let c = config(4, 500);
        let text = |c: &FilterConfig| render_body(Path::new("/x.wasm"), c);
        let (client, handle) = client();
        let api = serve(
            handle,
            vec![
                Exchange::get(PATH, 200, configmap(json!({"canary.json": text(&c)}))),
                Exchange::get(PATH, 200, configmap(json!({"canary.json": text(&config(5, 0))}))),
                Exchange::get(PATH, 200, configmap(json!({"canary.json": text(&config(3, 100))}))),
                Exchange::get(PATH, 200, configmap(json!({"other": "x"}))),
            ],
        );
        for want in [Held::Wanted, Held::Ahead, Held::Other, Held::Other] {
            assert_eq!(sink.held(&client, &c).await.unwrap(), want);
        }
        assert_eq!(api.await.unwrap().len(), 4);
    }
}
