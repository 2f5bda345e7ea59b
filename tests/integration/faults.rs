//! Fault tests with real processes (Envoy + the filter + real backends, the
//! `canary run` daemon as a child process): the state directory failing to
//! take writes, Envoy restarted mid-stage, the Envoy admin API down, hung,
//! slow or answering garbage, and the webhook receiver down when a rollback
//! happens. Each holds what it must (never advances on missing data or
//! unsaved state), says so, and resumes once the fault is gone.
//!
//! Gates: the error rate only, judged by the point-estimate rule, with
//! backends that answer no errors unless a test says so: machine load
//! cannot cause a false rollback, and stages move as soon as their
//! minimums are met.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canary_tests::{
    decisions, spec_with, state, wait_stage, AdminMode, AdminProxy, Daemon, Envoy, Load, Receiver, Rig,
};

const GATES: &str = "  method: threshold\n  error_rate: { error_tolerance: 5 }";

fn load(rig: &Rig) -> Load {
    Load::start(rig.envoy.url("/predict"), 32, 20_000, Duration::ZERO)
}

fn admin_of(envoy: &Envoy) -> String {
    format!("http://127.0.0.1:{}", envoy.admin_port)
}

/// Four judged stages with the same minimums.
fn stages(min_duration: &str, min_requests: u64) -> Vec<(u32, &str, u64)> {
    [1, 5, 20, 50].iter().map(|w| (*w, min_duration, min_requests)).collect()
}

fn assert_log_has_no_gap(state_dir: &Path) {
    let seqs: Vec<u64> = decisions(state_dir).iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert!(!seqs.is_empty());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "decision log has a gap or duplicate");
}

/// (action, to stage name) of every move.
fn moves(state_dir: &Path) -> Vec<(String, String)> {
    decisions(state_dir)
        .iter()
        .filter(|d| d["action"] != "hold")
        .map(|d| (d["action"].as_str().unwrap().to_string(), d["to"]["stage_name"].as_str().unwrap().to_string()))
        .collect()
}

fn all_moves() -> Vec<(String, String)> {
    [("advance", "5pct"), ("advance", "20pct"), ("advance", "50pct"), ("promote", "100pct")]
        .iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect()
}

fn stage_of(state_dir: &Path) -> u64 {
    state(state_dir)["stage"].as_u64().unwrap_or(99)
}

/// The ECDS version Envoy serves now.
async fn active_version(envoy: &Envoy) -> String {
    let stats = envoy.stats("http_filter.canary.version_text").await.unwrap();
    stats.values().filter_map(|v| v.as_str()).next().unwrap_or("").to_string()
}

async fn daemon_get(state_dir: &Path, path: &str) -> (u16, String) {
    let addr = std::fs::read_to_string(state_dir.join("daemon.addr")).unwrap();
    let r = reqwest::get(format!("http://{}{path}", addr.trim())).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

// ---------------------------------------------------------------------
// State directory write failures

/// How the test makes the state directory refuse writes, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFault {
    /// The tmpfs holding the directory remounted read-only.
    ReadOnly,
    /// The tmpfs filled to the last byte.
    Full,
    /// No mount privileges and not root: permissions (root ignores them).
    Permissions,
}

/// A tmpfs mounted on the state directory; unmounted when dropped, even
/// when the test panics.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root, or a container
    /// without CAP_SYS_ADMIN).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs { path: path.to_path_buf() })
    }

    /// Remounts with `opt`. Going read-only fails while a file is open
    /// for writing (the daemon holds its lock file open for a few ms per
    /// evaluation): tried again until it is not.
    fn remount(&self, opt: &str) {
        for _ in 0..200 {
            let s = Command::new("mount")
                .args(["-o", &format!("remount,{opt}")])
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            if s.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("mount -o remount,{opt} {} kept failing", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding a file must not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Fills a filesystem to the brim with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    // Then byte by byte into the last partial page.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    path
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Breaks the state directory's writes in the given way.
fn break_writes(fault: WriteFault, state_dir: &Path, tmpfs: Option<&Tmpfs>) -> Option<PathBuf> {
    match fault {
        WriteFault::ReadOnly => {
            tmpfs.unwrap().remount("ro");
            None
        }
        WriteFault::Full => Some(fill(state_dir)),
        WriteFault::Permissions => {
            set_mode(state_dir, 0o555);
            set_mode(&state_dir.join("decisions.jsonl"), 0o444);
            set_mode(&state_dir.join("state.json"), 0o444);
            None
        }
    }
}

fn heal_writes(fault: WriteFault, state_dir: &Path, tmpfs: Option<&Tmpfs>, filler: Option<PathBuf>) {
    match fault {
        WriteFault::ReadOnly => tmpfs.unwrap().remount("rw"),
        WriteFault::Full => std::fs::remove_file(filler.unwrap()).unwrap(),
        WriteFault::Permissions => {
            set_mode(state_dir, 0o755);
            set_mode(&state_dir.join("decisions.jsonl"), 0o644);
            set_mode(&state_dir.join("state.json"), 0o644);
        }
    }
}

/// The state directory on a tmpfs: remounted read-only in one stage,
/// filled to the brim in the next. Each time the daemon must say so (an
/// error line per evaluation, `/status` still answering), keep the last
/// good state and log, leave Envoy where it was, and move on once writes
/// work again. Without mount privileges, permissions break the writes
/// instead (they bind only a non-root user); as root without them, the
/// test fails rather than pass having tested nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_refuses_writes_holds_the_stage_and_keeps_the_last_good_state() {
    let rig = Rig::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let (tmpfs, faults) = write_faults(&state_dir);
    let spec = spec_with("wfail", &admin_of(&rig.envoy), &rig.envoy, &stages("1s", 30), GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_stage(&state_dir, Some(1), Duration::from_secs(60), &daemon).await.unwrap();

    for fault in &faults {
        let errors_before = daemon.output().matches("evaluation failed, state unchanged").count();
        let filler = break_writes(*fault, &state_dir, tmpfs.as_ref());
        // What the last write left (one evaluation may have been under way).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = std::fs::read(state_dir.join("state.json")).unwrap();
        let logged = decisions(&state_dir).len();
        let version = active_version(&rig.envoy).await;
        let stage = stage_of(&state_dir);
        // Long enough for the stage's minimums (1 s, 30 responses) to be met.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let out = daemon.output();
        let errors = out.matches("evaluation failed, state unchanged").count() - errors_before;
        assert!(errors >= 5, "{fault:?}: {errors} error lines in 3 s:\n{out}");
        let why = match fault {
            WriteFault::ReadOnly => "Read-only file system",
            WriteFault::Full => "No space left on device",
            WriteFault::Permissions => "Permission denied",
        };
        // Which write fails first depends on the fault (the lock file on a
        // read-only mount, the state file on a full disk): the line names
        // the file and the reason.
        let named = out
            .lines()
            .any(|l| l.starts_with("evaluation failed") && l.contains(why) && l.contains(state_dir.to_str().unwrap()));
        assert!(named, "{fault:?}: the error does not say what and why:\n{out}");
        assert_eq!(std::fs::read(state_dir.join("state.json")).unwrap(), before, "{fault:?}: state file changed");
        assert_eq!(decisions(&state_dir).len(), logged, "{fault:?}: the log changed");
        assert_eq!(active_version(&rig.envoy).await, version, "{fault:?}: Envoy moved on unsaved state");
        let (code, body) = daemon_get(&state_dir, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((code, status["stage"].as_u64(), status["phase"].as_str()), (200, Some(stage), Some("running")));
        let (_, metrics) = daemon_get(&state_dir, "/metrics").await;
        let failed: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("canary_evaluation_errors_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(failed >= errors as f64, "{fault:?}: /metrics counts {failed} failed evaluations, the log {errors}");
        assert!(daemon.proc.exited().is_none(), "the daemon died on a write failure:\n{out}");

        let healed_at = Instant::now();
        heal_writes(*fault, &state_dir, tmpfs.as_ref(), filler);
        wait_stage(&state_dir, Some(stage + 1), Duration::from_secs(30), &daemon).await.unwrap();
        println!(
            "{fault:?}: {errors} failed evaluations reported in 3 s, state and log unchanged; advanced {} ms after writes worked again",
            healed_at.elapsed().as_millis()
        );
    }

    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "promoted", "{}", daemon.output());
    assert_eq!(moves(&state_dir), all_moves(), "a stage was skipped or repeated");
    assert_log_has_no_gap(&state_dir);
    drop(daemon);
}

/// How this machine can break the state directory's writes, with the
/// tmpfs when one could be mounted; fails the test (never passes
/// silently) as root without mount privileges.
fn write_faults(state_dir: &Path) -> (Option<Tmpfs>, Vec<WriteFault>) {
    let tmpfs = Tmpfs::mount(state_dir, "16m");
    let faults = match (&tmpfs, is_root()) {
        (Some(_), _) => vec![WriteFault::ReadOnly, WriteFault::Full],
        (None, false) => vec![WriteFault::Permissions],
        (None, true) => panic!(
            "running as root without mount privileges: neither a tmpfs nor permissions can make the state \
             directory refuse writes here (run as a normal user, or with CAP_SYS_ADMIN); \
             store::tests::a_failed_append_is_repaired_before_the_next_one covers the store layer"
        ),
    };
    std::fs::create_dir_all(state_dir).unwrap();
    (tmpfs, faults)
}

/// A gate fails while the state directory refuses writes: the rollback
/// is pushed all the same, stays pushed (the older state on disk is never
/// pushed again), is alerted at once, and is saved and logged once writes
/// work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reaches_envoy_and_stays_while_the_state_dir_refuses_writes() {
    let rig = Rig::start().await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let (tmpfs, faults) = write_faults(&state_dir);
    let fault = faults[0];
    let extra = format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n", receiver.url);
    let spec = spec_with("rofail", &admin_of(&rig.envoy), &rig.envoy, &stages("1s", 30), GATES, &extra);
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_stage(&state_dir, Some(1), Duration::from_secs(60), &daemon).await.unwrap();
    let filler = break_writes(fault, &state_dir, tmpfs.as_ref());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = std::fs::read(state_dir.join("state.json")).unwrap();
    let epoch = state(&state_dir)["epoch"].as_u64().unwrap();
    let logged = decisions(&state_dir).len();

    let fault_at = Instant::now();
    rig.challenger.control(serde_json::json!({"error_rate": 0.5})).await.unwrap();
    let rolled_back = format!("rofail/{}", epoch + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while active_version(&rig.envoy).await != rolled_back {
        assert!(Instant::now() < deadline, "{fault:?}: no rollback reached Envoy:\n{}", daemon.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = fault_at.elapsed();
    // It stays: 2 s of evaluations that cannot save anything.
    let served = rig.challenger.stats().await.unwrap().requests;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(active_version(&rig.envoy).await, rolled_back, "{fault:?}: the rollback was undone");
    }
    let later = rig.challenger.stats().await.unwrap().requests;
    assert!(later <= served + 50, "{fault:?}: the challenger still gets traffic ({served} → {later})");
    assert_eq!(std::fs::read(state_dir.join("state.json")).unwrap(), before, "{fault:?}: state written");
    assert_eq!(decisions(&state_dir).len(), logged);
    assert!(daemon.output().contains("evaluation failed"), "{}", daemon.output());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alerts_of(&receiver, "rollback").is_empty() {
        assert!(Instant::now() < deadline, "no rollback alert while unsaved: {:?}", receiver.bodies());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let healed_at = Instant::now();
    heal_writes(fault, &state_dir, tmpfs.as_ref(), filler);
    let status = daemon.wait_exit(Duration::from_secs(30)).await.unwrap();
    let saved_after = healed_at.elapsed();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "rolled_back");
    assert_eq!(state(&state_dir)["epoch"].as_u64(), Some(epoch + 1));
    let log = decisions(&state_dir);
    assert_eq!(log.iter().filter(|d| d["action"] == "rollback").count(), 1);
    assert_eq!(log.last().unwrap()["action"], "rollback");
    assert_log_has_no_gap(&state_dir);
    assert_eq!(active_version(&rig.envoy).await, rolled_back);
    assert_eq!(alerts_of(&receiver, "rollback").len(), 1, "alerted again when saved");
    println!(
        "{fault:?}: rollback at Envoy {} ms after the fault began, held 2 s unsaved, saved and logged {} ms after writes worked",
        applied.as_millis(),
        saved_after.as_millis()
    );
    drop(daemon);
}

// ---------------------------------------------------------------------
// Envoy restarted mid-stage

/// Responses of `role` (champion, challenger) in a decision's window.
fn answered(d: &serde_json::Value, role: &str) -> u64 {
    d["window"][role]["responses"].as_array().into_iter().flatten().filter_map(|n| n.as_u64()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_restarted_mid_stage_loses_no_counts_and_counts_none_twice() {
    let mut rig = Rig::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    // The 5 % stage lasts 8 s: Envoy restarts in its middle.
    let stages = [(1, "1s", 30), (5, "8s", 30), (20, "1s", 30), (50, "1s", 30)];
    let spec = spec_with("restart", &admin_of(&rig.envoy), &rig.envoy, &stages, GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_stage(&state_dir, Some(1), Duration::from_secs(60), &daemon).await.unwrap();
    let served = |s: &canary_tests::BackendStats| s.requests;
    let at_start = served(&rig.champion.stats().await.unwrap()) + served(&rig.challenger.stats().await.unwrap());
    let epoch = state(&state_dir)["epoch"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let in_epoch = |d: &serde_json::Value| d["from"]["epoch"].as_u64() == Some(epoch) && d["window"].is_object();
    let before: Vec<serde_json::Value> = decisions(&state_dir).into_iter().filter(in_epoch).collect();
    let last_before = before.last().expect("no window in the stage before the restart").clone();
    let down = rig.envoy.restart().await.unwrap();
    assert_eq!(stage_of(&state_dir), 1, "the stage ended during the restart");

    wait_stage(&state_dir, Some(2), Duration::from_secs(30), &daemon).await.unwrap();
    let at_end = served(&rig.champion.stats().await.unwrap()) + served(&rig.challenger.stats().await.unwrap());
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "promoted", "{}", daemon.output());
    assert_eq!(moves(&state_dir), all_moves());
    assert_log_has_no_gap(&state_dir);

    let log = decisions(&state_dir);
    let windows: Vec<&serde_json::Value> = log.iter().filter(|d| in_epoch(d)).collect();
    // Never fewer than before (a reset read as negative, or lost counts).
    for pair in windows.windows(2) {
        for v in ["champion", "challenger"] {
            assert!(
                answered(pair[1], v) >= answered(pair[0], v),
                "{v}'s count went down from #{} to #{}: {} → {}",
                pair[0]["seq"],
                pair[1]["seq"],
                answered(pair[0], v),
                answered(pair[1], v)
            );
        }
    }
    let resets = windows.iter().filter(|d| !d["window"]["coverage"]["resets"].as_array().unwrap().is_empty()).count();
    assert_eq!(resets, 1, "the restart was not seen as one counter reset");
    let blind = log
        .iter()
        .filter(|d| {
            d["from"]["epoch"].as_u64() == Some(epoch) && d["reasons"][0].as_str().unwrap().starts_with("no data")
        })
        .count();
    let advance = log.iter().find(|d| d["action"] == "advance" && d["from"]["epoch"].as_u64() == Some(epoch)).unwrap();
    let total = |d: &serde_json::Value| answered(d, "champion") + answered(d, "challenger");
    // Not twice: the window holds no more than the backends served in the
    // stage (less what Envoy counted but had not published when killed).
    let served_in_stage = at_end - at_start;
    assert!(
        total(advance) <= served_in_stage + served_in_stage / 50 + 100,
        "counted {} responses, backends served {served_in_stage}: counted twice",
        total(advance)
    );
    assert!(total(advance) > total(&last_before), "nothing counted after the restart");
    assert!(advance["window"]["elapsed_ms"].as_u64().unwrap() >= 8000);
    println!(
        "Envoy down {} ms; {blind} holds without data; window {} responses before the restart, {} at the advance; backends served {served_in_stage} in the stage",
        down.as_millis(),
        total(&last_before),
        total(advance)
    );
}

// ---------------------------------------------------------------------
// Envoy admin API down, hung, slow, garbage

fn alerts_of(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver.bodies().into_iter().filter(|b| b["kind"] == kind).collect()
}

/// One fault per judged stage, started right after the stage begins and
/// held 5 s (the stage needs 1 s; a hung read takes the 1 s timeout, so at
/// least 3 evaluations fail, enough for the alert): the stage holds on "no data", a
/// source-failure alert reaches the webhook, and the rollout moves on
/// once the admin API answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_down_hung_slow_or_garbage_holds_alerts_and_resumes() {
    let rig = Rig::start().await.unwrap();
    let proxy = AdminProxy::start(rig.envoy.admin_port).await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let extra = format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n  source_failures: 3\n", receiver.url);
    let spec = spec_with("blind", &proxy.url, &rig.envoy, &stages("1s", 30), GATES, &extra);
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let modes = [AdminMode::Down, AdminMode::Hang, AdminMode::Slow(Duration::from_millis(2500)), AdminMode::Garbage];
    for (i, mode) in modes.iter().enumerate() {
        let stage = i as u64;
        wait_stage(&state_dir, Some(stage), Duration::from_secs(60), &daemon).await.unwrap();
        let seq = state(&state_dir)["seq"].as_u64().unwrap();
        proxy.set(*mode);
        let alerts_before = alerts_of(&receiver, "source_failing").len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(stage_of(&state_dir), stage, "{mode:?}: moved without data:\n{}", daemon.output());
        let during: Vec<serde_json::Value> =
            decisions(&state_dir).into_iter().filter(|d| d["seq"].as_u64().unwrap() > seq).collect();
        let blind: Vec<&serde_json::Value> =
            during.iter().filter(|d| d["reasons"][0].as_str().unwrap().starts_with("no data")).collect();
        assert!(during.iter().all(|d| d["action"] == "hold"), "{mode:?}: {during:?}");
        assert!(blind.len() >= 3, "{mode:?}: only {} holds without data", blind.len());
        let deadline = Instant::now() + Duration::from_secs(5);
        while alerts_of(&receiver, "source_failing").len() == alerts_before {
            assert!(Instant::now() < deadline, "{mode:?}: no source-failure alert: {:?}", receiver.bodies());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let alert = alerts_of(&receiver, "source_failing").pop().unwrap();
        assert_eq!(alert["stage"], ["1pct", "5pct", "20pct", "50pct"][i], "{alert}");
        let back = Instant::now();
        proxy.set(AdminMode::Pass);
        let deadline = Instant::now() + Duration::from_secs(30);
        while stage_of(&state_dir) == stage && state(&state_dir)["phase"] == "running" {
            assert!(Instant::now() < deadline, "{mode:?}: did not resume:\n{}", daemon.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "{mode:?}: {} holds without data ({}), alert delivered, moved on {} ms after the admin API came back",
            blind.len(),
            blind.last().unwrap()["reasons"][0].as_str().unwrap(),
            back.elapsed().as_millis()
        );
    }
    let status = daemon.wait_exit(Duration::from_secs(30)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "promoted");
    assert_eq!(moves(&state_dir), all_moves());
    assert_eq!(alerts_of(&receiver, "source_failing").len(), 4, "one alert per outage");
    assert_log_has_no_gap(&state_dir);
    assert!(proxy.connections.load(std::sync::atomic::Ordering::Relaxed) > 20);
}

// ---------------------------------------------------------------------
// Webhook receiver down at a rollback

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A webhook receiver on a given port that records what it gets and when.
async fn receiver_on(
    port: u16,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<std::sync::Mutex<Vec<(Instant, serde_json::Value)>>>) {
    use axum::routing::post;
    let got = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push((Instant::now(), body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    (tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }), got)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Two webhooks, both down when the challenger fails its gate: the
/// rollback reaches Envoy at once all the same. One comes back within the
/// retry window and gets the alert; the other never does, and the daemon
/// gives up on it after `alerts.retry_attempts`, then exits. The operator
/// token the daemon runs with appears in no log, state file or report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reaches_envoy_while_webhooks_are_down_and_the_alert_is_retried() {
    let rig = Rig::start().await.unwrap();
    rig.challenger.control(serde_json::json!({"error_rate": 0.5})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let (late, never) = (free_port(), free_port());
    let (late_url, never_url) = (format!("http://127.0.0.1:{late}/hook"), format!("http://127.0.0.1:{never}/hook"));
    // 6 attempts, 0.3 s apart at first, then up to 1 s: a window of ~4 s.
    let extra = format!(
        "alerts:\n  webhooks: [{{ url: \"{late_url}\" }}, {{ url: \"{never_url}\" }}]\n  retry_attempts: 6\n  retry_backoff: 300ms\n  retry_max_backoff: 1s\n"
    );
    let spec = spec_with("deaf", &admin_of(&rig.envoy), &rig.envoy, &stages("1s", 30), GATES, &extra);
    let token = "faults-operator-token-5e1c7a";
    let load = load(&rig);
    let mut daemon = Daemon::start_with(&state_dir, Some(&spec), &[("CANARY_TOKEN", token)]).unwrap();
    // The token in use: a wrong one refused, the right one accepted (and
    // the command refused by the phase, so nothing changes).
    canary_tests::wait_until(
        Duration::from_secs(15),
        "daemon.addr",
        || state_dir.join("daemon.addr").exists(),
        || daemon.output(),
    )
    .await
    .unwrap();
    let addr = std::fs::read_to_string(state_dir.join("daemon.addr")).unwrap();
    for (auth, want) in [(format!("Bearer {token}x"), 401), (format!("Bearer {token}"), 409)] {
        let r = reqwest::Client::new()
            .post(format!("http://{}/api/resume", addr.trim()))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want);
    }

    wait_stage(&state_dir, None, Duration::from_secs(60), &daemon).await.unwrap();
    let rolled_back_at = Instant::now();
    assert_eq!(state(&state_dir)["phase"], "rolled_back", "{}", daemon.output());
    let epoch = state(&state_dir)["epoch"].as_u64().unwrap();
    // Envoy at 0 % challenger, whatever the webhooks do.
    rig.envoy.wait_version(&format!("deaf/{epoch}")).await.unwrap();
    let applied = rolled_back_at.elapsed();
    let ecds = std::fs::read_to_string(rig.envoy.sink.path()).unwrap();
    assert!(ecds.contains("challenger_weight_bp\\\":0") || ecds.contains("\"challenger_weight_bp\":0"), "{ecds}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rig.challenger.stats().await.unwrap().requests;

    // One receiver comes back 1.5 s after the rollback.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (server, got) = receiver_on(late).await;
    let came_back = rolled_back_at.elapsed();
    let status = daemon.wait_exit(Duration::from_secs(30)).await.unwrap();
    let exited = rolled_back_at.elapsed();
    load.stop().await;
    server.abort();
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert_eq!(rig.challenger.stats().await.unwrap().requests, after, "the challenger got traffic after the rollback");

    let got = got.lock().unwrap().clone();
    let rollbacks: Vec<&(Instant, serde_json::Value)> = got.iter().filter(|(_, b)| b["kind"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 1, "the late webhook got {} rollback alerts", rollbacks.len());
    let delivered = rollbacks[0].0.duration_since(rolled_back_at);
    assert!(delivered > applied, "the alert went out before the rollback reached Envoy");
    let failed_attempts = |url: &str| out.lines().filter(|l| l.contains("alert attempt") && l.contains(url)).count();
    let (late_failed, never_failed) = (failed_attempts(&late_url), failed_attempts(&never_url));
    assert!(late_failed >= 2, "the late webhook was tried {late_failed} times before it came back:\n{out}");
    assert_eq!(never_failed, 5, "the dead webhook: 5 failed attempts then the sixth gives up:\n{out}");
    assert!(
        out.lines().any(|l| l.contains("not delivered") && l.contains(&never_url) && l.contains("after 6 attempts")),
        "no give-up line for the dead webhook:\n{out}"
    );
    assert!(!out.contains("still undelivered at exit"), "{out}");

    // The token is nowhere the daemon wrote.
    assert!(!out.contains(token), "the token is in the daemon's output");
    for f in files_under(&state_dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(token), "the token is in {}", f.display());
    }
    assert!(got.iter().all(|(_, b)| !b.to_string().contains(token)), "the token is in an alert");
    println!(
        "rollback applied by Envoy {} ms after the state said rolled back; late webhook back at {} ms after {late_failed} failed attempts, alert delivered at {} ms; dead webhook given up after 6 attempts; daemon exited at {} ms",
        applied.as_millis(),
        came_back.as_millis(),
        delivered.as_millis(),
        exited.as_millis()
    );
}

/// A rollback from the dashboard while the only webhook is down: the
/// answer comes at once (the alert is retried in the background, not in the
/// request), and the daemon still retries it to the end before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_rollback_answers_at_once_while_its_alert_is_retried() {
    let rig = Rig::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    // 4 attempts, 1 s then 2 s apart: at least 4 s of retries.
    let extra = format!(
        "alerts:\n  webhooks: [{{ url: \"{dead}\" }}]\n  retry_attempts: 4\n  retry_backoff: 1s\n  retry_max_backoff: 2s\n"
    );
    let spec = spec_with("panic", &admin_of(&rig.envoy), &rig.envoy, &stages("1h", 30), GATES, &extra);
    let token = "faults-dashboard-token-91ab";
    let mut daemon = Daemon::start_with(&state_dir, Some(&spec), &[("CANARY_TOKEN", token)]).unwrap();
    canary_tests::wait_decision(&state_dir, Duration::from_secs(15), &daemon, |_| true).await.unwrap();
    let addr = std::fs::read_to_string(state_dir.join("daemon.addr")).unwrap();
    let asked = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/rollback", addr.trim()))
        .header("authorization", format!("Bearer {token}"))
        .json(&serde_json::json!({"reason": "fault test"}))
        .send()
        .await
        .unwrap();
    let answered = asked.elapsed();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert!(answered < Duration::from_millis(2500), "the dashboard waited {answered:?} for the webhook");
    rig.envoy.wait_version("panic/2").await.unwrap();
    let status = daemon.wait_exit(Duration::from_secs(30)).await.unwrap();
    let exited = asked.elapsed();
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert_eq!(state(&state_dir)["phase"], "rolled_back");
    let failed = out.lines().filter(|l| l.contains("alert attempt") && l.contains(&dead)).count();
    assert_eq!(failed, 3, "3 failed attempts logged, then the 4th gives up (exited after {exited:?}):\n{out}");
    assert!(out.contains("after 4 attempts"), "{out}");
    assert!(exited >= Duration::from_secs(3), "the daemon exited after {exited:?}, before the retries ended");
    println!(
        "dashboard rollback answered in {} ms; daemon retried the alert and exited {} ms after the request",
        answered.as_millis(),
        exited.as_millis()
    );
}

/// SIGTERM while an alert is being retried: the daemon stops evaluating
/// at once but gives the alert its remaining attempts (at most 10 s)
/// before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_finishes_retrying_its_alerts_first() {
    let rig = Rig::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let closed_admin = format!("http://127.0.0.1:{}", free_port());
    // The first evaluation without stats alerts; 3 attempts 1 s apart.
    let extra = format!(
        "alerts:\n  webhooks: [{{ url: \"{dead}\" }}]\n  source_failures: 1\n  retry_attempts: 3\n  retry_backoff: 1s\n  retry_max_backoff: 1s\n"
    );
    let spec = spec_with("stopped", &closed_admin, &rig.envoy, &stages("1h", 30), GATES, &extra);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    canary_tests::wait_until(
        Duration::from_secs(15),
        "a first failed alert attempt",
        || daemon.output().contains("alert attempt 1 of 3 failed"),
        || daemon.output(),
    )
    .await
    .unwrap();
    let stopped_at = Instant::now();
    let term = Command::new("kill").args(["-TERM", &daemon.proc.pid().to_string()]).status().unwrap();
    assert!(term.success());
    let status = daemon.wait_exit(Duration::from_secs(15)).await.unwrap();
    let took = stopped_at.elapsed();
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert!(out.contains("alert attempt 2 of 3 failed") && out.contains("after 3 attempts"), "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!state_dir.join("daemon.pid").exists(), "pid file left behind");
    println!("SIGTERM → exit in {} ms, after the alert's last attempt", took.as_millis());
}
