"""Running handlers natively, under ``pytest``, with no host and no WebAssembly.

:class:`TestContext` plays the host: it serves config and secrets, answers
outbound HTTP requests with canned responses (and records them), records
emitted events and log lines, and keeps state; like the host, it undoes a failed
run's state writes and emitted events, checks emitted events and state
writes against the host's default limits, and turns an uncaught exception
into a retryable failure with the same message the component reports::

    from plugbus import Event, HandlerError
    from plugbus.testing import TestContext
    from app import handle

    def test_low_stock_is_emitted():
        ctx = TestContext(config={"threshold": "5"})
        ctx.run(handle, Event.from_json("inventory.stock_changed", {"sku": "a", "new_quantity": 2}))
        assert [e.type for e in ctx.emitted] == ["inventory.low_stock"]

    def test_the_webhook_is_called_with_the_token():
        ctx = TestContext(
            config={"webhook_url": "https://hooks.example.com/stock"},
            secrets={"webhook_token": "t0k"},
            http={("POST", "https://hooks.example.com/stock"): Response(204)},
        )
        ctx.run(handle, Event.from_json("inventory.stock_changed", {"sku": "a", "new_quantity": 2}))
        [request] = ctx.requests
        assert request.header("authorization") == "Bearer t0k"
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import (
    EmitError,
    Event,
    Handler,
    HandlerError,
    Level,
    OutgoingEvent,
    StateError,
    _run,
)
from .http import HttpError, Request, Response, _split_url, error_for_code

__all__ = [
    "Canned",
    "TEST_TRACEPARENT",
    "MAX_ATTRIBUTE_BYTES",
    "MAX_EMITS_PER_DELIVERY",
    "MAX_LOG_BYTES",
    "MAX_REQUESTS_PER_DELIVERY",
    "MAX_STATE_KEY_BYTES",
    "MAX_STATE_VALUE_BYTES",
    "HandlerError",
    "Request",
    "Response",
    "TestContext",
    "UncannedRequest",
    "idempotency_key",
]

#: The longest state key the host takes, in bytes (its default).
MAX_STATE_KEY_BYTES = 512
#: The largest state value the host takes, in bytes (its default).
MAX_STATE_VALUE_BYTES = 1 << 20
#: The most events one delivery may emit (the host's default).
MAX_EMITS_PER_DELIVERY = 100
#: The longest attribute value of an event, in bytes.
MAX_ATTRIBUTE_BYTES = 4096
#: The longest log line the host keeps, in bytes; longer lines are truncated.
MAX_LOG_BYTES = 4096
#: The most outbound HTTP requests one delivery may send (the host's default).
MAX_REQUESTS_PER_DELIVERY = 16

#: The ``traceparent`` the test context adds to every request, as the host
#: adds one continuing the delivery's trace (the Rust SDK's value).
TEST_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def idempotency_key(event_id: str, index: int) -> str:
    """The ``Idempotency-Key`` the test context adds to request number
    ``index`` (from 0) of a run on the event ``event_id``: like the host's,
    the same on every run of the same event. (The host's is the hex SHA-256
    of the event, the plugin and the index; this is the Rust SDK's test key.)"""
    return f"test-idempotency-key-{event_id}-{index}"


#: What a test gives as the answer to a request: a :class:`Response`, a
#: status code alone, ``(status, body)`` (body as bytes, text, or any other
#: value sent as JSON), an :class:`HttpError` to raise (e.g.
#: ``HttpTimeoutError("HTTP-response-timeout")``), or a function of the
#: :class:`Request` that returns one of those.
Canned = Any


class UncannedRequest(LookupError):
    """A handler sent a request the test gave no answer for. Not an
    :class:`HttpError`, so that a handler that catches those cannot hide it."""

    __test__ = False


def _as_response(answer: Any, request: Request) -> Response:
    """The response (or the raised error) a canned ``answer`` stands for."""
    if callable(answer) and not isinstance(answer, (Response, HttpError)):
        answer = answer(request)
    if isinstance(answer, HttpError):
        raise answer
    if isinstance(answer, Response):
        return answer
    if isinstance(answer, int) and not isinstance(answer, bool):
        return Response(answer)
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], int):
        status, body = answer
        if isinstance(body, (bytes, bytearray, memoryview)):
            return Response(status, body=bytes(body))
        if isinstance(body, str):
            return Response(status, [("content-type", "text/plain; charset=utf-8")], body.encode("utf-8"))
        return Response.from_json(status, body)
    raise TypeError(
        f"the canned answer to {request.method} {request.url} is {answer!r}: give a Response, a status, "
        "(status, body), an HttpError or a function of the request that returns one of those"
    )

#: Attribute names no extension may take.
_RESERVED = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "tenant",
    }
)
#: Extensions only the host sets on an emitted event.
_HOST_OWNED = frozenset({"causationid", "correlationid", "chaindepth", "chainbudget"})


def _check_text(name: str, value: str, non_empty: bool) -> None:
    if non_empty and not value:
        raise EmitError(f"invalid event: {name} must not be empty")
    if len(value.encode("utf-8")) > MAX_ATTRIBUTE_BYTES:
        raise EmitError(f"invalid event: {name} is more than the limit of {MAX_ATTRIBUTE_BYTES} bytes")
    bad = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise EmitError(f"invalid event: {name} contains the control character {bad!r}")


def _check_emitted(event: OutgoingEvent) -> None:
    """Refuses ``event`` the way the host does (a subset of its checks)."""
    _check_text("type", event.type, True)
    for name, value in (("subject", event.subject), ("datacontenttype", event.datacontenttype), ("dataschema", event.dataschema)):
        if value is not None:
            _check_text(name, value, True)
    for name, value in event.extensions.items():
        if not (1 <= len(name) <= 20 and all(c.isascii() and (c.islower() or c.isdigit()) for c in name)):
            raise EmitError(
                f"invalid attribute {name!r}: extension attribute names are 1 to 20 lowercase letters or digits"
            )
        if name in _RESERVED:
            raise EmitError(f"invalid attribute {name!r}: this attribute name is reserved")
        if name in _HOST_OWNED:
            raise EmitError(f"extension '{name}' is set by the host and may not be set by a plugin")
        _check_text(name, value, False)


class TestContext:
    """A host for native tests.

    - ``config``: the manifest's ``[config]`` table;
    - ``state``: the state before the first run (raw bytes, or any other
      value stored as JSON);
    - ``refuse_emits``: when set, every emit is refused with this message,
      as the host does when an event is invalid or a limit is reached;
    - ``secrets``: the secrets granted to the plugin (``ctx.secret(name)``
      is ``None`` for any other name);
    - ``http``: canned answers to outbound requests, by ``(method, url)``
      (method upper case, the URL exactly as the handler gives it) or by
      the URL alone for any method, each a :data:`Canned`; or one function
      of the :class:`Request` that answers every request. A request with no
      answer raises :class:`UncannedRequest` naming it.

    After runs, :attr:`emitted`, :attr:`logs` and :attr:`state` hold what
    the successful runs left (and every log line, as the host keeps them),
    :attr:`requests` every request sent, failed runs' included (they went
    out: a retried delivery sends them again), each with the headers the
    host adds: ``idempotency-key`` (:func:`idempotency_key`) and
    ``traceparent`` (:data:`TEST_TRACEPARENT`).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        config: Optional[Mapping[str, str]] = None,
        state: Optional[Mapping[str, Any]] = None,
        refuse_emits: Optional[str] = None,
        secrets: Optional[Mapping[str, str]] = None,
        http: Union[Mapping[Any, Canned], Callable[[Request], Canned], None] = None,
    ) -> None:
        """A context with ``config``, initial ``state``, ``secrets``, canned
        ``http`` answers and, optionally, emits refused."""
        #: The config values the handler reads.
        self.config: Dict[str, str] = dict(config or {})
        #: The committed state: key to raw bytes.
        self.state: Dict[str, bytes] = {}
        for key, value in (state or {}).items():
            self.set_state(key, value)
        #: When not ``None``, every emit is refused with this message.
        self.refuse_emits: Optional[str] = refuse_emits
        #: The events emitted by successful runs, in order.
        self.emitted: List[OutgoingEvent] = []
        #: Every log line written, in order, as ``(level, message)``.
        self.logs: List[Tuple[Level, str]] = []
        #: The secrets the handler may read.
        self.secrets: Dict[str, str] = dict(secrets or {})
        #: Canned answers by ``(method, url)`` or by URL (see the class).
        self.http: Dict[Any, Canned] = {}
        #: The function that answers every request, when given instead.
        self.http_handler: Optional[Callable[[Request], Canned]] = None
        if callable(http):
            self.http_handler = http
        else:
            for key, answer in (http or {}).items():
                self.respond(key, answer)
        #: Every outbound request sent, in order.
        self.requests: List[Request] = []
        self._mistake: Optional[Exception] = None
        self._delivery_emits = 0
        self._delivery_requests = 0
        self._event_id = "outside-a-run"

    def respond(self, key: Union[str, Tuple[str, str]], answer: Canned) -> "TestContext":
        """Cans ``answer`` for ``key``: ``(method, url)`` or a URL for any
        method. Returns the context."""
        if isinstance(key, tuple):
            method, url = key
            key = (method.upper(), url)
        self.http[key] = answer
        return self

    def set_state(self, key: str, value: Any) -> "TestContext":
        """Sets state ``key`` before a run, as an earlier delivery would have:
        bytes as they are, anything else as JSON. Returns the context."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            self.state[key] = bytes(value)
        else:
            self.state[key] = json.dumps(value, separators=(",", ":")).encode("utf-8")
        return self

    def state_json(self, key: str, default: Any = None) -> Any:
        """State ``key`` decoded from JSON, or ``default`` when there is none."""
        raw = self.state.get(key)
        return default if raw is None else json.loads(raw)

    def messages(self, level: Optional[Level] = None) -> List[str]:
        """The log messages, all of them or those at ``level``."""
        return [m for lv, m in self.logs if level is None or lv == level]

    def run(self, handler: Union[Handler, type], event: Event) -> None:
        """Runs ``handler`` (the function, or the class :func:`plugbus.export`
        made of it) on ``event``, as the host would deliver it.

        When the handler fails, its state writes and emitted events are
        undone and the failure is raised as a :class:`HandlerError` (an
        uncaught exception as a retryable one with the component's
        message, chained to the original exception). A request with no
        canned answer raises :class:`UncannedRequest` (and a canned answer
        of the wrong type a ``TypeError``), even when the handler caught it.
        """
        function = getattr(handler, "__plugbus_handler__", handler)
        state = copy.deepcopy(self.state)
        emitted = len(self.emitted)
        self._delivery_emits = 0
        self._delivery_requests = 0
        self._event_id = event.id
        self._mistake = None
        failure = _run(function, self, event)
        mistake, self._mistake = self._mistake, None
        if mistake is not None:
            # The test's own mistake, even when the handler caught it.
            self.state = state
            del self.emitted[emitted:]
            raise mistake
        if failure is not None:
            self.state = state
            del self.emitted[emitted:]
            raise failure

    # The host API the handler's Context calls.

    def emit(self, event: OutgoingEvent) -> str:
        """Records ``event`` (see :class:`plugbus.HostApi`)."""
        if self.refuse_emits is not None:
            raise EmitError(self.refuse_emits)
        if self._delivery_emits >= MAX_EMITS_PER_DELIVERY:
            raise EmitError(f"a delivery may emit at most {MAX_EMITS_PER_DELIVERY} events")
        _check_emitted(event)
        self._delivery_emits += 1
        self.emitted.append(event)
        return f"emitted-{len(self.emitted)}"

    def log(self, level: Level, message: str) -> None:
        """Records a log line, truncated like the host's."""
        raw = message.encode("utf-8")
        if len(raw) > MAX_LOG_BYTES:
            message = raw[:MAX_LOG_BYTES].decode("utf-8", "ignore")
        self.logs.append((level, message))

    def config_get(self, key: str) -> Optional[str]:
        """Serves config ``key``."""
        return self.config.get(key)

    def state_get(self, key: str) -> Optional[bytes]:
        """Serves state ``key`` with the run's writes."""
        return self.state.get(key)

    def state_set(self, key: str, value: bytes) -> None:
        """Stores ``value``, refusing what the host refuses."""
        size = len(key.encode("utf-8"))
        if size == 0 or size > MAX_STATE_KEY_BYTES:
            raise StateError(f"a state key is 1 to {MAX_STATE_KEY_BYTES} bytes; this one is {size}")
        if len(value) > MAX_STATE_VALUE_BYTES:
            raise StateError(
                f"the value of state {key!r} is {len(value)} bytes; the limit is {MAX_STATE_VALUE_BYTES}"
            )
        self.state[key] = bytes(value)

    def state_delete(self, key: str) -> None:
        """Removes ``key``."""
        self.state.pop(key, None)

    def secret_get(self, name: str) -> Optional[str]:
        """Serves secret ``name``."""
        return self.secrets.get(name)

    def http_send(self, request: Request) -> Response:
        """Records ``request`` with the host's headers and answers it from
        the canned answers."""
        _split_url(request.url)  # what the component refuses before sending
        if self._delivery_requests >= MAX_REQUESTS_PER_DELIVERY:
            raise error_for_code(
                "HTTP-request-denied", f"a delivery may send at most {MAX_REQUESTS_PER_DELIVERY} requests"
            )
        index = self._delivery_requests
        self._delivery_requests += 1
        added = [("idempotency-key", idempotency_key(self._event_id, index)), ("traceparent", TEST_TRACEPARENT)]
        request = Request(request.method, request.url, request.headers + added, request.body, request.timeout)
        self.requests.append(request)
        try:
            if self.http_handler is not None:
                return _as_response(self.http_handler(request), request)
            for key in ((request.method, request.url), request.url):
                if key in self.http:
                    return _as_response(self.http[key], request)
        except TypeError as e:
            self._mistake = e
            raise
        canned = ", ".join(k if isinstance(k, str) else f"{k[0]} {k[1]}" for k in self.http) or "none"
        self._mistake = UncannedRequest(
            f"no canned HTTP answer for {request.method} {request.url} (canned: {canned}); "
            f"give one with TestContext(http={{({request.method!r}, {request.url!r}): Response(200)}})"
        )
        raise self._mistake
