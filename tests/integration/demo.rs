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
    // The controller's reports: 4 stages and the whole rollout, each as
    // Markdown, HTML and JSON, and an index; readable numbers only.
    let mut names: Vec<String> = std::fs::read_dir(out.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let summaries: Vec<&String> = names.iter().filter(|n| n.ends_with(".md")).collect();
    assert_eq!(summaries.len(), 6, "{names:?}");
    for md in summaries.iter().filter(|n| n.as_str() != "README.md") {
        for ext in ["html", "json"] {
            assert!(names.contains(&md.replace(".md", &format!(".{ext}"))), "{md} has no {ext}: {names:?}");
        }
    }
    for name in names.iter().filter(|n| n.ends_with(".md") || n.ends_with(".html")) {
        let text = std::fs::read_to_string(out.join("reports").join(name)).unwrap();
        assert_eq!(canary_judge::report::unreadable_numbers(&text), Vec::<String>::new(), "{name}");
    }
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
