//! `canary`: the controller's command line.

use std::path::PathBuf;

use anyhow::Context;
use canary_controller::sink::EcdsFileSink;
use canary_core::FilterConfig;
use clap::{Parser, Subcommand};

/// Progressive delivery of ML model versions on Envoy.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a filter plugin configuration (JSON) with the filter's own rules.
    CheckConfig {
        /// The plugin configuration file.
        file: PathBuf,
    },
    /// Validate a filter plugin configuration and write it as the ECDS file
    /// Envoy watches (atomically: temp file, then rename).
    Push {
        /// The plugin configuration file (JSON).
        file: PathBuf,
        /// Directory Envoy watches (`watched_directory`); canary.json is written there.
        #[arg(long, env = "CANARY_ECDS_DIR")]
        ecds_dir: PathBuf,
        /// Path of canary_filter.wasm as Envoy sees it.
        #[arg(long, env = "CANARY_WASM")]
        wasm: PathBuf,
    },
}

fn read_config(file: &PathBuf) -> anyhow::Result<FilterConfig> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let config = FilterConfig::from_json(&bytes).with_context(|| format!("{} is refused", file.display()))?;
    config.validate().with_context(|| format!("{} is refused", file.display()))?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    match command {
        Command::CheckConfig { file } => {
            let c = read_config(&file)?;
            println!(
                "ok: rollout {} epoch {} stage {}: {} at {}, {} otherwise",
                c.rollout, c.epoch, c.stage, c.challenger, c.challenger_weight_bp, c.champion
            );
        }
        Command::Push { file, ecds_dir, wasm } => {
            let c = read_config(&file)?;
            let sink = EcdsFileSink::new(&ecds_dir, &wasm);
            sink.push(&c)?;
            println!("pushed {} to {}", EcdsFileSink::version_info(&c), sink.path().display());
        }
    }
    Ok(())
}
