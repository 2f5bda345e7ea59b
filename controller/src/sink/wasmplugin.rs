//! The Istio sink: the filter's configuration as `spec.pluginConfig` of a
//! `WasmPlugin` (extensions.istio.io/v1alpha1); istiod sends it to every
//! selected sidecar by ECDS.
//!
//! ```text
//!  GET wasmplugin ──(pluginConfig already equal)──► done
//!        │ resourceVersion rv
//!        └─► PATCH (JSON patch) [replace /metadata/resourceVersion rv, add /spec/pluginConfig {…}]
//!              200 ─► done
//!              409 (someone wrote since the GET) ─► GET again, patch with the fresh rv (bounded)
//! ```
//! Carrying the resourceVersion makes the write conditional: a concurrent
//! change (GitOps, another controller) is never overwritten blindly, and
//! the JSON patch replaces pluginConfig whole (a merge patch would keep keys
//! the new configuration dropped).

use canary_core::FilterConfig;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

use super::configmap::FIELD_MANAGER;
use super::SinkError;

/// Fresh reads after a conflict before giving up (the push is then retried
/// with backoff like any failure).
pub const MAX_CONFLICTS: u32 = 5;

/// extensions.istio.io/v1alpha1 WasmPlugin.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("extensions.istio.io", "v1alpha1", "WasmPlugin"),
        "wasmplugins",
    )
}

#[derive(Debug, Clone)]
pub struct WasmPluginSink {
    namespace: String,
    name: String,
}

impl WasmPluginSink {
    pub fn new(namespace: &str, name: &str) -> WasmPluginSink {
        WasmPluginSink { namespace: namespace.into(), name: name.into() }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The plugin configuration as the JSON object Istio passes on.
    pub fn plugin_config(config: &FilterConfig) -> serde_json::Value {
        serde_json::from_str(&config.to_json()).unwrap_or_default()
    }

    /// The conditional patch: fails with 409 unless the object is still at
    /// `resource_version`.
    pub fn patch_body(resource_version: &str, config: &FilterConfig) -> serde_json::Value {
        json!([
            { "op": "replace", "path": "/metadata/resourceVersion", "value": resource_version },
            { "op": "add", "path": "/spec/pluginConfig", "value": Self::plugin_config(config) },
        ])
    }

    pub async fn push(&self, client: &kube::Client, config: &FilterConfig) -> Result<(), SinkError> {
        let what = format!("WasmPlugin {}", self.id());
        let kube_err = |e| SinkError::Kube { what: what.clone(), source: Box::new(e) };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &self.namespace, &api_resource());
        let want = Self::plugin_config(config);
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        for _ in 0..MAX_CONFLICTS {
            let current = api.get_opt(&self.name).await.map_err(kube_err)?.ok_or_else(|| SinkError::NotFound {
                what: what.clone(),
                hint: "apply it first (deploy/wasmplugin.yaml): the controller only patches its pluginConfig",
            })?;
            if current.data.pointer("/spec/pluginConfig") == Some(&want) {
                return Ok(());
            }
            let rv = current.metadata.resource_version.clone().unwrap_or_default();
            let patch: json_patch::Patch = serde_json::from_value(Self::patch_body(&rv, config))
                .map_err(|e| SinkError::Kube { what: what.clone(), source: Box::new(kube::Error::SerdeError(e)) })?;
            match api.patch(&self.name, &params, &Patch::<()>::Json(patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::info!("{what}: changed since read (409 Conflict); reading it again");
                }
                Err(e) => return Err(kube_err(e)),
            }
        }
        Err(SinkError::Conflict { what, attempts: MAX_CONFLICTS })
    }
}
