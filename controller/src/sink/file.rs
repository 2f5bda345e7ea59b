//! The file sink: the ECDS resource that Envoy's `path_config_source`
//! watches, replaced atomically.
//!
//! ```text
//!  FilterConfig ──validate (the filter's own code)──► DiscoveryResponse JSON
//!      ──► DIR/.canary.json.XXXX (write, fsync) ──rename──► DIR/canary.json
//!                                   Envoy: watched_directory sees the move, reloads
//! ```
//! Envoy never sees a half-written file, and a configuration the filter would
//! refuse is never written.

use std::path::PathBuf;

use canary_core::FilterConfig;

use super::{classify_ecds, ecds_resource, version_info, Held, SinkError, ECDS_FILE_NAME};
use crate::store::durable;

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
        version_info(config)
    }

    /// The DiscoveryResponse carrying `config`.
    pub fn render(&self, config: &FilterConfig) -> serde_json::Value {
        ecds_resource(&self.wasm, &version_info(config), &config.to_json())
    }

    /// The DiscoveryResponse carrying any plugin configuration string, valid
    /// or not (tools and tests that check how Envoy refuses bad ones).
    pub fn render_raw(&self, version_info: &str, plugin_config: &str) -> serde_json::Value {
        ecds_resource(&self.wasm, version_info, plugin_config)
    }

    /// Validates `config` with the filter's own rules, then replaces the file
    /// atomically.
    pub fn push(&self, config: &FilterConfig) -> Result<(), SinkError> {
        config.validate()?;
        self.write_raw(super::render_body(&self.wasm, config).as_bytes())
    }

    /// What the file holds now, next to `config` (unreadable: `Other`).
    pub fn held(&self, config: &FilterConfig) -> Held {
        let current = std::fs::read_to_string(self.path()).ok();
        classify_ecds(current.as_deref(), &super::render_body(&self.wasm, config), config)
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
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
        // The configuration names its hash, so a filter hashing differently
        // refuses it (the test's input did not name it).
        let written: serde_json::Value = serde_json::from_str(inner).unwrap();
        assert_eq!(written["hash"], canary_core::split::SplitHash::Xxh3_64.name());
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
        // Root ignores permission bits: a directory whose parent is a regular
        // file cannot be written by anyone.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "x").unwrap();
        let sink = EcdsFileSink::new(dir.path().join("file/ecds"), "/x.wasm");
        assert!(matches!(sink.push(&config(100)), Err(SinkError::Write { .. })));
    }
}
