//! The request path, against a [`Host`] trait so it runs natively in tests
//! and on proxy-wasm host calls inside Envoy.
//!
//! ```text
//!  request headers ──► key (header / cookie) ──► bucket ──► arm
//!                        │ none: unkeyed policy      │
//!                        ▼                           ▼
//!            set version, stage, unkeyed headers (replacing client copies)
//!            clear route cache (the route table matches the version header)
//!            count rq_total [+ rq_unkeyed]
//!  response headers ──► same tags on the response, count the status class
//! ```

use crate::config::{KeySource, Plan, UnkeyedPolicy};
use crate::headers::cookie_value;
use crate::metrics::{Counter, Histogram};
use crate::split::{arm_for, Arm};

/// What the request path needs from the proxy.
pub trait Host {
    /// Value of a request header, `None` when absent.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets (replacing every existing value) or, with `None`, removes a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>);
    /// Sets or removes a response header.
    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>);
    /// The response's `:status`.
    fn response_status(&self) -> Option<u16>;
    /// Makes the proxy pick the route again after the headers changed.
    fn clear_route_cache(&mut self);
    /// Adds one to a per-version counter.
    fn count(&mut self, arm: Arm, counter: Counter);
    /// Records a value in a per-version histogram.
    fn record(&mut self, arm: Arm, histogram: Histogram, value: u64);
    /// The proxy's clock, in nanoseconds.
    fn now_nanos(&self) -> u64;
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

/// Picks the version for a request, tags it and counts it.
pub fn route_request<H: Host + ?Sized>(plan: &Plan, host: &mut H) -> Routed {
    let started_ns = host.now_nanos();
    let routed = match user_key(plan, host) {
        Some(key) => Routed { arm: arm_for(plan.salt.bucket(&key), plan.weight), unkeyed: false, started_ns },
        None => {
            let arm = match plan.unkeyed {
                UnkeyedPolicy::Champion => Arm::Champion,
                UnkeyedPolicy::SplitByRequestId => host
                    .request_header(REQUEST_ID_HEADER)
                    .map_or(Arm::Champion, |id| arm_for(plan.salt.bucket(&id), plan.weight)),
            };
            Routed { arm, unkeyed: true, started_ns }
        }
    };
    let h = &plan.headers;
    // Setting replaces any client-sent copy: no client picks its version.
    host.set_request_header(&h.version, Some(plan.version(routed.arm).as_bytes()));
    host.set_request_header(&h.stage, Some(plan.stage.as_bytes()));
    host.set_request_header(&h.unkeyed, routed.unkeyed.then_some(b"1".as_slice()));
    host.clear_route_cache();
    host.count(routed.arm, Counter::RqTotal);
    if routed.unkeyed {
        host.count(routed.arm, Counter::RqUnkeyed);
    }
    routed
}

/// Tags the response with the version and stage that served it, counts its
/// status class and records its latency.
pub fn tag_response<H: Host + ?Sized>(plan: &Plan, host: &mut H, routed: Routed) {
    let h = &plan.headers;
    host.set_response_header(&h.version, Some(plan.version(routed.arm).as_bytes()));
    host.set_response_header(&h.stage, Some(plan.stage.as_bytes()));
    if routed.unkeyed {
        host.set_response_header(&h.unkeyed, Some(b"1"));
    }
    let status = host.response_status();
    if let Some(class) = status.and_then(Counter::for_status) {
        host.count(routed.arm, class);
    }
    if status == Some(504) {
        host.count(routed.arm, Counter::RqTimeout);
    }
    let latency_us = host.now_nanos().saturating_sub(routed.started_ns) / 1000;
    host.record(routed.arm, Histogram::LatencyUs, latency_us);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::split::Salt;

    /// An in-memory proxy.
    #[derive(Default)]
    struct FakeHost {
        request: Vec<(String, Vec<u8>)>,
        response: Vec<(String, Vec<u8>)>,
        status: Option<u16>,
        route_cache_cleared: u32,
        counts: HashMap<(Arm, Counter), u64>,
        recorded: Vec<(Arm, Histogram, u64)>,
        clock_ns: std::cell::Cell<u64>,
    }

    impl FakeHost {
        fn with_request_header(mut self, name: &str, value: &str) -> Self {
            self.request.push((name.to_string(), value.as_bytes().to_vec()));
            self
        }
        fn with_status(mut self, status: u16) -> Self {
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
        fn req(&self, name: &str) -> Option<String> {
            Self::get(&self.request, name)
        }
        fn resp(&self, name: &str) -> Option<String> {
            Self::get(&self.response, name)
        }
        fn count_of(&self, arm: Arm, c: Counter) -> u64 {
            self.counts.get(&(arm, c)).copied().unwrap_or(0)
        }
    }

    impl Host for FakeHost {
        fn request_header(&self, name: &str) -> Option<Vec<u8>> {
            self.request.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        }
        fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) {
            Self::set(&mut self.request, name, value)
        }
        fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) {
            Self::set(&mut self.response, name, value)
        }
        fn response_status(&self) -> Option<u16> {
            self.status
        }
        fn clear_route_cache(&mut self) {
            self.route_cache_cleared += 1;
        }
        fn count(&mut self, arm: Arm, counter: Counter) {
            *self.counts.entry((arm, counter)).or_default() += 1;
        }
        fn record(&mut self, arm: Arm, histogram: Histogram, value: u64) {
            self.recorded.push((arm, histogram, value));
        }
        fn now_nanos(&self) -> u64 {
            // Each look at the clock is 1.5 ms later than the one before.
            self.clock_ns.set(self.clock_ns.get() + 1_500_000);
            self.clock_ns.get()
        }
    }

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
        assert_eq!(host.route_cache_cleared, 1);
        assert_eq!(host.count_of(Arm::Challenger, Counter::RqTotal), 1);

        host.status = Some(503);
        tag_response(&p, &mut host, routed);
        assert_eq!(host.resp("x-model-version").as_deref(), Some("v2"));
        assert_eq!(host.resp("x-canary-stage").as_deref(), Some("s5000"));
        assert_eq!(host.count_of(Arm::Challenger, Counter::Rq5xx), 1);
        assert_eq!(host.count_of(Arm::Challenger, Counter::RqTimeout), 0);
        assert_eq!(host.recorded, vec![(Arm::Challenger, Histogram::LatencyUs, 1500)]);
    }

    #[test]
    fn a_504_counts_as_a_timeout_too() {
        let p = plan(0, "");
        let mut host = FakeHost::default().with_request_header("x-user-id", "u").with_status(504);
        let routed = route_request(&p, &mut host);
        tag_response(&p, &mut host, routed);
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
        tag_response(&p, &mut host, routed);
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
