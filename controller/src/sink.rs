//! Where a new plugin configuration goes. The file sink writes the ECDS
//! resource that Envoy's `path_config_source` watches.
//!
//! ```text
//!  FilterConfig ──validate (the filter's own code)──► DiscoveryResponse JSON
//!      ──► DIR/.canary.json.XXXX (write, fsync) ──rename──► DIR/canary.json
//!                                   Envoy: watched_directory sees the move, reloads
//! ```
//! Envoy never sees a half-written file, and a configuration the filter would
//! refuse is never written.

use std::path::PathBuf;

use canary_core::{ConfigError, FilterConfig};
use serde_json::json;

use crate::durable;

/// The filter's name in Envoy's `http_filters` and in the ECDS resource.
pub const FILTER_NAME: &str = "canary";
/// The ECDS file's name inside its directory.
pub const ECDS_FILE_NAME: &str = "canary.json";

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
}

/// File-based ECDS: one JSON DiscoveryResponse file in a directory Envoy watches.
#[derive(Debug, Clone)]
pub struct EcdsFileSink {
    dir: PathBuf,
    wasm: PathBuf,
}

impl EcdsFileSink {
    /// `dir` is the `watched_directory`; `wasm` the filter's path as Envoy sees it.
    pub fn new(dir: impl Into<PathBuf>, wasm: impl Into<PathBuf>) -> EcdsFileSink {
        EcdsFileSink { dir: dir.into(), wasm: wasm.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(ECDS_FILE_NAME)
    }

    /// The `version_info` Envoy reports for a configuration
    /// (`extension_config_discovery.http_filter.canary.version_text`).
    pub fn version_info(config: &FilterConfig) -> String {
        format!("{}/{}", config.rollout, config.epoch)
    }

    /// The DiscoveryResponse carrying `config`.
    pub fn render(&self, config: &FilterConfig) -> serde_json::Value {
        self.render_raw(&Self::version_info(config), &config.to_json())
    }

    /// The DiscoveryResponse carrying any plugin configuration string, valid
    /// or not (tools and tests that check how Envoy refuses bad ones).
    pub fn render_raw(&self, version_info: &str, plugin_config: &str) -> serde_json::Value {
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
                            "code": { "local": { "filename": self.wasm } }
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

    /// Validates `config` with the filter's own rules, then replaces the file
    /// atomically.
    pub fn push(&self, config: &FilterConfig) -> Result<(), SinkError> {
        config.validate()?;
        let body = serde_json::to_vec_pretty(&self.render(config)).unwrap_or_default();
        self.write_raw(&body)
    }

    /// Replaces the file with `body` as it is, atomically. For tools and
    /// tests that must write what `push` would refuse.
    pub fn write_raw(&self, body: &[u8]) -> Result<(), SinkError> {
        durable::write_atomic(&self.path(), body).map_err(|source| SinkError::Write { dir: self.dir.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn config(weight: u64) -> FilterConfig {
        FilterConfig::from_json(
            format!(
                r#"{{"rollout":"r","epoch":2,"stage":"s","salt":"x","champion":"a","challenger":"b","challenger_weight_bp":{weight}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn push_writes_a_discovery_response_with_the_config_inside() {
        let dir = tempfile::tempdir().unwrap();
        let sink = EcdsFileSink::new(dir.path(), "/x/canary_filter.wasm");
        sink.push(&config(500)).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(sink.path()).unwrap()).unwrap();
        assert_eq!(doc["version_info"], "r/2");
        let cfg = &doc["resources"][0]["typed_config"]["config"];
        assert_eq!(cfg["vm_config"]["code"]["local"]["filename"], "/x/canary_filter.wasm");
        let inner = cfg["configuration"]["value"].as_str().unwrap();
        assert_eq!(FilterConfig::from_json(inner.as_bytes()).unwrap(), config(500));
        // Only the file itself is left behind, no temp files.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn invalid_config_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let sink = EcdsFileSink::new(dir.path(), "/x.wasm");
        sink.push(&config(100)).unwrap();
        let before = fs::read(sink.path()).unwrap();
        let mut bad = config(100);
        bad.challenger = bad.champion.clone();
        assert!(matches!(sink.push(&bad), Err(SinkError::Invalid(_))));
        assert_eq!(fs::read(sink.path()).unwrap(), before);
    }

    #[test]
    fn unwritable_dir_is_reported_and_old_file_kept() {
        let sink = EcdsFileSink::new("/nonexistent/dir", "/x.wasm");
        let e = sink.push(&config(100)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir"), "{e}");
    }
}
