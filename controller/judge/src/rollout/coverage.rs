//! Whether a window covers enough of the fleet to be judged
//! (`envoy.max_missing_share`).

use crate::window::Coverage;

/// What a window's coverage allows, under `envoy.max_missing_share`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoverageCheck {
    /// Judge on the Envoys that answered; `partial` says which are missing
    /// (empty when every Envoy answered and applied).
    Enough { partial: Option<String> },
    /// Too many Envoys have not applied the epoch yet (counting those that
    /// did not answer): hold until they do.
    NotApplied { waiting: usize },
    /// Too many Envoys failed, or none was found: no data.
    NoData(String),
}

/// Most failed endpoints named in a reason (the rest are counted).
const NAMED_FAILURES: usize = 10;

/// The partial-failure rule, pure: with `max_missing_share` = s, a window
/// is judged when at most a share s of its Envoys failed to answer (and at
/// least one answered), and at most a share s have not applied the epoch
/// (failed ones count as not applied). s = 0 means every Envoy must answer
/// and have applied: any failure is no data.
pub fn check_coverage(c: &Coverage, max_missing_share: f64) -> CoverageCheck {
    if c.endpoints == 0 {
        return CoverageCheck::NoData("no Envoy to read (none configured, or none found by the source)".into());
    }
    let share = |n: usize| n as f64 / c.endpoints as f64;
    let failed = c.failures.len();
    let named = || name_some(c.failures.iter().map(|f| format!("{}: {}", f.endpoint, f.error)), failed);
    if failed > 0 && (c.answered == 0 || share(failed) > max_missing_share) {
        let limit = if max_missing_share > 0.0 {
            format!(" (more than envoy.max_missing_share {max_missing_share})")
        } else {
            String::new()
        };
        return CoverageCheck::NoData(format!("{failed} of {} Envoys failed{limit}: {}", c.endpoints, named()));
    }
    let waiting = c.endpoints.saturating_sub(c.applied);
    if waiting > 0 && share(waiting) > max_missing_share {
        return CoverageCheck::NotApplied { waiting };
    }
    let partial = (waiting > 0).then(|| {
        let mut text =
            format!("judged on {} of {} Envoys (envoy.max_missing_share {max_missing_share})", c.applied, c.endpoints);
        if failed > 0 {
            text.push_str(&format!("; {failed} failed: {}", named()));
        }
        if waiting > failed {
            text.push_str(&format!("; {} not yet on this epoch", waiting - failed));
        }
        text
    });
    let departed = (!c.departed.is_empty()).then(|| {
        let n = c.departed.len();
        let envoys = if n == 1 { "Envoy" } else { "Envoys" };
        let names = name_some(c.departed.iter().cloned(), n);
        format!("kept the last counts of {n} {envoys} no longer in the fleet: {names}")
    });
    let partial = match (partial, departed) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    CoverageCheck::Enough { partial }
}

/// The first [`NAMED_FAILURES`] of `total` items, then how many more.
fn name_some(items: impl Iterator<Item = String>, total: usize) -> String {
    let mut list: Vec<String> = items.take(NAMED_FAILURES).collect();
    if total > NAMED_FAILURES {
        list.push(format!("and {} more", total - NAMED_FAILURES));
    }
    list.join("; ")
}
