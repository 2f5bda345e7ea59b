//! The cheapest proxy-wasm HTTP filter there is: an empty root context and an
//! empty HTTP context whose callbacks all return `Continue` (the SDK's
//! defaults). Built exactly like the real filter (`scripts/build-wasm.sh
//! canary-noop-filter`, the `wasm` profile), it is the baseline that separates
//! what Envoy's Wasm machinery costs per request from what the canary filter's
//! own work costs.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request;

impl Context for Request {}

impl HttpContext for Request {}
