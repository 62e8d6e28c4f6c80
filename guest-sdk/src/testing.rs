//! Running handlers natively, in a plain `cargo test`, without wasm.
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

use crate::{Context, Event, Handler, HandlerError, HostApi, Level, OutgoingEvent};

/// A host for native tests: serves config, records emits and logs.
#[derive(Debug, Default)]
pub struct TestContext {
    config: BTreeMap<String, String>,
    emitted: Vec<OutgoingEvent>,
    logs: Vec<(Level, String)>,
    refuse_emits: Option<String>,
}

impl TestContext {
    /// A context with no config, no emits and no logs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a config value, as the manifest's `[config]` table would.
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Makes every later emit fail with `message`, as the host does when an
    /// event is invalid or a limit is reached.
    pub fn refuse_emits(mut self, message: impl Into<String>) -> Self {
        self.refuse_emits = Some(message.into());
        self
    }

    /// Runs handler `H` on `event`.
    pub fn run<H: Handler>(&mut self, event: Event) -> Result<(), HandlerError> {
        H::handle(&mut Context::new(self), event)
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
}
