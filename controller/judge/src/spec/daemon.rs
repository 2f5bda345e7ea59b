//! What the daemon around the rollout does besides judging: alerts, labels
//! intake, its HTTP server.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{invalid, RolloutSpec, SpecError};

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSpec {
    pub webhooks: Vec<WebhookSpec>,
    /// Consecutive failed reads of the stats before an alert.
    pub source_failures: u32,
    /// Delivery attempts per alert and webhook, the first included.
    pub retry_attempts: u32,
    /// Wait before the second attempt; it doubles after each failed one, up
    /// to `retry_max_backoff`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub retry_max_backoff: Duration,
}

impl Default for AlertsSpec {
    /// 8 attempts over about 30 s (0.5, 1, 2, 4, 8, 8, 8 s apart): a webhook
    /// restarting or briefly unreachable still gets the alert.
    fn default() -> Self {
        AlertsSpec {
            webhooks: vec![],
            source_failures: 3,
            retry_attempts: 8,
            retry_backoff: Duration::from_millis(500),
            retry_max_backoff: Duration::from_secs(8),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert as a JSON object.
    #[default]
    Json,
    /// `{"text": ...}`, what Slack incoming webhooks take.
    Slack,
}

/// Where labels (ground-truth outcomes) come from, besides `POST /labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// A JSONL file of outcomes, read as it grows.
    #[serde(default)]
    pub jsonl: Option<PathBuf>,
}

/// The daemon's HTTP server (labels intake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Address to listen on; `127.0.0.1:0` picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec { listen: default_listen() }
    }
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}

impl RolloutSpec {
    /// Alerts and the server.
    pub(super) fn validate_daemon(&self) -> Result<(), SpecError> {
        for (i, hook) in self.alerts.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(invalid(format!("alerts.webhooks[{i}].url"), "must start with http:// or https://"));
            }
        }
        let a = &self.alerts;
        if !(1..=100).contains(&a.retry_attempts) {
            return Err(invalid("alerts.retry_attempts", "must be 1..=100 (1 means no retry)"));
        }
        if a.retry_backoff.is_zero() || a.retry_backoff > a.retry_max_backoff {
            return Err(invalid("alerts.retry_backoff", "must be above 0 and at most alerts.retry_max_backoff"));
        }
        if a.retry_max_backoff > Duration::from_secs(600) {
            return Err(invalid("alerts.retry_max_backoff", "must be at most 10m"));
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.server.listen),
            ));
        }
        Ok(())
    }
}
