//! The HTTP server loop: hyper's HTTP/1 connections, each under a header
//! read timeout and a write stall timeout, at most
//! [`ServerLimits::max_connections`] of them, and a drain deadline at
//! shutdown. axum's own `serve` has no such knobs.
//!
//! What hyper 1.x does on its header read timeout: it closes the
//! connection, without an answer. The timer starts when hyper begins to
//! read a request head, so it also bounds how long a keep-alive connection
//! may stay idle between requests. Here a connection whose client had sent
//! part of a request head when the timer fired is answered `408 Request
//! Timeout` first (best effort, without waiting); an idle keep-alive
//! connection is closed silently, as RFC 9112 §9.6 expects (a 408 there
//! could be read as the answer to a request the client is just sending).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::routes::router;
use crate::state::Api;

/// The bounds of the HTTP server's connections. Those of the requests
/// themselves are [`ApiLimits`](crate::limits::ApiLimits).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// How long a client may take to send a request's head (request line
    /// and headers), from the first moment the server waits for it; this
    /// is also how long a keep-alive connection may stay idle (default
    /// 10 s). Past it the connection is closed, with `408 Request Timeout`
    /// when part of a head had arrived.
    pub header_read_timeout: Duration,
    /// How long a client may leave the server unable to write any byte of
    /// an answer (it does not read) before its connection is closed
    /// (default 30 s).
    pub write_timeout: Duration,
    /// The most connections open at once (default 1024; 0 counts as 1).
    /// Beyond it a new
    /// connection is answered `503` and closed at once (best effort,
    /// without waiting for the client), and counted in
    /// `plugbus_http_connections_refused_total`.
    pub max_connections: usize,
    /// At shutdown, how long the requests under way get to finish (default
    /// 10 s); then every connection still open is closed and [`serve`]
    /// returns.
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            drain: Duration::from_secs(10),
        }
    }
}

/// A whole answer written straight to a socket, outside hyper: `status`
/// with a JSON refusal naming `limit`, and the connection closing; with
/// `Retry-After: 1` when `retry` says so.
fn raw_answer(status: &str, limit: &str, error: &str, message: &str, retry: bool) -> Vec<u8> {
    let body =
        serde_json::json!({ "error": error, "limit": limit, "message": message }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{}\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        if retry { "retry-after: 1\r\n" } else { "" },
        body.len()
    )
    .into_bytes()
}

/// The answer to a connection over [`ServerLimits::max_connections`].
static OVER_CAPACITY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    raw_answer(
        "503 Service Unavailable",
        "max_connections",
        "unavailable",
        "the server has as many connections open as it takes; retry later",
        true,
    )
});

/// The answer to a request head that did not arrive in time.
static HEAD_TIMEOUT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    raw_answer(
        "408 Request Timeout",
        "header_read_timeout",
        "timeout",
        "the request head did not arrive in time",
        false,
    )
});

/// Serves `api` on `listener` until `shutdown` resolves, then drains: no
/// new connection is taken, `/readyz` answers 503, idle connections close,
/// the requests under way get [`ServerLimits::drain`] to finish, and the
/// connections still open then are closed. Returns once every connection
/// is closed.
///
/// # Errors
///
/// None so far: accept errors (the process out of file descriptors, a
/// client gone before it was accepted) are logged and retried after a
/// pause. The `Result` leaves room for errors a caller must see.
pub async fn serve<F>(
    listener: TcpListener,
    api: Arc<Api>,
    limits: ServerLimits,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let router = router(api.clone());
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or memory: pause rather than spin.
                // A connection reset before it was accepted: go on.
                if !is_connection_error(&e) {
                    tracing::error!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            slot,
            router.clone(),
            limits.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    api.set_ready(false);
    let _ = stop.send(true);
    let deadline = tokio::time::sleep(limits.drain);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => {
                if next.is_none() {
                    break;
                }
            }
            () = &mut deadline => {
                let left = connections.len();
                tracing::warn!(
                    "{left} HTTP connections still open after the drain of {} ms; closing them",
                    limits.drain.as_millis()
                );
                metrics::counter!(
                    "plugbus_http_connections_closed_total",
                    "reason" => "drain_deadline"
                )
                .increment(left as u64);
                connections.shutdown().await;
                break;
            }
        }
    }
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Turns away a connection over the limit: one write that does not wait,
/// and the socket is closed.
fn refuse(stream: &TcpStream) {
    metrics::counter!("plugbus_http_connections_refused_total").increment(1);
    let _ = stream.try_write(&OVER_CAPACITY);
}

/// Keeps `plugbus_http_connections_open` while a connection lives.
struct Open;

impl Open {
    fn new() -> Self {
        metrics::gauge!("plugbus_http_connections_open").increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("plugbus_http_connections_open").decrement(1.0);
    }
}

/// Serves one connection until it closes, or until `stopping` and the
/// request under way is answered.
async fn connection(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    router: axum::Router,
    limits: ServerLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let _open = Open::new();
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let io = GuardedIo {
        stream: stream.clone(),
        write_timeout: limits.write_timeout,
        stall: None,
        unanswered: Arc::new(AtomicBool::new(false)),
    };
    let unanswered = io.unanswered.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let stop = async move {
        // Stopping, or the server gone: either way, finish.
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    let Err(error) = served else { return };
    if error.is_timeout() {
        metrics::counter!(
            "plugbus_http_connections_closed_total",
            "reason" => "header_timeout"
        )
        .increment(1);
        if unanswered.load(Ordering::Relaxed) {
            let _ = stream.try_write(&HEAD_TIMEOUT);
        }
    } else if is_write_timeout(&error) {
        metrics::counter!(
            "plugbus_http_connections_closed_total",
            "reason" => "write_timeout"
        )
        .increment(1);
    } else {
        tracing::debug!("an HTTP connection ended: {error}");
    }
}

fn is_write_timeout(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = e.source();
    }
    false
}

/// A connection's socket, shared with its task (which answers 408 on it
/// after hyper gave up), with a bound on how long a write may stall.
struct GuardedIo {
    stream: Arc<TcpStream>,
    write_timeout: Duration,
    /// Armed while a write waits for the client to take bytes.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the client sent bytes since the server last wrote.
    unanswered: Arc<AtomicBool>,
}

impl GuardedIo {
    /// Called when the socket cannot take bytes: pending until it can, or
    /// an error once it has not for [`ServerLimits::write_timeout`].
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took no bytes of the answer for {} ms (write_timeout)",
                    timeout.as_millis()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes with `write` once the socket takes bytes; a write that
    /// waits counts towards the write timeout.
    fn poll_try_write(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.stream.poll_write_ready(cx) {
                Poll::Pending => return self.stalled(cx),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => match write(&self.stream) {
                    Ok(n) => {
                        self.wrote(n);
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                },
            }
        }
    }

    fn wrote(&mut self, n: usize) {
        self.stall = None;
        if n > 0 {
            self.unanswered.store(false, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            match this.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        this.unanswered.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; it is cleared: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_try_write(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_try_write(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket has nothing buffered on this side.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the connection's task drops it.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_answers_declare_their_length() {
        for (answer, retry) in [(&*OVER_CAPACITY, true), (&*HEAD_TIMEOUT, false)] {
            let text = std::str::from_utf8(answer).expect("text");
            let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.parse().ok())
                .expect("a content-length");
            assert_eq!(declared, body.len(), "{text}");
            assert_eq!(head.contains("retry-after: 1"), retry, "{text}");
            let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert!(body["limit"].is_string(), "{body}");
        }
    }

    /// A client that takes no bytes: the write fails once it has stalled
    /// for the write timeout, instead of waiting for ever.
    #[tokio::test]
    async fn a_stalled_write_times_out() {
        use tokio::io::AsyncWriteExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let mut io = GuardedIo {
            stream: Arc::new(stream),
            write_timeout: Duration::from_millis(100),
            stall: None,
            unanswered: Arc::new(AtomicBool::new(true)),
        };
        let chunk = vec![0u8; 1 << 20];
        let written: io::Result<()> = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                io.write_all(&chunk).await?;
            }
        })
        .await
        .expect("the write fails before 20 s");
        let error = written.expect_err("a client that reads nothing");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(!io.unanswered.load(Ordering::Relaxed), "bytes were written");
        drop(client);
    }
}
