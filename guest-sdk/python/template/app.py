"""The plugin's handler: on ``inventory.stock_changed`` with
``{"sku": ..., "new_quantity": ...}``, emits ``inventory.low_stock`` once
when the quantity falls to the configured ``threshold`` (default 10) or
below, and remembers in its state that it did, until the stock is above the
threshold again. When the config sets ``webhook_url``, it also posts the
alert there, with the secret ``webhook_token`` (when granted) as a bearer
token."""

import plugbus
from plugbus import Context, Event, HandlerError

#: The threshold when the manifest's ``[config]`` does not set ``threshold``.
DEFAULT_THRESHOLD = 10


def handle(ctx: Context, event: Event) -> None:
    """Alerts once per SKU when its stock is low."""
    if event.type != "inventory.stock_changed":
        return
    change = event.json()
    sku = change.get("sku") if isinstance(change, dict) else None
    quantity = change.get("new_quantity") if isinstance(change, dict) else None
    if not isinstance(sku, str) or not isinstance(quantity, int) or isinstance(quantity, bool):
        raise HandlerError.permanent(f"event {event.id}: want {{\"sku\": string, \"new_quantity\": integer}}")
    threshold = ctx.config_int("threshold", DEFAULT_THRESHOLD)
    key = f"alerted/{sku}"
    alerted = ctx.state.get_json(key, False)
    if quantity > threshold:
        if alerted:
            ctx.state.delete(key)
            ctx.info(f"{sku} is restocked: {quantity}")
        return
    if alerted:
        return
    alert = {"sku": sku, "quantity": quantity, "threshold": threshold}
    ctx.emit_json("inventory.low_stock", alert, subject=sku)
    url = ctx.config("webhook_url")
    if url:
        notify(ctx, url, alert)
    ctx.state.set_json(key, True)
    ctx.info(f"{sku} is low: {quantity} at or below {threshold}")


def notify(ctx: Context, url: str, alert: dict) -> None:
    """Posts ``alert`` to the webhook. The host adds an ``Idempotency-Key``
    that is the same on every attempt of this delivery, so a retry does not
    alert twice at a receiver that honours it. A failed request (an
    ``HttpError``) left uncaught fails the delivery: retryable for timeouts
    and connection failures, permanent when the host denied it."""
    token = ctx.secret("webhook_token")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = ctx.http().post(url, json=alert, headers=headers, timeout=5)
    if response.status == 429 or response.status >= 500:
        raise HandlerError.retryable(f"the webhook answered {response.status}")
    if not response.ok:
        raise HandlerError.permanent(f"the webhook refused the alert: {response.status}")


# The class componentize-py exports as the component.
WitWorld = plugbus.export(handle)
