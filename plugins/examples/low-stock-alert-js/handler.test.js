import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Event } from '../../../guest-sdk/js/plugbus/index.js';
import { TestContext } from '../../../guest-sdk/js/plugbus/testing.js';
import { handle } from './handler.js';

const stock = (sku, quantity) => Event.create('inventory.stock_changed', { json: { sku, new_quantity: quantity } });

test('above the threshold nothing is emitted', () => {
  const ctx = new TestContext();
  ctx.run(handle, stock('sku-1', 11));
  assert.equal(ctx.emitted.length, 0);
});

test('at the threshold low stock is emitted', () => {
  const ctx = new TestContext();
  ctx.run(handle, stock('sku-1', 10));
  assert.equal(ctx.emitted.length, 1);
  const [emitted] = ctx.emitted;
  assert.equal(emitted.type, 'inventory.low_stock');
  assert.equal(emitted.subject, 'sku-1');
  assert.equal(emitted.datacontenttype, 'application/json');
  assert.deepEqual(emitted.json(), { sku: 'sku-1', quantity: 10, threshold: 10 });
  assert.deepEqual(ctx.logs, [{ level: 'info', message: 'sku-1 is low: 10 at or below 10' }]);
});

test('at zero both alerts are emitted', () => {
  const ctx = new TestContext();
  ctx.run(handle, stock('sku-2', 0));
  assert.deepEqual(ctx.emitted.map((e) => e.type), ['inventory.low_stock', 'inventory.out_of_stock']);
  assert.deepEqual(ctx.emitted[1].json(), { sku: 'sku-2' });
  assert.deepEqual(ctx.logs[1], { level: 'warn', message: 'sku-2 is out of stock' });
});

test('the threshold comes from config', () => {
  let ctx = new TestContext().withConfig('threshold', '100');
  ctx.run(handle, stock('sku-1', 50));
  assert.equal(ctx.emitted.length, 1);
  ctx = new TestContext().withConfig('threshold', '2');
  ctx.run(handle, stock('sku-1', 3));
  assert.equal(ctx.emitted.length, 0);
});

test('a bad payload is permanent', () => {
  const ctx = new TestContext();
  assert.throws(() => ctx.run(handle, Event.create('inventory.stock_changed', { data: '{"sku": 1}' })), { kind: 'permanent' });
  assert.throws(() => ctx.run(handle, stock('sku-1', -1)), (e) => e.kind === 'permanent' && e.message.includes('negative'));
});

test('a bad threshold is permanent and named', () => {
  const ctx = new TestContext().withConfig('threshold', 'ten');
  assert.throws(() => ctx.run(handle, stock('sku-1', 1)), (e) => e.kind === 'permanent' && e.message.includes('threshold'));
});

test('other types are ignored', () => {
  const ctx = new TestContext();
  ctx.run(handle, Event.create('order.created'));
  assert.equal(ctx.emitted.length, 0);
});

test('a refused emit fails the delivery', () => {
  const ctx = new TestContext().refuseEmits('chain depth limit reached');
  assert.throws(() => ctx.run(handle, stock('sku-1', 0)), (e) => e.kind === 'permanent' && e.message.includes('chain depth'));
  assert.equal(ctx.emitted.length, 0);
});
