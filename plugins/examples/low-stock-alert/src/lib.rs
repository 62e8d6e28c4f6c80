//! `low-stock-alert`: on `inventory.stock_changed` with `{sku, new_quantity}`,
//! emits `inventory.low_stock` when the quantity is at or below the
//! configured `threshold` (default 10), and also `inventory.out_of_stock`
//! when it is 0. Other event types are ignored.

use plugbus_sdk::{Context, Event, Handler, HandlerError, OutgoingEvent, export_handler};
use serde::{Deserialize, Serialize};

/// The threshold when the manifest's `[config]` does not set `threshold`.
pub const DEFAULT_THRESHOLD: i64 = 10;

/// The payload of `inventory.stock_changed`.
#[derive(Debug, Deserialize)]
pub struct StockChanged {
    /// The stock-keeping unit.
    pub sku: String,
    /// The quantity on hand after the change.
    pub new_quantity: i64,
}

/// The payload of `inventory.low_stock`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LowStock {
    /// The stock-keeping unit.
    pub sku: String,
    /// The quantity on hand.
    pub quantity: i64,
    /// The threshold it is at or below.
    pub threshold: i64,
}

/// The payload of `inventory.out_of_stock`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutOfStock {
    /// The stock-keeping unit.
    pub sku: String,
}

/// The handler.
pub struct LowStockAlert;

impl Handler for LowStockAlert {
    fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
        if event.ty() != "inventory.stock_changed" {
            return Ok(());
        }
        let change: StockChanged = event.json()?;
        if change.new_quantity < 0 {
            return Err(HandlerError::permanent(format!(
                "{}: new_quantity {} is negative",
                change.sku, change.new_quantity
            )));
        }
        let threshold = ctx
            .config_parse::<i64>("threshold")?
            .unwrap_or(DEFAULT_THRESHOLD);
        if change.new_quantity > threshold {
            return Ok(());
        }
        let low = LowStock {
            sku: change.sku.clone(),
            quantity: change.new_quantity,
            threshold,
        };
        ctx.emit(OutgoingEvent::json("inventory.low_stock", &low)?.with_subject(&change.sku))?;
        ctx.info(format!(
            "{} is low: {} at or below {threshold}",
            change.sku, change.new_quantity
        ));
        if change.new_quantity == 0 {
            let out = OutOfStock {
                sku: change.sku.clone(),
            };
            ctx.emit(
                OutgoingEvent::json("inventory.out_of_stock", &out)?.with_subject(&change.sku),
            )?;
            ctx.warn(format!("{} is out of stock", change.sku));
        }
        Ok(())
    }
}

export_handler!(LowStockAlert);

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::TestContext;

    fn stock(sku: &str, quantity: i64) -> Event {
        Event::new("inventory.stock_changed")
            .with_json(&serde_json::json!({ "sku": sku, "new_quantity": quantity }))
    }

    #[test]
    fn above_the_threshold_nothing_is_emitted() {
        let mut ctx = TestContext::new();
        ctx.run::<LowStockAlert>(stock("sku-1", 11))
            .expect("handled");
        assert!(ctx.emitted().is_empty());
    }

    #[test]
    fn at_the_threshold_low_stock_is_emitted() {
        let mut ctx = TestContext::new();
        ctx.run::<LowStockAlert>(stock("sku-1", 10))
            .expect("handled");
        assert_eq!(ctx.emitted().len(), 1);
        let emitted = &ctx.emitted()[0];
        assert_eq!(emitted.ty, "inventory.low_stock");
        assert_eq!(emitted.subject.as_deref(), Some("sku-1"));
        assert_eq!(
            emitted.json_data::<LowStock>().expect("payload"),
            LowStock {
                sku: "sku-1".into(),
                quantity: 10,
                threshold: 10
            }
        );
    }

    #[test]
    fn at_zero_both_alerts_are_emitted() {
        let mut ctx = TestContext::new();
        ctx.run::<LowStockAlert>(stock("sku-2", 0))
            .expect("handled");
        let types: Vec<_> = ctx.emitted().iter().map(|e| e.ty.as_str()).collect();
        assert_eq!(types, ["inventory.low_stock", "inventory.out_of_stock"]);
        assert_eq!(
            ctx.emitted()[1].json_data::<OutOfStock>().expect("payload"),
            OutOfStock {
                sku: "sku-2".into()
            }
        );
    }

    #[test]
    fn the_threshold_comes_from_config() {
        let mut ctx = TestContext::new().with_config("threshold", "100");
        ctx.run::<LowStockAlert>(stock("sku-1", 50))
            .expect("handled");
        assert_eq!(ctx.emitted().len(), 1);
        let mut ctx = TestContext::new().with_config("threshold", "2");
        ctx.run::<LowStockAlert>(stock("sku-1", 3))
            .expect("handled");
        assert!(ctx.emitted().is_empty());
    }

    #[test]
    fn a_bad_payload_is_permanent() {
        let mut ctx = TestContext::new();
        let event = Event::new("inventory.stock_changed").with_data("{\"sku\": 1}");
        let err = ctx.run::<LowStockAlert>(event).unwrap_err();
        assert!(matches!(err, HandlerError::Permanent(_)), "{err}");
        let err = ctx.run::<LowStockAlert>(stock("sku-1", -1)).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("negative")),
            "{err}"
        );
    }

    #[test]
    fn a_bad_threshold_is_permanent_and_named() {
        let mut ctx = TestContext::new().with_config("threshold", "ten");
        let err = ctx.run::<LowStockAlert>(stock("sku-1", 1)).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("threshold")),
            "{err}"
        );
    }

    #[test]
    fn other_types_are_ignored() {
        let mut ctx = TestContext::new();
        ctx.run::<LowStockAlert>(Event::new("order.created"))
            .expect("handled");
        assert!(ctx.emitted().is_empty());
    }

    #[test]
    fn a_refused_emit_fails_the_delivery() {
        let mut ctx = TestContext::new().refuse_emits("chain depth limit reached");
        let err = ctx.run::<LowStockAlert>(stock("sku-1", 0)).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("chain depth")),
            "{err}"
        );
    }
}
