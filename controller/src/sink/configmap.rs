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

use super::{render_body, SinkError};

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

    pub async fn push(&self, client: &kube::Client, config: &FilterConfig) -> Result<(), SinkError> {
        let what = format!("ConfigMap {}", self.id());
        let body = render_body(&self.wasm, config);
        if body.len() > CONFIGMAP_LIMIT {
            return Err(SinkError::TooLarge { what, bytes: body.len(), limit: CONFIGMAP_LIMIT });
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &self.namespace);
        let kube_err = |what: &str| {
            let what = what.to_string();
            move |e| SinkError::Kube { what, source: Box::new(e) }
        };
        let current = api.get_opt(&self.name).await.map_err(kube_err(&what))?.ok_or_else(|| SinkError::NotFound {
            what: what.clone(),
            hint: "create it (deploy/sidecar-envoy.yaml has one) in the namespace of the sidecars that mount it",
        })?;
        if current.data.as_ref().and_then(|d| d.get(&self.key)) == Some(&body) {
            return Ok(());
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch(&self.name, &params, &Patch::Merge(self.patch_body(config))).await.map_err(kube_err(&what))?;
        Ok(())
    }
}
