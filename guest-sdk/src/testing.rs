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
//!
//! ## Secrets and HTTP
//!
//! [`TestContext::with_secret`] gives a secret as the operator would,
//! [`TestContext::on_http`] answers a request with a canned [`Response`]
//! (or [`on_http_error`](TestContext::on_http_error) with an
//! [`HttpError`], or [`on_http_with`](TestContext::on_http_with) with a
//! closure), and [`TestContext::requests`] shows the requests the handler
//! made, with the headers the host adds: no network is involved. A request
//! without a canned answer fails with an [`HttpError::Other`] that names
//! it.
//!
//! ```
//! use plugbus_sdk::{Context, Event, Handler, HandlerError, Method, Response, testing::TestContext};
//!
//! struct Ping;
//! impl Handler for Ping {
//!     fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
//!         let token = ctx.secret("token").unwrap_or_default();
//!         let response = ctx
//!             .http()
//!             .post("https://hooks.example.com/ping")
//!             .header("authorization", format!("Bearer {token}"))
//!             .body(event.id().to_owned())
//!             .send()?;
//!         match response.status() {
//!             200..=299 => Ok(()),
//!             status => Err(HandlerError::retryable(format!("answered {status}"))),
//!         }
//!     }
//! }
//!
//! let mut ctx = TestContext::new()
//!     .with_secret("token", "t0k")
//!     .on_http(Method::Post, "https://hooks.example.com/ping", Response::new(503));
//! let err = ctx.run::<Ping>(Event::new("t").with_id("evt-1")).unwrap_err();
//! assert_eq!(err, HandlerError::retryable("answered 503"));
//! let sent = &ctx.requests()[0];
//! assert_eq!(sent.header("authorization"), Some("Bearer t0k"));
//! assert_eq!(sent.body_text(), "evt-1");
//! // The host's header, the same on every attempt of the delivery.
//! assert_eq!(
//!     sent.header("idempotency-key"),
//!     Some(plugbus_sdk::testing::idempotency_key("evt-1", 0).as_str())
//! );
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::Target;
use crate::{
    Context, Event, Handler, HandlerError, HostApi, HttpError, Level, Method, OutgoingEvent,
    Request, Response,
};

/// The longest state key the host takes, in bytes (its default).
pub const MAX_STATE_KEY_BYTES: usize = 512;
/// The largest state value the host takes, in bytes (its default).
pub const MAX_STATE_VALUE_BYTES: usize = 1 << 20;

/// The `traceparent` the test context adds to every request, as the host
/// adds one continuing the delivery's trace.
pub const TEST_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The `Idempotency-Key` the test context adds to request number `index`
/// (from 0) of a run on the event `event_id`: like the host's, the same on
/// every run of the same event. (The host's is the hex SHA-256 of the
/// event, the plugin and the index.)
///
/// ```
/// # use plugbus_sdk::testing::idempotency_key;
/// assert_eq!(idempotency_key("evt-1", 0), idempotency_key("evt-1", 0));
/// assert_ne!(idempotency_key("evt-1", 0), idempotency_key("evt-1", 1));
/// ```
pub fn idempotency_key(event_id: &str, index: u32) -> String {
    format!("test-idempotency-key-{event_id}-{index}")
}

/// How a canned route answers.
type Answer = Box<dyn FnMut(&Request) -> Result<Response, HttpError>>;

/// A canned answer to the requests of one method and URL.
struct Route {
    method: Method,
    url: String,
    answer: Answer,
}

/// A host for native tests: serves config and secrets, answers HTTP
/// requests with canned responses, records emits, logs and requests, and
/// keeps state like the host: a run's writes are kept when the handler
/// returns `Ok` and undone when it fails, and its emits likewise (its
/// requests stay recorded: they were sent).
#[derive(Default)]
pub struct TestContext {
    config: BTreeMap<String, String>,
    emitted: Vec<OutgoingEvent>,
    logs: Vec<(Level, String)>,
    refuse_emits: Option<String>,
    state: BTreeMap<String, Vec<u8>>,
    secrets: BTreeMap<String, String>,
    routes: Vec<Route>,
    requests: Vec<Request>,
    /// The id of the event being run, for the idempotency keys.
    event_id: Option<String>,
    /// The index of the run's next request.
    request_index: u32,
}

impl fmt::Debug for TestContext {
    /// Shows the secrets' names, not their values, and the canned routes
    /// as method and URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.url))
            .collect();
        f.debug_struct("TestContext")
            .field("config", &self.config)
            .field("emitted", &self.emitted)
            .field("logs", &self.logs)
            .field("refuse_emits", &self.refuse_emits)
            .field("state", &self.state)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("routes", &routes)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
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

    /// Gives the tenant's secret `name`, as the operator's `plugbus.toml`
    /// would (to a plugin whose manifest grants it).
    ///
    /// ```
    /// # use plugbus_sdk::testing::TestContext;
    /// let ctx = TestContext::new().with_secret("webhook_token", "t0k");
    /// assert!(!format!("{ctx:?}").contains("t0k"), "Debug shows names only");
    /// ```
    pub fn with_secret(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.secrets.insert(name.into(), value.into());
        self
    }

    /// Answers every request of `method` to exactly `url` with `response`.
    /// A later answer for the same method and URL replaces it.
    ///
    /// ```
    /// # use plugbus_sdk::{Method, Response, testing::TestContext};
    /// let ctx = TestContext::new()
    ///     .on_http(Method::Post, "https://hooks.example.com/alerts", Response::new(204));
    /// ```
    pub fn on_http(self, method: Method, url: impl Into<String>, response: Response) -> Self {
        self.on_http_with(method, url, move |_| Ok(response.clone()))
    }

    /// Fails every request of `method` to exactly `url` with `error`, as
    /// the host would on a refusal, a timeout or a lost connection.
    ///
    /// ```
    /// # use plugbus_sdk::{HttpError, Method, testing::TestContext};
    /// let ctx = TestContext::new().on_http_error(
    ///     Method::Post,
    ///     "https://hooks.example.com/alerts",
    ///     HttpError::Timeout("no first byte within 10 s".into()),
    /// );
    /// ```
    pub fn on_http_error(self, method: Method, url: impl Into<String>, error: HttpError) -> Self {
        self.on_http_with(method, url, move |_| Err(error.clone()))
    }

    /// Answers every request of `method` to exactly `url` with what
    /// `answer` returns for it (the request as sent, with the host's
    /// headers): for answers that depend on the request or change from
    /// one request to the next.
    ///
    /// ```
    /// # use plugbus_sdk::{Method, Response, testing::TestContext};
    /// let mut calls = 0;
    /// let ctx = TestContext::new().on_http_with(Method::Post, "https://x.example/y", move |request| {
    ///     calls += 1;
    ///     Ok(Response::new(if calls == 1 { 503 } else { 200 }))
    /// });
    /// ```
    pub fn on_http_with(
        mut self,
        method: Method,
        url: impl Into<String>,
        answer: impl FnMut(&Request) -> Result<Response, HttpError> + 'static,
    ) -> Self {
        let url = url.into();
        self.routes
            .retain(|r| !(r.method == method && r.url == url));
        self.routes.push(Route {
            method,
            url,
            answer: Box::new(answer),
        });
        self
    }

    /// Runs handler `H` on `event`. When the handler fails, its state
    /// writes and emits are undone, as the host discards them; its
    /// requests stay in [`requests`](Self::requests).
    pub fn run<H: Handler>(&mut self, event: Event) -> Result<(), HandlerError> {
        let state = self.state.clone();
        let emitted = self.emitted.len();
        self.event_id = Some(event.id().to_owned());
        self.request_index = 0;
        let result = H::handle(&mut Context::new(self), event);
        self.event_id = None;
        if result.is_err() {
            self.state = state;
            self.emitted.truncate(emitted);
        }
        result
    }

    /// The requests the handler sent, in order, with the headers the host
    /// adds (`idempotency-key`, see [`idempotency_key`], and
    /// `traceparent`, [`TEST_TRACEPARENT`]).
    pub fn requests(&self) -> &[Request] {
        &self.requests
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

    fn secret_get(&self, name: &str) -> Option<String> {
        self.secrets.get(name).cloned()
    }

    fn http_send(&mut self, mut request: Request) -> Result<Response, HttpError> {
        // What the component refuses before anything is sent.
        Target::split(&request.url)?;
        let index = self.request_index;
        self.request_index += 1;
        let event_id = self.event_id.as_deref().unwrap_or("outside-a-run");
        request.set_header("idempotency-key", idempotency_key(event_id, index));
        request.set_header("traceparent", TEST_TRACEPARENT.to_owned());
        self.requests.push(request.clone());
        match self
            .routes
            .iter_mut()
            .find(|r| r.method == request.method && r.url == request.url)
        {
            Some(route) => (route.answer)(&request),
            None => Err(HttpError::Other(format!(
                "the TestContext has no answer for {} {}: give it one with on_http(Method::{:?}, {:?}, Response::new(200))",
                request.method, request.url, request.method, request.url
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Posts the event's data to the URL in config `url` with the secret
    /// `token`, twice when the event type is `twice`; 2xx is success.
    struct Poster;

    impl Handler for Poster {
        fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
            let url = ctx
                .config("url")
                .ok_or_else(|| HandlerError::permanent("no url"))?;
            let token = ctx
                .secret("token")
                .ok_or_else(|| HandlerError::permanent("the secret token is not granted"))?;
            let times = if event.ty() == "twice" { 2 } else { 1 };
            for _ in 0..times {
                let response = ctx
                    .http()
                    .post(url.as_str())
                    .header("Authorization", format!("Bearer {token}"))
                    .json(&serde_json::json!({ "data": event.data_str() }))
                    .timeout(Duration::from_secs(3))
                    .send()?;
                ctx.info(format!("answered {}", response.status()));
                if !response.is_success() {
                    return Err(HandlerError::retryable(format!(
                        "answered {}",
                        response.status()
                    )));
                }
            }
            ctx.emit_json("posted", &serde_json::json!({}))?;
            Ok(())
        }
    }

    const URL: &str = "https://hooks.example.com/in";

    fn poster() -> TestContext {
        TestContext::new()
            .with_config("url", URL)
            .with_secret("token", "t0k")
    }

    #[test]
    fn requests_are_recorded_with_the_hosts_headers() {
        let mut ctx = poster().on_http(Method::Post, URL, Response::new(200));
        ctx.run::<Poster>(Event::new("twice").with_id("evt-9").with_data("hi"))
            .expect("handled");
        let requests = ctx.requests();
        assert_eq!(requests.len(), 2);
        for (index, request) in (0u32..).zip(requests) {
            assert_eq!(request.method, Method::Post);
            assert_eq!(request.url, URL);
            assert_eq!(request.header("authorization"), Some("Bearer t0k"));
            assert_eq!(request.header("content-type"), Some("application/json"));
            assert_eq!(request.timeout, Some(Duration::from_secs(3)));
            assert_eq!(
                request.header("Idempotency-Key"),
                Some(idempotency_key("evt-9", index).as_str())
            );
            assert_eq!(request.header("traceparent"), Some(TEST_TRACEPARENT));
            let body: serde_json::Value = request.body_json().expect("json");
            assert_eq!(body["data"], "hi");
        }
        assert_ne!(
            requests[0].header("idempotency-key"),
            requests[1].header("idempotency-key")
        );
        assert_eq!(ctx.emitted().len(), 1);
    }

    #[test]
    fn a_retried_event_sends_the_same_idempotency_key() {
        let mut calls = 0;
        let mut ctx = poster().on_http_with(Method::Post, URL, move |_| {
            calls += 1;
            Ok(Response::new(if calls == 1 { 503 } else { 200 }))
        });
        let event = Event::new("once").with_id("evt-1");
        let err = ctx.run::<Poster>(event.clone()).unwrap_err();
        assert_eq!(err, HandlerError::retryable("answered 503"));
        assert!(ctx.emitted().is_empty(), "a failed run's emits are undone");
        ctx.run::<Poster>(event.with_attempt(2)).expect("the retry");
        let keys: Vec<_> = ctx
            .requests()
            .iter()
            .map(|r| r.header("idempotency-key"))
            .collect();
        assert_eq!(keys.len(), 2, "the failed run's request stays recorded");
        assert_eq!(keys[0], keys[1]);
        assert_eq!(ctx.emitted().len(), 1);
    }

    #[test]
    fn a_request_without_an_answer_fails_naming_it() {
        let mut ctx = poster();
        let err = ctx.run::<Poster>(Event::new("once")).unwrap_err();
        let HandlerError::Retryable(message) = err else {
            panic!("an unanswered request is an Other error: {err:?}");
        };
        assert!(
            message.contains("POST https://hooks.example.com/in"),
            "{message}"
        );
        assert!(message.contains("on_http"), "{message}");
        assert_eq!(ctx.requests().len(), 1);
        // Another method or URL is another route.
        let mut ctx = poster().on_http(Method::Put, URL, Response::new(200));
        assert!(ctx.run::<Poster>(Event::new("once")).is_err());
    }

    #[test]
    fn canned_errors_reach_the_handler_and_sort_by_kind() {
        let mut ctx = poster().on_http_error(Method::Post, URL, HttpError::Denied("no".into()));
        let err = ctx.run::<Poster>(Event::new("once")).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("[http] allow")),
            "{err}"
        );
        let mut ctx =
            poster().on_http_error(Method::Post, URL, HttpError::Timeout("first byte".into()));
        let err = ctx.run::<Poster>(Event::new("once")).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Retryable(m) if m.contains("timed out")),
            "{err}"
        );
        // A later answer for the same route replaces the earlier one.
        let mut ctx = poster()
            .on_http(Method::Post, URL, Response::new(500))
            .on_http(Method::Post, URL, Response::new(204));
        ctx.run::<Poster>(Event::new("once")).expect("204");
    }

    #[test]
    fn missing_secrets_are_none() {
        let mut ctx = TestContext::new().with_config("url", URL);
        let err = ctx.run::<Poster>(Event::new("once")).unwrap_err();
        assert_eq!(
            err,
            HandlerError::permanent("the secret token is not granted")
        );
        assert!(ctx.requests().is_empty());
    }

    #[test]
    fn invalid_requests_are_refused_before_they_are_sent() {
        let mut host = TestContext::new();
        let mut ctx = Context::new(&mut host);
        let err = ctx.http().get("example.com/x").send().unwrap_err();
        assert!(matches!(err, HttpError::InvalidRequest(_)), "{err}");
        let unserialisable = BTreeMap::from([((1, 2), 3)]);
        let err = ctx
            .http()
            .put("https://example.com/x")
            .json(&unserialisable)
            .send()
            .unwrap_err();
        assert!(
            matches!(&err, HttpError::InvalidRequest(m) if m.contains("JSON")),
            "{err}"
        );
        assert!(host.requests().is_empty());
    }

    #[test]
    fn every_builder_method_and_the_response_accessors() {
        let mut host = TestContext::new()
            .on_http(
                Method::Get,
                "http://127.0.0.1:9/a?b=c",
                Response::new(302).with_header("Location", "https://elsewhere.example/"),
            )
            .on_http(
                Method::Delete,
                "http://127.0.0.1:9/a",
                Response::new(200).with_json(&serde_json::json!({ "deleted": true })),
            )
            .on_http_with(Method::Put, "http://127.0.0.1:9/a", |request| {
                Ok(Response::new(201).with_body(request.body.clone()))
            });
        let mut ctx = Context::new(&mut host);
        let redirect = ctx
            .http()
            .get("http://127.0.0.1:9/a?b=c")
            .send()
            .expect("302");
        assert_eq!(redirect.status(), 302, "redirects come back as they are");
        assert_eq!(
            redirect.header("location"),
            Some("https://elsewhere.example/")
        );
        let deleted = ctx
            .http()
            .delete("http://127.0.0.1:9/a")
            .send()
            .expect("200");
        assert_eq!(
            deleted.json::<serde_json::Value>().expect("json")["deleted"],
            true
        );
        assert!(matches!(
            deleted.json::<u32>(),
            Err(HttpError::InvalidResponse(_))
        ));
        let put = ctx
            .http()
            .request(Method::Put, "http://127.0.0.1:9/a")
            .body("raw")
            .send()
            .expect("201");
        assert_eq!((put.status(), &*put.text()), (201, "raw"));
        assert_eq!(put.into_body(), b"raw");
        let keys: Vec<_> = host
            .requests()
            .iter()
            .map(|r| r.header("idempotency-key").map(str::to_owned))
            .collect();
        assert_eq!(
            keys,
            (0..3)
                .map(|i| Some(idempotency_key("outside-a-run", i)))
                .collect::<Vec<_>>()
        );
    }
}
