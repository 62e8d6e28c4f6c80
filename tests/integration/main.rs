//! Integration tests of the plugbus host with real components built from
//! the example and fixture crates in `plugins/`. wasmtime is never mocked.

mod batch;
mod durable;
mod examples;
mod fixtures;
mod isolation;
mod js;
mod loading;
mod outbound;
mod publish;
mod python;
mod reload;
mod secrets;
