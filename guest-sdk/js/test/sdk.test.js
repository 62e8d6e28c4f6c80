import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Context, EmitError, Event, HandlerError, StateError, describeUncaught, MAX_STACK_CHARS } from '../plugbus/index.js';
import { MAX_STATE_VALUE_BYTES, TestContext } from '../plugbus/testing.js';

function echo(ctx, event) {
  const order = event.json();
  const factor = ctx.configInt('factor') ?? 1;
  ctx.info(`order ${order.total}`);
  const id = ctx.emitJson('order.echoed', { total: order.total * factor }, { subject: 'o-1', extensions: { partitionkey: 'o-1' } });
  ctx.debug(id);
}

test('the test context records emits and logs and serves config', () => {
  const ctx = new TestContext().withConfig('factor', '3');
  ctx.run(echo, Event.create('order.created', { json: { total: 4 } }));
  assert.equal(ctx.emitted.length, 1);
  const [out] = ctx.emitted;
  assert.equal(out.type, 'order.echoed');
  assert.equal(out.subject, 'o-1');
  assert.equal(out.datacontenttype, 'application/json');
  assert.equal(out.extension('partitionkey'), 'o-1');
  assert.deepEqual(out.json(), { total: 12 });
  assert.deepEqual(ctx.logs, [
    { level: 'info', message: 'order 4' },
    { level: 'debug', message: 'emitted-1' },
  ]);
});

test('a bad payload is permanent and names the event', () => {
  const ctx = new TestContext();
  assert.throws(
    () => ctx.run(echo, Event.create('order.created', { id: 'e-9', data: '{"total": ' })),
    (e) => e instanceof HandlerError && e.kind === 'permanent' && /order\.created event e-9/.test(e.message),
  );
});

test('a bad config value is permanent and names the key', () => {
  const ctx = new TestContext().withConfig('factor', 'lots');
  assert.throws(
    () => ctx.run(echo, Event.create('order.created', { json: { total: 4 } })),
    (e) => e.kind === 'permanent' && e.message.includes('factor') && e.message.includes('lots'),
  );
});

test('typed config helpers', () => {
  const ctx = new TestContext().withConfig('n', '2.5').withConfig('b', 'true').withConfig('i', '-7').withConfig('x', 'yes');
  let seen;
  ctx.run((c, _e) => {
    seen = [c.config('n'), c.configNumber('n'), c.configBool('b'), c.configInt('i'), c.config('absent'), c.configInt('absent')];
    assert.throws(() => c.configInt('n'), /config n = "2.5" is invalid/);
    assert.throws(() => c.configBool('x'), /not true or false/);
  }, Event.create('t'));
  assert.deepEqual(seen, ['2.5', 2.5, true, -7, undefined, undefined]);
});

test('a refused emit fails the handler permanently and nothing is emitted', () => {
  const ctx = new TestContext().refuseEmits('chain depth limit reached');
  assert.throws(
    () => ctx.run(echo, Event.create('order.created', { json: { total: 4 } })),
    (e) => e.kind === 'permanent' && e.message === 'emit refused: chain depth limit reached',
  );
  assert.equal(ctx.emitted.length, 0);
});

test('the host refuses invalid events as the component would see it', () => {
  const ctx = new TestContext();
  let caught = [];
  ctx.run((c, _e) => {
    for (const bad of [() => c.emit('', 'x'), () => c.emit('t', 'x', { extensions: { Bad: 'v' } }), () => c.emit('t', 'x', { extensions: [['causationid', 'v']] }), () => c.emitJson('t', 1n)]) {
      try {
        bad();
      } catch (e) {
        caught.push(e);
      }
    }
  }, Event.create('t'));
  assert.equal(caught.length, 4);
  assert.ok(caught.every((e) => e instanceof EmitError), caught.map(String).join('\n'));
  assert.match(caught[1].message, /lowercase letters or digits/);
  assert.match(caught[2].message, /reserved/);
  assert.match(caught[3].message, /JSON/);
});

test('state is kept on success and undone with the emits on failure', () => {
  const counter = (ctx, event) => {
    const tally = ctx.state('tally') ?? { count: 0 };
    tally.count += 1;
    ctx.setState('tally', tally);
    assert.deepEqual(ctx.state('tally'), tally, 'a delivery sees its own writes');
    ctx.emitJson('counted', tally);
    ctx.info(`attempt ${event.attempt}`);
    if (event.type === 'fail') throw HandlerError.retryable('after the write');
    if (event.type === 'reset') ctx.deleteState('tally');
  };
  const ctx = new TestContext().withState('tally', { count: 5 });
  ctx.run(counter, Event.create('t'));
  assert.deepEqual(ctx.state('tally'), { count: 6 });
  assert.equal(ctx.emitted.length, 1);
  assert.throws(() => ctx.run(counter, Event.create('fail', { attempt: 3 })), (e) => e.kind === 'retryable' && e.retryable);
  assert.deepEqual(ctx.state('tally'), { count: 6 }, 'the failed run wrote nothing');
  assert.equal(ctx.emitted.length, 1, 'the failed run emitted nothing');
  assert.equal(ctx.logs[1].message, 'attempt 3', 'log lines of a failed run are kept, as the host writes them');
  assert.throws(() => ctx.run(() => { throw new TypeError('x'); }, Event.create('t')));
  ctx.run(counter, Event.create('reset'));
  assert.equal(ctx.stateEntries().size, 0);
});

test('bytes state, bad state and refused writes', () => {
  const ctx = new TestContext().withStateBytes('raw', new Uint8Array([1, 2])).withStateBytes('bad', 'not json');
  ctx.run((c, _e) => {
    assert.deepEqual([...c.stateBytes('raw')], [1, 2]);
    c.setStateBytes('raw', new Uint8Array([3]));
    assert.equal(c.stateBytes('missing'), undefined);
    assert.equal(c.state('missing'), undefined);
    assert.throws(() => c.state('bad'), (e) => e.kind === 'permanent' && e.message.includes('"bad"'));
    assert.throws(() => c.setStateBytes('', 'x'), (e) => e instanceof StateError && /1 to 512 bytes/.test(e.message));
    assert.throws(() => c.setStateBytes('k', new Uint8Array(MAX_STATE_VALUE_BYTES + 1)), (e) => e instanceof StateError && e.message.includes('"k"'));
  }, Event.create('t'));
  assert.deepEqual([...ctx.stateBytes('raw')], [3]);
  assert.throws(() => ctx.run((c, _e) => c.setStateBytes('', 'x'), Event.create('t')), (e) => e.kind === 'permanent' && e.message.startsWith('state write refused'));
});

test('an uncaught exception is a retryable failure with its name, text and stack', () => {
  const ctx = new TestContext();
  function deepInside(event) {
    return event.data.missing.field;
  }
  assert.throws(
    () => ctx.run((event) => deepInside(event), Event.create('t')),
    (e) => {
      assert.equal(e.kind, 'retryable');
      assert.match(e.message, /^uncaught TypeError: Cannot read properties of undefined/);
      assert.match(e.message, /stack:\n {2}.*deepInside/);
      assert.ok(e.cause instanceof TypeError);
      return true;
    },
  );
  assert.throws(() => ctx.run(() => { throw 'plain text'; }, Event.create('t')), (e) => e.kind === 'retryable' && e.message === 'uncaught string: plain text');
  assert.throws(() => ctx.run(() => { throw { code: 7 }; }, Event.create('t')), (e) => e.message === 'uncaught object: {"code":7}');
  assert.throws(() => ctx.run(() => Promise.resolve(), Event.create('t')), (e) => e.kind === 'permanent' && /synchronous/.test(e.message));
});

test('the message of an uncaught exception is bounded', () => {
  const message = describeUncaught(new RangeError('x'.repeat(10000)));
  assert.equal(message.length, MAX_STACK_CHARS);
  assert.ok(message.startsWith('uncaught RangeError: xxx'));
  const deep = (n) => (n === 0 ? new Error('deep') : deep(n - 1));
  const lines = describeUncaught(deep(50)).split('\n');
  assert.ok(lines.length <= 10, lines.join('\n'));
});

test('events have documented defaults and accessors', () => {
  const event = Event.create('t');
  assert.equal(event.id, 'test-event-1');
  assert.equal(event.source, 'test');
  assert.equal(event.tenant, 'test-tenant');
  assert.equal(event.datacontenttype, 'application/json');
  assert.equal(event.attempt, 1);
  assert.equal(event.data.length, 0);
  assert.equal(event.subject, undefined);
  const full = Event.create('u', { subject: 's', time: '2026-01-01T00:00:00Z', dataschema: 'https://s', data: 'hi', extensions: { partitionkey: 'p' }, tenant: 'acme', attempt: 2 });
  assert.equal(full.text(), 'hi');
  assert.equal(full.extension('partitionkey'), 'p');
  assert.equal(full.extension('nope'), undefined);
  assert.deepEqual(full.extensions, [['partitionkey', 'p']]);
  assert.equal(full.time, '2026-01-01T00:00:00Z');
  assert.equal(full.dataschema, 'https://s');
  assert.equal(full.tenant, 'acme');
  assert.throws(() => Event.create('t', { data: new Uint8Array([0xff]) }).text(), (e) => e.kind === 'permanent');
});

test('HandlerError constructors and a context over any host', () => {
  assert.equal(HandlerError.permanent('p').toString(), 'permanent: p');
  assert.equal(HandlerError.retryable('r').retryable, true);
  const lines = [];
  const ctx = new Context({ emit: () => ({ id: 'x' }), log: (l, m) => lines.push([l, m]), configGet: () => undefined, stateGet: () => undefined, stateSet: () => undefined, stateDelete() {} });
  ctx.warn('w');
  ctx.error('e');
  ctx.trace('t');
  assert.throws(() => ctx.log('loud', 'x'), TypeError);
  assert.deepEqual(lines, [['warn', 'w'], ['error', 'e'], ['trace', 't']]);
  assert.equal(ctx.emit('t', new Uint8Array([1])), 'x');
});

test('an error whose message getter throws is still a clean failure', () => {
  const ctx = new TestContext();
  const hostile = new Error('x');
  Object.defineProperty(hostile, 'message', { get() { throw new Error('no'); } });
  assert.throws(() => ctx.run(() => { throw hostile; }, Event.create('t')),
    (e) => e.kind === 'retryable' && e.message === 'uncaught exception: its description threw');
});

test('state bytes changed in place by a failed run are not kept', () => {
  const ctx = new TestContext().withStateBytes('k', new Uint8Array([1, 2]));
  assert.throws(() => ctx.run((c) => {
    c.stateBytes('k')[0] = 9;
    throw HandlerError.retryable('after changing the bytes');
  }, Event.create('t')));
  assert.deepEqual([...ctx.stateBytes('k')], [1, 2]);
});
