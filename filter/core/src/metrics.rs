//! Names of the counters the filter publishes through Envoy stats: the
//! second half of the contract with the controller.
//!
//! `canary.rollout.<rollout>.epoch.<epoch>.version.<version>.<stat>`
//!
//! The epoch is the configuration's, so every request is counted under the
//! configuration that routed it: a stage's window is the sum of its epoch's
//! counters, and requests from before and after a change never mix. In Envoy's
//! `/stats` the names carry Envoy's `wasmcustom.` prefix.

use std::fmt::Write;

/// One per-version counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Requests routed to the version.
    RqTotal,
    /// Of those, requests that carried no user key.
    RqUnkeyed,
    /// Responses by status class.
    Rq1xx,
    Rq2xx,
    Rq3xx,
    Rq4xx,
    Rq5xx,
    /// Of the 5xx, the 504s: upstream timeouts (Envoy answers 504 when the
    /// route timeout fires).
    RqTimeout,
}

/// One per-version histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// Microseconds from the request headers to the response headers, as the
    /// filter sees them (includes the upstream's time to first byte).
    LatencyUs,
}

impl Histogram {
    pub const ALL: [Histogram; 1] = [Histogram::LatencyUs];

    pub fn name(self) -> &'static str {
        match self {
            Histogram::LatencyUs => "latency_us",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Histogram> {
        Histogram::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// A counter or a histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stat {
    Counter(Counter),
    Histogram(Histogram),
}

impl Stat {
    pub fn name(self) -> &'static str {
        match self {
            Stat::Counter(c) => c.name(),
            Stat::Histogram(h) => h.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Stat> {
        Counter::from_name(name).map(Stat::Counter).or_else(|| Histogram::from_name(name).map(Stat::Histogram))
    }
}

impl From<Counter> for Stat {
    fn from(c: Counter) -> Stat {
        Stat::Counter(c)
    }
}

impl From<Histogram> for Stat {
    fn from(h: Histogram) -> Stat {
        Stat::Histogram(h)
    }
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::RqTotal,
        Counter::RqUnkeyed,
        Counter::Rq1xx,
        Counter::Rq2xx,
        Counter::Rq3xx,
        Counter::Rq4xx,
        Counter::Rq5xx,
        Counter::RqTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::RqTotal => "rq_total",
            Counter::RqUnkeyed => "rq_unkeyed",
            Counter::Rq1xx => "rq_1xx",
            Counter::Rq2xx => "rq_2xx",
            Counter::Rq3xx => "rq_3xx",
            Counter::Rq4xx => "rq_4xx",
            Counter::Rq5xx => "rq_5xx",
            Counter::RqTimeout => "rq_timeout",
        }
    }

    /// Position in per-counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The class counter for an HTTP status; `None` outside 100..=599.
    pub fn for_status(status: u16) -> Option<Counter> {
        Some(match status {
            100..=199 => Counter::Rq1xx,
            200..=299 => Counter::Rq2xx,
            300..=399 => Counter::Rq3xx,
            400..=499 => Counter::Rq4xx,
            500..=599 => Counter::Rq5xx,
            _ => return None,
        })
    }
}

/// Prefix of every metric this filter defines.
pub const PREFIX: &str = "canary.rollout.";

/// Full metric name as defined by the filter (without Envoy's `wasmcustom.`).
pub fn metric_name(rollout: &str, epoch: u64, version: &str, stat: impl Into<Stat>) -> String {
    let mut s = String::with_capacity(64);
    let _ = write!(s, "{PREFIX}{rollout}.epoch.{epoch}.version.{version}.{}", stat.into().name());
    s
}

/// Prefix of every metric of one rollout, as Envoy's `/stats` shows it.
pub fn rollout_prefix_in_envoy(rollout: &str) -> String {
    format!("wasmcustom.{PREFIX}{rollout}.")
}

/// A counter name split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricKey<'a> {
    pub rollout: &'a str,
    pub epoch: u64,
    pub version: &'a str,
    pub stat: Stat,
}

/// Parses a name made by [`metric_name`], with or without Envoy's
/// `wasmcustom.` prefix. Names are dot-separated and the parts never contain
/// dots (the configuration refuses such names), so the split is unambiguous.
pub fn parse_metric_name(name: &str) -> Option<MetricKey<'_>> {
    let rest = name.strip_prefix("wasmcustom.").unwrap_or(name).strip_prefix(PREFIX)?;
    let mut parts = rest.split('.');
    let rollout = parts.next()?;
    (parts.next()? == "epoch").then_some(())?;
    let epoch = parts.next()?.parse().ok()?;
    (parts.next()? == "version").then_some(())?;
    let version = parts.next()?;
    let stat = Stat::from_name(parts.next()?)?;
    parts.next().is_none().then_some(MetricKey { rollout, epoch, version, stat })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let stats = Counter::ALL.map(Stat::from).into_iter().chain(Histogram::ALL.map(Stat::from));
        for c in stats {
            let n = metric_name("recs", 7, "v2", c);
            let k = parse_metric_name(&n).unwrap();
            assert_eq!(k, MetricKey { rollout: "recs", epoch: 7, version: "v2", stat: c });
            assert_eq!(parse_metric_name(&format!("wasmcustom.{n}")), Some(k));
        }
        assert_eq!(metric_name("r", 1, "v", Counter::Rq5xx), "canary.rollout.r.epoch.1.version.v.rq_5xx");
    }

    #[test]
    fn foreign_names_are_not_parsed() {
        assert_eq!(parse_metric_name("cluster.v1.upstream_rq_2xx"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.x.version.v.rq_total"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.1.version.v.rq_total.extra"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.1.version.v.bogus"), None);
    }

    #[test]
    fn status_classes() {
        assert_eq!(Counter::for_status(200), Some(Counter::Rq2xx));
        assert_eq!(Counter::for_status(503), Some(Counter::Rq5xx));
        assert_eq!(Counter::for_status(404), Some(Counter::Rq4xx));
        assert_eq!(Counter::for_status(99), None);
        assert_eq!(Counter::for_status(600), None);
    }
}
