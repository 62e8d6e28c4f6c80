//! Outbound HTTP from plugins (`wasi:http/outgoing-handler`, WIT 0.3.0):
//! the hooks through which wasmtime-wasi-http sends a plugin's requests.
//!
//! For now [`Hooks`] refuses every request with `HTTP-request-denied`, so
//! that the linker serves the whole 0.3.0 world while no plugin can reach
//! the network: it is the placeholder that the allow-list, the limits and
//! the sending replace.

use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

/// The `wasi:http` hooks of one plugin instance: every request is refused.
#[derive(Debug, Default)]
pub(crate) struct Hooks;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(std::future::ready(Err(
            wasmtime_wasi_http::Error::HttpRequestDenied,
        )))
    }
}
