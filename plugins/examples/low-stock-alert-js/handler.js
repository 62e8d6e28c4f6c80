// `low-stock-alert` in JavaScript, the same plugin as the Rust example
// plugins/examples/low-stock-alert: on `inventory.stock_changed` with
// `{sku, new_quantity}`, emits `inventory.low_stock` when the quantity is
// at or below the configured `threshold` (default 10), and also
// `inventory.out_of_stock` when it is 0. Other event types are ignored.
import { HandlerError } from '../../../guest-sdk/js/plugbus/index.js';

/** The threshold when the manifest's `[config]` does not set `threshold`. */
export const DEFAULT_THRESHOLD = 10;

/**
 * Reads the payload of `inventory.stock_changed`.
 * @param {import('../../../guest-sdk/js/plugbus/index.js').Event} event
 * @returns {{sku: string, new_quantity: number}}
 */
function stockChanged(event) {
  const change = event.json();
  const problem =
    change === null || typeof change !== 'object'
      ? 'not an object'
      : typeof change.sku !== 'string'
        ? 'sku is not a string'
        : !Number.isSafeInteger(change.new_quantity)
          ? 'new_quantity is not an integer'
          : undefined;
  if (problem) {
    throw HandlerError.permanent(`the payload of ${event.type} event ${event.id} is not the expected JSON: ${problem}`);
  }
  return change;
}

/**
 * @param {import('../../../guest-sdk/js/plugbus/index.js').Event} event
 * @param {import('../../../guest-sdk/js/plugbus/index.js').Context} ctx
 */
export function handle(ctx, event) {
  if (event.type !== 'inventory.stock_changed') return;
  const { sku, new_quantity: quantity } = stockChanged(event);
  if (quantity < 0) {
    throw HandlerError.permanent(`${sku}: new_quantity ${quantity} is negative`);
  }
  const threshold = ctx.configInt('threshold') ?? DEFAULT_THRESHOLD;
  if (quantity > threshold) return;
  ctx.emitJson('inventory.low_stock', { sku, quantity, threshold }, { subject: sku });
  ctx.info(`${sku} is low: ${quantity} at or below ${threshold}`);
  if (quantity === 0) {
    ctx.emitJson('inventory.out_of_stock', { sku }, { subject: sku });
    ctx.warn(`${sku} is out of stock`);
  }
}
