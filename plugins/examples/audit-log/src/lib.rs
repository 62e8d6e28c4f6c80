//! `audit-log`: subscribes to everything and writes one audit line per
//! event into the host's log.

use plugbus_sdk::{Context, Event, Handler, HandlerError, export_handler};

/// Logs `audit tenant=… type=… id=… subject=… bytes=…` for every event.
pub struct AuditLog;

impl Handler for AuditLog {
    fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
        ctx.info(audit_line(&event));
        Ok(())
    }
}

/// The audit line of an event.
pub fn audit_line(event: &Event) -> String {
    format!(
        "audit tenant={} type={} id={} subject={} bytes={}",
        event.tenant(),
        event.ty(),
        event.id(),
        event.subject().unwrap_or("-"),
        event.data().len()
    )
}

export_handler!(AuditLog);

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::Level;
    use plugbus_sdk::testing::TestContext;

    #[test]
    fn logs_one_line_per_event() {
        let mut ctx = TestContext::new();
        let event = Event::new("order.created")
            .with_id("o-1")
            .with_tenant("acme-pos")
            .with_subject("order-7")
            .with_data("1234");
        ctx.run::<AuditLog>(event).expect("handled");
        ctx.run::<AuditLog>(Event::new("payment.captured"))
            .expect("handled");
        assert_eq!(
            ctx.logs(),
            [
                (
                    Level::Info,
                    "audit tenant=acme-pos type=order.created id=o-1 subject=order-7 bytes=4".to_owned()
                ),
                (
                    Level::Info,
                    "audit tenant=test-tenant type=payment.captured id=test-event-1 subject=- bytes=0".to_owned()
                ),
            ]
        );
        assert!(ctx.emitted().is_empty());
    }
}
