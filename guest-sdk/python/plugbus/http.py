"""Outbound HTTP for handlers: a small synchronous client over the host's
``wasi:http/outgoing-handler``.

A handler gets the client from its context::

    response = ctx.http().post(url, json={"text": "low stock"}, headers={"Authorization": f"Bearer {token}"})
    if response.status >= 500:
        raise HandlerError.retryable(f"the webhook answered {response.status}")

The host sends a request only to an origin the plugin's manifest allows
(``[http] allow = ["https://hooks.example.com"]``) within its tenant's
ceiling, adds an ``Idempotency-Key`` header (the same on every attempt of
the delivery) and a ``traceparent``, and bounds sizes, counts and times.
Redirects are not followed: a 3xx is returned as it is.

A request that fails raises an :class:`HttpError`: :class:`HttpDeniedError`
(the allow-list or a host limit refused it), :class:`HttpTimeoutError`,
:class:`HttpTooLargeError`, :class:`HttpConnectionError`,
:class:`HttpInvalidRequestError` or :class:`HttpOtherError` (the Rust SDK's
``HttpError`` variants). Each is a :class:`plugbus.HandlerError` of the
kind a retry calls for (timeouts, connection failures and other errors
retryable; denied, too large and invalid requests permanent), so left
uncaught it fails the delivery the right way;
:meth:`HttpError.to_handler_error` gives the plain handler error to raise
with a message of one's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, Union

# Imported here, not when the first request is sent: componentize-py
# snapshots what is imported while it builds the component, so this costs
# a handler no fuel.
from urllib.parse import urlsplit

from . import HandlerError, _decode_json, _encode_json

__all__ = [
    "Body",
    "Headers",
    "Http",
    "HttpConnectionError",
    "HttpDeniedError",
    "HttpError",
    "HttpInvalidRequestError",
    "HttpOtherError",
    "HttpTimeoutError",
    "HttpTooLargeError",
    "Request",
    "Response",
    "Sender",
    "WASI_HTTP_ERROR_CODES",
    "error_for_code",
]

#: Request headers: a mapping, or ``(name, value)`` pairs (for a name that repeats).
Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]
#: A request body: bytes, or text sent as UTF-8.
Body = Union[bytes, bytearray, memoryview, str]

#: How many bytes one read of a response body asks for.
_READ_CHUNK = 64 * 1024


class HttpError(HandlerError):
    """An outbound request failed. Its subclass says how; :attr:`code` is
    the ``wasi:http`` error code's name (``HTTP-request-denied``,
    ``connection-refused``, …) or the SDK's own (``invalid-url``,
    ``invalid-header``), and :attr:`detail` the host's or the SDK's words.

    It is a :class:`plugbus.HandlerError`: left uncaught it fails the
    delivery, retryable or permanent as :attr:`kind` says."""

    #: The handler-error kind of this class (instances may differ, see :class:`HttpOtherError`).
    KIND = HandlerError.PERMANENT
    #: What the failure is, for the message.
    WHAT = "failed"
    #: What to check, for the message.
    HINT = ""

    def __init__(self, code: str, detail: Optional[str] = None) -> None:
        """A failure with ``code`` and, when known, ``detail``."""
        message = f"outbound HTTP request {self.WHAT}: {code}"
        if detail:
            message += f" ({detail})"
        super().__init__(self.KIND, message + self.HINT)
        #: The error code's name.
        self.code: str = code
        #: More words from the host or the SDK, when there are any.
        self.detail: Optional[str] = detail

    def to_handler_error(self, message: Optional[str] = None) -> HandlerError:
        """A plain :class:`plugbus.HandlerError` of this error's kind, with
        ``message`` (this error's own by default) followed by this error's."""
        text = self.message if message is None else f"{message}: {self.message}"
        return HandlerError(self.kind, text)

    def __repr__(self) -> str:
        """``HttpTimeoutError('HTTP-response-timeout')`` and the like."""
        return f"{type(self).__name__}({self.code!r})"


class HttpDeniedError(HttpError):
    """The host refused the request: its origin is not in the plugin's
    allow-list or its tenant's ceiling, its address is private, or a limit
    (requests per delivery) is reached. Permanent: a retry is refused again."""

    KIND = HandlerError.PERMANENT
    WHAT = "denied"
    HINT = ": is its origin in the manifest's [http] allow?"


class HttpTimeoutError(HttpError):
    """Connecting, the first byte or the whole exchange took too long (or
    the delivery's deadline came). Retryable."""

    KIND = HandlerError.RETRYABLE
    WHAT = "timed out"


class HttpTooLargeError(HttpError):
    """The request or the response (body or headers) is over a limit.
    Permanent: the same request is as large again."""

    KIND = HandlerError.PERMANENT
    WHAT = "too large"


class HttpConnectionError(HttpError):
    """The server could not be reached or the connection failed (DNS,
    refused, reset, TLS, an incomplete or malformed response). Retryable."""

    KIND = HandlerError.RETRYABLE
    WHAT = "could not connect"


class HttpInvalidRequestError(HttpError):
    """The request cannot be sent as it is: a URL that is not absolute
    ``http://`` or ``https://``, an invalid method or header. Permanent."""

    KIND = HandlerError.PERMANENT
    WHAT = "is invalid"


class HttpOtherError(HttpError):
    """Any other failure, with the host's words. Retryable."""

    KIND = HandlerError.RETRYABLE
    WHAT = "failed"


#: ``wasi:http`` error codes (the names of ``ErrorCode``'s cases, as the WIT
#: spells them) by the class that reports them; any other is :class:`HttpOtherError`.
_CODES = {
    HttpDeniedError: ("HTTP-request-denied", "destination-IP-prohibited"),
    HttpTimeoutError: (
        "DNS-timeout",
        "connection-timeout",
        "connection-read-timeout",
        "connection-write-timeout",
        "HTTP-response-timeout",
    ),
    HttpTooLargeError: (
        "HTTP-request-body-size",
        "HTTP-request-header-section-size",
        "HTTP-request-header-size",
        "HTTP-request-trailer-section-size",
        "HTTP-request-trailer-size",
        "HTTP-request-URI-too-long",
        "HTTP-response-body-size",
        "HTTP-response-header-section-size",
        "HTTP-response-header-size",
        "HTTP-response-trailer-section-size",
        "HTTP-response-trailer-size",
    ),
    HttpConnectionError: (
        "DNS-error",
        "destination-not-found",
        "destination-unavailable",
        "destination-IP-unroutable",
        "connection-refused",
        "connection-terminated",
        "connection-limit-reached",
        "TLS-protocol-error",
        "TLS-certificate-error",
        "TLS-alert-received",
        "HTTP-response-incomplete",
        "HTTP-protocol-error",
    ),
    HttpInvalidRequestError: (
        "invalid-url",
        "invalid-header",
        "HTTP-request-method-invalid",
        "HTTP-request-URI-invalid",
        "HTTP-request-length-required",
    ),
}
_CLASS_OF_CODE = {code: cls for cls, codes in _CODES.items() for code in codes}


def error_for_code(code: str, detail: Optional[str] = None) -> HttpError:
    """The :class:`HttpError` that reports the ``wasi:http`` error ``code``
    (a case name of ``ErrorCode`` as the WIT spells it, e.g.
    ``"HTTP-request-denied"``), with ``detail``. Also what a test cans to
    make a request fail."""
    return _CLASS_OF_CODE.get(code, HttpOtherError)(code, detail)


def _header_pairs(headers: Optional[Headers]) -> List[Tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = []
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            raise error_for_code("invalid-header", f"header {name!r}: names and values are strings")
        pairs.append((name, value))
    return pairs


def _find(headers: Iterable[Tuple[str, str]], name: str) -> Optional[str]:
    lowered = name.lower()
    return next((v for n, v in headers if n.lower() == lowered), None)


@dataclass(frozen=True)
class Request:
    """An outbound request as the handler made it: what the host is
    asked to send, and what :class:`plugbus.testing.TestContext` records."""

    #: The method, upper case (``GET``, ``POST``, …).
    method: str
    #: The URL, as given.
    url: str
    #: The headers, in order, as ``(name, value)`` pairs.
    headers: List[Tuple[str, str]] = field(default_factory=list)
    #: The body (empty when there is none).
    body: bytes = b""
    #: The timeout the handler asked for, in seconds, or ``None``.
    timeout: Optional[float] = None

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or ``None``."""
        return _find(self.headers, name)

    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body decoded as JSON (a permanent :class:`plugbus.HandlerError` when it does not decode)."""
        return _decode_json(self.body, f"the body of {self.method} {self.url}")


@dataclass(frozen=True)
class Response:
    """A response: its status, headers and whole body. Built by hand in
    tests: ``Response(200, body=b"ok")`` or ``Response.from_json(201, {...})``."""

    #: The status code.
    status: int = 200
    #: The headers, in order, as ``(name, value)`` pairs (values decoded as Latin-1).
    headers: List[Tuple[str, str]] = field(default_factory=list)
    #: The whole body.
    body: bytes = b""

    @classmethod
    def from_json(cls, status: int, value: Any, headers: Optional[Headers] = None) -> "Response":
        """A response with ``value`` as its JSON body (for tests)."""
        pairs = _header_pairs(headers)
        if _find(pairs, "content-type") is None:
            pairs.append(("content-type", "application/json"))
        return cls(status, pairs, _encode_json(value, "the response body"))

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or ``None``."""
        return _find(self.headers, name)

    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body decoded as JSON (a permanent :class:`plugbus.HandlerError` when it does not decode)."""
        return _decode_json(self.body, f"the body of the HTTP {self.status} response")


#: What sends a :class:`Request`: the host inside the component, the test
#: context natively. Returns the :class:`Response` or raises :class:`HttpError`.
Sender = Callable[[Request], Response]


class Http:
    """A synchronous HTTP client: each call sends one request, waits for
    the whole response and returns it. Get it from ``ctx.http()``."""

    def __init__(self, send: Sender) -> None:
        """A client whose requests go to ``send``."""
        self._send = send

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Optional[Headers] = None,
        body: Optional[Body] = None,
        json: Any = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """Sends ``method url`` and returns the :class:`Response` (any
        status: a 4xx or 5xx is a response, not an error; a redirect is
        not followed). ``body`` is bytes or text (UTF-8); ``json`` a value
        sent as JSON with ``content-type: application/json`` (unless the
        headers set one); ``timeout``, in seconds, bounds connecting, the
        first byte and the gap between bytes of the response (the host's
        own limits and the delivery's deadline apply too). Raises
        :class:`HttpError` when no response came."""
        if not isinstance(method, str) or not method or not method.isascii() or not method.isalpha():
            raise error_for_code("HTTP-request-method-invalid", f"method {method!r}")
        if not isinstance(url, str):
            raise error_for_code("invalid-url", f"a URL is a string, not {url!r}")
        pairs = _header_pairs(headers)
        if json is not None:
            if body is not None:
                raise ValueError("give a request body or json, not both")
            data = _encode_json(json, f"the body of {method} {url}")
            if _find(pairs, "content-type") is None:
                pairs.append(("content-type", "application/json"))
        elif body is None:
            data = b""
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = bytes(body)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"a timeout is a positive number of seconds, not {timeout!r}")
        return self._send(Request(method.upper(), url, pairs, data, timeout))

    def get(self, url: str, **options: Any) -> Response:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> Response:
        """``request("POST", url, ...)``."""
        return self.request("POST", url, **options)

    def put(self, url: str, **options: Any) -> Response:
        """``request("PUT", url, ...)``."""
        return self.request("PUT", url, **options)

    def delete(self, url: str, **options: Any) -> Response:
        """``request("DELETE", url, ...)``."""
        return self.request("DELETE", url, **options)


# Inside the component: the request over the generated wasi:http bindings.


def _split_url(url: str) -> Tuple[str, str, str]:
    """``(scheme, authority, path_with_query)`` of ``url``, or an invalid-url
    :class:`HttpInvalidRequestError` (the host allows only ``http`` and
    ``https``, so another scheme is refused here)."""
    try:
        parts = urlsplit(url)
        parts.port  # validates the port
    except (ValueError, TypeError) as e:
        raise error_for_code("invalid-url", f"{url!r}: {e}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise error_for_code("invalid-url", f"{url!r} is not an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise error_for_code("invalid-url", f"{url!r} has user info; send credentials in a header")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme.lower(), parts.netloc, path


#: Every case of ``wasi:http``'s ``ErrorCode``, as the WIT spells it.
WASI_HTTP_ERROR_CODES = (
    "DNS-timeout",
    "DNS-error",
    "destination-not-found",
    "destination-unavailable",
    "destination-IP-prohibited",
    "destination-IP-unroutable",
    "connection-refused",
    "connection-terminated",
    "connection-timeout",
    "connection-read-timeout",
    "connection-write-timeout",
    "connection-limit-reached",
    "TLS-protocol-error",
    "TLS-certificate-error",
    "TLS-alert-received",
    "HTTP-request-denied",
    "HTTP-request-length-required",
    "HTTP-request-body-size",
    "HTTP-request-method-invalid",
    "HTTP-request-URI-invalid",
    "HTTP-request-URI-too-long",
    "HTTP-request-header-section-size",
    "HTTP-request-header-size",
    "HTTP-request-trailer-section-size",
    "HTTP-request-trailer-size",
    "HTTP-response-incomplete",
    "HTTP-response-header-section-size",
    "HTTP-response-header-size",
    "HTTP-response-body-size",
    "HTTP-response-trailer-section-size",
    "HTTP-response-trailer-size",
    "HTTP-response-transfer-coding",
    "HTTP-response-content-coding",
    "HTTP-response-timeout",
    "HTTP-upgrade-failed",
    "HTTP-protocol-error",
    "loop-detected",
    "configuration-error",
    "internal-error",
)
#: The WIT name of a case by the bindings' class name without ``ErrorCode_``
#: (``HttpRequestDenied`` -> ``HTTP-request-denied``): the same letters.
_WIT_NAME = {n.replace("-", "").lower(): n for n in WASI_HTTP_ERROR_CODES}


def _code_name(code: Any) -> Tuple[str, Optional[str]]:
    """The WIT name of a bindings' ``ErrorCode`` case and its payload's words."""
    suffix = type(code).__name__.removeprefix("ErrorCode_")
    name = _WIT_NAME.get(suffix.lower(), suffix)
    value = getattr(code, "value", None)
    if value is None or isinstance(value, (int, str)):
        detail = None if value is None else str(value)
    else:
        detail = ", ".join(f"{k}={v}" for k, v in vars(value).items() if v is not None) or None
    return name, detail


class _WasiHttp:
    """Sends requests through the generated ``wasi:http`` bindings."""

    def __init__(self, bindings: Any) -> None:
        self._ok, self._err, self._types, self._handler, self._streams = bindings

    def _error(self, code: Any) -> HttpError:
        name, detail = _code_name(code)
        return error_for_code(name, detail)

    def send(self, request: Request) -> Response:
        t = self._types
        scheme, authority, path = _split_url(request.url)
        methods = {
            "GET": t.Method_Get,
            "HEAD": t.Method_Head,
            "POST": t.Method_Post,
            "PUT": t.Method_Put,
            "DELETE": t.Method_Delete,
            "CONNECT": t.Method_Connect,
            "OPTIONS": t.Method_Options,
            "TRACE": t.Method_Trace,
            "PATCH": t.Method_Patch,
        }
        method = methods[request.method]() if request.method in methods else t.Method_Other(request.method)
        wit_scheme = t.Scheme_Https() if scheme == "https" else t.Scheme_Http()
        entries = [(n, v.encode("latin-1", "replace")) for n, v in request.headers]
        if request.body and _find(request.headers, "content-length") is None:
            entries.append(("content-length", str(len(request.body)).encode()))
        try:
            fields = t.Fields.from_list(entries)
        except self._err as e:
            raise error_for_code("invalid-header", type(e.value).__name__.removeprefix("HeaderError_")) from None
        outgoing = t.OutgoingRequest(fields)
        try:
            outgoing.set_method(method)
            outgoing.set_scheme(wit_scheme)
            outgoing.set_authority(authority)
            outgoing.set_path_with_query(path)
        except self._err:
            outgoing.__exit__(None, None, None)
            raise error_for_code("invalid-url", f"wasi:http refuses {request.method} {request.url!r}") from None
        options = None
        if request.timeout is not None:
            options = t.RequestOptions()
            nanos = int(request.timeout * 1e9)
            for setter in (options.set_connect_timeout, options.set_first_byte_timeout, options.set_between_bytes_timeout):
                try:
                    setter(nanos)
                except self._err:
                    pass  # the host's limits still apply
        body = outgoing.body() if request.body else None
        try:
            future = self._handler.handle(outgoing, options)
        except self._err as e:
            if body is not None:
                body.__exit__(None, None, None)
            raise self._error(e.value) from None
        if body is not None:
            self._write_body(body, request.body)
        try:
            return self._wait(future)
        finally:
            future.__exit__(None, None, None)

    def _write_body(self, body: Any, data: bytes) -> None:
        """Writes ``data`` as ``check-write`` allows, flushes, finishes the
        body. A stream that fails stops the writing: the response's future
        then says why."""
        stream = body.write()
        try:
            offset = 0
            while offset < len(data):
                allowed = stream.check_write()
                if allowed == 0:
                    self._block(stream.subscribe())
                    continue
                chunk = data[offset : offset + allowed]
                stream.write(chunk)
                offset += len(chunk)
            stream.flush()
            while stream.check_write() == 0:
                self._block(stream.subscribe())
        except self._err:
            stream.__exit__(None, None, None)
            body.__exit__(None, None, None)
            return
        stream.__exit__(None, None, None)
        try:
            self._types.OutgoingBody.finish(body, None)
        except self._err:
            pass  # the future reports it

    @staticmethod
    def _block(pollable: Any) -> None:
        try:
            pollable.block()
        finally:
            pollable.__exit__(None, None, None)

    def _wait(self, future: Any) -> Response:
        self._block(future.subscribe())
        result = future.get()
        if result is None or not isinstance(result, self._ok):
            raise error_for_code("internal-error", "the response's future gave nothing")
        inner = result.value
        if not isinstance(inner, self._ok):
            raise self._error(inner.value)
        incoming = inner.value
        try:
            status = incoming.status()
            fields = incoming.headers()
            headers = [(n, bytes(v).decode("latin-1")) for n, v in fields.entries()]
            fields.__exit__(None, None, None)
            body = incoming.consume()
            return Response(status, headers, self._read_body(body))
        finally:
            incoming.__exit__(None, None, None)

    def _read_body(self, body: Any) -> bytes:
        """The whole body, read until the stream closes."""
        stream = body.stream()
        chunks = []
        try:
            while True:
                try:
                    chunks.append(bytes(stream.blocking_read(_READ_CHUNK)))
                except self._err as e:
                    if isinstance(e.value, self._streams.StreamError_Closed):
                        break
                    raise self._body_error(e.value) from None
        except BaseException:
            stream.__exit__(None, None, None)
            body.__exit__(None, None, None)
            raise
        stream.__exit__(None, None, None)
        trailers = self._types.IncomingBody.finish(body)
        trailers.__exit__(None, None, None)
        return b"".join(chunks)

    def _body_error(self, stream_error: Any) -> HttpError:
        """The error that failed a body's stream: the ``wasi:http`` code
        behind it when there is one."""
        error = stream_error.value
        try:
            code = self._types.http_error_code(error)
            if code is not None:
                return self._error(code)
            return error_for_code("HTTP-protocol-error", error.to_debug_string())
        finally:
            error.__exit__(None, None, None)


def _bindings() -> Optional[Tuple[Any, Any, Any, Any, Any]]:
    """The ``wasi:http`` bindings componentize-py generates, or ``None``
    natively (see :func:`plugbus._bindings`)."""
    try:
        from componentize_py_types import Err, Ok  # type: ignore[import-not-found]
        from wit_world.imports import (  # type: ignore[import-not-found]
            error,  # noqa: F401  (kept in the component: stream errors carry it)
            outgoing_handler,
            poll,  # noqa: F401
            streams,
            wasi_http_types,
        )
    except ImportError:
        return None
    return (Ok, Err, wasi_http_types, outgoing_handler, streams)

