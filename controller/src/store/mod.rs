//! The rollout's durable home, a directory:
//!
//! ```text
//!   spec.yaml        the spec as the rollout started (gates fixed up front)
//!   state.json       RolloutState, replaced atomically (small: a few KiB)
//!   tracker/         the stats source's reset tracker, in shards
//!                    (shard-NN.json, each replaced atomically; a few are
//!                    rewritten per interval, see ResetTracker); with
//!                    `envoy.counts: cluster` also the cumulative counts'
//!                    own tracker (cluster-shard-NN.json, the same way) and
//!                    the stage baselines (cluster-base-NN.json, rewritten
//!                    only when they change: a stage's first read, a new
//!                    Envoy; see ClusterCounts)
//!   decisions.jsonl  every decision, one JSON line each, seq 1, 2, 3 … without gaps
//!                    (layout `canary.decision/v1`, see [`log_line`])
//!   lock             flock: one writer at a time (daemon, CLI commands)
//!   daemon.pid       the running daemon, if any
//!   reports/         canary analysis reports (see [`reports`])
//! ```
//!
//! Order of writes for a decision: state first, then the log line. A crash
//! between the two is repaired on the next open: the state keeps its last
//! decision, and [`Store::repair_log`] appends it if the log lacks it, so the
//! log has neither gaps nor duplicates.

pub mod durable;
pub mod log_line;
pub mod reports;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fs2::FileExt;

use canary_judge::evidence::cluster::{BaselineShard, ClusterCounts};
use canary_judge::evidence::tracker::{ResetTracker, TrackerShard, SHARDS};
use canary_judge::rollout::{Decision, RolloutState};
use canary_judge::spec::{RolloutSpec, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("not writing {path}: the new state would not read back ({message}); the previous state is kept")]
    Unreadable { path: PathBuf, message: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// An append to the log failed since the last repair (disk full,
    /// read-only): the log may lack the state's last decision or end in a
    /// torn line, and must be repaired before the next append, or the log
    /// would get a gap.
    log_behind: Arc<AtomicBool>,
}

/// Held while reading-modifying-writing; released on drop.
pub struct Lock {
    file: File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { what, path: path.to_path_buf(), source }
}

impl Store {
    /// Opens (creating if needed) a state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create the state directory", &dir))?;
        Ok(Store { dir, log_behind: Arc::default() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Takes the exclusive lock (waits for the holder). On a directory
    /// that refuses writes (read-only mount) the existing lock file is
    /// locked read-only: a rollback must still be decided and pushed there,
    /// even though its state cannot be saved yet.
    pub fn lock(&self) -> Result<Lock> {
        let p = self.path("lock");
        let file = match OpenOptions::new().create(true).truncate(false).write(true).open(&p) {
            Ok(f) => f,
            Err(e) => File::open(&p).map_err(|_| io("open", &p)(e))?,
        };
        file.lock_exclusive().map_err(io("lock", &p))?;
        Ok(Lock { file })
    }

    pub fn load_spec(&self) -> Result<Option<RolloutSpec>> {
        let p = self.path("spec.yaml");
        if !p.exists() {
            return Ok(None);
        }
        Ok(Some(RolloutSpec::load(&p)?))
    }

    pub fn save_spec(&self, spec: &RolloutSpec) -> Result<()> {
        let p = self.path("spec.yaml");
        durable::write_atomic(&p, spec.to_yaml().as_bytes()).map_err(io("write", &p))
    }

    pub fn load_state(&self) -> Result<Option<RolloutState>> {
        let p = self.path("state.json");
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &p)(e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Corrupt { path: p, message: e.to_string() })
    }

    pub fn save_state(&self, state: &RolloutState) -> Result<()> {
        let p = self.path("state.json");
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| StoreError::Corrupt { path: p.clone(), message: e.to_string() })?;
        // JSON has no infinity or NaN: serde_json writes them as null, which
        // no f64 field reads back. A state the next evaluation could not
        // load is refused here instead of replacing the good one.
        if let Err(e) = serde_json::from_slice::<RolloutState>(&bytes) {
            return Err(StoreError::Unreadable { path: p, message: e.to_string() });
        }
        durable::write_atomic(&p, &bytes).map_err(io("write", &p))
    }

    fn tracker_dir(&self) -> PathBuf {
        self.path("tracker")
    }

    fn shard_path(&self, prefix: &str, index: usize) -> PathBuf {
        self.tracker_dir().join(format!("{prefix}-{index:02}.json"))
    }

    /// The reset tracker saved in `tracker/`, `None` if no shard was ever
    /// saved. A shard that cannot be read is left out with an error logged,
    /// as a tracker that could not be read always was: it only refines
    /// counts across Envoy restarts.
    pub fn load_tracker(&self) -> Result<Option<ResetTracker>> {
        self.load_tracker_shards("shard")
    }

    fn load_tracker_shards(&self, prefix: &str) -> Result<Option<ResetTracker>> {
        let Some(shards) = self.load_shards::<TrackerShard>(prefix, |s| s.shard)? else { return Ok(None) };
        match ResetTracker::from_shards(shards) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                tracing::error!("reset tracker in {} unreadable, starting afresh: {e}", self.tracker_dir().display());
                Ok(Some(ResetTracker::default()))
            }
        }
    }

    /// The readable shards `tracker/<prefix>-NN.json`, `None` if there is none at all.
    fn load_shards<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        index_of: impl Fn(&T) -> usize,
    ) -> Result<Option<Vec<T>>> {
        let mut shards = vec![];
        let mut found = false;
        for index in 0..SHARDS {
            let p = self.shard_path(prefix, index);
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &p)(e)),
            };
            found = true;
            match serde_json::from_slice::<T>(&bytes) {
                Ok(shard) if index_of(&shard) == index => shards.push(shard),
                Ok(shard) => tracing::error!("{}: holds shard {}, left out", p.display(), index_of(&shard)),
                Err(e) => tracing::error!("{}: unreadable, left out: {e}", p.display()),
            }
        }
        Ok(found.then_some(shards))
    }

    /// Saves the shards the tracker says are due
    /// ([`ResetTracker::take_shards_to_save`]); returns the bytes written.
    /// Shards not written are marked again, to be retried at the next save.
    pub fn save_tracker(&self, tracker: &mut ResetTracker) -> Result<u64> {
        self.save_tracker_shards("shard", tracker)
    }

    fn save_tracker_shards(&self, prefix: &str, tracker: &mut ResetTracker) -> Result<u64> {
        let due = tracker.take_shards_to_save();
        self.write_shards(prefix, &due, |i| serde_json::to_vec(&tracker.shard(i))).map_err(|(n, e)| {
            tracker.must_save(&due[n..]);
            e
        })
    }

    /// Writes shards `due` (each atomically); on a failure, which one and why.
    fn write_shards(
        &self,
        prefix: &str,
        due: &[usize],
        bytes_of: impl Fn(usize) -> serde_json::Result<Vec<u8>>,
    ) -> Result<u64, (usize, StoreError)> {
        let dir = self.tracker_dir();
        if !due.is_empty() {
            fs::create_dir_all(&dir).map_err(|e| (0, io("create", &dir)(e)))?;
        }
        let mut written = 0;
        for (n, &index) in due.iter().enumerate() {
            let p = self.shard_path(prefix, index);
            let bytes =
                bytes_of(index).map_err(|e| (n, StoreError::Corrupt { path: p.clone(), message: e.to_string() }))?;
            durable::write_atomic(&p, &bytes).map_err(|e| (n, io("write", &p)(e)))?;
            written += bytes.len() as u64;
        }
        Ok(written)
    }

    /// The stage baselines of `envoy.counts: cluster` and their reset
    /// tracker, saved in `tracker/cluster-*.json`; `None` if never saved.
    /// Unreadable shards are left out with an error logged (those
    /// endpoints are baselined at their next read).
    pub fn load_cluster_counts(&self) -> Result<Option<ClusterCounts>> {
        let tracker = self.load_tracker_shards("cluster-shard")?;
        let baselines = self.load_shards::<BaselineShard>("cluster-base", |s| s.shard)?;
        if tracker.is_none() && baselines.is_none() {
            return Ok(None);
        }
        match ClusterCounts::restore(tracker.unwrap_or_default(), baselines.unwrap_or_default()) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::error!(
                    "cluster baselines in {} unreadable, starting afresh: {e}",
                    self.tracker_dir().display()
                );
                Ok(Some(ClusterCounts::default()))
            }
        }
    }

    /// Saves what is due of the cluster counts: the tracker's shards as
    /// [`Store::save_tracker`] does, and the baseline shards that changed
    /// (none in a steady stage). Returns the bytes written; what failed is
    /// retried at the next save.
    pub fn save_cluster_counts(&self, counts: &mut ClusterCounts) -> Result<u64> {
        let due = counts.take_baselines_to_save();
        let bases = self.write_shards("cluster-base", &due, |i| serde_json::to_vec(&counts.baseline_shard(i)));
        let bases = bases.map_err(|(n, e)| {
            counts.must_save_baselines(&due[n..]);
            e
        });
        let tracker = self.save_tracker_shards("cluster-shard", counts.tracker_mut());
        Ok(bases? + tracker?)
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("decisions.jsonl")
    }

    pub fn append_decision(&self, d: &Decision) -> Result<()> {
        let p = self.log_path();
        let line = log_line::to_line(d).map_err(|e| StoreError::Corrupt { path: p.clone(), message: e.to_string() })?;
        let appended = durable::append_line(&p, &line).map_err(io("append to", &p));
        if appended.is_err() {
            self.log_behind.store(true, Ordering::SeqCst);
        }
        appended
    }

    /// [`Store::repair_log`] if an append failed since the last repair;
    /// cheap otherwise (the daemon calls it before every decision).
    pub fn repair_log_if_behind(&self, state: &RolloutState) -> Result<()> {
        if self.log_behind.load(Ordering::SeqCst) {
            self.repair_log(state)?;
        }
        Ok(())
    }

    /// Every logged decision, in order. A torn last line (a crash mid-append)
    /// is skipped; a bad line elsewhere is corruption, and a line in a layout
    /// this controller does not read (a newer one's) is refused wherever it is.
    pub fn decisions(&self) -> Result<Vec<Decision>> {
        Ok(self.decisions_and_lines()?.0)
    }

    /// [`Store::decisions`], and the log's lines they were read from, as they
    /// are on disk (each with its newline).
    fn decisions_and_lines(&self) -> Result<(Vec<Decision>, String)> {
        let p = self.log_path();
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], String::new())),
            Err(e) => return Err(io("read", &p)(e)),
        };
        let lines: Vec<String> =
            BufReader::new(file).lines().collect::<std::io::Result<_>>().map_err(io("read", &p))?;
        let mut out = Vec::with_capacity(lines.len());
        let mut good = String::new();
        for (i, line) in lines.iter().enumerate() {
            match log_line::from_line(line.as_bytes()) {
                Ok(d) => {
                    out.push(d);
                    good.push_str(line);
                    good.push('\n');
                }
                Err(log_line::LineError::Json(_)) if i + 1 == lines.len() => break,
                Err(e) => return Err(StoreError::Corrupt { path: p, message: format!("line {}: {e}", i + 1) }),
            }
        }
        Ok((out, good))
    }

    /// The last `n` decisions (reads the whole log; it grows by one line per
    /// interval, so this stays cheap for the life of a rollout).
    pub fn recent_decisions(&self, n: usize) -> Result<Vec<Decision>> {
        let all = self.decisions()?;
        Ok(all[all.len().saturating_sub(n)..].to_vec())
    }

    /// Makes the log agree with the state after a crash: drops a torn last
    /// line, appends the state's last decision if the log lacks it.
    pub fn repair_log(&self, state: &RolloutState) -> Result<()> {
        self.repair_log_inner(state)?;
        self.log_behind.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn repair_log_inner(&self, state: &RolloutState) -> Result<()> {
        let p = self.log_path();
        // The good lines as they are on disk: one written before the log was
        // versioned is kept as it was written.
        let (decisions, good) = self.decisions_and_lines()?;
        let good_len = good.len();
        if let Ok(meta) = fs::metadata(&p) {
            if meta.len() as usize != good_len && !decisions.is_empty() {
                // Rewrite without the torn tail.
                durable::write_atomic(&p, good.as_bytes()).map_err(io("repair", &p))?;
            } else if decisions.is_empty() && meta.len() > 0 {
                durable::write_atomic(&p, b"").map_err(io("repair", &p))?;
            }
        }
        let logged = decisions.last().map_or(0, |d| d.seq);
        match &state.last_decision {
            Some(d) if d.seq > logged => {
                if d.seq != logged + 1 {
                    return Err(StoreError::Corrupt {
                        path: p,
                        message: format!("log ends at decision {logged} but the state is at {}", d.seq),
                    });
                }
                self.append_decision(d)
            }
            _ => Ok(()),
        }
    }

    /// Removes temp files of atomic writes a crash interrupted
    /// (`.state.json.XXXXXX` …); call with the lock held, since only
    /// writers under the lock make them. Returns how many went.
    pub fn remove_stale_temp_files(&self) -> usize {
        let stale = |name: &str| {
            ["state.json", "decisions.jsonl", "spec.yaml"].iter().any(|f| name.starts_with(&format!(".{f}.")))
        };
        let Ok(entries) = fs::read_dir(&self.dir) else { return 0 };
        let top = entries
            .flatten()
            .filter(|e| stale(&e.file_name().to_string_lossy()))
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count();
        let Ok(entries) = fs::read_dir(self.tracker_dir()) else { return top };
        top + entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(".shard-") || name.starts_with(".cluster-")
            })
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count()
    }

    pub fn pid_path(&self) -> PathBuf {
        self.path("daemon.pid")
    }

    /// Where the running daemon writes its HTTP address.
    pub fn addr_path(&self) -> PathBuf {
        self.path("daemon.addr")
    }

    /// A daemon that exits removes its pid and address files: neither may
    /// point at a process or port that is gone.
    pub fn remove_daemon_files(&self) {
        let _ = fs::remove_file(self.pid_path());
        let _ = fs::remove_file(self.addr_path());
    }

    /// The running daemon's PID, if its pid file names a live process.
    pub fn daemon_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_judge::rollout::Command;

    fn spec() -> RolloutSpec {
        RolloutSpec::from_yaml(
            r#"
rollout: r
champion: v1
challenger: v2
stages: [{ weight_percent: 10, min_requests: 1 }, { weight_percent: 100 }]
gates: { error_rate: { error_tolerance: 1 } }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y }
"#,
        )
        .unwrap()
    }

    /// A rollout started and paused (decision 1), state and log saved.
    fn paused(store: &Store, spec: &RolloutSpec) -> (RolloutState, Decision) {
        let (s1, d1) = RolloutState::start(spec, 0).command(spec, Command::Pause, "", 1).unwrap();
        store.save_state(&s1).unwrap();
        store.append_decision(&d1).unwrap();
        (s1, d1)
    }

    #[test]
    fn state_and_spec_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load_state().unwrap().is_none());
        let s = RolloutState::start(&spec(), 5);
        store.save_state(&s).unwrap();
        store.save_spec(&spec()).unwrap();
        assert_eq!(store.load_state().unwrap(), Some(s));
        assert_eq!(store.load_spec().unwrap(), Some(spec()));
    }

    /// A non-finite number in the state (JSON writes it as null) would
    /// leave a state.json no evaluation can load: refused, the old one kept.
    #[test]
    fn a_state_that_would_not_read_back_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = RolloutState::start(&spec(), 5);
        store.save_state(&good).unwrap();
        let mut bad = good.clone();
        bad.labels.by_stage.entry("10pct".into()).or_default().entry("v1".into()).or_default().sum = f64::INFINITY;
        let err = store.save_state(&bad).unwrap_err().to_string();
        assert!(err.contains("would not read back") && err.contains("previous state is kept"), "{err}");
        assert_eq!(store.load_state().unwrap(), Some(good));
    }

    #[test]
    fn a_crash_between_state_and_log_is_repaired_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (s1, _) = paused(&store, &spec);
        let (s2, _) = s1.command(&spec, Command::Resume, "", 2).unwrap();
        store.save_state(&s2).unwrap();
        // Crash here: decision 2 is in the state only.
        store.repair_log(&s2).unwrap();
        store.repair_log(&s2).unwrap();
        let seqs: Vec<u64> = store.decisions().unwrap().iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    /// A failed append (disk full, read-only) leaves the log one decision
    /// behind the state, maybe with a torn line: the next decision must not
    /// be appended after it, or the log would get a gap (or a bad line in
    /// the middle, which no reader accepts).
    #[test]
    fn a_failed_append_is_repaired_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (s1, _) = paused(&store, &spec);
        store.repair_log_if_behind(&s1).unwrap();
        let (s2, d2) = s1.command(&spec, Command::Resume, "", 2).unwrap();
        store.save_state(&s2).unwrap();
        // The append of decision 2 fails half-way: a torn line, then an
        // error (here: the log replaced by a directory for the failing call).
        durable::append_line(&store.log_path(), "{\"seq\": 2, \"at").unwrap();
        let log = store.log_path();
        let moved = dir.path().join("moved");
        fs::rename(&log, &moved).unwrap();
        fs::create_dir(&log).unwrap();
        assert!(store.append_decision(&d2).is_err());
        fs::remove_dir(&log).unwrap();
        fs::rename(&moved, &log).unwrap();
        // The next evaluation repairs first, then appends its own decision.
        store.repair_log_if_behind(&s2).unwrap();
        let (s3, d3) = s2.command(&spec, Command::Pause, "", 3).unwrap();
        store.save_state(&s3).unwrap();
        store.append_decision(&d3).unwrap();
        let seqs: Vec<u64> = store.decisions().unwrap().iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        // Repaired: nothing more to do.
        store.repair_log_if_behind(&s3).unwrap();
        assert_eq!(store.decisions().unwrap().len(), 3);
    }

    /// The order `Controller::save_rollback` uses when a rollback could not
    /// be saved and the log was already one behind the state on disk.
    #[test]
    fn a_rollback_saved_late_keeps_the_log_whole_when_the_log_was_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (s1, d1) = paused(&store, &spec);
        // Decision 2 saved in the state, its log line lost.
        let (s2, _) = s1.command(&spec, Command::Resume, "", 2).unwrap();
        store.save_state(&s2).unwrap();
        // The rollback (decision 3) was pushed but not saved.
        let (s3, _) = s2.command(&spec, Command::Rollback, "", 3).unwrap();
        // Saving it straight away would leave decision 2 out of the log:
        // refused as corruption, not written with a gap.
        let copy = tempfile::tempdir().unwrap();
        let other = Store::open(copy.path()).unwrap();
        other.append_decision(&d1).unwrap();
        assert!(matches!(other.repair_log(&s3), Err(StoreError::Corrupt { .. })));
        // Catching up with the state on disk first keeps every decision.
        store.repair_log(&store.load_state().unwrap().unwrap()).unwrap();
        store.save_state(&s3).unwrap();
        store.repair_log(&s3).unwrap();
        let seqs: Vec<u64> = store.decisions().unwrap().iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (s1, d1) = RolloutState::start(&spec, 0).command(&spec, Command::Pause, "", 1).unwrap();
        store.append_decision(&d1).unwrap();
        durable::append_line(&store.log_path(), "{\"seq\": 2, \"at\"").unwrap();
        assert_eq!(store.decisions().unwrap().len(), 1);
        store.repair_log(&s1).unwrap();
        let text = fs::read_to_string(store.log_path()).unwrap();
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn every_log_line_names_its_layout_and_the_schema_file_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (_, d1) = paused(&store, &spec);
        let text = fs::read_to_string(store.log_path()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["schema"], log_line::DECISION_SCHEMA);
        assert!(text.starts_with("{\"schema\":\"canary.decision/v1\",\"seq\":1,"), "{text}");
        assert_eq!(store.decisions().unwrap(), [d1]);
        let schema: serde_json::Value = serde_json::from_str(include_str!("../../decisions.schema.json")).unwrap();
        assert_eq!(schema["properties"]["schema"]["const"], log_line::DECISION_SCHEMA);
    }

    #[test]
    fn a_line_written_before_the_log_was_versioned_reads_as_version_1_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (s1, d1) = RolloutState::start(&spec, 0).command(&spec, Command::Pause, "", 1).unwrap();
        // An older controller's line: the decision alone.
        let old = serde_json::to_string(&d1).unwrap();
        assert!(!old.contains("schema"));
        durable::append_line(&store.log_path(), &old).unwrap();
        let (s2, d2) = s1.command(&spec, Command::Resume, "", 2).unwrap();
        store.save_state(&s2).unwrap();
        store.append_decision(&d2).unwrap();
        assert_eq!(store.decisions().unwrap(), [d1, d2]);
        let before = fs::read_to_string(store.log_path()).unwrap();
        store.repair_log(&s2).unwrap();
        assert_eq!(fs::read_to_string(store.log_path()).unwrap(), before, "old lines are not rewritten");
    }

    #[test]
    fn a_line_in_a_newer_layout_is_refused_even_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = spec();
        let (s1, d1) = paused(&store, &spec);
        let (_, d2) = s1.command(&spec, Command::Resume, "", 2).unwrap();
        let newer = log_line::to_line(&d2).unwrap().replace(log_line::DECISION_SCHEMA, "canary.decision/v2");
        durable::append_line(&store.log_path(), &newer).unwrap();
        let e = store.decisions().unwrap_err();
        assert!(e.to_string().contains("line 2: written as `canary.decision/v2`"), "{e}");
        // Never dropped as a torn line by a repair.
        assert!(store.repair_log(&s1).is_err());
        assert!(fs::read_to_string(store.log_path()).unwrap().contains("canary.decision/v2"));
        assert_eq!(d1.seq, 1);
    }

    #[test]
    fn unwritable_directory_is_reported_with_its_path() {
        let store = Store { dir: PathBuf::from("/nonexistent/state"), log_behind: Arc::default() };
        let e = store.save_state(&RolloutState::start(&spec(), 0)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/state/state.json"), "{e}");
    }

    #[test]
    fn temp_files_of_interrupted_writes_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_state(&RolloutState::start(&spec(), 0)).unwrap();
        for name in [".state.json.a1B2c3", ".decisions.jsonl.x", ".spec.yaml.y", ".daemon.pid.z", "notes"] {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(store.remove_stale_temp_files(), 3);
        let mut left: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        // A daemon may be writing its pid file without the lock: left alone.
        assert_eq!(left, [".daemon.pid.z", "notes", "state.json"]);
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock().unwrap();
        let other = OpenOptions::new().write(true).open(dir.path().join("lock")).unwrap();
        assert!(other.try_lock_exclusive().is_err());
        drop(held);
        assert!(other.try_lock_exclusive().is_ok());
    }

    #[test]
    fn cluster_baselines_saved_over_intervals_load_back_and_keep_the_window() {
        use canary_core::metrics::Counter;
        use canary_judge::evidence::admin::{counter_series, EndpointSample};
        use canary_judge::evidence::merge::EndpointRead;
        use canary_judge::window::Window;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load_cluster_counts().unwrap().is_none());
        let key = counter_series("r", 0, "v1", Counter::Rq2xx);
        let reads = |n: u64| -> Vec<EndpointRead> {
            (0..40)
                .map(|i| EndpointRead {
                    endpoint: format!("http://10.2.0.{i}:9901"),
                    outcome: Ok(EndpointSample {
                        rollout: "r".into(),
                        epoch: 0,
                        uptime_s: Some(100 + n),
                        active_version: None,
                        series: [(key.clone(), 1000 + n * 10 + i)].into(),
                    }),
                })
                .collect()
        };
        let ok = |c: &mut ClusterCounts, n: u64| {
            let mut w = Window { epoch: 2, ..Window::default() };
            c.apply(&reads(n), &mut w);
            w.version("v1").responses[1]
        };
        let mut c = ClusterCounts::default();
        c.tracker_mut().must_save_all();
        // A stage's first read, then enough intervals for every baseline shard to be saved.
        for n in 0..=SHARDS as u64 {
            ok(&mut c, n);
            store.save_cluster_counts(&mut c).unwrap();
        }
        assert!(dir.path().join("tracker/cluster-shard-00.json").exists());
        let mut back = store.load_cluster_counts().unwrap().unwrap();
        let n = SHARDS as u64 + 1;
        assert_eq!(ok(&mut back, n), ok(&mut c, n));
        assert_eq!(ok(&mut back, n), 40 * 10 * n, "the whole stage since its first read");
        // Temp files of interrupted writes of them are removed.
        std::fs::write(dir.path().join("tracker/.cluster-base-03.json.x"), b"").unwrap();
        assert_eq!(store.remove_stale_temp_files(), 1);
    }

    #[test]
    fn the_tracker_is_saved_in_shards_a_few_at_a_time_and_loads_whole() {
        use canary_judge::evidence::admin::EndpointSample;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load_tracker().unwrap().is_none());
        let mut t = ResetTracker::default();
        for i in 0..50 {
            let sample = EndpointSample {
                rollout: "r".into(),
                epoch: 1,
                uptime_s: Some(10),
                active_version: None,
                series: [("canary.rollout.r.epoch.1.version.v1.rq_total".to_string(), 5 + i)].into(),
            };
            t.observe(&format!("http://10.1.0.{i}:9901"), &sample);
        }
        t.must_save_all();
        let all = store.save_tracker(&mut t).unwrap();
        assert_eq!(store.load_tracker().unwrap().as_ref(), Some(&t));
        // Then one shard a save, a fraction of the whole.
        let one = store.save_tracker(&mut t).unwrap();
        assert!(one > 0 && one < all / 4, "{one} of {all} bytes");
        // A damaged shard is left out, not the rest.
        std::fs::write(dir.path().join("tracker/shard-00.json"), b"{").unwrap();
        std::fs::write(dir.path().join("tracker/.shard-01.json.tmp"), b"").unwrap();
        let back = store.load_tracker().unwrap().unwrap();
        assert!(back.endpoint_count() < 50 && back.endpoint_count() > 30, "{}", back.endpoint_count());
        assert_eq!(store.remove_stale_temp_files(), 1);
    }
}
