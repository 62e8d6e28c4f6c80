// `{{name}}`: a plugbus plugin in JavaScript. On `inventory.stock_changed`
// with `{sku, new_quantity}`, it emits `inventory.low_stock` when the
// quantity is at or below the `threshold` of its manifest's `[config]`
// (default 10), and counts the alerts per SKU in plugin state.
//
// Test: `npm test`. Build: `npm ci` once, then `npm run build`, which
// writes `dist/{{name}}.wasm`.
import { HandlerError } from './plugbus/index.js';

/** The threshold when the manifest's `[config]` does not set `threshold`. */
export const DEFAULT_THRESHOLD = 10;

/**
 * Handles one event. Return to say it was handled; throw
 * `HandlerError.retryable(…)` when a retry may help, or
 * `HandlerError.permanent(…)` when it cannot. Any other exception is a
 * retryable failure whose message carries its name, text and stack.
 * @param {import('./plugbus/index.js').Event} event
 * @param {import('./plugbus/index.js').Context} ctx
 */
export function handle(ctx, event) {
  if (event.type !== 'inventory.stock_changed') return;
  // A payload that is not JSON is a permanent failure naming the event.
  const change = event.json();
  if (typeof change?.sku !== 'string' || !Number.isSafeInteger(change.new_quantity)) {
    throw HandlerError.permanent(`event ${event.id}: expected {sku: string, new_quantity: integer}`);
  }
  // `[config]` of the manifest; a value that is not an integer is a
  // permanent failure naming the key.
  const threshold = ctx.configInt('threshold') ?? DEFAULT_THRESHOLD;
  if (change.new_quantity > threshold) return;

  // State is committed with the delivery, only when the handler succeeds.
  const key = `alerts/${change.sku}`;
  const alerts = (ctx.state(key) ?? 0) + 1;
  ctx.setState(key, alerts);

  ctx.emitJson(
    'inventory.low_stock',
    { sku: change.sku, quantity: change.new_quantity, threshold, alerts },
    { subject: change.sku, extensions: { partitionkey: change.sku } },
  );
  ctx.info(`${change.sku} is low: ${change.new_quantity} at or below ${threshold} (alert ${alerts})`);
}
