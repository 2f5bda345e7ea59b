//! `make demo` end to end, reduced (short stages): the healthy scenario ends
//! promoted, the faulty one rolled back with the alert shown; reports are
//! written and no process is left behind.

use std::process::Command;
use std::time::Duration;

use canary_tests::{pid_alive, workspace_bin};

fn run_demo(scenario: &str) -> (String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(workspace_bin("demo").unwrap())
        // Stages last at least 1.5 s; the demo's spec judges with the
        // default (anytime) engine: the early stages advance on "no harm
        // found", the 50 % stage proves every gate (about 45 s in all here).
        .args(["--scenario", scenario, "--stage-seconds", "1.5", "--timeout-seconds", "240", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "demo {scenario} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (stdout, out_dir, dir)
}

fn pids(stdout: &str) -> Vec<u32> {
    ["Envoy ", "controller daemon (pid "]
        .iter()
        .filter_map(|p| stdout.split(p).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

fn assert_nothing_left(stdout: &str) {
    let pids = pids(stdout);
    assert_eq!(pids.len(), 2, "{stdout}");
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(!pid_alive(pid), "demo left pid {pid} running");
    }
}

#[test]
fn the_healthy_demo_is_promoted_and_writes_reports() {
    let (stdout, out, _dir) = run_demo("healthy");
    assert!(stdout.contains("rollout promoted"), "{stdout}");
    for stage in ["1pct", "5pct", "20pct", "50pct"] {
        assert!(stdout.contains(&format!("{stage} (")), "no decision shown for {stage}:\n{stdout}");
    }
    let reports: Vec<_> = std::fs::read_dir(out.join("reports")).unwrap().collect();
    assert_eq!(reports.len(), 5, "4 stage reports and an index");
    assert_nothing_left(&stdout);
}

#[test]
fn the_faulty_demo_is_rolled_back_with_the_alert_shown() {
    let (stdout, out, _dir) = run_demo("faulty");
    assert!(stdout.contains("rollout rolled back"), "{stdout}");
    assert!(stdout.contains("fault injected"), "{stdout}");
    assert!(stdout.contains("ALERT (webhook received): *canary demo: rolled back"), "{stdout}");
    assert!(out.join("reports/README.md").exists());
    assert_nothing_left(&stdout);
}
