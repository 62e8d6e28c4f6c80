//! Running handlers natively, in a plain `cargo test`, without wasm.
//!
//! The tests live in the plugin's own crate, usually in a
//! `#[cfg(test)] mod tests` beside the handler. Building their events with
//! `serde_json::json!`, as here, needs `serde_json` among the plugin's
//! `[dev-dependencies]` (`serde_json = "1"`): the component itself does
//! not.
//!
//! ```
//! use plugbus_sdk::{Context, Event, Handler, HandlerError, testing::TestContext};
//!
//! struct Greeter;
//! impl Handler for Greeter {
//!     fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
//!         let greeting = ctx.config("greeting").unwrap_or_else(|| "hello".into());
//!         ctx.info(format!("{greeting} {}", event.id()));
//!         Ok(())
//!     }
//! }
//!
//! let mut ctx = TestContext::new().with_config("greeting", "hi");
//! ctx.run::<Greeter>(Event::new("order.created").with_id("o-1")).unwrap();
//! assert_eq!(ctx.logs()[0].1, "hi o-1");
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Event, Handler, HandlerError, HostApi, Level, OutgoingEvent};

/// The longest state key the host takes, in bytes (its default).
pub const MAX_STATE_KEY_BYTES: usize = 512;
/// The largest state value the host takes, in bytes (its default).
pub const MAX_STATE_VALUE_BYTES: usize = 1 << 20;

/// A host for native tests: serves config, records emits and logs, and
/// keeps state like the host: a run's writes are kept when the handler
/// returns `Ok` and undone when it fails, and its emits likewise.
#[derive(Debug, Default)]
pub struct TestContext {
    config: BTreeMap<String, String>,
    emitted: Vec<OutgoingEvent>,
    logs: Vec<(Level, String)>,
    refuse_emits: Option<String>,
    state: BTreeMap<String, Vec<u8>>,
}

impl TestContext {
    /// A context with no config, no emits and no logs.
    ///
    /// ```
    /// # use plugbus_sdk::testing::TestContext;
    /// let ctx = TestContext::new();
    /// assert!(ctx.emitted().is_empty() && ctx.logs().is_empty() && ctx.state_entries().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a config value, as the manifest's `[config]` table would.
    ///
    /// ```
    /// # use plugbus_sdk::testing::TestContext;
    /// let ctx = TestContext::new().with_config("large_order_cents", "10000");
    /// ```
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Makes every later emit fail with `message`, as the host does when an
    /// event is invalid or a limit is reached.
    ///
    /// ```
    /// # use plugbus_sdk::testing::TestContext;
    /// let ctx = TestContext::new().refuse_emits("chain depth limit reached");
    /// ```
    pub fn refuse_emits(mut self, message: impl Into<String>) -> Self {
        self.refuse_emits = Some(message.into());
        self
    }

    /// Sets a state value as JSON before the run, as an earlier delivery
    /// would have.
    ///
    /// ```
    /// # use plugbus_sdk::testing::TestContext;
    /// let ctx = TestContext::new().with_state("totals", &serde_json::json!({ "orders": 7 }));
    /// assert_eq!(ctx.state::<serde_json::Value>("totals").unwrap()["orders"], 7);
    /// ```
    ///
    /// # Panics
    /// When `value` cannot be serialised as JSON; this builder is for tests.
    pub fn with_state<T: Serialize + ?Sized>(mut self, key: impl Into<String>, value: &T) -> Self {
        let bytes = serde_json::to_vec(value).expect("test state serialises as JSON");
        self.state.insert(key.into(), bytes);
        self
    }

    /// Runs handler `H` on `event`. When the handler fails, its state
    /// writes and emits are undone, as the host discards them.
    pub fn run<H: Handler>(&mut self, event: Event) -> Result<(), HandlerError> {
        let state = self.state.clone();
        let emitted = self.emitted.len();
        let result = H::handle(&mut Context::new(self), event);
        if result.is_err() {
            self.state = state;
            self.emitted.truncate(emitted);
        }
        result
    }

    /// The state under `key`, decoded from JSON; `None` when there is none.
    ///
    /// # Panics
    /// When the stored value does not decode as `T`.
    pub fn state<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state.get(key).map(|bytes| {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|e| panic!("state {key:?} does not decode: {e}"))
        })
    }

    /// Every state key and its raw value, in key order.
    pub fn state_entries(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.state
    }

    /// The events emitted so far, in order.
    pub fn emitted(&self) -> &[OutgoingEvent] {
        &self.emitted
    }

    /// The log lines written so far, in order.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.logs
    }
}

impl HostApi for TestContext {
    fn emit(&mut self, event: OutgoingEvent) -> Result<String, String> {
        if let Some(message) = &self.refuse_emits {
            return Err(message.clone());
        }
        self.emitted.push(event);
        Ok(format!("emitted-{}", self.emitted.len()))
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    fn config_get(&self, key: &str) -> Option<String> {
        self.config.get(key).cloned()
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }

    fn state_set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_STATE_KEY_BYTES {
            return Err(format!(
                "a state key is 1 to {MAX_STATE_KEY_BYTES} bytes; this one is {}",
                key.len()
            ));
        }
        if value.len() > MAX_STATE_VALUE_BYTES {
            return Err(format!(
                "the value of state {key:?} is {} bytes; the limit is {MAX_STATE_VALUE_BYTES}",
                value.len()
            ));
        }
        self.state.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn state_delete(&mut self, key: &str) {
        self.state.remove(key);
    }
}
