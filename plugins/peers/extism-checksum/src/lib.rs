//! Benchmark peer: the `checksum` fixture's handler logic (FNV-1a over the
//! event's payload) as an Extism plugin, so that the boundary benchmark
//! compares plugbus and Extism on the same work.
//!
//! Extism passes bytes in and out, so an Extism user sends an event in one
//! of two ways, and the plugin offers both:
//!
//! - `handle_data`: the input is the payload alone (the least an Extism call
//!   can carry; the event's attributes do not cross the boundary);
//! - `handle_event`: the input is the whole CloudEvent as JSON, which the
//!   plugin parses (attributes as strings, the payload kept raw) before it
//!   hashes the payload: what crossing the boundary with the attributes
//!   costs in Extism.
//!
//! Both return the 8-byte little-endian checksum, and fail on an empty
//! payload, as the fixture does.

// The PDK's `#[plugin_fn]` expands to `unsafe`, undocumented export glue
// around each documented function.
#![allow(unsafe_code, missing_docs)]

use extism_pdk::{Error, FnResult, plugin_fn};
use serde::Deserialize;

/// FNV-1a, as the `checksum` fixture computes it.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn handle(data: &[u8]) -> FnResult<Vec<u8>> {
    if data.is_empty() {
        return Err(Error::msg("an empty payload has nothing to hash").into());
    }
    Ok(checksum(data).to_le_bytes().to_vec())
}

/// The payload alone.
#[plugin_fn]
pub fn handle_data(input: Vec<u8>) -> FnResult<Vec<u8>> {
    handle(&input)
}

/// A CloudEvent in JSON, with the attributes the plugbus record carries.
#[derive(Deserialize)]
#[allow(dead_code)] // parsed as a handler would, not all read
struct CloudEvent<'a> {
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    tenant: String,
    partitionkey: Option<String>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// The whole event, as JSON.
#[plugin_fn]
pub fn handle_event(input: Vec<u8>) -> FnResult<Vec<u8>> {
    let event: CloudEvent<'_> = serde_json::from_slice(&input)?;
    handle(event.data.map_or(&[][..], |d| d.get().as_bytes()))
}
