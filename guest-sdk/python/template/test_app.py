"""Native tests of the handler: ``python3 -m pytest``."""

import pytest

from app import handle
from plugbus import Event, HandlerError, HttpTimeoutError, Level, Response
from plugbus.testing import TestContext


def stock(sku: str, quantity: int) -> Event:
    return Event.from_json("inventory.stock_changed", {"sku": sku, "new_quantity": quantity}, subject=sku)


def test_low_stock_is_emitted_once_until_restocked() -> None:
    ctx = TestContext(config={"threshold": "5"})
    ctx.run(handle, stock("sku-1", 4))
    ctx.run(handle, stock("sku-1", 3))
    assert [e.json() for e in ctx.emitted] == [{"sku": "sku-1", "quantity": 4, "threshold": 5}]
    assert ctx.emitted[0].subject == "sku-1"
    assert ctx.state_json("alerted/sku-1") is True
    ctx.run(handle, stock("sku-1", 9))
    assert "alerted/sku-1" not in ctx.state
    ctx.run(handle, stock("sku-1", 1))
    assert len(ctx.emitted) == 2
    assert ctx.messages(Level.INFO)[-1] == "sku-1 is low: 1 at or below 5"


def test_other_events_are_ignored() -> None:
    ctx = TestContext()
    ctx.run(handle, Event("order.created"))
    assert ctx.emitted == [] and ctx.state == {}


def test_a_bad_payload_is_permanent_and_leaves_no_trace() -> None:
    ctx = TestContext()
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, Event("inventory.stock_changed", data=b'{"sku": 1}'))
    assert err.value.is_permanent


def test_a_refused_emit_fails_the_delivery_and_undoes_the_state() -> None:
    ctx = TestContext(refuse_emits="chain depth limit reached")
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, stock("sku-1", 0))
    assert err.value.is_permanent and "chain depth" in err.value.message
    assert ctx.state == {}


HOOK = "https://hooks.example.com/stock"


def test_the_alert_is_posted_to_the_webhook_with_the_token() -> None:
    ctx = TestContext(
        config={"threshold": "5", "webhook_url": HOOK},
        secrets={"webhook_token": "t0k"},
        http={("POST", HOOK): Response(204)},
    )
    ctx.run(handle, stock("sku-1", 2))
    [request] = ctx.requests
    assert request.header("authorization") == "Bearer t0k"
    assert request.json() == {"sku": "sku-1", "quantity": 2, "threshold": 5}


def test_a_webhook_that_fails_retries_the_delivery_and_undoes_it() -> None:
    for answer in (503, HttpTimeoutError("HTTP-response-timeout")):
        ctx = TestContext(config={"webhook_url": HOOK}, http={HOOK: answer})
        with pytest.raises(HandlerError) as err:
            ctx.run(handle, stock("sku-1", 0))
        assert err.value.is_retryable
        assert ctx.emitted == [] and ctx.state == {}
