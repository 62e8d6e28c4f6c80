"""Native tests of the low-stock-alert handler (``pytest``)."""

import pytest

from app import handle
from plugbus import Event, HandlerError, Level
from plugbus.testing import TestContext


def stock(sku: str, quantity: int) -> Event:
    return Event.from_json("inventory.stock_changed", {"sku": sku, "new_quantity": quantity})


def test_above_the_threshold_nothing_is_emitted() -> None:
    ctx = TestContext()
    ctx.run(handle, stock("sku-1", 11))
    assert ctx.emitted == []


def test_at_the_threshold_low_stock_is_emitted() -> None:
    ctx = TestContext()
    ctx.run(handle, stock("sku-1", 10))
    assert len(ctx.emitted) == 1
    emitted = ctx.emitted[0]
    assert emitted.type == "inventory.low_stock"
    assert emitted.subject == "sku-1"
    assert emitted.datacontenttype == "application/json"
    assert emitted.json() == {"sku": "sku-1", "quantity": 10, "threshold": 10}
    assert ctx.logs == [(Level.INFO, "sku-1 is low: 10 at or below 10")]


def test_at_zero_both_alerts_are_emitted() -> None:
    ctx = TestContext()
    ctx.run(handle, stock("sku-2", 0))
    assert [e.type for e in ctx.emitted] == ["inventory.low_stock", "inventory.out_of_stock"]
    assert ctx.emitted[1].json() == {"sku": "sku-2"}
    assert ctx.logs[1] == (Level.WARN, "sku-2 is out of stock")


def test_the_threshold_comes_from_config() -> None:
    ctx = TestContext(config={"threshold": "100"})
    ctx.run(handle, stock("sku-1", 50))
    assert len(ctx.emitted) == 1
    ctx = TestContext(config={"threshold": "2"})
    ctx.run(handle, stock("sku-1", 3))
    assert ctx.emitted == []


def test_a_bad_payload_is_permanent() -> None:
    ctx = TestContext()
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, Event("inventory.stock_changed", data=b'{"sku": 1}'))
    assert err.value.is_permanent
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, Event("inventory.stock_changed", data=b"not json"))
    assert err.value.is_permanent
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, stock("sku-1", -1))
    assert err.value.is_permanent and "negative" in err.value.message


def test_a_bad_threshold_is_permanent_and_named() -> None:
    ctx = TestContext(config={"threshold": "ten"})
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, stock("sku-1", 1))
    assert err.value.is_permanent and "threshold" in err.value.message


def test_other_types_are_ignored() -> None:
    ctx = TestContext()
    ctx.run(handle, Event("order.created"))
    assert ctx.emitted == []


def test_a_refused_emit_fails_the_delivery() -> None:
    ctx = TestContext(refuse_emits="chain depth limit reached")
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, stock("sku-1", 0))
    assert err.value.is_permanent and "chain depth" in err.value.message
    assert ctx.emitted == []
