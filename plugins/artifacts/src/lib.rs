//! The plugins of `plugins/examples` and `plugins/fixtures`, built once per
//! build (by this crate's build script) for `wasm32-wasip2`, as paths to
//! their components; and the benchmark peers of `plugins/peers`, plugins of
//! other hosts built for their own targets (`EXTISM_CHECKSUM`).
//!
//! - one constant per plugin, named after its package in upper snake case
//!   (`LOW_STOCK_ALERT`, `FIXTURE_SPIN`, …);
//! - one constant per Python plugin (`plugins/examples/*/app.py`,
//!   `plugins/fixtures/py-*`), built with componentize-py into
//!   `target/guests/python/<dir>.wasm`: `EXAMPLE_LOW_STOCK_ALERT_PY`,
//!   `FIXTURE_PY_BEHAVIOURS` (in [`ALL`], not in `EXAMPLES`/`FIXTURES`);
//! - [`EXAMPLES`] and [`FIXTURES`], by name;
//! - [`ALL`], every plugin by package name;
//! - `for_each_fixture!(mac)`, which calls `mac!(name)` for every fixture
//!   (`spin`, `grow_memory`, …), so that a test file can make the build fail
//!   when a fixture has no test.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
