"""The plugin's handler: on ``inventory.stock_changed`` with
``{"sku": ..., "new_quantity": ...}``, emits ``inventory.low_stock`` once
when the quantity falls to the configured ``threshold`` (default 10) or
below, and remembers in its state that it did, until the stock is above the
threshold again."""

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
    ctx.emit_json(
        "inventory.low_stock",
        {"sku": sku, "quantity": quantity, "threshold": threshold},
        subject=sku,
    )
    ctx.state.set_json(key, True)
    ctx.info(f"{sku} is low: {quantity} at or below {threshold}")


# The class componentize-py exports as the component.
WitWorld = plugbus.export(handle)
