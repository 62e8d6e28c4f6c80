//! Outbound HTTP from a handler: [`Context::http`](crate::Context::http).
//!
//! A plugin may call only the origins its manifest lists under
//! `[http] allow` (within its tenant's ceiling, set by the operator);
//! anything else fails with [`HttpError::Denied`]. The host adds an
//! `Idempotency-Key` header to every request, the same on every attempt of
//! the same delivery (derived from the event, the plugin and the request's
//! index within the delivery), and a `traceparent` continuing the
//! delivery's trace: send the key on to the service, and a retried delivery
//! does not act twice.
//!
//! ```
//! use plugbus_sdk::{Context, Event, Handler, HandlerError};
//!
//! struct Notify;
//!
//! impl Handler for Notify {
//!     fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
//!         let token = ctx
//!             .secret("webhook_token")
//!             .ok_or_else(|| HandlerError::permanent("the secret webhook_token is not granted"))?;
//!         let response = ctx
//!             .http()
//!             .post("https://hooks.example.com/alerts")
//!             .header("authorization", format!("Bearer {token}"))
//!             .json(&serde_json::json!({ "event": event.id() }))
//!             .send()?; // a refusal, timeout or lost connection becomes a HandlerError
//!         if !response.is_success() {
//!             return Err(HandlerError::retryable(format!("the webhook answered {}", response.status())));
//!         }
//!         Ok(())
//!     }
//! }
//! # use plugbus_sdk::{Method, Response, testing::TestContext};
//! # let mut ctx = TestContext::new()
//! #     .with_secret("webhook_token", "t0k")
//! #     .on_http(Method::Post, "https://hooks.example.com/alerts", Response::new(204));
//! # ctx.run::<Notify>(Event::new("t")).unwrap();
//! ```
//!
//! The host follows no redirect: a `3xx` answer comes back as it is, with
//! its `location` header, and following it is a new request (which the
//! allow-list checks again).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{HandlerError, HostApi};

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
}

impl Method {
    /// The method's name, as sent: `"GET"`, `"POST"`, …
    ///
    /// ```
    /// # use plugbus_sdk::Method;
    /// assert_eq!(Method::Delete.as_str(), "DELETE");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outbound request, as [`RequestBuilder::send`] passes it to the host
/// and as [`TestContext::requests`](crate::testing::TestContext::requests)
/// records it.
///
/// Its `Debug` output hides the values of the `authorization`,
/// `proxy-authorization` and `cookie` headers, so that logging a request
/// does not log a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The absolute URL: `http://` or `https://`, the host (and port), the
    /// path and query.
    pub url: String,
    /// The headers, in the order they were added; names as given (HTTP
    /// names are case-insensitive: compare them with
    /// [`Request::header`]).
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
    /// The longest wait for the connection, for the first byte of the
    /// answer and between two of its bytes; `None` leaves the host's
    /// limits.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request without headers, body or timeout.
    ///
    /// ```
    /// # use plugbus_sdk::{Method, Request};
    /// let request = Request::new(Method::Get, "https://api.example.com/stock");
    /// assert!(request.headers.is_empty() && request.body.is_empty());
    /// ```
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// The first value of the header `name`, compared case-insensitively.
    ///
    /// ```
    /// # use plugbus_sdk::{Method, Request};
    /// let mut request = Request::new(Method::Get, "https://api.example.com/");
    /// request.headers.push(("Content-Type".into(), "text/plain".into()));
    /// assert_eq!(request.header("content-type"), Some("text/plain"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced by `�`).
    pub fn body_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body read as JSON into `T`; handy in tests.
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Sets the header `name` to `value`, replacing any values it had.
    pub(crate) fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value));
    }
}

/// Header names whose values `Debug` hides.
const HIDDEN_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let hidden = HIDDEN_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h));
                (k.as_str(), if hidden { "<hidden>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body_text())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The answer to a request: its status, headers and whole body.
///
/// Every status is an answer, not an error: `send` returns `Ok` for a `404`
/// or a `503` too, and the handler decides (see [`Response::is_success`]).
/// A redirect is not followed: a `3xx` comes back as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// An answer with `status`, no headers and an empty body: for
    /// [`TestContext::on_http`](crate::testing::TestContext::on_http).
    ///
    /// ```
    /// # use plugbus_sdk::Response;
    /// let response = Response::new(503).with_header("retry-after", "5").with_body("busy");
    /// assert_eq!(response.status(), 503);
    /// assert_eq!(response.header("Retry-After"), Some("5"));
    /// assert_eq!(response.text(), "busy");
    /// ```
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, and the header `content-type:
    /// application/json`.
    ///
    /// ```
    /// # use plugbus_sdk::Response;
    /// let response = Response::new(200).with_json(&serde_json::json!({ "id": 7 }));
    /// assert_eq!(response.json::<serde_json::Value>().unwrap()["id"], 7);
    /// ```
    ///
    /// # Panics
    /// When `value` cannot be serialised as JSON; this builder is for tests.
    pub fn with_json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).expect("a test response serialises as JSON");
        self.with_header("content-type", "application/json")
            .with_body(body)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is `2xx`.
    ///
    /// ```
    /// # use plugbus_sdk::Response;
    /// assert!(Response::new(204).is_success());
    /// assert!(!Response::new(302).is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The headers as the server sent them: names in lowercase (as the
    /// host gives them), values as bytes.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first value of the header `name` (compared case-insensitively),
    /// when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken out of the answer.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as text (invalid UTF-8 replaced by `�`).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body read as JSON into `T`; a body that does not decode is an
    /// [`HttpError::InvalidResponse`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HttpError::InvalidResponse(format!(
                "the body of the {} answer is not the expected JSON: {e}",
                self.status
            ))
        })
    }

    /// An answer from its parts, as the host returned them.
    pub(crate) fn from_parts(status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> Self {
        Self {
            status,
            headers,
            body,
        }
    }
}

/// Why a request got no answer, sorted by what a handler does about it.
/// Each variant holds the host's detail, for the log.
///
/// `?` turns it into a [`HandlerError`]: [`Timeout`](Self::Timeout),
/// [`Connection`](Self::Connection) and [`Other`](Self::Other) are
/// retryable, the rest permanent (see [`HttpError::is_retryable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The host refused to send it: its origin is not in the manifest's
    /// `[http] allow` (or the tenant's ceiling), its address is a private
    /// one the operator does not allow, or the delivery made too many
    /// requests. Sending it again cannot help.
    Denied(String),
    /// No connection, no answer or no next byte in time (the request's
    /// [`timeout`](RequestBuilder::timeout), the host's limits or the
    /// delivery's deadline).
    Timeout(String),
    /// The request's or the answer's body or headers are over a limit.
    TooLarge(String),
    /// The name did not resolve, the connection was refused or lost, or TLS
    /// failed.
    Connection(String),
    /// The request cannot be sent as it is: a URL that is not absolute
    /// `http://` or `https://`, an invalid header, a body that is not JSON.
    InvalidRequest(String),
    /// The answer is not what was expected, such as a body that is not the
    /// JSON of [`Response::json`].
    InvalidResponse(String),
    /// Anything else, with the host's words.
    Other(String),
}

impl HttpError {
    /// Whether delivering the event again may get an answer: timeouts,
    /// connection failures and other errors, not refusals, oversize
    /// messages or invalid requests.
    ///
    /// ```
    /// # use plugbus_sdk::HttpError;
    /// assert!(HttpError::Timeout("first byte".into()).is_retryable());
    /// assert!(!HttpError::Denied("not allowed".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Connection(_) | Self::Other(_)
        )
    }

    /// This error as the handler's: [`HandlerError::Retryable`] when
    /// [`is_retryable`](Self::is_retryable), else
    /// [`HandlerError::Permanent`], with this error's text.
    ///
    /// ```
    /// # use plugbus_sdk::{HandlerError, HttpError};
    /// let err = HttpError::Connection("connection refused".into()).into_handler_error();
    /// assert!(matches!(err, HandlerError::Retryable(m) if m.contains("connection refused")));
    /// ```
    pub fn into_handler_error(self) -> HandlerError {
        if self.is_retryable() {
            HandlerError::Retryable(self.to_string())
        } else {
            HandlerError::Permanent(self.to_string())
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(d) => write!(
                f,
                "outbound request denied ({d}): is its origin in the manifest's [http] allow?"
            ),
            Self::Timeout(d) => write!(f, "outbound request timed out ({d})"),
            Self::TooLarge(d) => write!(f, "outbound request or answer too large ({d})"),
            Self::Connection(d) => write!(f, "outbound connection failed ({d})"),
            Self::InvalidRequest(d) => write!(f, "invalid outbound request: {d}"),
            Self::InvalidResponse(d) => write!(f, "unexpected answer: {d}"),
            Self::Other(d) => write!(f, "outbound request failed: {d}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for HandlerError {
    fn from(e: HttpError) -> Self {
        e.into_handler_error()
    }
}

/// The HTTP client of one delivery, from
/// [`Context::http`](crate::Context::http): each method starts a request.
pub struct Http<'c> {
    host: &'c mut dyn HostApi,
}

impl<'c> Http<'c> {
    pub(crate) fn new(host: &'c mut dyn HostApi) -> Self {
        Self { host }
    }

    /// A `GET` request to `url`.
    pub fn get(self, url: impl Into<String>) -> RequestBuilder<'c> {
        self.request(Method::Get, url)
    }

    /// A `POST` request to `url`.
    pub fn post(self, url: impl Into<String>) -> RequestBuilder<'c> {
        self.request(Method::Post, url)
    }

    /// A `PUT` request to `url`.
    pub fn put(self, url: impl Into<String>) -> RequestBuilder<'c> {
        self.request(Method::Put, url)
    }

    /// A `DELETE` request to `url`.
    pub fn delete(self, url: impl Into<String>) -> RequestBuilder<'c> {
        self.request(Method::Delete, url)
    }

    /// A request with `method` to `url`: an absolute `http://` or
    /// `https://` URL whose origin the manifest allows.
    pub fn request(self, method: Method, url: impl Into<String>) -> RequestBuilder<'c> {
        RequestBuilder {
            host: self.host,
            request: Request::new(method, url),
            invalid: None,
        }
    }
}

/// A request being built; [`send`](Self::send) sends it.
pub struct RequestBuilder<'c> {
    host: &'c mut dyn HostApi,
    request: Request,
    /// Why the request cannot be sent (a body that is not JSON), said by
    /// `send`, so that the builder chains.
    invalid: Option<String>,
}

impl RequestBuilder<'_> {
    /// Adds a header. `Idempotency-Key` and `traceparent` are the host's:
    /// it sets them on every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON and the header `content-type:
    /// application/json`. A value that cannot be serialised makes
    /// [`send`](Self::send) fail with [`HttpError::InvalidRequest`].
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.request
                    .set_header("content-type", "application/json".to_owned());
                self.request.body = body;
            }
            Err(e) => self.invalid = Some(format!("the body does not serialise as JSON: {e}")),
        }
        self
    }

    /// The longest wait for the connection, for the first byte of the
    /// answer, and between two bytes of it (each, not in total). The
    /// host's own limits and the delivery's deadline still apply: the
    /// shorter wins.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout = Some(timeout);
        self
    }

    /// Sends the request and waits for the whole answer. Any status is
    /// `Ok`; an `Err` means there is no answer.
    pub fn send(self) -> Result<Response, HttpError> {
        if let Some(reason) = self.invalid {
            return Err(HttpError::InvalidRequest(reason));
        }
        self.host.http_send(self.request)
    }
}

/// The parts of an absolute URL that `wasi:http` takes apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'u> {
    /// `true` for `https`.
    pub(crate) https: bool,
    /// `host[:port]`.
    pub(crate) authority: &'u str,
    /// The path and query, starting with `/`.
    pub(crate) path_with_query: Cow<'u, str>,
}

impl<'u> Target<'u> {
    /// Splits `url` into scheme, authority and path with query (dropping a
    /// fragment). The host checks the authority against the allow-list,
    /// and refuses what it cannot parse.
    pub(crate) fn split(url: &'u str) -> Result<Self, HttpError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            HttpError::InvalidRequest(format!(
                "{url:?} is not an absolute URL (http://… or https://…)"
            ))
        })?;
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(HttpError::InvalidRequest(format!(
                "{url:?}: the scheme must be http or https"
            )));
        };
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::InvalidRequest(format!(
                "{url:?}: no host, or credentials in the URL (send them in a header)"
            )));
        }
        let path_with_query = if path.starts_with('/') {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(format!("/{path}"))
        };
        Ok(Self {
            https,
            authority,
            path_with_query,
        })
    }
}

/// Sending through the component's `wasi:http/outgoing-handler` import.
pub(crate) mod wasi {
    use super::{HttpError, Request, Response, Target};
    use crate::bindings::wasi::http::outgoing_handler;
    use crate::bindings::wasi::http::types::{
        self as http, ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingRequest,
        RequestOptions, Scheme,
    };
    use crate::bindings::wasi::io::streams::{OutputStream, StreamError};

    /// The most the body read asks for at once.
    const READ_CHUNK: u64 = 64 * 1024;

    /// Sends `request` and reads the whole answer.
    pub(crate) fn send(request: Request) -> Result<Response, HttpError> {
        let target = Target::split(&request.url)?;
        let entries: Vec<(String, Vec<u8>)> = request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        let headers = Fields::from_list(&entries).map_err(|e| {
            HttpError::InvalidRequest(format!(
                "a header is invalid or one the host sets itself ({e:?})"
            ))
        })?;
        let outgoing = OutgoingRequest::new(headers);
        let method = match request.method {
            super::Method::Get => http::Method::Get,
            super::Method::Head => http::Method::Head,
            super::Method::Post => http::Method::Post,
            super::Method::Put => http::Method::Put,
            super::Method::Patch => http::Method::Patch,
            super::Method::Delete => http::Method::Delete,
            super::Method::Options => http::Method::Options,
        };
        let scheme = if target.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let invalid = |part: &str| {
            HttpError::InvalidRequest(format!("{:?}: the {part} is invalid", request.url))
        };
        outgoing
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        outgoing
            .set_authority(Some(target.authority))
            .map_err(|()| invalid("host"))?;
        outgoing
            .set_path_with_query(Some(&target.path_with_query))
            .map_err(|()| invalid("path"))?;
        let options = match request.timeout {
            None => None,
            Some(timeout) => {
                let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
                let options = RequestOptions::new();
                for set in [
                    RequestOptions::set_connect_timeout,
                    RequestOptions::set_first_byte_timeout,
                    RequestOptions::set_between_bytes_timeout,
                ] {
                    set(&options, Some(nanos)).map_err(|()| {
                        HttpError::Other("the host does not take this timeout".into())
                    })?;
                }
                Some(options)
            }
        };
        let body = outgoing
            .body()
            .map_err(|()| HttpError::Other("the request's body is already taken".into()))?;
        // Sent first, so that the host reads the body while it is written.
        let future = outgoing_handler::handle(outgoing, options).map_err(from_code)?;
        let written = write_body(&body, &request.body);
        let finished = OutgoingBody::finish(body, None).map_err(from_code);
        future.subscribe().block();
        let incoming = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(from_code(code)),
            Some(Err(())) => return Err(HttpError::Other("the answer was already taken".into())),
            None => return Err(HttpError::Other("no answer once it was ready".into())),
        };
        // An answer came: it is the answer even when writing the body
        // failed (a server may answer, say 401 or 413, and close before it
        // read the whole body); a refused exchange said why above.
        let _ = (written, finished);
        let status = incoming.status();
        let headers = incoming.headers().entries();
        let body = incoming
            .consume()
            .map_err(|()| HttpError::Other("the answer's body is already taken".into()))?;
        let bytes = read_body(&body)?;
        drop(IncomingBody::finish(body));
        Ok(Response::from_parts(status, headers, bytes))
    }

    /// Writes `bytes` in chunks no larger than the stream takes, then
    /// flushes and waits for the flush.
    fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
        let stream = body
            .write()
            .map_err(|()| HttpError::Other("the request's body stream is already taken".into()))?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let permitted = ready_to_write(&stream)?;
            let n = usize::try_from(permitted)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            stream.write(&rest[..n]).map_err(from_stream)?;
            rest = &rest[n..];
        }
        stream.flush().map_err(from_stream)?;
        ready_to_write(&stream)?;
        Ok(())
    }

    /// Waits until the stream takes bytes; answers how many.
    fn ready_to_write(stream: &OutputStream) -> Result<u64, HttpError> {
        loop {
            match stream.check_write().map_err(from_stream)? {
                0 => stream.subscribe().block(),
                n => return Ok(n),
            }
        }
    }

    /// Reads the answer's body until the stream closes.
    fn read_body(body: &IncomingBody) -> Result<Vec<u8>, HttpError> {
        let stream = body
            .stream()
            .map_err(|()| HttpError::Other("the answer's body stream is already taken".into()))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(bytes),
                Err(e) => return Err(from_stream(e)),
            }
        }
    }

    fn from_stream(e: StreamError) -> HttpError {
        match e {
            StreamError::Closed => HttpError::Connection("the connection closed".into()),
            StreamError::LastOperationFailed(error) => match http::http_error_code(&error) {
                Some(code) => from_code(code),
                None => HttpError::Connection(error.to_debug_string()),
            },
        }
    }

    /// Sorts `wasi:http`'s error code into what a handler acts on.
    pub(crate) fn from_code(code: ErrorCode) -> HttpError {
        let detail = match &code {
            ErrorCode::InternalError(Some(text)) => text.clone(),
            ErrorCode::DnsError(payload) => format!(
                "DNS error {}",
                payload.rcode.as_deref().unwrap_or("without a code")
            ),
            other => format!("{other:?}"),
        };
        match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                HttpError::Denied(detail)
            }
            ErrorCode::DnsTimeout
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => HttpError::Timeout(detail),
            ErrorCode::HttpRequestBodySize(_)
            | ErrorCode::HttpRequestUriTooLong
            | ErrorCode::HttpRequestHeaderSectionSize(_)
            | ErrorCode::HttpRequestHeaderSize(_)
            | ErrorCode::HttpRequestTrailerSectionSize(_)
            | ErrorCode::HttpRequestTrailerSize(_)
            | ErrorCode::HttpResponseHeaderSectionSize(_)
            | ErrorCode::HttpResponseHeaderSize(_)
            | ErrorCode::HttpResponseBodySize(_)
            | ErrorCode::HttpResponseTrailerSectionSize(_)
            | ErrorCode::HttpResponseTrailerSize(_) => HttpError::TooLarge(detail),
            ErrorCode::DnsError(_)
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::ConnectionLimitReached
            | ErrorCode::TlsProtocolError
            | ErrorCode::TlsCertificateError
            | ErrorCode::TlsAlertReceived(_)
            | ErrorCode::HttpResponseIncomplete
            | ErrorCode::HttpProtocolError => HttpError::Connection(detail),
            ErrorCode::HttpRequestMethodInvalid
            | ErrorCode::HttpRequestUriInvalid
            | ErrorCode::HttpRequestLengthRequired => HttpError::InvalidRequest(detail),
            _ => HttpError::Other(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::wasi::http::types::ErrorCode;

    #[test]
    fn urls_split_into_what_wasi_http_takes() {
        let t = Target::split("https://API.example.com:8443/a/b?c=d#frag").expect("valid");
        assert!(t.https);
        assert_eq!(t.authority, "API.example.com:8443");
        assert_eq!(t.path_with_query, "/a/b?c=d");
        let t = Target::split("http://127.0.0.1:9000").expect("valid");
        assert!(!t.https);
        assert_eq!(t.path_with_query, "/");
        let t = Target::split("http://h?q=1").expect("valid");
        assert_eq!((t.authority, &*t.path_with_query), ("h", "/?q=1"));
        for bad in [
            "example.com/x",
            "ftp://example.com/",
            "https:///path",
            "https://user:pw@example.com/",
        ] {
            let e = Target::split(bad).expect_err(bad);
            assert!(matches!(e, HttpError::InvalidRequest(_)), "{bad}: {e}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn error_codes_sort_by_what_the_handler_does() {
        use wasi::from_code;
        assert!(matches!(
            from_code(ErrorCode::HttpRequestDenied),
            HttpError::Denied(_)
        ));
        assert!(matches!(
            from_code(ErrorCode::DestinationIpProhibited),
            HttpError::Denied(_)
        ));
        assert!(matches!(
            from_code(ErrorCode::HttpResponseTimeout),
            HttpError::Timeout(_)
        ));
        assert!(matches!(
            from_code(ErrorCode::ConnectionTimeout),
            HttpError::Timeout(_)
        ));
        assert!(matches!(
            from_code(ErrorCode::HttpResponseBodySize(Some(5))),
            HttpError::TooLarge(_)
        ));
        assert!(matches!(
            from_code(ErrorCode::ConnectionRefused),
            HttpError::Connection(_)
        ));
        let other = from_code(ErrorCode::InternalError(Some("limit reached".into())));
        assert_eq!(other, HttpError::Other("limit reached".into()));
        assert!(other.is_retryable());
    }

    #[test]
    fn errors_become_handler_errors_by_kind() {
        for (e, retryable) in [
            (HttpError::Denied("d".into()), false),
            (HttpError::Timeout("t".into()), true),
            (HttpError::TooLarge("l".into()), false),
            (HttpError::Connection("c".into()), true),
            (HttpError::InvalidRequest("i".into()), false),
            (HttpError::InvalidResponse("r".into()), false),
            (HttpError::Other("o".into()), true),
        ] {
            let text = e.to_string();
            let handler: HandlerError = e.into();
            match handler {
                HandlerError::Retryable(m) => assert!(retryable && m == text, "{m}"),
                HandlerError::Permanent(m) => assert!(!retryable && m == text, "{m}"),
            }
        }
        assert!(
            HttpError::Denied("origin http://x:1 not allowed".into())
                .to_string()
                .contains("[http] allow")
        );
    }

    #[test]
    fn a_requests_debug_hides_credentials() {
        let mut request = Request::new(Method::Post, "https://x/y");
        request
            .headers
            .push(("Authorization".into(), "Bearer s3cret".into()));
        request.headers.push(("x-trace".into(), "visible".into()));
        let debug = format!("{request:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("visible"), "{debug}");
    }
}
