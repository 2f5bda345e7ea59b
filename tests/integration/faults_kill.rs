//! Fault test: the controller daemon killed with SIGKILL at seeded random
//! points of a rollout, 20 times, and restarted on the same state
//! directory each time, against real Envoy + the filter + real backends.
//! The rollout must end as an undisturbed run of the same spec does: same
//! final state, same stage sequence (none skipped or repeated), and a
//! decision log without gap or duplicate whose decisions chain (each one
//! starts where the one before left traffic).

use std::path::Path;
use std::time::{Duration, Instant};

use canary_tests::{decisions, spec_with, state, Daemon, Load, Rig};
use rand::{Rng, SeedableRng};

/// Only the error-rate gate, judged by the point-estimate rule: the
/// backends answer no errors, so machine load (latency) cannot cause a
/// false rollback, and a stage moves as soon as its minimums are met.
const GATES: &str = "  method: threshold\n  error_rate: { error_tolerance: 5 }";

const KILLS: usize = 20;
const SEED: u64 = 0x5eed_0010;

/// Stages of 6 s and 30 responses per version: at 1 % of the test load the
/// challenger gets those in about 2 s. Each judged stage takes 5 kills
/// after daemon lives of 50–1000 ms (about 3 s with the restarts), well
/// within its 6 s.
fn spec(rollout: &str, rig: &Rig) -> String {
    let stages: Vec<(u32, &str, u64)> = [1, 5, 20, 50].iter().map(|w| (*w, "6s", 30)).collect();
    spec_with(rollout, &format!("http://127.0.0.1:{}", rig.envoy.admin_port), &rig.envoy, &stages, GATES, "")
}

/// (action, to stage name, to epoch) of every move.
fn moves(state_dir: &Path) -> Vec<(String, String, u64)> {
    decisions(state_dir)
        .iter()
        .filter(|d| d["action"] != "hold")
        .map(|d| {
            (
                d["action"].as_str().unwrap_or("?").to_string(),
                d["to"]["stage_name"].as_str().unwrap_or("?").to_string(),
                d["to"]["epoch"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The state's history without times and sequence numbers (the number of
/// holds between moves depends on timing).
fn history(state_dir: &Path) -> Vec<serde_json::Value> {
    state(state_dir)["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut t| {
            if let Some(o) = t.as_object_mut() {
                o.remove("at");
                o.remove("seq");
            }
            t
        })
        .collect()
}

/// Sequence numbers 1, 2, 3 … and each decision starting where the one
/// before left traffic.
fn assert_log_is_whole(state_dir: &Path) {
    let log = decisions(state_dir);
    let seqs: Vec<u64> = log.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "decision log has a gap or a duplicate");
    for pair in log.windows(2) {
        assert_eq!(
            pair[1]["from"], pair[0]["to"],
            "decision {} does not start where {} left",
            pair[1]["seq"], pair[0]["seq"]
        );
    }
    let st = state(state_dir);
    assert_eq!(st["seq"].as_u64(), seqs.last().copied(), "the state and the log disagree on the last decision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_killed_20_times_ends_like_an_undisturbed_one() {
    let rig = Rig::start().await.unwrap();
    let load = Load::start(rig.envoy.url("/predict"), 32, 20_000, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();

    // The undisturbed run.
    let calm_dir = dir.path().join("calm");
    let started = Instant::now();
    let mut calm = Daemon::start(&calm_dir, Some(&spec("calm", &rig))).unwrap();
    let status = calm.wait_exit(Duration::from_secs(90)).await.unwrap();
    assert!(status.success(), "{}", calm.output());
    let calm_time = started.elapsed();
    assert_eq!(state(&calm_dir)["phase"], "promoted", "{}", calm.output());
    assert_log_is_whole(&calm_dir);

    // The same spec (another rollout name), killed at random points.
    let state_dir = dir.path().join("killed");
    let spec = spec("killed", &rig);
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let started = Instant::now();
    let (mut kills, mut lives_ms, mut stages_at_kill) = (0, vec![], vec![]);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    while kills < KILLS {
        // A quarter of the kills in each judged stage: once a stage had
        // its share, the daemon runs on until the next stage begins.
        let quota_stage = (kills / (KILLS / 4)) as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while state(&state_dir)["stage"].as_u64().unwrap_or(0) < quota_stage {
            assert!(Instant::now() < deadline, "stage {quota_stage} never began:\n{}", daemon.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let life = Duration::from_millis(rng.random_range(50..1000));
        tokio::time::sleep(life).await;
        if let Some(status) = daemon.proc.exited() {
            panic!(
                "the daemon ended ({status}) after {kills} kills, before all {KILLS}: stages too short?\n{}",
                daemon.output()
            );
        }
        daemon.kill9();
        kills += 1;
        lives_ms.push(life.as_millis() as u64);
        stages_at_kill.push(state(&state_dir)["stage"].as_u64().unwrap_or(99));
        assert!(!state(&state_dir)["phase"].as_str().unwrap_or("").starts_with("rolled"), "rolled back");
        // Restarted on the stored spec, as an operator would.
        daemon = Daemon::start(&state_dir, None).unwrap();
    }
    let status = daemon.wait_exit(Duration::from_secs(90)).await.unwrap();
    let killed_time = started.elapsed();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());

    let (a, b) = (state(&calm_dir), state(&state_dir));
    assert_eq!(b["phase"], "promoted", "{}", daemon.output());
    for key in ["phase", "stage", "epoch"] {
        assert_eq!(a[key], b[key], "final {key} differs from the undisturbed run");
    }
    assert_eq!(history(&calm_dir), history(&state_dir), "the stage history differs from the undisturbed run");
    assert_eq!(moves(&calm_dir), moves(&state_dir), "a stage was skipped or repeated");
    assert_eq!(
        moves(&state_dir).iter().map(|m| m.2).collect::<Vec<_>>(),
        vec![2, 3, 4, 5],
        "one epoch per move, none skipped or repeated"
    );
    assert_log_is_whole(&state_dir);
    // Envoy serves the final configuration.
    rig.envoy.wait_version("killed/5").await.unwrap();
    let mut per_stage = [0usize; 5];
    for s in &stages_at_kill {
        per_stage[(*s as usize).min(4)] += 1;
    }
    assert!(per_stage[..4].iter().all(|n| *n > 0), "a judged stage had no kill: {stages_at_kill:?}");
    // Temp files of the state, log and spec writes a kill interrupted are
    // gone (each start removes them; the daemon's pid and address files
    // are written without the lock, so theirs are left alone).
    let temp: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.starts_with(".daemon."))
        .collect();
    assert!(temp.is_empty(), "temp files left: {temp:?}");
    println!(
        "{kills} SIGKILLs (seed {SEED:#x}), lives {lives_ms:?} ms, kills per stage index {per_stage:?}; \
         undisturbed rollout {:.1} s, killed rollout {:.1} s; {} decisions vs {} undisturbed",
        calm_time.as_secs_f64(),
        killed_time.as_secs_f64(),
        decisions(&state_dir).len(),
        decisions(&calm_dir).len()
    );
}
