"""Running handlers natively, under ``pytest``, with no host and no WebAssembly.

:class:`TestContext` plays the host: it serves config, records emitted
events and log lines, and keeps state; like the host, it undoes a failed
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
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

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

__all__ = [
    "MAX_ATTRIBUTE_BYTES",
    "MAX_EMITS_PER_DELIVERY",
    "MAX_LOG_BYTES",
    "MAX_STATE_KEY_BYTES",
    "MAX_STATE_VALUE_BYTES",
    "HandlerError",
    "TestContext",
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
      as the host does when an event is invalid or a limit is reached.

    After runs, :attr:`emitted`, :attr:`logs` and :attr:`state` hold what
    the successful runs left (and every log line, as the host keeps them).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        config: Optional[Mapping[str, str]] = None,
        state: Optional[Mapping[str, Any]] = None,
        refuse_emits: Optional[str] = None,
    ) -> None:
        """A context with ``config``, initial ``state`` and, optionally, emits refused."""
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
        self._delivery_emits = 0

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
        message, chained to the original exception).
        """
        function = getattr(handler, "__plugbus_handler__", handler)
        state = copy.deepcopy(self.state)
        emitted = len(self.emitted)
        self._delivery_emits = 0
        failure = _run(function, self, event)
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
