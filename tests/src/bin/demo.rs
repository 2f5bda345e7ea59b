//! `make demo`: a real Envoy running the filter in front of two model
//! backends; the challenger's weight goes 1 → 5 → 20 → 50 → 100 % by
//! rewriting the ECDS file, and each stage's traffic from thousands of
//! distinct users shows the split. Every process is stopped at the end or on
//! Ctrl-C.

use std::collections::HashMap;

use anyhow::{bail, Result};
use canary_core::metrics::Counter;
use canary_tests::{client, filter_config, route_users, users, wasm_path, Rig, CHALLENGER, CHAMPION};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Distinct users sending one request per stage.
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Keep Envoy and the backends running at the end, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Returning drops the processes started, which stops them.
    tokio::select! {
        r = run(&args) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping every process started");
            Ok(())
        }
        _ = term.recv() => {
            eprintln!("\nterminated: stopping every process started");
            Ok(())
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let wasm = wasm_path()?;
    let rig = Rig::start().await?;
    println!(
        "Envoy (pid {}) with {} ({} bytes), champion {} on :{}, challenger {} on :{}",
        rig.envoy.proc.pid(),
        wasm.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        std::fs::metadata(&wasm)?.len(),
        CHAMPION,
        rig.champion.port,
        CHALLENGER,
        rig.challenger.port
    );
    println!("  traffic: {}   admin: http://127.0.0.1:{}", rig.envoy.url("/"), rig.envoy.admin_port);
    println!("  filter configuration: {}\n", rig.envoy.sink.path().display());
    println!(
        "{:<6} {:>7} {:>9} {:>8} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "stage", "weight", "applied", "requests", CHAMPION, CHALLENGER, "share", "moved back", "counted"
    );

    let c = client();
    let ids = users("demo-user", args.users);
    let mut on_challenger: HashMap<&str, bool> = HashMap::new();
    for (i, percent) in [1u64, 5, 20, 50, 100].into_iter().enumerate() {
        let mut config = filter_config("demo", i as u64 + 1, percent * 100);
        config.stage = format!("{percent}pct");
        let applied = rig.envoy.push(&config).await?;
        let replies = route_users(&c, &rig.envoy.url("/predict"), &ids, 32).await?;
        let mut moved_back = 0;
        let mut challenger = 0;
        for (user, reply) in ids.iter().zip(&replies) {
            if reply.status != 200 || reply.version != reply.served_by {
                bail!("user {user}: unexpected reply {reply:?}");
            }
            let now = reply.version.as_deref() == Some(CHALLENGER);
            moved_back += usize::from(on_challenger.get(user.as_str()) == Some(&true) && !now);
            challenger += usize::from(now);
            on_challenger.insert(user, now);
        }
        let counted = rig.envoy.canary_counter(&config, CHALLENGER, Counter::RqTotal).await?;
        println!(
            "{:<6} {:>6}% {:>7.1}ms {:>8} {:>7} {:>7} {:>9.2}% {:>10} {:>10}",
            config.stage,
            percent,
            applied.as_secs_f64() * 1000.0,
            ids.len(),
            ids.len() - challenger,
            challenger,
            challenger as f64 * 100.0 / ids.len() as f64,
            moved_back,
            counted
        );
    }
    println!(
        "\nshare: challenger share of distinct users; moved back: users who went from challenger back to champion;"
    );
    println!("counted: the filter's own counter in Envoy's stats for the challenger at that stage.");
    if args.keep_running {
        println!("\nStill running; try: curl -i -H 'x-user-id: alice' {}   (Ctrl-C stops)", rig.envoy.url("/"));
        std::future::pending::<()>().await;
    }
    println!("\nstopping Envoy (pid {}) and the backends", rig.envoy.proc.pid());
    Ok(())
}
