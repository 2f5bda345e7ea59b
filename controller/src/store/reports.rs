//! Report files: each stage's canary analysis report and the whole
//! rollout's, as JSON and HTML, written into the state directory. The
//! report itself (model and rendering) is [`canary_judge::report`].

use std::path::{Path, PathBuf};

use canary_judge::report::{html, rollout_report, stage_report, Report};
use canary_judge::rollout::Millis;
use canary_judge::spec::RolloutSpec;

use crate::store::{Store, StoreError};

/// Writes `<stem>.json` and `<stem>.html` into `dir`.
pub fn write(dir: &Path, stem: &str, r: &Report) -> Result<Vec<PathBuf>, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { what: "write the report", path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = dir.join(format!("{stem}.json"));
    let html_path = dir.join(format!("{stem}.html"));
    let body = serde_json::to_vec_pretty(r).unwrap_or_default();
    crate::store::durable::write_atomic(&json, &body).map_err(io(&json))?;
    crate::store::durable::write_atomic(&html_path, html(r).as_bytes()).map_err(io(&html_path))?;
    Ok(vec![json, html_path])
}

/// File stem of a stage's report.
pub fn stage_stem(index: usize, stage: &str, epoch: u64) -> String {
    format!("stage-{}-{stage}-epoch{epoch}", index + 1)
}

/// Writes every stage's report and the whole rollout's into `STATE_DIR/reports`
/// (or `out`); returns the files written.
pub fn write_all(
    store: &Store,
    spec: &RolloutSpec,
    out: Option<&Path>,
    now: Millis,
) -> Result<Vec<PathBuf>, StoreError> {
    let state = store.load_state()?.ok_or_else(|| StoreError::Corrupt {
        path: store.dir().join("state.json"),
        message: "no rollout state".into(),
    })?;
    let log = store.decisions()?;
    let dir = out.map_or_else(|| store.dir().join("reports"), Path::to_path_buf);
    let mut files = vec![];
    let mut epochs: Vec<u64> = log.iter().map(|d| d.from.epoch).collect();
    epochs.dedup();
    for e in epochs {
        if let Some(r) = stage_report(spec, &state, &log, e, now) {
            let stem = stage_stem(r.stage_index.unwrap_or(0), r.stage.as_deref().unwrap_or("stage"), e);
            files.extend(write(&dir, &stem, &r)?);
        }
    }
    if let Some(r) = rollout_report(spec, &state, &log, now) {
        files.extend(write(&dir, "rollout", &r)?);
    }
    Ok(files)
}
