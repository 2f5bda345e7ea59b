//! proxy-wasm glue: parse the configuration once in `on_configure`, then call
//! `canary_core::request` with host calls behind its `Host` trait. No decision
//! is made here.

use std::rc::Rc;

use canary_core::metrics::{metric_name, Counter, Histogram};
use canary_core::request::{self, Host, Routed};
use canary_core::{Arm, Plan};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

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

/// Metric ids, defined once per configuration.
struct Metrics {
    /// `[arm][counter]`.
    counters: [[u32; Counter::ALL.len()]; 2],
    /// `[arm][histogram]`.
    histograms: [[u32; Histogram::ALL.len()]; 2],
}

/// Everything the request path reads, built once per configuration.
struct Active {
    plan: Plan,
    metrics: Metrics,
}

fn define(kind: MetricType, name: &str) -> Result<u32, String> {
    hostcalls::define_metric(kind, name).map_err(|s| format!("cannot define metric {name}: {s:?}"))
}

impl Active {
    fn new(plan: Plan) -> Result<Active, String> {
        let mut metrics =
            Metrics { counters: [[0; Counter::ALL.len()]; 2], histograms: [[0; Histogram::ALL.len()]; 2] };
        for arm in Arm::BOTH {
            let version = plan.version(arm);
            for c in Counter::ALL {
                let name = metric_name(&plan.rollout, plan.epoch, version, c);
                metrics.counters[arm.index()][c.index()] = define(MetricType::Counter, &name)?;
            }
            for h in Histogram::ALL {
                let name = metric_name(&plan.rollout, plan.epoch, version, h);
                metrics.histograms[arm.index()][h.index()] = define(MetricType::Histogram, &name)?;
            }
        }
        Ok(Active { plan, metrics })
    }
}

struct Root {
    active: Option<Rc<Active>>,
}

impl Context for Root {}

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
                        "canary: configuration accepted: rollout {} epoch {} stage {} challenger {} at {}",
                        p.rollout,
                        p.epoch,
                        p.stage,
                        p.version(Arm::Challenger),
                        p.weight
                    ),
                );
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { active: self.active.clone(), routed: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    active: Option<Rc<Active>>,
    routed: Option<Routed>,
}

/// The request path's view of Envoy.
struct Envoy<'a> {
    metrics: &'a Metrics,
}

impl Host for Envoy<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
    }

    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, value);
    }

    fn response_status(&self) -> Option<u16> {
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok()??;
        std::str::from_utf8(&status).ok()?.parse().ok()
    }

    fn clear_route_cache(&mut self) {
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
    }

    fn count(&mut self, arm: Arm, counter: Counter) {
        let _ = hostcalls::increment_metric(self.metrics.counters[arm.index()][counter.index()], 1);
    }

    fn record(&mut self, arm: Arm, histogram: Histogram, value: u64) {
        let _ = hostcalls::record_metric(self.metrics.histograms[arm.index()][histogram.index()], value);
    }

    fn now_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(active) = &self.active {
            let mut host = Envoy { metrics: &active.metrics };
            self.routed = Some(request::route_request(&active.plan, &mut host));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(active), Some(routed)) = (&self.active, self.routed) {
            let mut host = Envoy { metrics: &active.metrics };
            request::tag_response(&active.plan, &mut host, routed);
        }
        Action::Continue
    }
}
