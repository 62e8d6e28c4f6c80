// Native tests of `{{name}}`: `npm test` (or `node --test`) runs the
// handler in the SDK's test context, without wasm and without a host.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Event, HttpTimeout } from './plugbus/index.js';
import { TestContext } from './plugbus/testing.js';
import { handle } from './handler.js';

const stock = (sku, quantity) => Event.create('inventory.stock_changed', { json: { sku, new_quantity: quantity } });

test('low stock is emitted and counted in state', () => {
  const ctx = new TestContext().withConfig('threshold', '5');
  ctx.run(handle, stock('sku-1', 3));
  ctx.run(handle, stock('sku-1', 2));
  assert.equal(ctx.emitted.length, 2);
  assert.equal(ctx.emitted[1].type, 'inventory.low_stock');
  assert.equal(ctx.emitted[1].subject, 'sku-1');
  assert.deepEqual(ctx.emitted[1].json(), { sku: 'sku-1', quantity: 2, threshold: 5, alerts: 2 });
  assert.equal(ctx.state('alerts/sku-1'), 2);
  assert.deepEqual(ctx.logs[0], { level: 'info', message: 'sku-1 is low: 3 at or below 5 (alert 1)' });
});

test('above the threshold nothing happens', () => {
  const ctx = new TestContext();
  ctx.run(handle, stock('sku-1', 11));
  assert.equal(ctx.emitted.length, 0);
  assert.equal(ctx.stateEntries().size, 0);
});

test('a bad payload or threshold is permanent', () => {
  const ctx = new TestContext().withConfig('threshold', 'ten');
  assert.throws(() => ctx.run(handle, Event.create('inventory.stock_changed', { data: 'nope' })), { kind: 'permanent' });
  assert.throws(() => ctx.run(handle, stock('sku-1', 1)), (e) => e.kind === 'permanent' && e.message.includes('threshold'));
});

test('a failed delivery leaves no state and no emits', () => {
  const ctx = new TestContext().refuseEmits('chain depth limit reached');
  assert.throws(() => ctx.run(handle, stock('sku-1', 0)), (e) => e.kind === 'permanent' && e.message.includes('chain depth'));
  assert.equal(ctx.state('alerts/sku-1'), undefined);
  assert.equal(ctx.emitted.length, 0);
});

test('with webhook_url, the alert is posted with the secret token', () => {
  const url = 'https://hooks.example.com/low-stock';
  const ctx = new TestContext()
    .withConfig('webhook_url', url)
    .withSecret('webhook_token', 't0k3n')
    .withHttpResponse('POST', url, { status: 204 });
  ctx.run(handle, stock('sku-1', 3));
  assert.equal(ctx.requests.length, 1);
  assert.equal(ctx.requests[0].header('authorization'), 'Bearer t0k3n');
  assert.deepEqual(ctx.requests[0].json(), { sku: 'sku-1', quantity: 3, threshold: 10, alerts: 1 });
});

test('a webhook that times out fails the delivery, retryably, and undoes it', () => {
  const url = 'https://hooks.example.com/low-stock';
  const ctx = new TestContext()
    .withConfig('webhook_url', url)
    .withSecret('webhook_token', 't0k3n')
    .withHttpResponse('POST', url, new HttpTimeout('the webhook is slow'));
  assert.throws(() => ctx.run(handle, stock('sku-1', 3)), { kind: 'retryable', message: 'the webhook is slow' });
  assert.equal(ctx.emitted.length, 0);
  assert.equal(ctx.state('alerts/sku-1'), undefined);
});
