//! The manual-control subcommands (`pause`, `resume`, `advance`,
//! `rollback`): through the state directory, or `--kube` through a
//! CanaryRollout's annotations and its reconciler.

use std::path::PathBuf;

use anyhow::Context;
use canary_judge::rollout::Command as RolloutCommand;
use canary_judge::wire_name;

use super::print::print_kube_status;
use super::{kube_client, Output};
use crate::context::ProcessContext;
use crate::control::Controller;
use crate::k8s::crd::{self, ResourceRef};

#[derive(clap::Args)]
pub(super) struct Manual {
    #[arg(long, env = "CANARY_STATE_DIR", required_unless_present = "kube")]
    state_dir: Option<PathBuf>,
    /// A CanaryRollout (NAMESPACE/NAME): ask its reconciler through the API
    /// (sets the canary.dev/command annotations) instead of a state directory.
    #[arg(long, conflicts_with = "state_dir")]
    kube: Option<ResourceRef>,
    /// With --kube: how long to wait for the reconciler to report the command handled.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
    /// Why (goes into the decision log and the alert).
    #[arg(long, default_value = "")]
    reason: String,
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
}

pub(super) async fn manual(command: RolloutCommand, m: Manual) -> anyhow::Result<()> {
    let Manual { state_dir, kube, wait, reason, output } = m;
    if let Some(r) = kube {
        return kube_manual(command, &r, &reason, wait, output).await;
    }
    let state_dir = state_dir.context("--state-dir or --kube is needed")?;
    let mut c = Controller::open(&state_dir, None, false, &ProcessContext::default())?;
    let d = c.command(command, &reason).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Output::Human => println!(
            "#{} {}: {} ({}) → {} ({}), epoch {}",
            d.seq,
            wire_name(&d.action),
            d.from.stage_name,
            d.from.weight,
            d.to.stage_name,
            d.to.weight,
            d.to.epoch
        ),
    }
    // The command is in effect; its alerts are still being delivered.
    let undelivered = c.alerter().drain().await;
    if undelivered > 0 {
        eprintln!("{undelivered} alert(s) not delivered in the retry window; see the errors above");
    }
    Ok(())
}

/// `--kube`: the command as annotations; then waits for the reconciler.
async fn kube_manual(
    command: RolloutCommand,
    r: &ResourceRef,
    reason: &str,
    wait: std::time::Duration,
    output: Output,
) -> anyhow::Result<()> {
    let client = kube_client().await?;
    let id = crd::new_command_id();
    crd::request_command(client.clone(), &r.namespace, &r.name, command, reason, &id)
        .await
        .with_context(|| format!("cannot annotate CanaryRollout {r}"))?;
    eprintln!("asked {r} to {} (command id {id}); waiting up to {wait:?} for the reconciler", command.name());
    let poll = std::time::Duration::from_secs(1);
    let status = crd::wait_handled(client, &r.namespace, &r.name, &id, wait, poll).await?;
    let Some(status) = status else {
        anyhow::bail!("the reconciler did not report command {id} within {wait:?}: is the canary operator running?");
    };
    print_kube_status(&status, output)?;
    match status.last_command {
        Some(c) if c.result.starts_with("refused") => anyhow::bail!("{}", c.result),
        _ => Ok(()),
    }
}
