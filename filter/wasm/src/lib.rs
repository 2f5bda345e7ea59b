//! proxy-wasm glue: parse the configuration once in `on_configure`, then call
//! `canary_core::request` with host calls behind its `Host` trait, and move
//! shadow copies through `canary_core::shadow`. No decision is made here.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use canary_core::metrics::{Metric, MetricTable, PendingCounts, ShadowStat};
use canary_core::predict::PredictionSource;
use canary_core::request::{self, Exchange, Host, Routed};
use canary_core::shadow::{is_local_reply, ShadowCall, Shadows, Verdict, LOCAL_REPLY_PREFIX};
use canary_core::{Arm, Plan};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    // A panic kills the VM of this worker: say why, loudly.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("canary: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { active: None }) });
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Headers never copied to a shadow call: hop-by-hop ones, and the length
/// (Envoy sets it for the copied body).
const NOT_COPIED: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "content-length"];

/// Marks a shadow copy, so the challenger can tell it from user traffic.
const SHADOW_HEADER: &str = "x-canary-shadow";

/// How often counters held in the filter reach Envoy's stats. The controller
/// reads every interval (60 s by default, seconds in tests), so a tenth of a
/// second of lag costs nothing, while one host call per counter per request
/// would cost about 2 µs per request.
const FLUSH_PERIOD: Duration = Duration::from_millis(100);

/// Everything the request path reads, built once per configuration.
struct Active {
    plan: Plan,
    table: MetricTable,
    /// Host metric ids in [`MetricTable`] order.
    ids: Vec<u32>,
    /// Counter increments not yet handed to Envoy (see [`FLUSH_PERIOD`]).
    pending: PendingCounts,
    shadows: Option<RefCell<Shadows>>,
}

impl Active {
    fn new(plan: Plan) -> Result<Active, String> {
        let table = MetricTable::new(&plan);
        let ids = table
            .definitions(&plan)
            .into_iter()
            .map(|(histogram, name)| {
                let kind = if histogram { MetricType::Histogram } else { MetricType::Counter };
                hostcalls::define_metric(kind, &name).map_err(|s| format!("cannot define metric {name}: {s:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let compare = plan.prediction.is_some();
        let shadows = plan.shadow.as_ref().map(|s| RefCell::new(Shadows::new(s.max_in_flight, s.timeout_ms, compare)));
        let pending = PendingCounts::new(ids.len());
        Ok(Active { plan, table, ids, pending, shadows })
    }

    fn id(&self, m: Metric) -> Option<u32> {
        self.table.index(m).and_then(|i| self.ids.get(i).copied())
    }

    fn increment(&self, m: Metric) {
        if let Some(i) = self.table.index(m) {
            self.pending.add(i, 1);
        }
    }

    /// Hands the held counter increments to Envoy.
    fn flush(&self) {
        self.pending.drain(|i, n| {
            if let Some(id) = self.ids.get(i) {
                let _ = hostcalls::increment_metric(*id, n as i64);
            }
        });
    }

    fn record(&self, m: Metric, value: u64) {
        if let Some(id) = self.id(m) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn verdict(&self, v: Option<Verdict>) {
        let stat = match v {
            Some(Verdict::Agree) => ShadowStat::Agree,
            Some(Verdict::Disagree) => ShadowStat::Disagree,
            Some(Verdict::Incomplete) => ShadowStat::Incomplete,
            None => return,
        };
        self.increment(Metric::Shadow(stat));
    }

    /// The prediction bin of a shadow answer, `None` when unparsed.
    fn shadow_bin(&self, body_size: usize) -> Option<u16> {
        let p = self.plan.prediction.as_ref()?;
        let bin = match &p.from {
            PredictionSource::Header(name) => {
                let v = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten();
                p.bin_of_header(v.as_deref())
            }
            PredictionSource::JsonPointer(_) if body_size <= p.max_body_bytes => {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten();
                body.map_or(p.unparsed(), |b| p.bin_of_json(&b))
            }
            PredictionSource::JsonPointer(_) => p.unparsed(),
        };
        (bin != p.unparsed()).then_some(bin as u16)
    }
}

struct Root {
    active: Option<Rc<Active>>,
}

impl Context for Root {
    /// The plugin is going away (a new configuration replaced it, or Envoy
    /// stops): what it counted must not be lost.
    fn on_done(&mut self) -> bool {
        // Streams still in flight keep their own reference; the last of them
        // flushes what they count after this (see `Drop for Request`).
        if let Some(active) = self.active.take() {
            active.flush();
        }
        true
    }

    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(active) = &self.active else { return };
        let Some(shadows) = &active.shadows else { return };
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        let Ok(mut shadows) = shadows.try_borrow_mut() else { return };
        let Some(status) = status.filter(|_| num_headers > 0) else {
            if shadows.token_failed(token) {
                active.increment(Metric::Shadow(ShadowStat::Failed));
            }
            return;
        };
        if status == 503 || status == 504 {
            // Envoy's own reply to a call it could not complete (timeout,
            // refused, reset, no host) is a failed copy: its latency is the
            // timeout, not the challenger's, and its 5xx not the model's.
            let head = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(LOCAL_REPLY_PREFIX));
            if is_local_reply(status, &head.ok().flatten().unwrap_or_default()) {
                if shadows.token_failed(token) {
                    active.increment(Metric::Shadow(ShadowStat::Failed));
                }
                return;
            }
        }
        let bin = if (200..300).contains(&status) { active.shadow_bin(body_size) } else { None };
        if let Some(answer) = shadows.answered(token, now_nanos(), bin) {
            if status >= 500 {
                active.increment(Metric::Shadow(ShadowStat::Rq5xx));
            }
            active.record(Metric::Shadow(ShadowStat::LatencyUs), answer.latency_ns / 1000);
            active.verdict(answer.verdict);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log(LogLevel::Error, "canary: configuration refused: it is empty; a JSON object is required");
            return false;
        };
        let active = Plan::from_json(&bytes).map_err(|e| e.to_string()).and_then(Active::new);
        match active {
            Ok(active) => {
                let p = &active.plan;
                log(
                    LogLevel::Info,
                    &format!(
                        "canary: configuration accepted: rollout {} epoch {} stage {} challenger {} at {}{}",
                        p.rollout,
                        p.epoch,
                        p.stage,
                        p.version(Arm::Challenger),
                        p.weight,
                        if p.shadow.is_some() { ", shadowing" } else { "" }
                    ),
                );
                // Shadow copies leave from the root context, so they outlive
                // the user's stream (see canary_core::shadow): a short tick.
                let tick = if active.shadows.is_some() { Duration::from_millis(5) } else { FLUSH_PERIOD };
                self.set_tick_period(tick);
                if let Some(old) = self.active.take() {
                    old.flush();
                }
                self.active = Some(Rc::new(active));
                true
            }
            Err(e) => {
                // Returning false makes Envoy refuse it and keep the last good one.
                log(LogLevel::Error, &format!("canary: configuration refused: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(active) = &self.active else { return };
        active.flush();
        let (Some(shadows), Some(cfg)) = (&active.shadows, &active.plan.shadow) else { return };
        let Ok(mut shadows) = shadows.try_borrow_mut() else { return };
        let now = now_nanos();
        for _ in 0..shadows.expire(now) {
            active.increment(Metric::Shadow(ShadowStat::Incomplete));
        }
        for call in shadows.take_ready() {
            let headers: Vec<(&str, &str)> = call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let body = (!call.body.is_empty()).then_some(call.body.as_slice());
            let timeout = Duration::from_millis(u64::from(cfg.timeout_ms));
            match hostcalls::dispatch_http_call(&cfg.cluster, headers, body, vec![], timeout) {
                Ok(token) => {
                    shadows.sent(call.id, token, now);
                    active.increment(Metric::Shadow(ShadowStat::RqTotal));
                }
                Err(_) => {
                    shadows.failed(call.id);
                    active.increment(Metric::Shadow(ShadowStat::Failed));
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            active: self.active.clone(),
            routed: None,
            exchange: None,
            shadow: None,
            shadow_id: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A shadow copy being collected.
struct ShadowCopy {
    id: u64,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Request {
    active: Option<Rc<Active>>,
    routed: Option<Routed>,
    exchange: Option<Exchange>,
    /// The copy still collecting the request body.
    shadow: Option<ShadowCopy>,
    /// This request's shadow comparison, if it has one.
    shadow_id: Option<u64>,
}

/// The request path's view of Envoy.
struct Envoy<'a> {
    active: &'a Active,
}

impl Host for Envoy<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        if cfg!(feature = "ablate-key") {
            return Some(b"ablated-user".to_vec());
        }
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) {
        if cfg!(feature = "ablate-request-headers") {
            return;
        }
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) {
        if cfg!(feature = "ablate-response-headers") {
            return;
        }
        let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, value);
    }

    fn response_status(&self) -> Option<u16> {
        if cfg!(feature = "ablate-status") {
            return Some(200);
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok()??;
        std::str::from_utf8(&status).ok()?.parse().ok()
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten()
    }

    fn increment(&mut self, metric: Metric) {
        if !cfg!(feature = "ablate-metrics") {
            self.active.increment(metric);
        }
    }

    fn record(&mut self, metric: Metric, value: u64) {
        if !cfg!(feature = "ablate-metrics") {
            self.active.record(metric, value);
        }
    }

    fn now_nanos(&self) -> u64 {
        if cfg!(feature = "ablate-clock") {
            return 0;
        }
        now_nanos()
    }

    fn mark(&mut self, key: &str, value: &[u8]) {
        let _ = hostcalls::set_property(vec![key], Some(value));
    }
}

impl Request {
    /// Starts a shadow copy of this request, or counts why not.
    fn begin_shadow(&mut self, active: &Active, end_of_stream: bool) {
        let Some(shadows) = &active.shadows else { return };
        let Ok(mut shadows) = shadows.try_borrow_mut() else { return };
        let Some(id) = shadows.begin(now_nanos()) else {
            active.increment(Metric::Shadow(ShadowStat::Skipped));
            return;
        };
        let owned = &active.plan.headers;
        let mut headers: Vec<(String, String)> = hostcalls::get_map(MapType::HttpRequestHeaders)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| {
                !NOT_COPIED.contains(&k.as_str()) && *k != owned.version && *k != owned.stage && *k != owned.unkeyed
            })
            .collect();
        headers.push((SHADOW_HEADER.to_string(), "1".to_string()));
        // Marks the user's request in the access log (%FILTER_STATE(wasm.canary_shadow:PLAIN)%).
        let _ = hostcalls::set_property(vec!["canary_shadow"], Some(b"1"));
        self.shadow_id = Some(id);
        let copy = ShadowCopy { id, headers, body: vec![] };
        if end_of_stream {
            shadows.ready(ShadowCall { id: copy.id, headers: copy.headers, body: copy.body });
        } else {
            self.shadow = Some(copy);
        }
    }
}

impl Context for Request {}

impl Drop for Request {
    /// The last stream of a configuration that was replaced hands over what
    /// the streams counted after the root context's final flush.
    fn drop(&mut self) {
        if let Some(active) = &self.active {
            if Rc::strong_count(active) == 1 {
                active.flush();
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(active) = self.active.clone() {
            let routed = request::route_request(&active.plan, &mut Envoy { active: &active });
            if routed.shadow {
                self.begin_shadow(&active, end_of_stream);
            }
            self.routed = Some(routed);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(active), Some(copy)) = (&self.active, &mut self.shadow) else { return Action::Continue };
        let (Some(shadows), Some(cfg)) = (&active.shadows, &active.plan.shadow) else { return Action::Continue };
        let Ok(mut shadows) = shadows.try_borrow_mut() else { return Action::Continue };
        if copy.body.len() + body_size > cfg.max_body_bytes as usize {
            shadows.abandon(copy.id);
            active.increment(Metric::Shadow(ShadowStat::Skipped));
            self.shadow = None;
            return Action::Continue;
        }
        if let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            copy.body.extend_from_slice(&chunk);
        }
        if end_of_stream {
            if let Some(c) = self.shadow.take() {
                shadows.ready(ShadowCall { id: c.id, headers: c.headers, body: c.body });
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let (Some(active), Some(routed)) = (self.active.clone(), self.routed) {
            let exchange = request::tag_response(&active.plan, &mut Envoy { active: &active }, routed, end_of_stream);
            self.settled(&active, &exchange);
            self.exchange = Some(exchange);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let (Some(active), Some(mut exchange)) = (self.active.clone(), self.exchange.take()) {
            let had_bin = exchange.bin.is_some();
            request::on_response_body(
                &active.plan,
                &mut Envoy { active: &active },
                &mut exchange,
                body_size,
                end_of_stream,
            );
            if !had_bin {
                self.settled(&active, &exchange);
            }
            self.exchange = Some(exchange);
        }
        Action::Continue
    }
}

impl Request {
    /// Hands the user's prediction to the shadow comparison once it is known.
    fn settled(&self, active: &Active, exchange: &Exchange) {
        let (Some(bin), true) = (exchange.bin, exchange.routed.shadow) else { return };
        let Some(shadows) = &active.shadows else { return };
        let Some(id) = self.shadow_id else { return };
        let unparsed = active.plan.prediction.as_ref().map(|p| p.unparsed() as u16);
        let bin = (Some(bin) != unparsed).then_some(bin);
        if let Ok(mut shadows) = shadows.try_borrow_mut() {
            active.verdict(shadows.champion_bin(id, bin));
        }
    }
}
