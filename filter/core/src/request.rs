//! The request path, against a [`Host`] trait so it runs natively in tests
//! and on proxy-wasm host calls inside Envoy.
//!
//! ```text
//!  request headers ──► key (header / cookie) ──► bucket ──► arm
//!                        │ none: unkeyed policy      │
//!                        ▼                           ▼
//!            set version, stage, unkeyed headers (replacing client copies)
//!            (Envoy re-picks the route: the route table matches the version header)
//!            count rq_total [+ rq_unkeyed], per version and segment
//!  response headers ──► same tags on the response, count the status class,
//!                       record latency; prediction from a header now, or
//!  response body    ──► copied chunk by chunk (never held back) up to the
//!                       limit, binned from JSON at the end
//! ```

use crate::config::{KeySource, Plan, UnkeyedPolicy};
use crate::headers::cookie_value;
use crate::metrics::{Counter, Histogram, Metric, Stat};
use crate::predict::PredictionSource;
use crate::split::{arm_for, Arm};

/// What the request path needs from the proxy.
pub trait Host {
    /// Value of a request header, `None` when absent.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets (replacing every existing value) or, with `None`, removes a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>);
    /// Value of a response header.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets or removes a response header.
    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>);
    /// The response's `:status`.
    fn response_status(&self) -> Option<u16>;
    /// The response body chunk being passed through (`size` bytes).
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Adds one to a counter.
    fn increment(&mut self, metric: Metric);
    /// Records a value in a histogram.
    fn record(&mut self, metric: Metric, value: u64);
    /// The proxy's clock, in nanoseconds.
    fn now_nanos(&self) -> u64;
    /// Records a per-request mark for the access log (Envoy filter state
    /// `wasm.<key>`), never sent to the client or the model.
    fn mark(&mut self, key: &str, value: &[u8]);
}

/// Header that Envoy fills with a unique id per request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The routing decision for one request, kept for its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub arm: Arm,
    pub unkeyed: bool,
    /// When the request headers were seen ([`Host::now_nanos`]).
    pub started_ns: u64,
    /// Segment index, when segments are configured.
    pub segment: Option<u16>,
    /// A copy of this (champion-served) request goes to the shadow cluster.
    pub shadow: bool,
    /// Routed by the QA override: not counted in the rollout's metrics.
    pub overridden: bool,
}

/// What happens to the response's prediction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Capture {
    /// Nothing to capture (no prediction configured, or already counted).
    #[default]
    Off,
    /// Copying body chunks until the end of the stream.
    Reading(Vec<u8>),
    /// Over the limit: will count as unparsed at the end.
    TooLarge,
}

/// Per-request state of the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub routed: Routed,
    pub capture: Capture,
    /// The response's prediction bin, once known.
    pub bin: Option<u16>,
}

/// Reads the user key: the first configured source that has a non-empty value.
pub fn user_key<H: Host + ?Sized>(plan: &Plan, host: &H) -> Option<Vec<u8>> {
    plan.key.iter().find_map(|source| match source {
        KeySource::Header(name) => host.request_header(name).filter(|v| !v.is_empty()),
        KeySource::Cookie(name) => {
            let header = host.request_header("cookie")?;
            cookie_value(&header, name.as_bytes()).map(<[u8]>::to_vec)
        }
    })
}

fn count<H: Host + ?Sized>(host: &mut H, routed: &Routed, counter: Counter) {
    count_where(host, routed, counter, true);
}

/// Counts for the segment, and for the version too when `version`.
fn count_where<H: Host + ?Sized>(host: &mut H, routed: &Routed, counter: Counter, version: bool) {
    if routed.overridden {
        return;
    }
    if version {
        host.increment(Metric::Version(routed.arm, Stat::Counter(counter)));
    }
    if let Some(seg) = routed.segment {
        host.increment(Metric::Segment(routed.arm, seg, Stat::Counter(counter)));
    }
}

/// Constant-time equality (the time taken does not depend on where the
/// inputs differ).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The arm a QA override asks for, if the header carries the secret and a
/// version of this rollout. The header is removed either way, so it never
/// reaches the model.
fn qa_override<H: Host + ?Sized>(plan: &Plan, host: &mut H) -> Option<Arm> {
    let o = plan.qa_override.as_ref()?;
    let value = host.request_header(&o.header)?;
    host.set_request_header(&o.header, None);
    let colon = value.iter().rposition(|b| *b == b':')?;
    let (secret, version) = (&value[..colon], &value[colon + 1..]);
    if !same_secret(secret, o.secret.as_bytes()) {
        return None;
    }
    let arm = Arm::BOTH.into_iter().find(|a| plan.version(*a).as_bytes() == version)?;
    host.mark("canary_override", version);
    Some(arm)
}

/// Picks the version for a request, tags it and counts it.
pub fn route_request<H: Host + ?Sized>(plan: &Plan, host: &mut H) -> Routed {
    // With `counts: cluster` (and no segment) nothing is timed: no clock read.
    let started_ns = if plan.times_requests() { host.now_nanos() } else { 0 };
    let forced = qa_override(plan, host);
    let key = user_key(plan, host);
    let unkeyed = key.is_none();
    // Unkeyed requests may still be split (and sampled) by Envoy's request id.
    let hash_input = match (key, plan.unkeyed) {
        (Some(key), _) => Some(key),
        (None, UnkeyedPolicy::SplitByRequestId) => host.request_header(REQUEST_ID_HEADER),
        (None, UnkeyedPolicy::Champion) => None,
    };
    let arm = match (forced, &hash_input, unkeyed, plan.unkeyed) {
        (Some(arm), ..) => arm,
        (None, Some(k), false, _) | (None, Some(k), true, UnkeyedPolicy::SplitByRequestId) => {
            arm_for(plan.salt.bucket(k), plan.weight)
        }
        _ => Arm::Champion,
    };
    let shadow = match (&plan.shadow, arm) {
        _ if forced.is_some() => false,
        (Some(s), Arm::Champion) => {
            let input = hash_input.or_else(|| host.request_header(REQUEST_ID_HEADER)).unwrap_or_default();
            arm_for(plan.shadow_salt.bucket_with(&plan.salt, &input), s.sample_bp) == Arm::Challenger
        }
        _ => false,
    };
    let segment = plan.segment.as_ref().map(|s| s.segment_of(host.request_header(&s.header).as_deref()) as u16);
    let routed = Routed { arm, unkeyed, started_ns, segment, shadow, overridden: forced.is_some() };

    let h = &plan.headers;
    // Setting replaces any client-sent copy: no client picks its version.
    host.set_request_header(&h.version, Some(plan.version(arm).as_bytes()));
    host.set_request_header(&h.stage, Some(plan.stage.as_bytes()));
    host.set_request_header(&h.unkeyed, unkeyed.then_some(b"1".as_slice()));
    // No explicit route-cache clear: Envoy clears it on every request-header
    // change a Wasm filter makes, and the extra foreign-function call cost
    // ~3.7 µs per request (bench/ablate.sh). tests/integration/split.rs checks the route.
    count(host, &routed, Counter::RqTotal);
    if unkeyed {
        count(host, &routed, Counter::RqUnkeyed);
    }
    routed
}

/// Tags the response with the version and stage that served it, counts its
/// status class, records its latency and starts the prediction capture.
/// `end_of_stream`: the response has no body.
pub fn tag_response<H: Host + ?Sized>(plan: &Plan, host: &mut H, routed: Routed, end_of_stream: bool) -> Exchange {
    let h = &plan.headers;
    host.set_response_header(&h.version, Some(plan.version(routed.arm).as_bytes()));
    host.set_response_header(&h.stage, Some(plan.stage.as_bytes()));
    if routed.unkeyed {
        host.set_response_header(&h.unkeyed, Some(b"1"));
    }
    // Per version only with `counts: filter`; per segment in either mode.
    let versions = plan.counts_versions();
    if plan.reads_status() {
        let status = host.response_status();
        if let Some(class) = status.and_then(Counter::for_status) {
            count_where(host, &routed, class, versions);
        }
        if status == Some(504) {
            count_where(host, &routed, Counter::RqTimeout, versions);
        }
    }
    let mut exchange = Exchange { routed, capture: Capture::Off, bin: None };
    if routed.overridden {
        return exchange;
    }
    if plan.times_requests() {
        let latency_us = host.now_nanos().saturating_sub(routed.started_ns) / 1000;
        let latency = Stat::Histogram(Histogram::LatencyUs);
        if versions {
            host.record(Metric::Version(routed.arm, latency), latency_us);
        }
        if let Some(seg) = routed.segment {
            host.record(Metric::Segment(routed.arm, seg, latency), latency_us);
        }
    }

    let Some(p) = &plan.prediction else { return exchange };
    match &p.from {
        PredictionSource::Header(name) => {
            let bin = p.bin_of_header(host.response_header(name).as_deref());
            settle(host, &mut exchange, bin);
        }
        PredictionSource::JsonPointer(_) => {
            let declared = host
                .response_header("content-length")
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<usize>().ok());
            if end_of_stream {
                settle(host, &mut exchange, p.unparsed());
            } else if declared.is_some_and(|n| n > p.max_body_bytes) {
                exchange.capture = Capture::TooLarge;
            } else {
                exchange.capture = Capture::Reading(Vec::with_capacity(declared.unwrap_or(1024).min(p.max_body_bytes)));
            }
        }
    }
    exchange
}

fn settle<H: Host + ?Sized>(host: &mut H, exchange: &mut Exchange, bin: usize) {
    let bin = bin as u16;
    host.increment(Metric::Pred(exchange.routed.arm, bin));
    exchange.bin = Some(bin);
    exchange.capture = Capture::Off;
}

/// One response body chunk. The chunk is copied, never held back: the client
/// gets its response at the same pace with or without capture.
pub fn on_response_body<H: Host + ?Sized>(
    plan: &Plan,
    host: &mut H,
    exchange: &mut Exchange,
    chunk_size: usize,
    end_of_stream: bool,
) {
    let Some(p) = &plan.prediction else { return };
    if let Capture::Reading(buf) = &mut exchange.capture {
        if buf.len() + chunk_size > p.max_body_bytes {
            exchange.capture = Capture::TooLarge;
        } else if chunk_size > 0 {
            match host.response_body(chunk_size) {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => exchange.capture = Capture::TooLarge,
            }
        }
    }
    if end_of_stream {
        let bin = match std::mem::take(&mut exchange.capture) {
            Capture::Reading(buf) => p.bin_of_json(&buf),
            Capture::TooLarge => p.unparsed(),
            Capture::Off => return,
        };
        settle(host, exchange, bin);
    }
}

#[cfg(test)]
mod tests_support {
    use std::collections::HashMap;

    use super::*;

    /// A plan of rollout `r`, stage `s`, the default key list, `extra` JSON
    /// members appended.
    pub fn plan_of_weight(weight_bp: u64, extra: &str) -> Plan {
        Plan::from_json(
            format!(
                r#"{{"rollout":"r","epoch":1,"stage":"s","salt":"salt","champion":"v1","challenger":"v2",
                    "challenger_weight_bp":{weight_bp}{extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// An in-memory proxy.
    #[derive(Default)]
    pub struct FakeHost {
        pub request: Vec<(String, Vec<u8>)>,
        pub response: Vec<(String, Vec<u8>)>,
        pub status: Option<u16>,
        pub body: Vec<u8>,
        pub counts: HashMap<Metric, u64>,
        pub recorded: Vec<(Metric, u64)>,
        pub clock_ns: std::cell::Cell<u64>,
        pub marks: Vec<(String, Vec<u8>)>,
        /// How many times `:status` was read.
        pub status_reads: std::cell::Cell<u32>,
        /// Host calls that cross into the proxy (each one about 1 µs in
        /// Envoy's V8): every method but `increment`, which the filter holds
        /// in its memory and hands over in batches.
        pub crossings: std::cell::Cell<u32>,
    }

    pub type Fake = FakeHost;

    impl FakeHost {
        pub fn with_request_header(mut self, name: &str, value: &str) -> Self {
            self.request.push((name.to_string(), value.as_bytes().to_vec()));
            self
        }
        pub fn with_status(mut self, status: u16) -> Self {
            self.status = Some(status);
            self
        }
        fn get(list: &[(String, Vec<u8>)], name: &str) -> Option<String> {
            list.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        }
        fn set(list: &mut Vec<(String, Vec<u8>)>, name: &str, value: Option<&[u8]>) {
            list.retain(|(n, _)| n != name);
            if let Some(v) = value {
                list.push((name.to_string(), v.to_vec()));
            }
        }
        pub fn req(&self, name: &str) -> Option<String> {
            Self::get(&self.request, name)
        }
        pub fn resp(&self, name: &str) -> Option<String> {
            Self::get(&self.response, name)
        }
        pub fn count_of(&self, arm: Arm, c: Counter) -> u64 {
            self.metric(Metric::Version(arm, Stat::Counter(c)))
        }
        pub fn metric(&self, m: Metric) -> u64 {
            self.counts.get(&m).copied().unwrap_or(0)
        }
        /// How many times the clock was read.
        pub fn clock_reads(&self) -> u64 {
            self.clock_ns.get() / 1_500_000
        }
        fn cross(&self) {
            self.crossings.set(self.crossings.get() + 1);
        }
        /// Host calls so far, and starts counting again from zero.
        pub fn take_crossings(&self) -> u32 {
            self.crossings.replace(0)
        }
    }

    impl Host for FakeHost {
        fn request_header(&self, name: &str) -> Option<Vec<u8>> {
            self.cross();
            self.request.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        }
        fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) {
            self.cross();
            Self::set(&mut self.request, name, value)
        }
        fn response_header(&self, name: &str) -> Option<Vec<u8>> {
            self.cross();
            self.response.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        }
        fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) {
            self.cross();
            Self::set(&mut self.response, name, value)
        }
        fn response_status(&self) -> Option<u16> {
            self.cross();
            self.status_reads.set(self.status_reads.get() + 1);
            self.status
        }
        fn response_body(&self, size: usize) -> Option<Vec<u8>> {
            self.cross();
            Some(self.body[..size.min(self.body.len())].to_vec())
        }
        fn increment(&mut self, metric: Metric) {
            *self.counts.entry(metric).or_default() += 1;
        }
        fn record(&mut self, metric: Metric, value: u64) {
            self.cross();
            self.recorded.push((metric, value));
        }
        fn mark(&mut self, key: &str, value: &[u8]) {
            self.cross();
            self.marks.push((key.to_string(), value.to_vec()));
        }
        fn now_nanos(&self) -> u64 {
            self.cross();
            // Each look at the clock is 1.5 ms later than the one before.
            self.clock_ns.set(self.clock_ns.get() + 1_500_000);
            self.clock_ns.get()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::FakeHost;
    use super::*;
    use crate::split::Salt;

    fn plan(weight_bp: u64, extra: &str) -> Plan {
        Plan::from_json(
            format!(
                r#"{{"rollout":"r","epoch":1,"stage":"s{weight_bp}","salt":"salt","champion":"v1","challenger":"v2",
                    "challenger_weight_bp":{weight_bp},"key":[{{"header":"x-user-id"}},{{"cookie":"uid"}}]{extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// A user id whose bucket is below `below` (true) or not (false).
    fn user_in(below: u16, want_challenger: bool) -> String {
        let salt = Salt::new("salt");
        (0..).map(|i| format!("user-{i}")).find(|u| (salt.bucket(u.as_bytes()) < below) == want_challenger).unwrap()
    }

    #[test]
    fn keyed_request_is_routed_tagged_and_counted() {
        let p = plan(5000, "");
        let user = user_in(5000, true);
        let mut host = FakeHost::default().with_request_header("x-user-id", &user);
        let routed = route_request(&p, &mut host);
        assert_eq!((routed.arm, routed.unkeyed), (Arm::Challenger, false));
        assert_eq!(host.req("x-model-version").as_deref(), Some("v2"));
        assert_eq!(host.req("x-canary-stage").as_deref(), Some("s5000"));
        assert_eq!(host.req("x-canary-unkeyed"), None);
        assert_eq!(host.count_of(Arm::Challenger, Counter::RqTotal), 1);

        host.status = Some(503);
        tag_response(&p, &mut host, routed, true);
        assert_eq!(host.resp("x-model-version").as_deref(), Some("v2"));
        assert_eq!(host.resp("x-canary-stage").as_deref(), Some("s5000"));
        assert_eq!(host.count_of(Arm::Challenger, Counter::Rq5xx), 1);
        assert_eq!(host.count_of(Arm::Challenger, Counter::RqTimeout), 0);
        assert_eq!(
            host.recorded,
            vec![(Metric::Version(Arm::Challenger, Stat::Histogram(Histogram::LatencyUs)), 1500)]
        );
    }

    #[test]
    fn a_504_counts_as_a_timeout_too() {
        let p = plan(0, "");
        let mut host = FakeHost::default().with_request_header("x-user-id", "u").with_status(504);
        let routed = route_request(&p, &mut host);
        tag_response(&p, &mut host, routed, true);
        assert_eq!(host.count_of(Arm::Champion, Counter::Rq5xx), 1);
        assert_eq!(host.count_of(Arm::Champion, Counter::RqTimeout), 1);
    }

    #[test]
    fn client_sent_owned_headers_are_replaced() {
        let p = plan(0, "");
        let mut host = FakeHost::default()
            .with_request_header("x-user-id", "u1")
            .with_request_header("x-model-version", "v2")
            .with_request_header("x-canary-stage", "forged")
            .with_request_header("x-canary-unkeyed", "1");
        let routed = route_request(&p, &mut host);
        assert_eq!(routed.arm, Arm::Champion);
        assert_eq!(host.req("x-model-version").as_deref(), Some("v1"));
        assert_eq!(host.req("x-canary-stage").as_deref(), Some("s0"));
        assert_eq!(host.req("x-canary-unkeyed"), None);
    }

    #[test]
    fn cookie_is_the_fallback_key() {
        let p = plan(5000, "");
        let user = user_in(5000, true);
        let mut host = FakeHost::default().with_request_header("cookie", &format!("a=b; uid={user}"));
        assert_eq!(route_request(&p, &mut host).arm, Arm::Challenger);
        // The header wins over the cookie when both are present.
        let other = user_in(5000, false);
        let mut host = FakeHost::default()
            .with_request_header("x-user-id", &other)
            .with_request_header("cookie", &format!("uid={user}"));
        assert_eq!(route_request(&p, &mut host).arm, Arm::Champion);
    }

    #[test]
    fn unkeyed_requests_go_to_champion_and_are_marked() {
        let p = plan(10_000, "");
        let mut host = FakeHost::default().with_request_header("x-user-id", "").with_status(200);
        let routed = route_request(&p, &mut host);
        assert_eq!((routed.arm, routed.unkeyed), (Arm::Champion, true));
        assert_eq!(host.req("x-canary-unkeyed").as_deref(), Some("1"));
        assert_eq!(host.count_of(Arm::Champion, Counter::RqUnkeyed), 1);
        tag_response(&p, &mut host, routed, true);
        assert_eq!(host.resp("x-canary-unkeyed").as_deref(), Some("1"));
        assert_eq!(host.count_of(Arm::Champion, Counter::Rq2xx), 1);
    }

    #[test]
    fn unkeyed_split_by_request_id_follows_the_weight() {
        let p = plan(2000, r#","unkeyed":"split_by_request_id""#);
        let mut challenger = 0;
        for i in 0..20_000 {
            let mut host = FakeHost::default().with_request_header(REQUEST_ID_HEADER, &format!("rid-{i}"));
            let routed = route_request(&p, &mut host);
            assert!(routed.unkeyed);
            challenger += usize::from(routed.arm == Arm::Challenger);
        }
        let share = challenger as f64 / 20_000.0;
        assert!((share - 0.2).abs() < 0.01, "share {share}");
        // No request id at all: the champion.
        let mut host = FakeHost::default();
        assert_eq!(route_request(&p, &mut host).arm, Arm::Champion);
    }

    #[test]
    fn same_key_same_version_across_plans_of_one_rollout() {
        let a = plan(2000, "");
        let b = plan(2000, "");
        for i in 0..1000 {
            let user = format!("u{i}");
            let mut ha = FakeHost::default().with_request_header("x-user-id", &user);
            let mut hb = FakeHost::default().with_request_header("x-user-id", &user);
            assert_eq!(route_request(&a, &mut ha).arm, route_request(&b, &mut hb).arm);
        }
    }
}

#[cfg(test)]
mod capture_tests {
    use super::tests_support::*;
    use super::*;
    use crate::metrics::Metric;

    fn plan_with(extra: &str) -> Plan {
        plan_of_weight(0, extra)
    }

    const NUMERIC_HEADER: &str =
        r#","prediction":{"from":{"header":"x-prediction"},"bins":{"numeric":[0.25,0.5,0.75]}}"#;
    const JSON_LABEL: &str =
        r#","prediction":{"from":{"json_pointer":"/label"},"max_body_bytes":64,"bins":{"categorical":["cat","dog"]}}"#;

    fn respond(plan: &Plan, host: &mut Fake, body_chunks: &[&[u8]]) -> Exchange {
        let routed = route_request(plan, host);
        host.status = Some(200);
        let mut ex = tag_response(plan, host, routed, body_chunks.is_empty());
        for (i, chunk) in body_chunks.iter().enumerate() {
            host.body = chunk.to_vec();
            on_response_body(plan, host, &mut ex, chunk.len(), i + 1 == body_chunks.len());
        }
        ex
    }

    #[test]
    fn numeric_prediction_from_a_header_lands_in_its_bin() {
        let plan = plan_with(NUMERIC_HEADER);
        let mut host = Fake::default().with_request_header("x-user-id", "u");
        host.response.push(("x-prediction".into(), b"0.6".to_vec()));
        let ex = respond(&plan, &mut host, &[]);
        assert_eq!(ex.bin, Some(2));
        assert_eq!(host.metric(Metric::Pred(Arm::Champion, 2)), 1);
    }

    #[test]
    fn categorical_prediction_from_a_json_body_in_chunks() {
        let plan = plan_with(JSON_LABEL);
        let mut host = Fake::default().with_request_header("x-user-id", "u");
        let ex = respond(&plan, &mut host, &[br#"{"lab"#, br#"el":"dog","p":1}"#]);
        assert_eq!(ex.bin, Some(1));
        assert_eq!(host.metric(Metric::Pred(Arm::Champion, 1)), 1);
    }

    #[test]
    fn oversized_or_malformed_bodies_are_unparsed() {
        let plan = plan_with(JSON_LABEL);
        let unparsed = plan.prediction.as_ref().unwrap().unparsed() as u16;
        let mut host = Fake::default().with_request_header("x-user-id", "u");
        let big = format!(r#"{{"label":"cat","pad":"{}"}}"#, "x".repeat(100));
        assert_eq!(respond(&plan, &mut host, &[big.as_bytes()]).bin, Some(unparsed));
        assert_eq!(respond(&plan, &mut host, &[b"{not json"]).bin, Some(unparsed));
        // A declared length over the limit is not even copied.
        let mut host = Fake::default().with_request_header("x-user-id", "u");
        host.response.push(("content-length".into(), b"5000".to_vec()));
        let routed = route_request(&plan, &mut host);
        let ex = tag_response(&plan, &mut host, routed, false);
        assert_eq!(ex.capture, Capture::TooLarge);
        assert_eq!(respond(&plan, &mut Fake::default(), &[]).bin, Some(unparsed));
    }

    #[test]
    fn the_qa_override_needs_the_secret_and_is_never_counted() {
        let plan = plan_with(r#","override":{"header":"x-canary-override","secret":"0123456789abcdef"}"#);
        // With the secret: the asked-for version, marked, not counted, header removed.
        let mut host = Fake::default()
            .with_request_header("x-user-id", "u")
            .with_request_header("x-canary-override", "0123456789abcdef:v2");
        let ex = respond(&plan, &mut host, &[]);
        assert_eq!((ex.routed.arm, ex.routed.overridden), (Arm::Challenger, true));
        assert_eq!(host.req("x-canary-override"), None);
        assert_eq!(host.req("x-model-version").as_deref(), Some("v2"));
        assert_eq!(host.marks, vec![("canary_override".to_string(), b"v2".to_vec())]);
        assert!(host.counts.is_empty(), "override traffic must not enter the rollout's windows: {:?}", host.counts);
        // Wrong secret, wrong version, no colon: the hash decides, header removed.
        for forged in ["0123456789abcdeX:v2", "0123456789abcdef:v9", "v2", ":v2", "0123456789abcdef"] {
            let mut host =
                Fake::default().with_request_header("x-user-id", "u").with_request_header("x-canary-override", forged);
            let ex = respond(&plan, &mut host, &[]);
            assert_eq!((ex.routed.arm, ex.routed.overridden), (Arm::Champion, false), "{forged}");
            assert_eq!(host.req("x-canary-override"), None);
        }
        let short = Plan::from_json(
            br#"{"rollout":"r","stage":"s","salt":"x","champion":"a","challenger":"b","challenger_weight_bp":0,"override":{"header":"x-o","secret":"short"}}"#,
        );
        assert_eq!(short.unwrap_err().field(), "override.secret");
    }

    #[test]
    fn segments_split_the_counters_and_unknown_values_go_to_other() {
        let plan = plan_with(r#","segment":{"header":"x-tier","values":["free","pro"]}"#);
        for (tier, seg) in [(Some("pro"), 1u16), (Some("gold"), 2), (None, 2)] {
            let mut host = Fake::default().with_request_header("x-user-id", "u");
            if let Some(t) = tier {
                host = host.with_request_header("x-tier", t);
            }
            let ex = respond(&plan, &mut host, &[]);
            assert_eq!(ex.routed.segment, Some(seg));
            assert_eq!(host.metric(Metric::Segment(Arm::Champion, seg, Stat::Counter(Counter::RqTotal))), 1);
            assert_eq!(host.metric(Metric::Segment(Arm::Champion, seg, Stat::Counter(Counter::Rq2xx))), 1);
        }
    }

    #[test]
    fn shadow_samples_champion_requests_at_the_rate() {
        let plan = plan_with(r#","shadow":{"cluster":"v2","sample_bp":2500}"#);
        let mut sampled = 0;
        for i in 0..20_000 {
            let mut host = Fake::default().with_request_header("x-user-id", &format!("user-{i}"));
            let routed = route_request(&plan, &mut host);
            sampled += usize::from(routed.shadow);
        }
        assert!((4500..5500).contains(&sampled), "{sampled} of 20000 sampled at 25%");
        // Challenger-served requests are never shadowed.
        let mut host = Fake::default().with_request_header("x-user-id", "u");
        let all = Plan::from_json(
            br#"{"rollout":"r","stage":"s","salt":"x","champion":"v1","challenger":"v2","challenger_weight_bp":10000,"shadow":{"cluster":"v2"}}"#,
        )
        .unwrap();
        assert!(!route_request(&all, &mut host).shadow);
    }

    const CLUSTER: &str = r#","counts":"cluster""#;

    #[test]
    fn cluster_counts_read_no_status_and_no_clock_and_record_no_latency() {
        let plan = plan_with(CLUSTER);
        let mut host = Fake::default().with_request_header("x-user-id", "u").with_request_header("x-canary-stage", "x");
        let ex = respond(&plan, &mut host, &[]);
        // Split and tagged as ever.
        assert_eq!(ex.routed.arm, Arm::Champion);
        assert_eq!(host.req("x-model-version").as_deref(), Some("v1"));
        assert_eq!(host.req("x-canary-stage").as_deref(), Some("s"));
        assert_eq!(host.resp("x-model-version").as_deref(), Some("v1"));
        // The per-request work that Envoy's cluster stats make redundant is gone.
        assert_eq!((host.status_reads.get(), host.clock_reads()), (0, 0));
        assert!(host.recorded.is_empty(), "{:?}", host.recorded);
        // What only the filter sees is still counted.
        assert_eq!(host.count_of(Arm::Champion, Counter::RqTotal), 1);
        assert_eq!(host.counts.len(), 1, "{:?}", host.counts);

        // The default (`filter`): one status read, two clock reads, one latency.
        let plan = plan_with("");
        let mut host = Fake::default().with_request_header("x-user-id", "u");
        respond(&plan, &mut host, &[]);
        assert_eq!((host.status_reads.get(), host.clock_reads(), host.recorded.len()), (1, 2, 1));
        assert_eq!(host.count_of(Arm::Champion, Counter::Rq2xx), 1);
    }

    #[test]
    fn cluster_counts_keep_segments_and_predictions_filter_side() {
        let plan =
            plan_with(&format!(r#"{CLUSTER},"segment":{{"header":"x-tier","values":["free","pro"]}}{NUMERIC_HEADER}"#));
        let mut host = Fake::default().with_request_header("x-user-id", "u").with_request_header("x-tier", "pro");
        host.response.push(("x-prediction".into(), b"0.6".to_vec()));
        host.status = Some(504);
        let routed = route_request(&plan, &mut host);
        let ex = tag_response(&plan, &mut host, routed, true);
        assert_eq!(ex.bin, Some(2));
        assert_eq!(host.metric(Metric::Pred(Arm::Champion, 2)), 1);
        // The segment needs the status and the latency; the version's come from the cluster.
        assert_eq!((host.status_reads.get(), host.clock_reads()), (1, 2));
        assert_eq!(host.metric(Metric::Segment(Arm::Champion, 1, Stat::Counter(Counter::Rq5xx))), 1);
        assert_eq!(host.metric(Metric::Segment(Arm::Champion, 1, Stat::Counter(Counter::RqTimeout))), 1);
        assert_eq!(host.count_of(Arm::Champion, Counter::Rq5xx), 0);
        assert_eq!(host.count_of(Arm::Champion, Counter::RqTimeout), 0);
        let latency = Stat::Histogram(Histogram::LatencyUs);
        assert_eq!(host.recorded, vec![(Metric::Segment(Arm::Champion, 1, latency), 1500)]);
    }
}

#[cfg(test)]
mod crossing_tests {
    use super::tests_support::{plan_of_weight, Fake};
    use super::*;

    fn plan_with(extra: &str) -> Plan {
        plan_of_weight(5000, extra)
    }

    /// Host calls of one keyed and one unkeyed request: (request side,
    /// response side) each.
    fn crossings(plan: &Plan) -> [(u32, u32); 2] {
        let mut out = [(0, 0); 2];
        for (i, key) in [Some("u"), None].into_iter().enumerate() {
            let mut host = Fake::default().with_status(200);
            if let Some(k) = key {
                host = host.with_request_header("x-user-id", k);
            }
            let routed = route_request(plan, &mut host);
            let request = host.take_crossings();
            tag_response(plan, &mut host, routed, true);
            out[i] = (request, host.take_crossings());
        }
        out
    }

    #[test]
    fn the_request_path_costs_these_host_calls() {
        // Keyed: clock, key, version, stage, unkeyed removed | tags x2, status, clock, latency.
        // Unkeyed: clock, key, version, stage, unkeyed set | tags x3, status, clock, latency.
        assert_eq!(crossings(&plan_with("")), [(5, 5), (5, 6)]);
        assert_eq!(crossings(&plan_with(r#","counts":"cluster""#)), [(4, 2), (4, 3)]);
    }

    #[test]
    fn the_shadow_sample_is_the_same_with_its_salt_hashed_once() {
        let plan = plan_with(r#","shadow":{"cluster":"v2-shadow","sample_bp":2500}"#);
        let seed = crate::split::Salt::new("canary-shadow-sample");
        assert_eq!(plan.shadow_salt, seed);
        for i in 0..2000 {
            let user = format!("user-{i}");
            let mut host = Fake::default().with_request_header("x-user-id", &user);
            let routed = route_request(&plan, &mut host);
            let expected = routed.arm == Arm::Champion
                && arm_for(seed.bucket_with(&plan.salt, user.as_bytes()), crate::Weight::from_bp(2500).unwrap())
                    == Arm::Challenger;
            assert_eq!(routed.shadow, expected, "{user}");
        }
    }
}
