"""The plugbus SDK for Python plugins.

A plugin is a module (``app.py``) that defines a handler function and
exports it as the component's world class::

    import plugbus

    def handle(ctx: plugbus.Context, event: plugbus.Event) -> None:
        if event.type != "order.created":
            return
        order = event.json()
        ctx.emit_json("order.accepted", {"id": order["id"]}, subject=event.subject)
        ctx.info(f"accepted {order['id']}")

    WitWorld = plugbus.export(handle)

``componentize-py`` builds the module into a component of the world
``plugbus:plugin/handler@0.3.0``; :mod:`plugbus.testing` runs the same
handler natively under ``pytest``, with no host and no WebAssembly.

A handler may call out over HTTP with ``ctx.http()`` (a small synchronous
client, see :mod:`plugbus.http`; the host sends only to the origins the
manifest's ``[http] allow`` lists) and read the secrets its manifest's
``[secrets] grant`` names with ``ctx.secret(name)``.

A handler fails by raising :class:`HandlerError` (``HandlerError.retryable``
or ``HandlerError.permanent``). Any other exception that escapes it fails
the delivery as retryable, with the exception's type, text and the last
lines of its traceback as the message. A failed delivery's state writes
and emitted events are discarded by the host.
"""

from __future__ import annotations

import dataclasses
import enum
import json as _json
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Tuple, Union

__all__ = [
    "Context",
    "EmitError",
    "Event",
    "Handler",
    "HandlerError",
    "HostApi",
    "Http",
    "HttpConnectionError",
    "HttpDeniedError",
    "HttpError",
    "HttpInvalidRequestError",
    "HttpOtherError",
    "HttpTimeoutError",
    "HttpTooLargeError",
    "JSON_MEDIA_TYPE",
    "Level",
    "MAX_FAILURE_CHARS",
    "OutgoingEvent",
    "Request",
    "Response",
    "State",
    "StateError",
    "describe_exception",
    "export",
]

#: The longest message, in characters, that an uncaught exception turns
#: into (its type and text come first, then the last traceback lines).
MAX_FAILURE_CHARS = 2000
#: How many of the traceback's last lines an uncaught exception's message keeps.
_TRACEBACK_LINES = 12

#: The media type of JSON payloads.
JSON_MEDIA_TYPE = "application/json"


class HandlerError(Exception):
    """Why a handler failed, so that the host knows whether a retry can help.

    Raise ``HandlerError.retryable(msg)`` for a passing failure (a
    dependency was down) and ``HandlerError.permanent(msg)`` for an event
    that can never be handled (malformed, or against a business rule).
    """

    #: The kind that says a retry may succeed.
    RETRYABLE = "retryable"
    #: The kind that says a retry cannot help.
    PERMANENT = "permanent"

    def __init__(self, kind: str, message: str) -> None:
        """A failure of ``kind`` (``"retryable"`` or ``"permanent"``) with ``message``."""
        if kind not in (self.RETRYABLE, self.PERMANENT):
            raise ValueError(f"a handler error is retryable or permanent, not {kind!r}")
        # The host takes a string: a number or an object given by mistake
        # is kept as its text instead of failing the handler's own failure.
        message = message if isinstance(message, str) else str(message)
        super().__init__(message)
        #: ``"retryable"`` or ``"permanent"``.
        self.kind: str = kind
        #: What went wrong, as the host records it.
        self.message: str = message

    @classmethod
    def retryable(cls, message: str) -> "HandlerError":
        """A passing failure: delivering the same event again may succeed."""
        return HandlerError(cls.RETRYABLE, message)

    @classmethod
    def permanent(cls, message: str) -> "HandlerError":
        """A failure a retry cannot help: the event is dead-lettered."""
        return HandlerError(cls.PERMANENT, message)

    @property
    def is_retryable(self) -> bool:
        """Whether a retry may succeed."""
        return self.kind == self.RETRYABLE

    @property
    def is_permanent(self) -> bool:
        """Whether a retry cannot help."""
        return self.kind == self.PERMANENT

    def __str__(self) -> str:
        """``"retryable: <message>"`` or ``"permanent: <message>"``."""
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        """``HandlerError.permanent('...')`` and the like."""
        return f"HandlerError.{self.kind}({self.message!r})"


class EmitError(HandlerError):
    """The host refused an emitted event (an invalid event, too many events,
    or the chain depth limit). Left uncaught, it fails the delivery
    permanently: the same event would be refused again."""

    def __init__(self, reason: str) -> None:
        """The host's ``reason`` for refusing the event."""
        super().__init__(HandlerError.PERMANENT, f"emit refused: {reason}")
        #: The host's words.
        self.reason: str = reason


class StateError(HandlerError):
    """The host refused a state write (an empty or too long key, a value or
    a delivery's writes over its limits). Left uncaught, it fails the
    delivery permanently."""

    def __init__(self, reason: str) -> None:
        """The host's ``reason`` for refusing the write."""
        super().__init__(HandlerError.PERMANENT, f"state write refused: {reason}")
        #: The host's words.
        self.reason: str = reason


class Level(enum.Enum):
    """The severity of a log line."""

    #: Very detailed diagnostics.
    TRACE = 0
    #: Diagnostics for developers.
    DEBUG = 1
    #: Normal operation worth recording.
    INFO = 2
    #: Something unexpected that the plugin recovered from.
    WARN = 3
    #: A failure.
    ERROR = 4


def _decode_json(data: bytes, what: str) -> Any:
    """``data`` decoded as JSON, or a permanent :class:`HandlerError` about ``what``."""
    try:
        return _json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise HandlerError.permanent(f"{what} is not the expected JSON: {e}") from e


#: The one JSON encoder: ``json.dumps`` with arguments would build a new
#: encoder on every call, which costs a handler tens of thousands of fuel.
_ENCODER = _json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _encode_json(value: Any, what: str) -> bytes:
    """``value`` as compact JSON bytes, or a permanent :class:`HandlerError` about ``what``."""
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise HandlerError.permanent(f"cannot serialise {what} as JSON: {e}") from e


def _as_bytes(data: Union[bytes, bytearray, memoryview, str]) -> bytes:
    """Payload bytes from bytes or text (UTF-8)."""
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


@dataclass(frozen=True)
class Event:
    """A CloudEvents 1.0 event as delivered to a plugin.

    Its attributes are read as fields (``event.type``, ``event.subject``,
    ``event.data``, …); :meth:`json` decodes the payload. Built by hand in
    tests, it defaults to id ``test-event-1``, source ``test``, tenant
    ``test-tenant``, JSON content type, no data, first attempt::

        Event("order.created", data=b'{"id": "o-1"}')
        Event.from_json("order.created", {"id": "o-1"}, subject="o-1")
    """

    #: The kind of event, for example ``inventory.stock_changed``.
    type: str
    #: The payload, as bytes; decode it according to ``datacontenttype``.
    data: bytes = b""
    #: Identifies the event; unique per ``source``.
    id: str = "test-event-1"
    #: Where the event happened, as a URI-reference.
    source: str = "test"
    #: The subject of the event within the source, for example an order id.
    subject: Optional[str] = None
    #: When the event happened, as an RFC 3339 timestamp.
    time: Optional[str] = None
    #: The media type of ``data``.
    datacontenttype: Optional[str] = JSON_MEDIA_TYPE
    #: A URI of the schema that ``data`` adheres to.
    dataschema: Optional[str] = None
    #: The extension attributes (``causationid``, ``correlationid``, ``chaindepth``, …).
    extensions: Mapping[str, str] = field(default_factory=dict)
    #: The tenant that owns the event.
    tenant: str = "test-tenant"
    #: Which delivery of this event to this plugin this is: 1 for the first.
    attempt: int = 1

    @classmethod
    def from_json(cls, type: str, value: Any, **attributes: Any) -> "Event":
        """An event of ``type`` whose payload is ``value`` as JSON; the other
        attributes as keyword arguments (for tests)."""
        return cls(type, data=_encode_json(value, f"the payload of {type}"), **attributes)

    def json(self) -> Any:
        """The payload decoded as JSON. A payload that does not decode is a
        permanent :class:`HandlerError` naming the event type and id."""
        return _decode_json(self.data, f"the payload of {self.type} event {self.id}")

    def text(self) -> Optional[str]:
        """The payload as text, or ``None`` when it is not UTF-8."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def extension(self, name: str) -> Optional[str]:
        """The value of extension attribute ``name``, or ``None``."""
        return self.extensions.get(name)

    def replace(self, **attributes: Any) -> "Event":
        """A copy with ``attributes`` changed (for tests)."""
        return dataclasses.replace(self, **attributes)


@dataclass(frozen=True)
class OutgoingEvent:
    """An event a handler emitted: what :meth:`Context.emit` hands the host,
    and what :class:`plugbus.testing.TestContext` records."""

    #: The kind of event.
    type: str
    #: The payload bytes.
    data: bytes = b""
    #: The subject, for example a SKU or an order id.
    subject: Optional[str] = None
    #: The media type of ``data``.
    datacontenttype: Optional[str] = None
    #: A URI of the schema that ``data`` adheres to.
    dataschema: Optional[str] = None
    #: Extension attributes (lowercase letters and digits).
    extensions: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload decoded as JSON (raises :class:`HandlerError` when it does not decode)."""
        return _decode_json(self.data, f"the payload of emitted {self.type}")


class HostApi(Protocol):
    """What the host offers a handler. Implemented inside the component by
    the WIT imports and natively by :class:`plugbus.testing.TestContext`;
    handlers use it through :class:`Context`."""

    def emit(self, event: OutgoingEvent) -> str:
        """Publishes ``event``; returns its id or raises :class:`EmitError`."""
        ...

    def log(self, level: Level, message: str) -> None:
        """Writes a log line."""
        ...

    def config_get(self, key: str) -> Optional[str]:
        """The plugin's config value for ``key``."""
        ...

    def state_get(self, key: str) -> Optional[bytes]:
        """The plugin's state under ``key``, with this delivery's writes."""
        ...

    def state_set(self, key: str, value: bytes) -> None:
        """Stores ``value`` under ``key`` or raises :class:`StateError`."""
        ...

    def state_delete(self, key: str) -> None:
        """Removes ``key``."""
        ...

    def secret_get(self, name: str) -> Optional[str]:
        """The secret ``name`` granted to the plugin, or ``None``."""
        ...

    def http_send(self, request: "Request") -> "Response":
        """Sends ``request``; returns the response or raises :class:`HttpError`."""
        ...


class State:
    """The plugin's durable key-value state, scoped to its tenant and itself.

    Writes are committed with the delivery, only when the handler succeeds;
    within a delivery, reads see its own writes.
    """

    def __init__(self, host: HostApi) -> None:
        """State served by ``host``."""
        self._host = host

    def get(self, key: str) -> Optional[bytes]:
        """The raw bytes under ``key``, or ``None`` when there are none."""
        return self._host.state_get(key)

    def set(self, key: str, value: Union[bytes, bytearray, memoryview, str]) -> None:
        """Stores ``value`` (bytes, or text as UTF-8) under ``key``; raises
        :class:`StateError` when the host refuses it."""
        self._host.state_set(key, _as_bytes(value))

    def delete(self, key: str) -> None:
        """Removes ``key`` and its value; a missing key is no error."""
        self._host.state_delete(key)

    def get_json(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` decoded from JSON, or ``default`` when there
        is none; a value that does not decode is a permanent :class:`HandlerError`."""
        raw = self.get(key)
        if raw is None:
            return default
        return _decode_json(raw, f"state {key!r}")

    def set_json(self, key: str, value: Any) -> None:
        """Stores ``value`` as JSON under ``key``; see :meth:`set`."""
        self.set(key, _encode_json(value, f"state {key!r}"))


class Context:
    """What a handler can do during one delivery: emit events, log, read its
    config and secrets, read and write its state, and call out over HTTP."""

    def __init__(self, host: HostApi, attempt: int = 1) -> None:
        """A context over ``host`` for a delivery that is attempt ``attempt``."""
        self._host = host
        #: The plugin's state.
        self.state: State = State(host)
        #: Which delivery of the current event this is (1 for the first).
        self.attempt: int = attempt

    def emit(
        self,
        type: str,
        data: Union[bytes, bytearray, memoryview, str] = b"",
        *,
        subject: Optional[str] = None,
        datacontenttype: Optional[str] = None,
        dataschema: Optional[str] = None,
        extensions: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Publishes an event of ``type`` with payload ``data`` and returns its id.

        The event is routed once the handler returns; a failed delivery's
        events are discarded. Raises :class:`EmitError` (a permanent
        failure, when not caught) when the host refuses it.
        """
        return self._host.emit(
            OutgoingEvent(
                type=type,
                data=_as_bytes(data),
                subject=subject,
                datacontenttype=datacontenttype,
                dataschema=dataschema,
                extensions=dict(extensions or {}),
            )
        )

    def emit_json(
        self,
        type: str,
        value: Any,
        *,
        subject: Optional[str] = None,
        dataschema: Optional[str] = None,
        extensions: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Publishes ``value`` as a JSON event of ``type``; see :meth:`emit`.
        A value that does not serialise is a permanent :class:`HandlerError`."""
        return self.emit(
            type,
            _encode_json(value, f"the payload of {type}"),
            subject=subject,
            datacontenttype=JSON_MEDIA_TYPE,
            dataschema=dataschema,
            extensions=extensions,
        )

    def log(self, level: Level, message: str) -> None:
        """Writes ``message`` into the host's log at ``level``."""
        self._host.log(level, str(message))

    def trace(self, message: str) -> None:
        """Logs at :attr:`Level.TRACE`."""
        self.log(Level.TRACE, message)

    def debug(self, message: str) -> None:
        """Logs at :attr:`Level.DEBUG`."""
        self.log(Level.DEBUG, message)

    def info(self, message: str) -> None:
        """Logs at :attr:`Level.INFO`."""
        self.log(Level.INFO, message)

    def warn(self, message: str) -> None:
        """Logs at :attr:`Level.WARN`."""
        self.log(Level.WARN, message)

    def error(self, message: str) -> None:
        """Logs at :attr:`Level.ERROR`."""
        self.log(Level.ERROR, message)

    def config(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key`` in the manifest's ``[config]`` table, or ``default``."""
        value = self._host.config_get(key)
        return default if value is None else value

    def _config_parsed(self, key: str, default: Any, parse: Callable[[str], Any]) -> Any:
        value = self._host.config_get(key)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as e:
            raise HandlerError.permanent(f"config {key} = {value!r} is invalid: {e}") from e

    def config_int(self, key: str, default: Optional[int] = None) -> Optional[int]:
        """Config ``key`` as an integer, or ``default`` when unset; a value that is
        not an integer is a permanent :class:`HandlerError` naming key and value."""
        return self._config_parsed(key, default, lambda v: int(v.strip()))

    def config_float(self, key: str, default: Optional[float] = None) -> Optional[float]:
        """Config ``key`` as a float, or ``default``; see :meth:`config_int`."""
        return self._config_parsed(key, default, lambda v: float(v.strip()))

    def config_bool(self, key: str, default: Optional[bool] = None) -> Optional[bool]:
        """Config ``key`` as a boolean (``true``/``false``, ``1``/``0``, ``yes``/``no``,
        ``on``/``off``), or ``default``; see :meth:`config_int`."""

        def parse(value: str) -> bool:
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError("not a boolean (true/false, 1/0, yes/no, on/off)")

        return self._config_parsed(key, default, parse)

    def config_json(self, key: str, default: Any = None) -> Any:
        """Config ``key`` decoded from JSON, or ``default``; see :meth:`config_int`."""
        return self._config_parsed(key, default, _json.loads)

    def secret(self, name: str) -> Optional[str]:
        """The value of the tenant's secret ``name``, or ``None`` when the
        manifest's ``[secrets] grant`` does not name it or the operator gave
        the tenant no secret of that name. Never log it or put it in an
        event or an error message: the host keeps secrets out of its own
        output, not out of what a handler writes."""
        return self._host.secret_get(name)

    def http(self) -> "Http":
        """The outbound HTTP client (see :class:`plugbus.http.Http`): requests
        go only to origins the manifest's ``[http] allow`` lists."""
        return Http(self._host.http_send)


#: A handler: called once per event with the delivery's context.
Handler = Callable[[Context, Event], None]


def describe_exception(error: BaseException, limit: int = MAX_FAILURE_CHARS) -> str:
    """The failure message of an uncaught exception: its type and text, then
    the last lines of its traceback, at most ``limit`` characters (the
    beginning, which names the exception, is kept)."""
    name = type(error).__qualname__
    module = type(error).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    try:
        text = str(error)
    except BaseException:  # an exception whose __str__ raises still fails cleanly
        text = "<str() of the exception failed>"
    head = f"uncaught {name}: {text}"
    try:
        lines = "".join(traceback.format_tb(error.__traceback__)).rstrip("\n").split("\n")
    except Exception:  # a broken traceback must not hide the exception itself
        lines = []
    tail = lines[-_TRACEBACK_LINES:]
    message = head
    if tail:
        message += "\nTraceback (last lines):\n" + "\n".join(tail)
    if len(message) > limit:
        message = message[: max(limit - 1, 0)] + "…"
    return message


def _run(handler: Handler, host: HostApi, event: Event) -> Optional[HandlerError]:
    """Runs ``handler`` on ``event``; ``None`` when it succeeded, else the
    failure (an uncaught exception as a retryable one)."""
    try:
        handler(Context(host, event.attempt), event)
    except HandlerError as e:
        return e
    # Every other exception is a retryable failure, SystemExit and the
    # like included: a component has no process to exit and no signals.
    except BaseException as e:
        failure = HandlerError.retryable(describe_exception(e))
        failure.__cause__ = e
        return failure
    return None


class _ComponentHost:
    """The host as the component sees it: the WIT imports that
    componentize-py generates, handed over by :func:`export`."""

    def __init__(self, bindings: Any, http_bindings: Any) -> None:
        self._err, self._host, self._state, self._types, self._secrets = bindings
        self._http_bindings = http_bindings
        self._http: Optional[Any] = None

    def emit(self, event: OutgoingEvent) -> str:
        outgoing = self._types.OutgoingEvent(
            type=event.type,
            data=event.data,
            subject=event.subject,
            datacontenttype=event.datacontenttype,
            dataschema=event.dataschema,
            extensions=list(event.extensions.items()),
        )
        try:
            return self._host.emit(outgoing)
        except self._err as e:
            raise EmitError(str(e.value)) from None

    def log(self, level: Level, message: str) -> None:
        self._host.log(self._types.Level(level.value), message)

    def config_get(self, key: str) -> Optional[str]:
        return self._host.config_get(key)

    def state_get(self, key: str) -> Optional[bytes]:
        return self._state.get(key)

    def state_set(self, key: str, value: bytes) -> None:
        try:
            self._state.set(key, value)
        except self._err as e:
            raise StateError(str(e.value)) from None

    def state_delete(self, key: str) -> None:
        self._state.delete(key)

    def secret_get(self, name: str) -> Optional[str]:
        return self._secrets.get(name)

    def http_send(self, request: "Request") -> "Response":
        if self._http is None:
            if self._http_bindings is None:
                raise RuntimeError("the wasi:http bindings are missing from this component")
            self._http = _http._WasiHttp(self._http_bindings)
        return self._http.send(request)


def _bindings() -> Optional[Tuple[Any, Any, Any, Any, Any]]:
    """The bindings componentize-py generates (``Err`` and the modules
    ``host``, ``state``, ``types`` and ``secrets``), or ``None`` natively,
    where they do not exist. componentize-py keeps only the modules imported
    while it builds the component, so :func:`export` imports them then.
    (Beside ``wasi:http``'s ``types``, the world's ``types`` is
    ``plugbus_plugin_types``.)"""
    try:
        from componentize_py_types import Err  # type: ignore[import-not-found]
        from wit_world.imports import host, secrets, state  # type: ignore[import-not-found]
        from wit_world.imports import plugbus_plugin_types as types  # type: ignore[import-not-found]
    except ImportError:
        return None
    return (Err, host, state, types, secrets)


def _from_wit(event: Any) -> Event:
    """The SDK's event from the bindings' ``types.Event``."""
    return Event(
        type=event.type,
        data=bytes(event.data),
        id=event.id,
        source=event.source,
        subject=event.subject,
        time=event.time,
        datacontenttype=event.datacontenttype,
        dataschema=event.dataschema,
        extensions=dict(event.extensions),
        tenant=event.tenant,
        attempt=event.attempt,
    )


def export(handler: Handler) -> type:
    """The world class componentize-py exports for ``handler``: assign it to
    ``WitWorld`` in the app module (``WitWorld = plugbus.export(handle)``).

    The class turns the host's event into an :class:`Event`, calls
    ``handler(ctx, event)``, and reports a raised :class:`HandlerError` as
    such and any other exception as a retryable failure described by
    :func:`describe_exception`. The function stays callable as it was, so
    tests call it through :class:`plugbus.testing.TestContext`.
    """

    bindings = _bindings()
    http_bindings = _http._bindings()

    class WitWorld:
        """The component's export of world ``plugbus:plugin/handler``."""

        def handle(self, event: Any) -> None:
            """Handles one event from the host (componentize-py calls this)."""
            if bindings is None:
                raise RuntimeError("the plugbus bindings exist only inside the component")
            err, _, _, types, _ = bindings
            failure = _run(handler, _ComponentHost(bindings, http_bindings), _from_wit(event))
            if failure is None:
                return
            if failure.is_permanent:
                raise err(types.HandlerError_Permanent(failure.message))
            raise err(types.HandlerError_Retryable(failure.message))

    WitWorld.__plugbus_handler__ = handler  # type: ignore[attr-defined]
    WitWorld.__qualname__ = f"WitWorld[{getattr(handler, '__name__', 'handler')}]"
    return WitWorld



# Last: the HTTP module uses the errors and helpers above.
from . import http as _http  # noqa: E402
from .http import (  # noqa: E402
    Http,
    HttpConnectionError,
    HttpDeniedError,
    HttpError,
    HttpInvalidRequestError,
    HttpOtherError,
    HttpTimeoutError,
    HttpTooLargeError,
    Request,
    Response,
)
