//! Outbound HTTP from plugins (`wasi:http/outgoing-handler`, WIT 0.3.0):
//! the hooks through which wasmtime-wasi-http sends a plugin's requests.
//!
//! Every request goes through [`Hooks::send_request`], which
//! - refuses it (`HTTP-request-denied`) unless its scheme, host and port
//!   match an entry of the plugin's `[http] allow` (each entry was checked
//!   against its tenant's ceiling when the plugin was loaded:
//!   [`OutboundConfig::uncovered`]);
//! - refuses it (`connection-limit-reached`) past the requests one
//!   delivery may send;
//! - resolves the host itself and drops the addresses refused by default
//!   ([`plugbus_core::outbound::is_refused_by_default`]) unless inside
//!   `allow_private`; with none left, `destination-IP-prohibited`. It then
//!   connects to one of the checked addresses, so a name cannot resolve to
//!   another address between the check and the connection;
//! - speaks HTTP/1.1 (TLS with the Mozilla roots of `webpki-roots`, SNI the
//!   host name, for https) and follows no redirect;
//! - ends the connection at the first of the delivery's deadline and the
//!   connect, first-byte and total timeouts, and the response body past
//!   `max_response_body_bytes`, so that neither waiting for the response
//!   nor reading its body nor writing the request body outlives the
//!   delivery;
//! - adds `Idempotency-Key` (the hex SHA-256 of the event id, the plugin's
//!   name and the request's index in the delivery; the guest's own is kept)
//!   and `traceparent` (the delivery's trace; the guest's is replaced);
//! - records the request's method, host, status and duration as an event
//!   of the delivery's span, and `plugbus_outbound_requests_total` and
//!   `plugbus_outbound_request_seconds`.
//!
//! The hooks are `PluginState`'s `http` field, linked with the host's WIT
//! 0.3.0 bindings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use ipnet::IpNet;
use plugbus_core::outbound::{OriginPattern, Scheme, address_permitted};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use tracing::Instrument as _;
use wasmtime_wasi_http::{Error, WasiBody, WasiHttpHooks};

/// The host's outbound HTTP policy (`[outbound]` and the tenants'
/// ceilings of `plugbus.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Requests one delivery may send (default 16).
    pub max_requests_per_delivery: u32,
    /// The largest request body, in bytes (default 1 MiB).
    pub max_request_body_bytes: u64,
    /// The largest response body, in bytes (default 4 MiB).
    pub max_response_body_bytes: u64,
    /// How long resolving and connecting (TLS included) may take (default
    /// 5 s).
    pub connect_timeout: Duration,
    /// How long from the request's start to its response's headers
    /// (default 10 s).
    pub first_byte_timeout: Duration,
    /// How long from the request's start to the end of its response
    /// (default 30 s).
    pub total_timeout: Duration,
    /// Networks whose addresses are refused by default that plugins may
    /// connect to nonetheless (default none).
    pub allow_private: Vec<IpNet>,
    /// Each tenant's ceiling: the origins its plugins may be allowed to
    /// call. A tenant not named here may call nothing.
    pub tenant_ceilings: HashMap<String, Vec<OriginPattern>>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            max_requests_per_delivery: 16,
            max_request_body_bytes: 1024 * 1024,
            max_response_body_bytes: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            allow_private: Vec::new(),
            tenant_ceilings: HashMap::new(),
        }
    }
}

impl OutboundConfig {
    /// The first entry of `allow` (a manifest's `[http] allow`) that no
    /// origin of `tenant`'s ceiling covers, if any.
    pub fn uncovered<'a>(
        &self,
        tenant: &str,
        allow: &'a [OriginPattern],
    ) -> Option<&'a OriginPattern> {
        let ceiling = self
            .tenant_ceilings
            .get(tenant)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        allow
            .iter()
            .find(|entry| !ceiling.iter().any(|c| c.covers(entry)))
    }
}

/// What one plugin's requests are checked against: the host's policy, the
/// plugin's allow list and its names (for keys, logs and metrics).
#[derive(Debug)]
pub(crate) struct PluginOutbound {
    pub config: Arc<OutboundConfig>,
    pub allow: Vec<OriginPattern>,
    pub tenant: String,
    pub plugin: String,
}

/// The delivery under way, as the hooks see it. A fresh one for every
/// event (of a batch too), so that the request count and the index in the
/// idempotency key restart at 0 on every attempt.
#[derive(Debug, Default, Clone)]
pub(crate) struct OutboundDelivery {
    /// The id of the handled event.
    pub event_id: String,
    /// When the delivery must end, if it has a deadline.
    pub deadline: Option<std::time::Instant>,
    /// Requests sent so far in this delivery.
    pub requests: Arc<AtomicU32>,
    /// The handled event's trace context, continued by the requests when
    /// spans are not exported.
    pub trace: Vec<(&'static str, String)>,
}

/// The `wasi:http` hooks of one plugin instance.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// `None`: every request is refused (a plugin with nothing allowed).
    pub plugin: Option<Arc<PluginOutbound>>,
    /// The delivery under way.
    pub delivery: OutboundDelivery,
}

/// The `result` label of `plugbus_outbound_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Denied,
    PrivateAddress,
    Limit,
    Timeout,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::PrivateAddress => "private_address",
            Self::Limit => "limit",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }

    fn of(error: &Error) -> Self {
        match error {
            Error::HttpRequestDenied => Self::Denied,
            Error::DestinationIpProhibited => Self::PrivateAddress,
            Error::ConnectionLimitReached
            | Error::HttpRequestBodySize(_)
            | Error::HttpResponseBodySize(_) => Self::Limit,
            Error::DnsTimeout
            | Error::ConnectionTimeout
            | Error::ConnectionReadTimeout
            | Error::ConnectionWriteTimeout
            | Error::HttpResponseTimeout => Self::Timeout,
            _ => Self::Error,
        }
    }
}

fn count(plugin: &PluginOutbound, outcome: Outcome) {
    metrics::counter!(
        "plugbus_outbound_requests_total",
        "tenant" => plugin.tenant.clone(),
        "plugin" => plugin.plugin.clone(),
        "result" => outcome.as_str(),
    )
    .increment(1);
}

/// The idempotency key of the `index`th request (from 0) of a delivery of
/// event `event_id` to `plugin` of `tenant`: the same on every attempt.
/// The tenant is part of it because event ids are the publishers' own:
/// two tenants' events of one id, handled by plugins of one name, must not
/// share keys at a service both call.
pub(crate) fn idempotency_key(tenant: &str, event_id: &str, plugin: &str, index: u32) -> String {
    let mut hash = Sha256::new();
    // Lengths first, so that no two tuples hash the same bytes.
    for part in [tenant.as_bytes(), event_id.as_bytes(), plugin.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(index.to_be_bytes());
    hash.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

/// A request that passed the checks, ready to be sent.
struct Prepared {
    request: http::Request<WasiBody>,
    scheme: Scheme,
    host: String,
    port: u16,
    plugin: Arc<PluginOutbound>,
    deadline: Option<Instant>,
    /// The guest's own timeouts (`request-options`), which may only
    /// shorten the host's.
    options: wasmtime_wasi_http::RequestOptions,
}

impl Hooks {
    /// Follows the delivery under way: a delivery whose request counter is
    /// not the one the hooks hold is a new one (every delivery's scope has
    /// a fresh counter), whose event and trace are taken up; the deadline
    /// is taken on every call, since a batch re-arms it for each event.
    pub(crate) fn follow(
        &mut self,
        scope: &crate::sandbox::DeliveryScope,
        deadline: Option<std::time::Instant>,
    ) {
        if !Arc::ptr_eq(&self.delivery.requests, &scope.http_requests) {
            self.delivery = OutboundDelivery {
                event_id: scope.event_id.clone(),
                deadline,
                requests: scope.http_requests.clone(),
                trace: scope.trace.clone(),
            };
        }
        self.delivery.deadline = deadline;
    }

    fn prepare(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: wasmtime_wasi_http::RequestOptions,
    ) -> Result<Prepared, (Option<Arc<PluginOutbound>>, Error)> {
        let Some(plugin) = self.plugin.clone() else {
            tracing::debug!("outbound request refused: the plugin allows no origin");
            return Err((None, Error::HttpRequestDenied));
        };
        if self.delivery.event_id.is_empty() {
            // Instantiation, or a batch handler running on after its last
            // `batch.done`: no event to key the request on, and no
            // delivery that would retry it.
            tracing::debug!("outbound request refused: it belongs to no event's delivery");
            return Err((Some(plugin), Error::HttpRequestDenied));
        }
        let uri = request.uri();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // The server would see the userinfo in the Host header.
            return Err((Some(plugin), Error::HttpRequestUriInvalid));
        }
        let scheme = uri.scheme_str().and_then(Scheme::parse);
        let host = uri.host().unwrap_or("").to_owned();
        let (Some(scheme), false) = (scheme, host.is_empty()) else {
            return Err((Some(plugin), Error::HttpRequestUriInvalid));
        };
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        if !plugin.allow.iter().any(|p| p.matches(scheme, &host, port)) {
            tracing::debug!(
                scheme = scheme.as_str(),
                host = %plugbus_core::text::escape(&host, 256),
                port,
                "outbound request refused: not in the plugin's [http] allow"
            );
            return Err((Some(plugin), Error::HttpRequestDenied));
        }
        let index = self.delivery.requests.fetch_add(1, Ordering::Relaxed);
        if index >= plugin.config.max_requests_per_delivery {
            tracing::debug!(
                limit = plugin.config.max_requests_per_delivery,
                "outbound request refused: too many requests in one delivery"
            );
            return Err((Some(plugin), Error::ConnectionLimitReached));
        }
        if let Some(length) = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && length > plugin.config.max_request_body_bytes
        {
            return Err((Some(plugin), Error::HttpRequestBodySize(Some(length))));
        }
        let headers = request.headers_mut();
        let key = HeaderName::from_static("idempotency-key");
        if !headers.contains_key(&key)
            && let Ok(value) = HeaderValue::from_str(&idempotency_key(
                &plugin.tenant,
                &self.delivery.event_id,
                &plugin.plugin,
                index,
            ))
        {
            headers.insert(key, value);
        }
        let trace = plugbus_core::trace::for_emitted(&self.delivery.trace);
        headers.remove("traceparent");
        headers.remove("tracestate");
        for (name, value) in trace {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        let limit = plugin.config.max_request_body_bytes;
        let request = request.map(|body| {
            LimitedRequestBody {
                inner: body,
                left: limit,
            }
            .boxed_unsync()
        });
        Ok(Prepared {
            request,
            scheme,
            host,
            port,
            plugin,
            deadline: self.delivery.deadline.map(Instant::from_std),
            options,
        })
    }
}

/// The most bytes one write to a request body's stream may take, and so
/// (with one chunk buffered) what a body not yet sent holds in the host.
/// With the table's bound on resources (`sandbox.rs`), this bounds what a
/// plugin can make the host hold through `wasi:http` resources it never
/// sends.
const BODY_CHUNK_BYTES: usize = 16 * 1024;

impl WasiHttpHooks for Hooks {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        match self.prepare(request, options.unwrap_or_default()) {
            Err((plugin, error)) => {
                if let Some(plugin) = plugin {
                    count(&plugin, Outcome::of(&error));
                }
                Box::new(std::future::ready(Err(error)))
            }
            Ok(prepared) => {
                let span = tracing::Span::current();
                Box::new(send(prepared).instrument(span))
            }
        }
    }
}

async fn send(prepared: Prepared) -> SendResult {
    let plugin = prepared.plugin.clone();
    // A guest may name any method: only the standard ones reach the log.
    let method: &'static str = match prepared.request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let host = prepared.host.clone();
    let started = Instant::now();
    let result = connect_and_send(prepared, started).await;
    let elapsed = started.elapsed();
    metrics::histogram!(
        "plugbus_outbound_request_seconds",
        "tenant" => plugin.tenant.clone(),
        "plugin" => plugin.plugin.clone(),
    )
    .record(elapsed.as_secs_f64());
    match &result {
        Ok((response, _)) => {
            count(&plugin, Outcome::Ok);
            tracing::info!(
                method = %method,
                host = %host,
                status = response.status().as_u16(),
                duration_ms = elapsed.as_millis() as u64,
                "outbound request"
            );
        }
        Err(error) => {
            let outcome = Outcome::of(error);
            count(&plugin, outcome);
            tracing::info!(
                method = %method,
                host = %host,
                error = ?error,
                result = outcome.as_str(),
                duration_ms = elapsed.as_millis() as u64,
                "outbound request failed"
            );
        }
    }
    result
}

fn earliest(a: Instant, b: Option<Instant>) -> Instant {
    match b {
        Some(b) if b < a => b,
        _ => a,
    }
}

/// How many name lookups may hold a blocking thread at once, host-wide.
/// A lookup (the system's `getaddrinfo`) cannot be cancelled: one that a
/// delivery's deadline gave up on keeps its thread until the resolver
/// gives up too, so a tenant whose names point at a DNS server that never
/// answers could otherwise take every blocking thread, the ones deliveries
/// run on included.
const MAX_LOOKUPS: usize = 32;

/// Resolves `host`, on a blocking thread that holds one of the
/// [`MAX_LOOKUPS`] permits until the lookup ends, even after the caller
/// gave up waiting.
async fn resolve(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    static LOOKUPS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
        std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)));
    let permit = LOOKUPS
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).map(Iterator::collect)
    })
    .await
    .map_err(std::io::Error::other)?
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

async fn connect_and_send(prepared: Prepared, started: Instant) -> SendResult {
    let Prepared {
        mut request,
        scheme,
        host,
        port,
        plugin,
        deadline,
        options,
    } = prepared;
    let config = &plugin.config;
    let shorter = |host: Duration, guest: Option<Duration>| guest.map_or(host, |g| g.min(host));
    let total_at = earliest(started + config.total_timeout, deadline);
    let connect_at = earliest(
        started + shorter(config.connect_timeout, options.connect_timeout),
        Some(total_at),
    );
    let first_byte_at = earliest(
        started + shorter(config.first_byte_timeout, options.first_byte_timeout),
        Some(total_at),
    );

    // Resolve, and keep the addresses the policy allows.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let resolved: Vec<SocketAddr> =
        match tokio::time::timeout_at(connect_at, resolve(bare.clone(), port)).await {
            Err(_) => return Err(Error::DnsTimeout),
            Ok(Err(_)) => {
                return Err(Error::DnsError {
                    rcode: None,
                    info_code: None,
                });
            }
            Ok(Ok(addrs)) => addrs,
        };
    let permitted: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| address_permitted(a.ip(), &config.allow_private))
        .collect();
    if permitted.is_empty() {
        if resolved.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        tracing::debug!(
            host = %host,
            "outbound request refused: every address of the host is private"
        );
        return Err(Error::DestinationIpProhibited);
    }

    // Connect to a checked address.
    let connect = async {
        let mut last = None;
        for addr in &permitted {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(Error::ConnectionRefused, Error::Connect))
    };
    let tcp = tokio::time::timeout_at(connect_at, connect)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match scheme {
        Scheme::Http => Box::new(tcp),
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(bare.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls = tokio::time::timeout_at(connect_at, tls_connector()?.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            Box::new(tls)
        }
    };
    let (mut sender, conn) = tokio::time::timeout_at(
        connect_at,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection is driven by a task of its own that ends at the total
    // deadline at the latest; its result reaches the guest through the
    // request's future.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = match tokio::time::timeout_at(total_at, conn).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(from_hyper(e)),
            Err(_) => Err(Error::HttpResponseTimeout),
        };
        let _ = done_tx.send(result);
    });

    let head = request.method() == http::Method::HEAD;
    // Only the path goes on the request line.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout_at(first_byte_at, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(from_hyper)?;
    let bodiless = head
        || response.status().is_informational()
        || response.status() == http::StatusCode::NO_CONTENT
        || response.status() == http::StatusCode::NOT_MODIFIED;
    if !bodiless
        && let Some(length) = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        && length > config.max_response_body_bytes
    {
        return Err(Error::HttpResponseBodySize(Some(length)));
    }
    let limit = config.max_response_body_bytes;
    let between = options.between_bytes_timeout;
    let response = response.map(|incoming| {
        LimitedResponseBody {
            inner: incoming,
            left: limit,
            deadline: Box::pin(tokio::time::sleep_until(next_byte_by(total_at, between))),
            total_at,
            between,
        }
        .boxed_unsync()
    });
    // How the connection ended, after the response: wasmtime-wasi-http
    // logs an error here at warn when nobody asked for it (a guest that
    // dropped the body early, a server closing after its answer), once per
    // request; the guest sees its body stream's own errors, so this one
    // goes to the debug log only.
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        if let Ok(Err(error)) = done_rx.await {
            tracing::debug!(error = ?error, "outbound connection ended with an error");
        }
        Ok(())
    });
    Ok((response, io))
}

/// The error of a failed exchange: the request body's refusal past the
/// limit when hyper's error comes from it (found in its sources), else
/// hyper's error.
fn from_hyper(error: hyper::Error) -> Error {
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(Error::HttpRequestBodySize(size)) = cause.downcast_ref::<Error>() {
            return Error::HttpRequestBodySize(*size);
        }
        source = cause.source();
    }
    Error::from(error)
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, Error> {
    static CONFIG: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
    });
    config
        .clone()
        .map(tokio_rustls::TlsConnector::from)
        .ok_or(Error::ConfigurationError)
}

/// Counts `frame`'s data against the bytes `left` of a body's limit;
/// false (and nothing counted) when it does not fit.
fn charge(left: &mut u64, frame: &Frame<Bytes>) -> bool {
    let len = frame.data_ref().map_or(0, |data| data.len() as u64);
    match left.checked_sub(len) {
        Some(rest) => {
            *left = rest;
            true
        }
        None => false,
    }
}

/// The guest's request body, refused past the limit.
struct LimitedRequestBody {
    inner: WasiBody,
    left: u64,
}

impl Body for LimitedRequestBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !charge(&mut this.left, &frame) {
                    return Poll::Ready(Some(Err(Error::HttpRequestBodySize(None))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When the next frame of a response body must have come: the guest's
/// between-bytes timeout from now, but never after the total deadline.
fn next_byte_by(total_at: Instant, between: Option<Duration>) -> Instant {
    between.map_or(total_at, |b| earliest(Instant::now() + b, Some(total_at)))
}

/// The response body as the guest reads it: an error past the limit, and
/// at the total deadline or the guest's between-bytes timeout.
struct LimitedResponseBody {
    inner: hyper::body::Incoming,
    left: u64,
    /// When the next frame must have come.
    deadline: Pin<Box<tokio::time::Sleep>>,
    total_at: Instant,
    between: Option<Duration>,
}

impl Body for LimitedResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !charge(&mut this.left, &frame) {
                    this.left = 0;
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(None))));
                }
                if this.between.is_some() {
                    let next = next_byte_by(this.total_at, this.between);
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_depend_on_event_plugin_and_index() {
        let a = idempotency_key("acme", "evt-1", "notify", 0);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, idempotency_key("acme", "evt-1", "notify", 0));
        assert_ne!(a, idempotency_key("acme", "evt-1", "notify", 1));
        assert_ne!(a, idempotency_key("acme", "evt-2", "notify", 0));
        assert_ne!(a, idempotency_key("acme", "evt-1", "other", 0));
        assert_ne!(a, idempotency_key("globex", "evt-1", "notify", 0));
        // No ambiguity between where one part ends and the next starts.
        assert_ne!(
            idempotency_key("t", "ab", "c", 0),
            idempotency_key("t", "a", "bc", 0)
        );
    }

    #[test]
    fn a_manifest_entry_outside_the_ceiling_is_named() {
        let p = |s: &str| OriginPattern::parse(s).expect("valid");
        let mut config = OutboundConfig::default();
        config
            .tenant_ceilings
            .insert("acme".into(), vec![p("https://*.example.com")]);
        let allow = [p("https://api.example.com"), p("https://evil.net")];
        assert_eq!(config.uncovered("acme", &allow), Some(&allow[1]));
        assert_eq!(config.uncovered("acme", &allow[..1]), None);
        assert_eq!(config.uncovered("other", &allow[..1]), Some(&allow[0]));
        assert_eq!(config.uncovered("other", &[]), None);
    }
}
