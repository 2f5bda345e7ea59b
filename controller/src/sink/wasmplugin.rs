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
use super::{Held, SinkError};

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

    fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.namespace, &api_resource())
    }

    fn what(&self) -> String {
        format!("WasmPlugin {}", self.id())
    }

    async fn current(&self, api: &Api<DynamicObject>) -> Result<DynamicObject, SinkError> {
        let what = self.what();
        api.get_opt(&self.name).await.map_err(|e| SinkError::Kube { what: what.clone(), source: Box::new(e) })?.ok_or(
            SinkError::NotFound {
                what,
                hint: "apply it first (deploy/wasmplugin.yaml): the controller only patches its pluginConfig",
            },
        )
    }

    /// What `spec.pluginConfig` holds now, next to `config` (compared as
    /// JSON values: istiod and kubectl may reorder keys).
    pub async fn held(&self, client: &kube::Client, config: &FilterConfig) -> Result<Held, SinkError> {
        let current = self.current(&self.api(client)).await?;
        let plugin = current.data.pointer("/spec/pluginConfig");
        let holding = plugin.and_then(|p| Some((p.get("rollout")?.as_str()?, p.get("epoch")?.as_u64()?)));
        Ok(Held::classify(holding, plugin == Some(&Self::plugin_config(config)), config))
    }

    pub async fn push(&self, client: &kube::Client, config: &FilterConfig) -> Result<(), SinkError> {
        let what = self.what();
        let kube_err = |e| SinkError::Kube { what: what.clone(), source: Box::new(e) };
        let api = self.api(client);
        let want = Self::plugin_config(config);
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        for _ in 0..MAX_CONFLICTS {
            let current = self.current(&api).await?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::fixtures::{client, serve, status_error, Exchange};
    use crate::sink::tests::config;

    const PATH: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/canary";
    const JSON_PATCH: &str = "application/json-patch+json";

    fn plugin(rv: &str, plugin_config: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "canary", "namespace": "istio-system", "resourceVersion": rv},
            "spec": {"url": "oci://registry.example/canary-filter:0.1.0", "pluginConfig": plugin_config}
        })
    }

    #[tokio::test]
    async fn a_conflict_is_read_again_and_patched_with_the_fresh_resource_version() {
        let c = config(5, 2000);
        let want = WasmPluginSink::plugin_config(&c);
        assert_eq!(want["challenger_weight_bp"], 2000);
        // The patch carries the resourceVersion it read: the API server
        // refuses it (409) if the object changed since.
        let patch = |rv: &str| {
            json!([
                {"op": "replace", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "add", "path": "/spec/pluginConfig", "value": want},
            ])
        };
        let (client, handle) = client();
        let api = serve(
            handle,
            vec![
                Exchange::get(PATH, 200, plugin("41", json!({"epoch": 4}))),
                Exchange::patch(
                    PATH,
                    JSON_PATCH,
                    patch("41"),
                    409,
                    status_error(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ),
                ),
                Exchange::get(PATH, 200, plugin("42", json!({"epoch": 4, "touched": "by someone else"}))),
                Exchange::patch(PATH, JSON_PATCH, patch("42"), 200, plugin("43", want.clone())),
            ],
        );
        WasmPluginSink::new("istio-system", "canary").push(&client, &c).await.unwrap();
        assert_eq!(api.await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn conflicts_without_end_give_up_after_the_bound() {
        let c = config(5, 2000);
        let (client, handle) = client();
        let mut exchanges = vec![];
        for i in 0..MAX_CONFLICTS {
            let rv = format!("{}", 50 + i);
            exchanges.push(Exchange::get(PATH, 200, plugin(&rv, json!({}))));
            let mut p = Exchange::patch(PATH, JSON_PATCH, json!(null), 409, status_error(409, "Conflict", "modified"));
            p.body = None;
            exchanges.push(p);
        }
        let api = serve(handle, exchanges);
        let e = WasmPluginSink::new("istio-system", "canary").push(&client, &c).await.unwrap_err();
        assert!(matches!(e, SinkError::Conflict { attempts: MAX_CONFLICTS, .. }), "{e}");
        let seen = api.await.unwrap();
        // Every patch carried the resourceVersion of the read just before it.
        for (i, pair) in seen.chunks(2).enumerate() {
            assert_eq!(pair[1].body[0]["value"], format!("{}", 50 + i as u32));
        }
    }

    #[tokio::test]
    async fn an_equal_plugin_config_is_not_patched() {
        let c = config(5, 2000);
        let (client, handle) = client();
        let api = serve(handle, vec![Exchange::get(PATH, 200, plugin("9", WasmPluginSink::plugin_config(&c)))]);
        WasmPluginSink::new("istio-system", "canary").push(&client, &c).await.unwrap();
        api.await.unwrap();
    }

    #[tokio::test]
    async fn held_compares_plugin_config_as_json_and_judges_it() {
        let sink = WasmPluginSink::new("istio-system", "canary");
        let c = config(4, 500);
        // Keys in another order (as istiod or kubectl may store them): still equal.
        let mut reordered: Vec<(String, serde_json::Value)> =
            WasmPluginSink::plugin_config(&c).as_object().unwrap().clone().into_iter().collect();
        reordered.reverse();
        let reordered: serde_json::Map<String, serde_json::Value> = reordered.into_iter().collect();
        let (client, handle) = client();
        let api = serve(
            handle,
            vec![
                Exchange::get(PATH, 200, plugin("1", serde_json::Value::Object(reordered))),
                Exchange::get(PATH, 200, plugin("2", WasmPluginSink::plugin_config(&config(5, 0)))),
                Exchange::get(PATH, 200, plugin("3", WasmPluginSink::plugin_config(&config(4, 9000)))),
                Exchange::get(PATH, 200, plugin("4", json!({}))),
            ],
        );
        for want in [Held::Wanted, Held::Ahead, Held::Other, Held::Other] {
            assert_eq!(sink.held(&client, &c).await.unwrap(), want);
        }
        assert_eq!(api.await.unwrap().len(), 4);
    }
}
