//! # plugbus-sdk
//!
//! The Rust SDK for [plugbus](https://example.invalid/plugbus) plugins: event
//! handlers compiled to WebAssembly components of the WIT world
//! `plugbus:plugin/batch-handler@0.3.0`: they export `handle`, and
//! `handle-batch`, through which the host passes many events in one call.
//!
//! A plugin implements [`Handler`] and calls [`export_handler!`]. Inside the
//! handler, a [`Context`] publishes events ([`Context::emit`],
//! [`Context::emit_json`]), writes log lines ([`Context::info`], …) and reads
//! the plugin's configuration from its manifest ([`Context::config`]), and
//! keeps durable state ([`Context::state`], [`Context::set_state`]) that is
//! committed only when the handler succeeds. It calls HTTP services its
//! manifest allows ([`Context::http`]) and reads the secrets its manifest
//! is granted ([`Context::secret`]). [`Event::json`] reads the payload as
//! any serde type; [`Event::attempt`] says which retry this is.
//!
//! The same handler runs natively in a plain `cargo test` through
//! [`testing::TestContext`], which records emits, logs and HTTP requests,
//! serves config, secrets and canned HTTP answers, and keeps state as the
//! host does.
//!
//! ## A complete plugin
//!
//! The quickest start is `plugbus new my-plugin --lang rust`: it writes
//! the crate below (a handler with state and native tests, its manifest and
//! a README, with a copy of this SDK) in a new folder. By hand, a plugin is
//! a crate of its own.
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "low-stock-alert"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! # cdylib: the component the host loads; rlib: native tests in tests/
//! # and doc tests can link the handler.
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! # plugbus-sdk is not on crates.io yet: take it from a checkout of plugbus
//! # (an absolute path, or relative to this Cargo.toml) ...
//! plugbus-sdk = { path = "/home/me/src/plugbus/guest-sdk" }
//! # ... or from its git repository:
//! # plugbus-sdk = { git = "https://example.invalid/plugbus" }
//! serde = { version = "1", features = ["derive"] }
//!
//! [dev-dependencies]
//! # `serde_json::json!` in the native tests below; the component does not
//! # need it.
//! serde_json = "1"
//!
//! [profile.release]
//! opt-level = "s"      # a smaller component compiles faster in the host
//! lto = true
//! codegen-units = 1
//! strip = "debuginfo"  # keeps function names for trap backtraces
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use plugbus_sdk::{Context, Event, Handler, HandlerError, OutgoingEvent, export_handler};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct StockChanged {
//!     sku: String,
//!     new_quantity: i64,
//! }
//!
//! #[derive(Serialize)]
//! struct LowStock<'a> {
//!     sku: &'a str,
//!     quantity: i64,
//! }
//!
//! pub struct LowStockAlert;
//!
//! impl Handler for LowStockAlert {
//!     fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
//!         let change: StockChanged = event.json()?;
//!         let threshold = ctx.config_parse::<i64>("threshold")?.unwrap_or(10);
//!         if change.new_quantity <= threshold {
//!             ctx.info(format!("{} is low: {}", change.sku, change.new_quantity));
//!             let alert = LowStock { sku: &change.sku, quantity: change.new_quantity };
//!             ctx.emit(
//!                 OutgoingEvent::json("inventory.low_stock", &alert)?
//!                     .with_subject(&change.sku)
//!                     .with_extension("partitionkey", &change.sku),
//!             )?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_handler!(LowStockAlert);
//!
//! // A native test, in `#[cfg(test)] mod tests` of the plugin (serde_json is
//! // the dev-dependency above):
//! use plugbus_sdk::testing::TestContext;
//!
//! let mut ctx = TestContext::new().with_config("threshold", "5");
//! let event = Event::new("inventory.stock_changed")
//!     .with_json(&serde_json::json!({ "sku": "sku-1", "new_quantity": 3 }));
//! ctx.run::<LowStockAlert>(event).unwrap();
//! assert_eq!(ctx.emitted().len(), 1);
//! assert_eq!(ctx.emitted()[0].ty, "inventory.low_stock");
//! assert_eq!(ctx.emitted()[0].subject.as_deref(), Some("sku-1"));
//! assert_eq!(ctx.logs()[0].1, "sku-1 is low: 3");
//! ```
//!
//! `cargo test` runs the native tests. `cargo build --target wasm32-wasip2
//! --release` (once `rustup target add wasm32-wasip2` has installed the
//! target) builds the component. Cargo names the file after the crate with
//! `-` turned into `_`: `target/wasm32-wasip2/release/low_stock_alert.wasm`.
//! Copy the manifest `low-stock-alert.toml` and then the component, under
//! the plugin's name, into the tenant's folder of the host's plugins
//! directory: `<plugins-dir>/<tenant>/low-stock-alert.toml` and
//! `<plugins-dir>/<tenant>/low-stock-alert.wasm`. A running host loads them
//! within moments.
//!
//! ## Emitting events
//!
//! [`Context::emit_json`] is the short form: a type and a JSON payload.
//! For a subject, extension attributes, a schema or a payload that is not
//! JSON, build an [`OutgoingEvent`] and pass it to [`Context::emit`]:
//!
//! | builder | sets |
//! |---|---|
//! | [`OutgoingEvent::new`]`("t", bytes)` | type and raw payload, no content type |
//! | [`OutgoingEvent::json`]`("t", &value)?` | type and `value` as JSON, content type `application/json` |
//! | [`.with_subject`](OutgoingEvent::with_subject)`("sku-1")` | the subject |
//! | [`.with_extension`](OutgoingEvent::with_extension)`("partitionkey", "sku-1")` | an extension attribute |
//! | [`.with_datacontenttype`](OutgoingEvent::with_datacontenttype)`("text/csv")` | the payload's media type |
//! | [`.with_dataschema`](OutgoingEvent::with_dataschema)`("https://…")` | the payload's schema URI |
//!
//! The host sets the id, source, time and tenant, and the `causationid` and
//! `correlationid` extensions.
//!
//! ## State
//!
//! [`Context::state`] and [`Context::set_state`] read and write a value as
//! JSON under a key ([`Context::state_bytes`] and
//! [`Context::set_state_bytes`] as raw bytes; [`Context::delete_state`]
//! removes it). The state belongs to the plugin of one tenant, and a
//! delivery's writes are committed together with its emits only when the
//! handler returns `Ok`.
//!
//! ## Outbound HTTP and secrets
//!
//! A plugin calls only the origins its manifest allows, and reads only the
//! secrets it is granted (the operator gives the tenant's secrets in
//! `plugbus.toml`, from environment variables or files):
//!
//! ```toml
//! subscribe = ["inventory.low_stock"]
//!
//! [http]
//! # scheme://host[:port]; "*.example.com" matches any name below it.
//! allow = ["https://hooks.example.com"]
//!
//! [secrets]
//! grant = ["webhook_token"]
//! ```
//!
//! ```
//! # use plugbus_sdk::{Context, Event, Handler, HandlerError};
//! # struct Notify;
//! # impl Handler for Notify {
//! # fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
//! let token = ctx
//!     .secret("webhook_token")
//!     .ok_or_else(|| HandlerError::permanent("the secret webhook_token is not granted"))?;
//! let response = ctx
//!     .http()
//!     .post("https://hooks.example.com/alerts")
//!     .header("authorization", format!("Bearer {token}"))
//!     .json(&serde_json::json!({ "event": event.id() }))
//!     .send()?;
//! match response.status() {
//!     200..=299 => Ok(()),
//!     429 | 500..=599 => Err(HandlerError::retryable(format!("answered {}", response.status()))),
//!     status => Err(HandlerError::permanent(format!("answered {status}"))),
//! }
//! # }}
//! ```
//!
//! [`RequestBuilder::send`] returns every status as a [`Response`] (a
//! redirect is not followed: a `3xx` comes back as it is); an
//! [`HttpError`] means no answer, and `?` makes it a retryable
//! [`HandlerError`] for a timeout or a lost connection, a permanent one for
//! a refusal by the allow-list. The host adds an `Idempotency-Key` header,
//! the same on every attempt of one delivery, and a `traceparent`: pass
//! the key on to the service, and a retried delivery does not act twice.
//!
//! ## Testing
//!
//! [`testing::TestContext`] is the host of a native test:
//! [`with_config`](testing::TestContext::with_config),
//! [`with_secret`](testing::TestContext::with_secret),
//! [`on_http`](testing::TestContext::on_http) (a canned answer) and
//! [`with_state`](testing::TestContext::with_state) set it up,
//! [`run`](testing::TestContext::run) runs a handler on an event (undoing
//! its state writes and emits when it fails, as the host does), and
//! [`emitted`](testing::TestContext::emitted),
//! [`logs`](testing::TestContext::logs),
//! [`state`](testing::TestContext::state) and
//! [`state_entries`](testing::TestContext::state_entries) and
//! [`requests`](testing::TestContext::requests) show what it did;
//! [`refuse_emits`](testing::TestContext::refuse_emits) makes the host refuse
//! emits. Build the events with [`Event::new`] and its `with_*` builders
//! ([`Event::with_json`], [`Event::with_subject`], [`Event::with_attempt`],
//! …), and read an emitted event's payload with
//! [`OutgoingEvent::json_data`].

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

mod event;
pub mod http;
pub mod testing;

pub use event::{Event, Extensions};
pub use http::{Http, HttpError, Method, Request, RequestBuilder, Response};

/// The bindings of the WIT world, generated by wit-bindgen. Not part of the
/// SDK's stable API: use the types of the crate root instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, unused_qualifications)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "batch-handler",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "plugbus_sdk::bindings",
    });
}

/// Why a handler failed, so that the host knows whether a retry can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// A passing failure: delivering the same event again may succeed.
    Retryable(String),
    /// The event can never be handled: delivering it again cannot help.
    Permanent(String),
}

impl HandlerError {
    /// A [`HandlerError::Retryable`].
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// A [`HandlerError::Permanent`].
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retryable(m) => write!(f, "retryable: {m}"),
            Self::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

impl std::error::Error for HandlerError {}

/// The severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics for developers.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected the plugin recovered from.
    Warn,
    /// A failure.
    Error,
}

/// An event for [`Context::emit`]. The host sets its id, source, time and
/// tenant, and the `causationid` and `correlationid` extensions.
///
/// ```
/// use plugbus_sdk::OutgoingEvent;
///
/// # fn main() -> Result<(), plugbus_sdk::HandlerError> {
/// let event = OutgoingEvent::json("order.counted", &serde_json::json!({ "orders": 2 }))?
///     .with_subject("order-1001")
///     .with_extension("partitionkey", "order-1001")
///     .with_dataschema("https://schemas.example/order-counted.json");
/// assert_eq!(event.subject.as_deref(), Some("order-1001"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    /// The kind of event.
    pub ty: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The subject, such as a SKU or an order id.
    pub subject: Option<String>,
    /// The media type of `data`.
    pub datacontenttype: Option<String>,
    /// A URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// Extension attributes: names of lowercase letters and digits.
    pub extensions: Vec<(String, String)>,
}

impl OutgoingEvent {
    /// An event of type `ty` with the payload `data` and no content type
    /// (add one with [`OutgoingEvent::with_datacontenttype`]).
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// let event = OutgoingEvent::new("report.ready", "sku,quantity\nsku-1,3\n");
    /// assert_eq!(event.datacontenttype, None);
    /// ```
    pub fn new(ty: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            ty: ty.into(),
            data: data.into(),
            subject: None,
            datacontenttype: None,
            dataschema: None,
            extensions: Vec::new(),
        }
    }

    /// An event of type `ty` whose payload is `value` as JSON, with content
    /// type `application/json`. A value that cannot be serialised (a map
    /// with keys that are not strings) is a [`HandlerError::Permanent`],
    /// so that `?` works in a handler.
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// # fn main() -> Result<(), plugbus_sdk::HandlerError> {
    /// let event = OutgoingEvent::json("order.counted", &serde_json::json!({ "orders": 2 }))?;
    /// assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn json<T: Serialize + ?Sized>(
        ty: impl Into<String>,
        value: &T,
    ) -> Result<Self, HandlerError> {
        let ty = ty.into();
        let data = serde_json::to_vec(value).map_err(|e| {
            HandlerError::Permanent(format!("cannot serialise the payload of {ty} as JSON: {e}"))
        })?;
        Ok(Self {
            datacontenttype: Some("application/json".into()),
            ..Self::new(ty, data)
        })
    }

    /// Sets the subject, such as a SKU or an order id.
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// let event = OutgoingEvent::new("order.counted", "{}").with_subject("order-1001");
    /// assert_eq!(event.subject.as_deref(), Some("order-1001"));
    /// ```
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Adds an extension attribute. Its name is 1 to 20 lowercase letters
    /// or digits; `partitionkey` keeps the events of one key in order.
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// let event = OutgoingEvent::new("order.counted", "{}").with_extension("partitionkey", "order-1001");
    /// assert_eq!(event.extensions, [("partitionkey".to_owned(), "order-1001".to_owned())]);
    /// ```
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.push((name.into(), value.into()));
        self
    }

    /// Sets the URI of the schema the payload adheres to.
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// let event = OutgoingEvent::new("order.counted", "{}")
    ///     .with_dataschema("https://schemas.example/order-counted.json");
    /// assert!(event.dataschema.is_some());
    /// ```
    pub fn with_dataschema(mut self, uri: impl Into<String>) -> Self {
        self.dataschema = Some(uri.into());
        self
    }

    /// Sets the media type of the payload, such as `text/csv`;
    /// [`OutgoingEvent::json`] sets `application/json` itself.
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// let event = OutgoingEvent::new("report.ready", "sku,quantity\n").with_datacontenttype("text/csv");
    /// assert_eq!(event.datacontenttype.as_deref(), Some("text/csv"));
    /// ```
    pub fn with_datacontenttype(mut self, media_type: impl Into<String>) -> Self {
        self.datacontenttype = Some(media_type.into());
        self
    }

    /// Reads the payload as JSON into `T`; handy in tests, on
    /// [`TestContext::emitted`](testing::TestContext::emitted).
    ///
    /// ```
    /// # use plugbus_sdk::OutgoingEvent;
    /// let event = OutgoingEvent::new("order.counted", r#"{"orders":2}"#);
    /// let payload: serde_json::Value = event.json_data().unwrap();
    /// assert_eq!(payload["orders"], 2);
    /// ```
    pub fn json_data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

/// The host refused an emitted event; the message says why (an invalid
/// event, too many events, or the chain depth limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitError(pub String);

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "emit refused: {}", self.0)
    }
}

impl std::error::Error for EmitError {}

impl From<EmitError> for HandlerError {
    /// A refused emit fails the handler permanently: the same event would
    /// be refused again.
    fn from(e: EmitError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// What the host offers a handler. Implemented by the real host (inside
/// the component) and by [`testing::TestContext`]; plugin code uses it
/// through [`Context`].
pub trait HostApi {
    /// Publishes an event; returns its id.
    fn emit(&mut self, event: OutgoingEvent) -> Result<String, String>;
    /// Writes a log line.
    fn log(&mut self, level: Level, message: &str);
    /// The plugin's config value for `key`.
    fn config_get(&self, key: &str) -> Option<String>;
    /// The plugin's state under `key`, with this delivery's writes.
    fn state_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key`, committed when the handler succeeds.
    fn state_set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key`, committed when the handler succeeds.
    fn state_delete(&mut self, key: &str);
    /// The tenant's secret `name`, when the plugin's manifest is granted
    /// it. A host without secrets answers `None`.
    fn secret_get(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }
    /// Sends an outbound request and reads the whole answer. A host
    /// without outbound HTTP refuses every request.
    fn http_send(&mut self, request: Request) -> Result<Response, HttpError> {
        Err(HttpError::Denied(format!(
            "{} {}: this host offers no outbound HTTP",
            request.method, request.url
        )))
    }
}

/// The handler's view of the host, for one event.
pub struct Context<'a> {
    host: &'a mut dyn HostApi,
}

impl<'a> Context<'a> {
    /// A context backed by `host`.
    pub fn new(host: &'a mut dyn HostApi) -> Self {
        Self { host }
    }

    /// Publishes an event in the plugin's tenant; returns the id the host
    /// gave it. The event is routed once the handler has returned `Ok`.
    pub fn emit(&mut self, event: OutgoingEvent) -> Result<String, EmitError> {
        self.host.emit(event).map_err(EmitError)
    }

    /// Publishes an event of type `ty` whose payload is `value` as JSON
    /// (content type `application/json`); returns the id the host gave it.
    /// A value that cannot be serialised is an [`EmitError`] too.
    pub fn emit_json<T: Serialize + ?Sized>(
        &mut self,
        ty: impl Into<String>,
        value: &T,
    ) -> Result<String, EmitError> {
        let event = OutgoingEvent::json(ty, value).map_err(|e| EmitError(e.to_string()))?;
        self.emit(event)
    }

    /// Writes a log line into the host's log under the plugin's name.
    pub fn log(&mut self, level: Level, message: impl AsRef<str>) {
        self.host.log(level, message.as_ref());
    }

    /// Writes a trace line.
    pub fn trace(&mut self, message: impl AsRef<str>) {
        self.log(Level::Trace, message);
    }

    /// Writes a debug line.
    pub fn debug(&mut self, message: impl AsRef<str>) {
        self.log(Level::Debug, message);
    }

    /// Writes an info line.
    pub fn info(&mut self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    /// Writes a warning.
    pub fn warn(&mut self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }

    /// Writes an error line.
    pub fn error(&mut self, message: impl AsRef<str>) {
        self.log(Level::Error, message);
    }

    /// The value of `key` in the `[config]` table of the plugin's manifest.
    pub fn config(&self, key: &str) -> Option<String> {
        self.host.config_get(key)
    }

    /// The tenant's secret `name` (set by the operator in `plugbus.toml`,
    /// `[tenants.<tenant>.secrets]`), or `None` when the plugin's manifest
    /// does not grant it (`[secrets] grant = ["name"]`) or the tenant has
    /// none by that name.
    ///
    /// Keep the value out of log lines, emitted events, state and error
    /// messages: the host keeps it out of its own output, but cannot tell
    /// it apart in what the plugin writes.
    ///
    /// ```
    /// # use plugbus_sdk::{Context, testing::TestContext};
    /// let mut host = TestContext::new().with_secret("webhook_token", "t0k");
    /// let ctx = Context::new(&mut host);
    /// assert_eq!(ctx.secret("webhook_token").as_deref(), Some("t0k"));
    /// assert_eq!(ctx.secret("smtp_password"), None);
    /// ```
    pub fn secret(&self, name: &str) -> Option<String> {
        self.host.secret_get(name)
    }

    /// The HTTP client: `ctx.http().post(url).json(&body).send()?`. See
    /// [the `http` module](crate::http) for the allow-list, the headers
    /// the host adds and the errors.
    ///
    /// ```
    /// # use plugbus_sdk::{Context, Method, Response, testing::TestContext};
    /// # use std::time::Duration;
    /// let mut host = TestContext::new()
    ///     .on_http(Method::Get, "https://api.example.com/stock/sku-1", Response::new(200).with_body("7"));
    /// let mut ctx = Context::new(&mut host);
    /// let response = ctx
    ///     .http()
    ///     .get("https://api.example.com/stock/sku-1")
    ///     .header("accept", "text/plain")
    ///     .timeout(Duration::from_secs(2))
    ///     .send()
    ///     .unwrap();
    /// assert_eq!((response.status(), &*response.text()), (200, "7"));
    /// ```
    pub fn http(&mut self) -> Http<'_> {
        Http::new(&mut *self.host)
    }

    /// The value of `key` parsed as `T`; `Ok(None)` when it is not set, and
    /// a [`HandlerError::Permanent`] naming the key and value when it does
    /// not parse.
    pub fn config_parse<T>(&self, key: &str) -> Result<Option<T>, HandlerError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.config(key) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|e| {
                HandlerError::Permanent(format!("config {key} = {value:?} is invalid: {e}"))
            }),
        }
    }
}

impl Context<'_> {
    /// The plugin's state under `key` as raw bytes, or `None` when there is
    /// none. Sees the writes this delivery made so far.
    pub fn state_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.host.state_get(key)
    }

    /// The plugin's state under `key`, decoded from JSON; `Ok(None)` when
    /// there is none, and a [`HandlerError::Permanent`] naming the key
    /// when the stored value does not decode as `T`.
    pub fn state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, HandlerError> {
        match self.state_bytes(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                HandlerError::Permanent(format!(
                    "state {key:?} does not decode as {}: {e}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    /// Stores raw bytes under `key`.
    ///
    /// The write is committed only when the handler returns `Ok`, together
    /// with the events it emitted and the plugin's progress through the
    /// log; a failed delivery leaves the state as it was.
    pub fn set_state_bytes(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.host.state_set(key, value).map_err(StateError)
    }

    /// Stores `value` as JSON under `key`; see [`Context::set_state_bytes`].
    pub fn set_state<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StateError(format!("state {key:?} does not encode as JSON: {e}")))?;
        self.set_state_bytes(key, &bytes)
    }

    /// Removes `key` and its value, when the handler returns `Ok`.
    pub fn delete_state(&mut self, key: &str) {
        self.host.state_delete(key);
    }
}

/// The host refused a state write: an empty or too long key, a value or a
/// delivery's writes over the host's limits. Converts into a
/// [`HandlerError::Permanent`], so that `?` works in a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state write refused: {}", self.0)
    }
}

impl std::error::Error for StateError {}

impl From<StateError> for HandlerError {
    fn from(e: StateError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// An event handler: the one trait a plugin implements.
pub trait Handler {
    /// Handles one event. Return `Ok(())` when it was handled, or a
    /// [`HandlerError`] saying whether a retry can help.
    fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError>;
}

/// Makes the component export `handle` by calling `<$handler as Handler>::handle`.
///
/// Call it once, at the crate root of the plugin.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            struct __PlugbusExport;

            impl $crate::bindings::Guest for __PlugbusExport {
                fn handle(
                    event: $crate::bindings::plugbus::plugin::types::Event,
                ) -> ::core::result::Result<(), $crate::bindings::plugbus::plugin::types::HandlerError>
                {
                    $crate::__private::run::<$handler>(event)
                }

                fn handle_batch(events: $crate::__private::Vec<u8>) {
                    $crate::__private::run_batch::<$handler>(events)
                }
            }

            $crate::bindings::__export_handler_world!(__PlugbusExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    //! What [`export_handler!`](crate::export_handler) expands to; not API.

    use std::sync::Arc;

    use crate::bindings::plugbus::plugin::{batch, host, secrets, state, types};
    use crate::event::{self, Attributes};
    use crate::{
        Context, Event, Handler, HandlerError, HostApi, HttpError, Level, OutgoingEvent, Request,
        Response,
    };

    /// The host of a real component: the WIT imports.
    struct ComponentHost;

    impl HostApi for ComponentHost {
        fn emit(&mut self, e: OutgoingEvent) -> Result<String, String> {
            host::emit(&types::OutgoingEvent {
                type_: e.ty,
                data: e.data,
                subject: e.subject,
                datacontenttype: e.datacontenttype,
                dataschema: e.dataschema,
                extensions: e.extensions,
            })
        }

        fn log(&mut self, level: Level, message: &str) {
            let level = match level {
                Level::Trace => types::Level::Trace,
                Level::Debug => types::Level::Debug,
                Level::Info => types::Level::Info,
                Level::Warn => types::Level::Warn,
                Level::Error => types::Level::Error,
            };
            host::log(level, message);
        }

        fn config_get(&self, key: &str) -> Option<String> {
            host::config_get(key)
        }

        fn state_get(&self, key: &str) -> Option<Vec<u8>> {
            state::get(key)
        }

        fn state_set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
            state::set(key, value)
        }

        fn state_delete(&mut self, key: &str) {
            state::delete(key);
        }

        fn secret_get(&self, name: &str) -> Option<String> {
            secrets::get(name)
        }

        fn http_send(&mut self, request: Request) -> Result<Response, HttpError> {
            crate::http::wasi::send(request)
        }
    }

    pub use std::vec::Vec;

    fn to_wit(e: HandlerError) -> types::HandlerError {
        match e {
            HandlerError::Retryable(m) => types::HandlerError::Retryable(m),
            HandlerError::Permanent(m) => types::HandlerError::Permanent(m),
        }
    }

    /// Runs `H` on an event received through the export `handle`.
    pub fn run<H: Handler>(event: types::Event) -> Result<(), types::HandlerError> {
        let event = Event::from_attributes(Attributes {
            id: event.id,
            source: event.source,
            ty: event.type_,
            subject: event.subject,
            time: event.time,
            datacontenttype: event.datacontenttype,
            dataschema: event.dataschema,
            data: event.data,
            extensions: event.extensions,
            tenant: event.tenant,
            attempt: event.attempt,
        });
        H::handle(&mut Context::new(&mut ComponentHost), event).map_err(to_wit)
    }

    /// Runs `H` on each event of a batch received through the export
    /// `handle-batch`, in order, reporting each result before the next
    /// event starts, and stopping when the host says so. The events are
    /// decoded lazily, by their accessors.
    pub fn run_batch<H: Handler>(events: Vec<u8>) {
        let count = event::batch_len(&events);
        let events = Arc::new(events);
        for index in 0..count {
            let event = Event::from_batch(events.clone(), index);
            let result = H::handle(&mut Context::new(&mut ComponentHost), event).map_err(to_wit);
            if !batch::done(result.as_ref().map(|_| ())) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestContext;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)] // read through Debug only
    struct Order {
        total: u64,
    }

    struct Echo;

    impl Handler for Echo {
        fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
            let order: Order = event.json()?;
            let factor = ctx.config_parse::<u64>("factor")?.unwrap_or(1);
            ctx.info(format!("order {order:?}"));
            let id = ctx.emit_json(
                "order.echoed",
                &serde_json::json!({ "total": order.total * factor }),
            )?;
            ctx.debug(id);
            Ok(())
        }
    }

    #[test]
    fn the_test_context_records_emits_and_logs() {
        let mut ctx = TestContext::new().with_config("factor", "3");
        let event = Event::new("order.created").with_json(&serde_json::json!({ "total": 4 }));
        ctx.run::<Echo>(event).expect("handled");
        assert_eq!(ctx.emitted().len(), 1);
        assert_eq!(ctx.emitted()[0].ty, "order.echoed");
        let payload: serde_json::Value = ctx.emitted()[0].json_data().expect("json");
        assert_eq!(payload["total"], 12);
        assert_eq!(
            ctx.logs()[0],
            (Level::Info, "order Order { total: 4 }".to_owned())
        );
        assert_eq!(ctx.logs()[1], (Level::Debug, "emitted-1".to_owned()));
    }

    #[test]
    fn a_bad_payload_is_permanent_and_names_the_type() {
        let mut ctx = TestContext::new();
        let event = Event::new("order.created").with_data(b"{\"total\": \"many\"}".to_vec());
        let err = ctx.run::<Echo>(event).unwrap_err();
        let HandlerError::Permanent(message) = err else {
            panic!("expected a permanent error, got {err:?}");
        };
        assert!(message.contains("order.created"), "{message}");
    }

    #[test]
    fn a_bad_config_value_is_permanent_and_names_the_key() {
        let mut ctx = TestContext::new().with_config("factor", "lots");
        let event = Event::new("order.created").with_json(&serde_json::json!({ "total": 4 }));
        let err = ctx.run::<Echo>(event).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("factor") && m.contains("lots")),
            "{err}"
        );
    }

    #[test]
    fn a_refused_emit_fails_the_handler() {
        let mut ctx = TestContext::new().refuse_emits("chain depth limit reached");
        let event = Event::new("order.created").with_json(&serde_json::json!({ "total": 4 }));
        let err = ctx.run::<Echo>(event).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("chain depth")),
            "{err}"
        );
        assert!(ctx.emitted().is_empty());
    }

    struct Twice;

    impl Handler for Twice {
        fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
            assert_eq!(ctx.config_parse::<u32>("absent")?, None);
            let first = ctx.emit(OutgoingEvent::new("a", event.data()))?;
            let second = ctx.emit(OutgoingEvent::new("b", event.into_data()).with_subject("s"))?;
            ctx.info(format!("{first} {second}"));
            // A map with non-string keys has no JSON form.
            let unserialisable = std::collections::BTreeMap::from([((1, 2), 3)]);
            let err = ctx.emit_json("c", &unserialisable).unwrap_err();
            Err(err.into())
        }
    }

    #[test]
    fn emits_get_sequential_ids_and_a_failed_serialisation_is_an_emit_error() {
        let mut ctx = TestContext::new();
        let err = ctx
            .run::<Twice>(Event::new("t").with_data("x"))
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("JSON")),
            "{err}"
        );
        assert_eq!(
            ctx.logs(),
            [(Level::Info, "emitted-1 emitted-2".to_owned())]
        );
        assert!(
            ctx.emitted().is_empty(),
            "the emits of a failed run are discarded, as the host discards them"
        );
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Tally {
        count: u32,
    }

    /// Counts events in state; fails on type `fail` after writing.
    struct Counter;

    impl Handler for Counter {
        fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
            let mut tally = ctx.state::<Tally>("tally")?.unwrap_or(Tally { count: 0 });
            tally.count += 1;
            ctx.set_state("tally", &tally)?;
            assert_eq!(
                ctx.state::<Tally>("tally")?,
                Some(Tally { count: tally.count })
            );
            ctx.info(format!("attempt {}", event.attempt()));
            if event.ty() == "fail" {
                return Err(HandlerError::retryable("after the write"));
            }
            if event.ty() == "reset" {
                ctx.delete_state("tally");
            }
            Ok(())
        }
    }

    #[test]
    fn state_is_kept_on_success_and_undone_on_failure() {
        let mut ctx = TestContext::new().with_state("tally", &Tally { count: 5 });
        ctx.run::<Counter>(Event::new("t")).expect("handled");
        assert_eq!(ctx.state::<Tally>("tally"), Some(Tally { count: 6 }));
        ctx.run::<Counter>(Event::new("fail").with_attempt(3))
            .unwrap_err();
        assert_eq!(ctx.state::<Tally>("tally"), Some(Tally { count: 6 }));
        assert_eq!(ctx.logs()[1].1, "attempt 3");
        ctx.run::<Counter>(Event::new("reset")).expect("handled");
        assert!(ctx.state_entries().is_empty());
    }

    #[test]
    fn bad_state_is_permanent_and_names_the_key() {
        let mut ctx = TestContext::new().with_state("tally", "not a tally");
        let err = ctx.run::<Counter>(Event::new("t")).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("\"tally\"")),
            "{err}"
        );
        let mut host = TestContext::new();
        let mut ctx = Context::new(&mut host);
        let err = ctx.set_state_bytes("", b"x").unwrap_err();
        assert!(err.0.contains("1 to 512 bytes"), "{err}");
        let big = vec![0u8; testing::MAX_STATE_VALUE_BYTES + 1];
        let err = ctx.set_state_bytes("k", &big).unwrap_err();
        assert!(err.to_string().contains("\"k\""), "{err}");
    }

    #[test]
    fn test_events_have_documented_defaults() {
        let event = Event::new("t");
        assert_eq!(event.id(), "test-event-1");
        assert_eq!(event.source(), "test");
        assert_eq!(event.tenant(), "test-tenant");
        assert_eq!(event.datacontenttype(), Some("application/json"));
        assert_eq!(event.attempt(), 1);
        assert!(event.data().is_empty());
        let out = OutgoingEvent::json("t", &serde_json::json!({ "a": 1 })).expect("json");
        assert_eq!(out.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(out.json_data::<serde_json::Value>().expect("json")["a"], 1);
    }

    #[test]
    fn extensions_and_text() {
        let event = Event::new("t")
            .with_extension("partitionkey", "sku-1")
            .with_data("hi");
        assert_eq!(event.extension("partitionkey"), Some("sku-1"));
        assert_eq!(event.extension("nope"), None);
        assert_eq!(event.data_str(), Some("hi"));
    }
}
