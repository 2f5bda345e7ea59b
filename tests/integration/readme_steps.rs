//! The README's "Your own models and Envoy in ten steps", run as written: its
//! shell blocks are taken from README.md's text and run by bash in a fresh
//! temporary directory, against two local model servers on free ports, until
//! the rollout runs (Envoy serving its first stage, `canary status` showing
//! it); then its stop block ends every process it started.
//!
//! The only inputs are the environment variables the steps document
//! (`CHAMPION_PORT`, `CHALLENGER_PORT`, `LISTEN_PORT`, `ADMIN_PORT`, `WORK`),
//! and `CARGO=true`: `make build` has built the CLI before any integration
//! test, and a cargo inside `cargo test` would wait for its build lock.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use canary_tests::{free_port, pid_alive, root, Backend};

/// The `sh` blocks of the README section `heading`, in order.
fn section_blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split(heading).nth(1).unwrap_or_else(|| panic!("no {heading:?} in README.md"));
    let section = section.split("\n## ").next().unwrap();
    section.split("```sh\n").skip(1).map(|b| b.split("```").next().unwrap().to_string()).collect()
}

fn pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs `script` with bash in its own process group; kills the group after `limit`.
fn bash(script: &str, env: &[(&str, String)], limit: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("bash")
        .args(["-e", "-c", script])
        .current_dir(root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    (status.is_some_and(|s| s.success()), text)
}

#[test]
fn the_readme_steps_get_a_rollout_running_on_two_local_model_servers() {
    let blocks = section_blocks("## Your own models and Envoy in ten steps");
    assert_eq!(blocks.len(), 2, "expected the steps and the stop block: {blocks:?}");
    let steps: Vec<&str> = blocks[0]
        .lines()
        .filter(|l| {
            l.strip_prefix("# ").is_some_and(|s| s.split_once(". ").is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
        })
        .collect();
    assert_eq!(steps.len(), 10, "ten numbered steps: {steps:?}");
    let champion = Backend::start("v1", &[]).unwrap();
    let challenger = Backend::start("v2", &[]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let env = vec![
        ("CHAMPION_PORT", champion.port.to_string()),
        ("CHALLENGER_PORT", challenger.port.to_string()),
        ("LISTEN_PORT", free_port().unwrap().to_string()),
        ("ADMIN_PORT", free_port().unwrap().to_string()),
        ("WORK", work.path().display().to_string()),
        ("CARGO", "true".to_string()),
    ];
    let (ok, out) = bash(&blocks[0], &env, Duration::from_secs(120));
    let pids: Vec<u32> = ["envoy.pid", "canary.pid"].iter().filter_map(|p| pid(&work.path().join(p))).collect();
    let log = std::fs::read_to_string(work.path().join("canary.log")).unwrap_or_default();
    let result = std::panic::catch_unwind(|| {
        assert!(ok, "the steps failed:\n{out}\n--- canary.log:\n{log}");
        assert_eq!(pids.len(), 2, "{out}");
        // Envoy serves the rollout's first stage, and `canary status` says so.
        assert!(out.to_lowercase().contains("x-canary-stage: 1pct"), "{out}");
        assert!(out.contains("x-model-version: v1") || out.contains("x-model-version: v2"), "{out}");
        assert!(out.contains("1pct"), "{out}");
        assert!(out.contains("dashboard: http://127.0.0.1:"), "{out}");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(work.path().join("state/state.json")).unwrap()).unwrap();
        assert_eq!(state["phase"], "running", "{state}");
    });
    // The stop block ends both processes.
    let (stopped, stop_out) = bash(&blocks[1], &env, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    for p in &alive {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(stopped, "{stop_out}");
    assert!(alive.is_empty(), "still running after the stop block: {alive:?}");
}
