//! `make demo` runs end to end (a reduced run) and leaves no process behind.

use std::process::Command;
use std::time::Duration;

use canary_tests::{pid_alive, workspace_bin};

#[test]
fn demo_shows_the_split_at_every_stage_and_stops_what_it_started() {
    let out = Command::new(workspace_bin("demo").unwrap()).args(["--users", "400"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for stage in ["1pct", "5pct", "20pct", "50pct", "100pct"] {
        assert!(stdout.lines().any(|l| l.starts_with(stage)), "no row for {stage}:\n{stdout}");
    }
    let last = stdout.lines().find(|l| l.starts_with("100pct")).unwrap();
    let cols: Vec<&str> = last.split_whitespace().collect();
    // stage weight applied requests v1 v2 share moved-back counted
    assert_eq!(&cols[3..6], ["400", "0", "400"], "{last}");
    assert_eq!(cols[8], "400", "{last}");

    let pid: u32 = stdout.split("Envoy (pid ").nth(1).and_then(|s| s.split(')').next()).unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pid_alive(pid), "demo left Envoy (pid {pid}) running");
}
