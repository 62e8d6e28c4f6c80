//! `order-saga`: the order saga of a point-of-sale system, with each
//! order's progress kept in plugin state, so that it survives restarts and
//! commits together with the events the step emits.
//!
//! - `order.placed` `{order_id, total_cents, items: [{sku, quantity}]}`:
//!   records the order as awaiting payment and emits `payment.requested`
//!   `{order_id, amount_cents}`.
//! - `payment.completed` `{order_id}`: marks the order paid and emits
//!   `inventory.reserve_requested` `{order_id, items}`.
//! - `payment.failed` `{order_id, reason}`: marks the order cancelled and
//!   emits `order.cancelled` `{order_id, reason}`.
//!
//! Each step is idempotent: an event delivered again (at-least-once
//! delivery, a replay) finds the order already past that step and does
//! nothing. A payment event for an order the saga never saw, or one that
//! contradicts the order's state (a failure after it was paid), is a
//! permanent error: it goes to the dead letters for an operator to look at.
//! Every emitted event has the order id as its subject and partition key.

use plugbus_sdk::{Context, Event, Handler, HandlerError, OutgoingEvent, export_handler};
use serde::{Deserialize, Serialize};

/// A line of an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    /// The stock-keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// The payload of `order.placed`.
#[derive(Debug, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// What the customer pays, in cents.
    pub total_cents: u64,
    /// What was ordered.
    pub items: Vec<Item>,
}

/// The payload of `payment.completed`.
#[derive(Debug, Deserialize)]
pub struct PaymentCompleted {
    /// The order.
    pub order_id: String,
}

/// The payload of `payment.failed`.
#[derive(Debug, Deserialize)]
pub struct PaymentFailed {
    /// The order.
    pub order_id: String,
    /// Why the payment failed.
    pub reason: String,
}

/// Where an order stands in the saga.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `payment.requested` was emitted.
    AwaitingPayment,
    /// The payment completed; `inventory.reserve_requested` was emitted.
    Paid,
    /// The payment failed; `order.cancelled` was emitted.
    Cancelled,
}

/// An order as the saga keeps it in state, under `order/<order_id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Order {
    /// Where it stands.
    pub status: Status,
    /// What the customer pays, in cents.
    pub total_cents: u64,
    /// What was ordered.
    pub items: Vec<Item>,
}

/// The payload of `payment.requested`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentRequested {
    /// The order.
    pub order_id: String,
    /// How much to charge, in cents.
    pub amount_cents: u64,
}

/// The payload of `inventory.reserve_requested`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReserveRequested {
    /// The order.
    pub order_id: String,
    /// What to reserve.
    pub items: Vec<Item>,
}

/// The payload of `order.cancelled`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: String,
}

/// The state key of an order.
pub fn order_key(order_id: &str) -> String {
    format!("order/{order_id}")
}

/// The handler.
pub struct OrderSaga;

impl Handler for OrderSaga {
    fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
        match event.ty() {
            "order.placed" => placed(ctx, event.json()?),
            "payment.completed" => completed(ctx, event.json()?),
            "payment.failed" => failed(ctx, event.json()?),
            _ => Ok(()),
        }
    }
}

fn placed(ctx: &mut Context<'_>, order: OrderPlaced) -> Result<(), HandlerError> {
    let key = order_key(&order.order_id);
    if ctx.state::<Order>(&key)?.is_some() {
        ctx.debug(format!("order {} already placed", order.order_id));
        return Ok(());
    }
    if order.items.is_empty() {
        return Err(HandlerError::permanent(format!(
            "order {} has no items",
            order.order_id
        )));
    }
    ctx.set_state(
        &key,
        &Order {
            status: Status::AwaitingPayment,
            total_cents: order.total_cents,
            items: order.items,
        },
    )?;
    emit(
        ctx,
        "payment.requested",
        &order.order_id,
        &PaymentRequested {
            order_id: order.order_id.clone(),
            amount_cents: order.total_cents,
        },
    )
}

fn completed(ctx: &mut Context<'_>, payment: PaymentCompleted) -> Result<(), HandlerError> {
    let key = order_key(&payment.order_id);
    let mut order = known(ctx, &key, &payment.order_id)?;
    match order.status {
        Status::Paid => Ok(()),
        Status::Cancelled => Err(HandlerError::permanent(format!(
            "payment completed for order {}, which was cancelled",
            payment.order_id
        ))),
        Status::AwaitingPayment => {
            order.status = Status::Paid;
            ctx.set_state(&key, &order)?;
            emit(
                ctx,
                "inventory.reserve_requested",
                &payment.order_id,
                &ReserveRequested {
                    order_id: payment.order_id.clone(),
                    items: order.items,
                },
            )
        }
    }
}

fn failed(ctx: &mut Context<'_>, payment: PaymentFailed) -> Result<(), HandlerError> {
    let key = order_key(&payment.order_id);
    let mut order = known(ctx, &key, &payment.order_id)?;
    match order.status {
        Status::Cancelled => Ok(()),
        Status::Paid => Err(HandlerError::permanent(format!(
            "payment failed for order {}, which was already paid",
            payment.order_id
        ))),
        Status::AwaitingPayment => {
            order.status = Status::Cancelled;
            ctx.set_state(&key, &order)?;
            emit(
                ctx,
                "order.cancelled",
                &payment.order_id,
                &OrderCancelled {
                    order_id: payment.order_id.clone(),
                    reason: payment.reason,
                },
            )
        }
    }
}

/// The order under `key`; a permanent error when the saga never saw it.
fn known(ctx: &Context<'_>, key: &str, order_id: &str) -> Result<Order, HandlerError> {
    ctx.state::<Order>(key)?
        .ok_or_else(|| HandlerError::permanent(format!("order {order_id} is unknown to the saga")))
}

fn emit<T: Serialize>(
    ctx: &mut Context<'_>,
    ty: &str,
    order_id: &str,
    payload: &T,
) -> Result<(), HandlerError> {
    let event = OutgoingEvent::json(ty, payload)
        .map_err(|e| HandlerError::permanent(format!("{ty} does not encode: {e}")))?
        .with_subject(order_id)
        .with_extension("partitionkey", order_id);
    ctx.emit(event)?;
    Ok(())
}

export_handler!(OrderSaga);

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::TestContext;
    use serde_json::json;

    fn placed_event(order_id: &str) -> Event {
        Event::new("order.placed").with_json(&json!({
            "order_id": order_id,
            "total_cents": 1250,
            "items": [{ "sku": "sku-1", "quantity": 2 }],
        }))
    }

    fn payment(ty: &str, order_id: &str) -> Event {
        Event::new(ty).with_json(&json!({ "order_id": order_id, "reason": "card declined" }))
    }

    fn status(ctx: &TestContext, order_id: &str) -> Option<Status> {
        ctx.state::<Order>(&order_key(order_id)).map(|o| o.status)
    }

    #[test]
    fn a_placed_order_awaits_payment() {
        let mut ctx = TestContext::new();
        ctx.run::<OrderSaga>(placed_event("o-1")).expect("handled");
        assert_eq!(status(&ctx, "o-1"), Some(Status::AwaitingPayment));
        assert_eq!(ctx.emitted().len(), 1);
        let request = &ctx.emitted()[0];
        assert_eq!(request.ty, "payment.requested");
        assert_eq!(request.subject.as_deref(), Some("o-1"));
        assert_eq!(
            request.json_data::<PaymentRequested>().expect("payload"),
            PaymentRequested {
                order_id: "o-1".into(),
                amount_cents: 1250
            }
        );
    }

    #[test]
    fn a_completed_payment_reserves_the_items_once() {
        let mut ctx = TestContext::new();
        ctx.run::<OrderSaga>(placed_event("o-1")).expect("handled");
        ctx.run::<OrderSaga>(payment("payment.completed", "o-1"))
            .expect("handled");
        // Delivered again: nothing more happens.
        ctx.run::<OrderSaga>(payment("payment.completed", "o-1"))
            .expect("handled");
        assert_eq!(status(&ctx, "o-1"), Some(Status::Paid));
        let types: Vec<_> = ctx.emitted().iter().map(|e| e.ty.as_str()).collect();
        assert_eq!(types, ["payment.requested", "inventory.reserve_requested"]);
        assert_eq!(
            ctx.emitted()[1]
                .json_data::<ReserveRequested>()
                .expect("payload")
                .items,
            [Item {
                sku: "sku-1".into(),
                quantity: 2
            }]
        );
    }

    #[test]
    fn a_failed_payment_cancels_the_order() {
        let mut ctx = TestContext::new();
        ctx.run::<OrderSaga>(placed_event("o-2")).expect("handled");
        ctx.run::<OrderSaga>(payment("payment.failed", "o-2"))
            .expect("handled");
        assert_eq!(status(&ctx, "o-2"), Some(Status::Cancelled));
        let cancelled = ctx.emitted()[1]
            .json_data::<OrderCancelled>()
            .expect("payload");
        assert_eq!(cancelled.reason, "card declined");
        // A late completion contradicts the cancellation.
        let err = ctx
            .run::<OrderSaga>(payment("payment.completed", "o-2"))
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("cancelled")),
            "{err}"
        );
    }

    #[test]
    fn a_second_placement_changes_nothing() {
        let mut ctx = TestContext::new();
        ctx.run::<OrderSaga>(placed_event("o-3")).expect("handled");
        ctx.run::<OrderSaga>(placed_event("o-3")).expect("handled");
        assert_eq!(ctx.emitted().len(), 1);
    }

    #[test]
    fn unknown_orders_and_bad_payloads_are_permanent() {
        let mut ctx = TestContext::new();
        let err = ctx
            .run::<OrderSaga>(payment("payment.completed", "o-9"))
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("o-9")),
            "{err}"
        );
        let err = ctx
            .run::<OrderSaga>(Event::new("order.placed").with_data("{}"))
            .unwrap_err();
        assert!(matches!(err, HandlerError::Permanent(_)), "{err}");
        let empty = Event::new("order.placed")
            .with_json(&json!({ "order_id": "o-4", "total_cents": 0, "items": [] }));
        let err = ctx.run::<OrderSaga>(empty).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("no items")),
            "{err}"
        );
        assert!(ctx.state_entries().is_empty());
        assert!(ctx.emitted().is_empty());
    }

    #[test]
    fn other_types_are_ignored() {
        let mut ctx = TestContext::new();
        ctx.run::<OrderSaga>(Event::new("inventory.stock_changed"))
            .expect("handled");
        assert!(ctx.emitted().is_empty());
    }
}
