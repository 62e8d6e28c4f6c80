// `{{name}}`: a plugbus plugin in JavaScript. On `inventory.stock_changed`
// with `{sku, new_quantity}`, it emits `inventory.low_stock` when the
// quantity is at or below the `threshold` of its manifest's `[config]`
// (default 10), and counts the alerts per SKU in plugin state. When the
// `[config]` sets `webhook_url`, it also posts the alert there, with the
// tenant's secret `webhook_token` as a bearer token (the manifest must
// allow the URL's origin in `[http] allow` and grant the secret in
// `[secrets] grant`).
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

  const alert = { sku: change.sku, quantity: change.new_quantity, threshold, alerts };
  ctx.emitJson('inventory.low_stock', alert, { subject: change.sku, extensions: { partitionkey: change.sku } });

  const webhook = ctx.config('webhook_url');
  if (webhook !== undefined) {
    const token = ctx.secret('webhook_token');
    if (token === undefined) throw HandlerError.permanent('webhook_url is set but the secret webhook_token is not granted');
    // Synchronous. The host adds an Idempotency-Key that is the same on
    // every attempt of this delivery, so the receiver can drop a repeat.
    // An uncaught HttpError fails the delivery: retryable for a timeout or
    // a connection failure, permanent for a URL the manifest does not allow.
    const response = ctx.http().post(webhook, { json: alert, headers: { authorization: `Bearer ${token}` } });
    if (response.status >= 500) throw HandlerError.retryable(`the webhook answered ${response.status}`);
    if (!response.ok) throw HandlerError.permanent(`the webhook answered ${response.status}`);
  }
  ctx.info(`${change.sku} is low: ${change.new_quantity} at or below ${threshold} (alert ${alerts})`);
}
