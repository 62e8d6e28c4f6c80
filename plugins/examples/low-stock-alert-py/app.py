"""``low-stock-alert`` in Python: on ``inventory.stock_changed`` with
``{sku, new_quantity}``, emits ``inventory.low_stock`` when the quantity is
at or below the configured ``threshold`` (default 10), and also
``inventory.out_of_stock`` when it is 0. Other event types are ignored.

The same behaviour as the Rust example ``plugins/examples/low-stock-alert``.
"""

import plugbus
from plugbus import Context, Event, HandlerError

#: The threshold when the manifest's ``[config]`` does not set ``threshold``.
DEFAULT_THRESHOLD = 10


def handle(ctx: Context, event: Event) -> None:
    """Emits the low-stock and out-of-stock alerts a stock change calls for."""
    if event.type != "inventory.stock_changed":
        return
    change = event.json()
    sku = change.get("sku") if isinstance(change, dict) else None
    quantity = change.get("new_quantity") if isinstance(change, dict) else None
    if not isinstance(sku, str) or not isinstance(quantity, int) or isinstance(quantity, bool):
        raise HandlerError.permanent(
            f"the payload of {event.type} event {event.id} is not the expected JSON: "
            "want {\"sku\": string, \"new_quantity\": integer}"
        )
    if quantity < 0:
        raise HandlerError.permanent(f"{sku}: new_quantity {quantity} is negative")
    threshold = ctx.config_int("threshold", DEFAULT_THRESHOLD)
    if quantity > threshold:
        return
    ctx.emit_json(
        "inventory.low_stock",
        {"sku": sku, "quantity": quantity, "threshold": threshold},
        subject=sku,
    )
    ctx.info(f"{sku} is low: {quantity} at or below {threshold}")
    if quantity == 0:
        ctx.emit_json("inventory.out_of_stock", {"sku": sku}, subject=sku)
        ctx.warn(f"{sku} is out of stock")


WitWorld = plugbus.export(handle)
