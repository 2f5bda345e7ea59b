//! Telling people: a JSON POST (or a Slack-style `{"text": …}`) to every
//! configured webhook, retried with doubling, capped backoff
//! (`alerts.retry_*`). Alerts are sent after the action they report (a
//! rollback is pushed first), so a dead webhook never delays it; the daemon
//! waits for alerts still being retried (at most the retry window) before it
//! exits.

use std::time::Duration;

use serde::Serialize;

use canary_judge::rollout::{AlertKind, Decision, Millis};
use canary_judge::spec::{AlertsSpec, WebhookFormat, WebhookSpec};

/// What an alert says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub rollout: String,
    pub at: Millis,
    /// The decision that raised it.
    pub seq: u64,
    pub stage: String,
    pub challenger_weight_bp: u16,
    pub title: String,
    pub reasons: Vec<String>,
    /// The stage report's Markdown summary, when a stage ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

impl Alert {
    pub fn from_decision(rollout: &str, kind: AlertKind, d: &Decision) -> Alert {
        let title = match kind {
            AlertKind::Rollback => format!(
                "canary {rollout}: rolled back to 0% from {} ({})",
                d.from.stage_name,
                if d.manual { "by an operator" } else { "a gate failed" }
            ),
            AlertKind::SourceFailing => {
                format!("canary {rollout}: cannot read Envoy stats; holding at {}", d.from.stage_name)
            }
            AlertKind::NotApplied => {
                format!("canary {rollout}: not every Envoy applied epoch {} ({})", d.from.epoch, d.from.stage_name)
            }
            AlertKind::SinkFailing => format!("canary {rollout}: a configuration push failed at {}", d.to.stage_name),
            AlertKind::SinkDrifted => format!("canary {rollout}: a sink was changed outside the controller"),
            AlertKind::Incident => {
                format!("canary {rollout}: incident at {}: the champion itself is failing; holding", d.from.stage_name)
            }
            AlertKind::StageOverdue => {
                format!(
                    "canary {rollout}: {} reached its max_duration undecided; holding for a person",
                    d.from.stage_name
                )
            }
        };
        Alert {
            kind,
            rollout: rollout.to_string(),
            at: d.at,
            seq: d.seq,
            stage: d.to.stage_name.clone(),
            challenger_weight_bp: d.to.weight.bp(),
            title,
            reasons: d.reasons.clone(),
            report: None,
        }
    }

    /// A push that failed after its retries: the configuration `state`
    /// should have is not (everywhere) where Envoy reads it.
    pub fn sink_failing(
        rollout: &str,
        target: &canary_judge::rollout::Target,
        seq: u64,
        error: &str,
        at: Millis,
    ) -> Alert {
        let title = "cannot push the configuration of";
        Alert::about_sinks(AlertKind::SinkFailing, rollout, target, seq, title, vec![error.to_string()], at)
    }

    /// Sinks found holding something other than what the controller wrote
    /// there; the configuration is being written back.
    pub fn sink_drifted(
        rollout: &str,
        target: &canary_judge::rollout::Target,
        seq: u64,
        sinks: &[String],
        at: Millis,
    ) -> Alert {
        let reasons = sinks
            .iter()
            .map(|s| {
                format!(
                    "{s} was changed outside the controller (a GitOps sync or a hand edit?): written back; \
                     exclude it from the other writer"
                )
            })
            .collect();
        let title = "a sink was changed outside the controller; writing back the configuration of";
        Alert::about_sinks(AlertKind::SinkDrifted, rollout, target, seq, title, reasons, at)
    }

    fn about_sinks(
        kind: AlertKind,
        rollout: &str,
        target: &canary_judge::rollout::Target,
        seq: u64,
        title: &str,
        reasons: Vec<String>,
        at: Millis,
    ) -> Alert {
        Alert {
            kind,
            rollout: rollout.to_string(),
            at,
            seq,
            stage: target.stage_name.clone(),
            challenger_weight_bp: target.weight.bp(),
            title: format!(
                "canary {rollout}: {title} {} ({}, epoch {})",
                target.stage_name, target.weight, target.epoch
            ),
            reasons,
            report: None,
        }
    }

    pub fn with_report(mut self, report: Option<String>) -> Alert {
        self.report = report;
        self
    }

    /// The body for a webhook of the given format.
    pub fn payload(&self, format: WebhookFormat) -> serde_json::Value {
        match format {
            WebhookFormat::Json => serde_json::to_value(self).unwrap_or_default(),
            WebhookFormat::Slack => {
                let mut text = format!("*{}*", self.title);
                for r in &self.reasons {
                    text.push_str("\n• ");
                    text.push_str(r);
                }
                serde_json::json!({ "text": text })
            }
        }
    }
}

/// How often and how patiently an alert is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per webhook, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each failure.
    pub first_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn from_spec(a: &AlertsSpec) -> RetryPolicy {
        RetryPolicy { attempts: a.retry_attempts, first_backoff: a.retry_backoff, max_backoff: a.retry_max_backoff }
    }

    /// The wait after failed attempt `attempt` (from 1): doubling, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self.first_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.max_backoff)
    }

    /// The longest one alert can take to every webhook: every wait, and
    /// every attempt at its timeout.
    pub fn window(&self, request_timeout: Duration) -> Duration {
        let waits: Duration = (1..self.attempts.max(1)).map(|a| self.backoff(a)).sum();
        waits + request_timeout * self.attempts.max(1)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::from_spec(&AlertsSpec::default())
    }
}

/// One attempt's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Alerts spawned in this process and not yet delivered or given up on: one
/// count per process, shared by every alerter made from the same
/// [`crate::context::ProcessContext`] (the daemon's loop and its dashboard's
/// commands each have their own alerter), so the daemon and the CLI can wait
/// for all of them before they exit.
#[derive(Debug, Clone)]
pub struct PendingAlerts(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Default for PendingAlerts {
    fn default() -> Self {
        PendingAlerts(std::sync::Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl PendingAlerts {
    /// Counts one alert as pending until the returned guard is dropped.
    pub fn coming(&self) -> AlertsComing {
        self.0.send_modify(|n| *n += 1);
        AlertsComing(self.clone())
    }

    /// How many are pending now.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Waits until every pending alert is delivered or given up on, at most
    /// `bound`; returns how many are still pending.
    pub async fn drain_for(&self, bound: Duration) -> usize {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|n| *n == 0)).await;
        self.count()
    }
}

/// Counts as a pending alert until dropped. Taken before a decision is
/// committed and dropped once its alerts are spawned: a daemon that sees the
/// rollout end in between (a dashboard command commits, then writes the
/// reports, then spawns the alert) still waits for them in [`Alerter::drain`].
pub struct AlertsComing(PendingAlerts);

impl Drop for AlertsComing {
    fn drop(&mut self) {
        (self.0).0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Sends alerts to the spec's webhooks.
#[derive(Debug, Clone)]
pub struct Alerter {
    hooks: Vec<WebhookSpec>,
    client: reqwest::Client,
    policy: RetryPolicy,
    pending: PendingAlerts,
}

impl Alerter {
    /// Alerts go to `hooks`, counted in `pending` until delivered.
    pub fn new(hooks: Vec<WebhookSpec>, pending: PendingAlerts) -> Alerter {
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_default();
        Alerter { hooks, client, policy: RetryPolicy::default(), pending }
    }

    /// The webhooks and retry policy of a spec's `alerts`.
    pub fn from_spec(a: &AlertsSpec, pending: PendingAlerts) -> Alerter {
        Alerter::new(a.webhooks.clone(), pending).with_policy(RetryPolicy::from_spec(a))
    }

    pub fn with_policy(mut self, policy: RetryPolicy) -> Alerter {
        self.policy = RetryPolicy { attempts: policy.attempts.max(1), ..policy };
        self
    }

    pub fn with_retries(self, attempts: u32, first_backoff: Duration) -> Alerter {
        let max_backoff = first_backoff.saturating_mul(1 << 20);
        self.with_policy(RetryPolicy { attempts, first_backoff, max_backoff })
    }

    /// Sends to every hook, retrying each with doubling backoff; returns one
    /// result per hook.
    pub async fn send(&self, alert: &Alert) -> Vec<Result<u32, String>> {
        tracing::warn!(kind = ?alert.kind, "{}", alert.title);
        let sends = self.hooks.iter().map(|hook| self.send_one(hook, alert));
        futures::future::join_all(sends).await
    }

    /// Sends without waiting (the daemon's way): the decision that raised
    /// the alert is already in effect, and nothing waits for the webhook.
    pub fn spawn(&self, alert: Alert) {
        let this = self.clone();
        let pending = self.pending.coming();
        tokio::spawn(async move {
            for (hook, result) in this.hooks.iter().zip(this.send(&alert).await) {
                if let Err(e) = result {
                    tracing::error!(url = %hook.url, "alert not delivered: {e}");
                }
            }
            drop(pending);
        });
    }

    /// Waits until every alert pending in this alerter's count (the
    /// process') is delivered or given up on, at most this policy's retry
    /// window; returns how many are still pending. The daemon and the CLI
    /// call it before exiting so a retry is not cut short.
    pub async fn drain(&self) -> usize {
        self.pending.drain_for(self.policy.window(REQUEST_TIMEOUT) + Duration::from_secs(1)).await
    }

    /// The count this alerter's alerts are pending in.
    pub fn pending(&self) -> &PendingAlerts {
        &self.pending
    }

    /// `Ok(attempts used)` or the last error.
    async fn send_one(&self, hook: &WebhookSpec, alert: &Alert) -> Result<u32, String> {
        let body = alert.payload(hook.format);
        let attempts = self.policy.attempts;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.client.post(&hook.url).json(&body).send().await {
                Ok(r) if r.status().is_success() => return Ok(attempt),
                Ok(r) => last = format!("{} answered {}", hook.url, r.status()),
                Err(e) => last = format!("{}: {e}", hook.url),
            }
            if attempt < attempts {
                let wait = self.policy.backoff(attempt);
                tracing::warn!(kind = ?alert.kind, seq = alert.seq, "alert attempt {attempt} of {attempts} failed ({last}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
        Err(format!("{last} (after {attempts} attempts)"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::{Json, Router};

    use super::*;
    use canary_judge::rollout::{Action, Target};

    fn decision() -> Decision {
        let t = |name: &str, bp| Target {
            stage: 0,
            stage_name: name.into(),
            weight: canary_core::Weight::from_bp(bp).unwrap(),
            epoch: 1,
        };
        Decision {
            seq: 7,
            at: 1000,
            action: Action::Rollback,
            manual: false,
            from: t("5pct", 500),
            to: t("rolled-back", 0),
            reasons: vec!["error_rate gate failed: 9% vs 1%".into()],
            gates: vec![],
            window: None,
            alerts: vec![AlertKind::Rollback],
            labels: None,
        }
    }

    #[test]
    fn slack_payload_is_text_with_the_reasons() {
        let a = Alert::from_decision("recs", AlertKind::Rollback, &decision());
        let text = a.payload(WebhookFormat::Slack)["text"].as_str().unwrap().to_string();
        assert!(text.starts_with("*canary recs: rolled back to 0% from 5pct (a gate failed)*"), "{text}");
        assert!(text.contains("• error_rate gate failed"), "{text}");
        let json = a.payload(WebhookFormat::Json);
        assert_eq!(json["kind"], "rollback");
        assert_eq!(json["seq"], 7);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_the_window_bounds_every_attempt() {
        let p =
            RetryPolicy { attempts: 6, first_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(3) };
        let waits: Vec<u64> = (1..6).map(|a| p.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(p.window(Duration::from_secs(1)), Duration::from_millis(9500 + 6000));
        // A huge attempt number neither overflows nor passes the cap.
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(3));
        let d = RetryPolicy::default();
        let total: Duration = (1..d.attempts).map(|a| d.backoff(a)).sum();
        assert_eq!((d.attempts, total), (8, Duration::from_millis(31_500)), "default: 8 attempts over ~30 s");
    }

    async fn hook_failing_first(n: u32) -> (String, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let app = Router::new().route(
            "/hook",
            post(move |Json(_): Json<serde_json::Value>| {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < n {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), calls)
    }

    #[tokio::test]
    async fn drain_waits_for_spawned_alerts_being_retried() {
        let (url, calls) = hook_failing_first(3).await;
        let alerter = Alerter::new(
            vec![
                WebhookSpec { url, format: WebhookFormat::Json },
                WebhookSpec { url: "http://127.0.0.1:1/closed".into(), format: WebhookFormat::Json },
            ],
            PendingAlerts::default(),
        )
        .with_policy(RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(40),
        });
        alerter.spawn(Alert::from_decision("r", AlertKind::Rollback, &decision()));
        assert_eq!(alerter.drain().await, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 4, "three refusals, then delivered");
        // Nothing pending: returns at once.
        assert_eq!(alerter.drain().await, 0);
    }

    #[tokio::test]
    async fn drain_waits_for_alerts_a_commit_is_about_to_send() {
        let (url, calls) = hook_failing_first(1).await;
        let pending = PendingAlerts::default();
        let alerter = Alerter::new(vec![WebhookSpec { url, format: WebhookFormat::Json }], pending.clone())
            .with_policy(RetryPolicy {
                attempts: 3,
                first_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(20),
            });
        let coming = pending.coming();
        let a = alerter.clone();
        tokio::spawn(async move {
            // The reports take a while before the alert is spawned.
            tokio::time::sleep(Duration::from_millis(200)).await;
            a.spawn(Alert::from_decision("r", AlertKind::Rollback, &decision()));
            drop(coming);
        });
        assert_eq!(alerter.drain().await, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refused once, then delivered, before drain returned");
    }

    #[tokio::test]
    async fn a_failing_webhook_is_retried_until_it_answers() {
        let (url, calls) = hook_failing_first(2).await;
        let alerter = Alerter::new(
            vec![
                WebhookSpec { url, format: WebhookFormat::Json },
                WebhookSpec { url: "http://127.0.0.1:1/closed".into(), format: WebhookFormat::Slack },
            ],
            PendingAlerts::default(),
        )
        .with_retries(4, Duration::from_millis(10));
        let results = alerter.send(&Alert::from_decision("r", AlertKind::Rollback, &decision())).await;
        assert_eq!(results[0], Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3, "two refusals, then delivered");
        assert!(results[1].as_ref().unwrap_err().contains("after 4 attempts"), "{results:?}");
    }
}
