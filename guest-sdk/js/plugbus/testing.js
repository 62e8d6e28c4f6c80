// Running handlers natively under `node --test`, without wasm, with the
// host's semantics:
//
//   import { test } from 'node:test';
//   import assert from 'node:assert/strict';
//   import { Event } from './plugbus/index.js';
//   import { TestContext } from './plugbus/testing.js';
//   import { handle } from './handler.js';
//
//   test('low stock is emitted', () => {
//     const ctx = new TestContext().withConfig('threshold', '5');
//     ctx.run(handle, Event.create('inventory.stock_changed', { json: { sku: 'sku-1', new_quantity: 3 } }));
//     assert.equal(ctx.emitted[0].type, 'inventory.low_stock');
//   });
import { Context, HandlerError, runHandler } from './index.js';

/** The most bytes of a state key, as the host's default. */
export const MAX_STATE_KEY_BYTES = 512;
/** The most bytes of a state value, as the host's default. */
export const MAX_STATE_VALUE_BYTES = 1 << 20;
/** The most events one delivery may emit, as the host's default. */
export const MAX_EMITS_PER_DELIVERY = 100;

// The CloudEvents attribute names, and those the host sets itself.
const RESERVED = new Set([
  'id', 'source', 'specversion', 'type', 'datacontenttype', 'dataschema', 'subject', 'time', 'data',
  'causationid', 'correlationid', 'chaindepth', 'tenant',
]);

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An event the handler emitted, as the test context recorded it. */
export class EmittedEvent {
  /** @param {import('./index.js').OutgoingEvent} event @param {string} id */
  constructor(event, id) {
    /** The id the test context gave it: `emitted-1`, `emitted-2`, … */
    this.id = id;
    /** @type {string} */
    this.type = event.type;
    /** @type {Uint8Array} */
    this.data = event.data;
    /** @type {string | undefined} */
    this.subject = event.subject;
    /** @type {string | undefined} */
    this.datacontenttype = event.datacontenttype;
    /** @type {string | undefined} */
    this.dataschema = event.dataschema;
    /** @type {Array<[string, string]>} */
    this.extensions = event.extensions;
  }

  /** The payload as text. @returns {string} */
  text() {
    return decoder.decode(this.data);
  }

  /** The payload parsed as JSON. @returns {any} */
  json() {
    return JSON.parse(this.text());
  }

  /** The value of extension `name`, or undefined.
   * @param {string} name @returns {string | undefined} */
  extension(name) {
    const found = this.extensions.find(([k]) => k === name);
    return found ? found[1] : undefined;
  }
}

/**
 * The host of a native test: serves config, keeps state, records emits and
 * log lines, and undoes a failed run's state writes and emits, as the host
 * does. A host-side refusal (an invalid emitted event, a state write over
 * the limits) reaches the handler as it would in the component: as an
 * EmitError or a StateError.
 */
export class TestContext {
  constructor() {
    /** @type {Map<string, string>} */
    this._config = new Map();
    /** @type {Map<string, Uint8Array>} */
    this._state = new Map();
    /** The events emitted by the successful runs, in order.
     * @type {EmittedEvent[]} */
    this.emitted = [];
    /** Every log line written, failed runs included.
     * @type {Array<{level: string, message: string}>} */
    this.logs = [];
    /** @type {string | undefined} */
    this._refuseEmits = undefined;
    this._emitCount = 0;
  }

  /** Sets `key` in the plugin's `[config]`. @param {string} key @param {string} value */
  withConfig(key, value) {
    this._config.set(key, String(value));
    return this;
  }

  /** Stores `value` as JSON under `key` before the runs. @param {string} key @param {unknown} value */
  withState(key, value) {
    this._state.set(key, encoder.encode(JSON.stringify(value)));
    return this;
  }

  /** Stores bytes (or a string as UTF-8) under `key` before the runs.
   * @param {string} key @param {Uint8Array | string} value */
  withStateBytes(key, value) {
    this._state.set(key, typeof value === 'string' ? encoder.encode(value) : Uint8Array.from(value));
    return this;
  }

  /** Makes the host refuse every emit with `message`, as the host does at
   * the chain depth limit. @param {string} message */
  refuseEmits(message) {
    this._refuseEmits = message;
    return this;
  }

  /**
   * Runs `handler` on `event`. Returns when the handler succeeded; throws
   * the HandlerError the host would record when it failed (an uncaught
   * exception becomes a retryable one whose message carries its name,
   * text and stack, with the exception as `cause`), after undoing the
   * run's state writes and emits.
   * @param {(ctx: Context, event: import('./index.js').Event) => unknown} handler
   * @param {import('./index.js').Event} event
   */
  run(handler, event) {
    const state = new Map(this._state);
    const emitted = this.emitted.length;
    this._emitCount = 0;
    let thrown;
    const failure = runHandler(
      (c, e) => {
        try {
          return handler(c, e);
        } catch (err) {
          thrown = err;
          throw err;
        }
      },
      event,
      new Context(this._host()),
    );
    if (failure === undefined) return;
    this._state = state;
    this.emitted.length = emitted;
    const error = new HandlerError(failure.kind, failure.message);
    if (thrown !== undefined && !(thrown instanceof HandlerError)) error.cause = thrown;
    throw error;
  }

  /** The state under `key` parsed as JSON, or undefined. @param {string} key @returns {any} */
  state(key) {
    const bytes = this._state.get(key);
    return bytes === undefined ? undefined : JSON.parse(decoder.decode(bytes));
  }

  /** The state under `key` as bytes, or undefined. @param {string} key @returns {Uint8Array | undefined} */
  stateBytes(key) {
    return this._state.get(key);
  }

  /** Every state entry. @returns {Map<string, Uint8Array>} */
  stateEntries() {
    return new Map(this._state);
  }

  /** @private @returns {import('./index.js').HostApi} */
  _host() {
    return {
      emit: (event) => {
        if (this._refuseEmits !== undefined) return { error: this._refuseEmits };
        const invalid = checkOutgoing(event);
        if (invalid) return { error: invalid };
        if (this._emitCount >= MAX_EMITS_PER_DELIVERY) {
          return { error: `a delivery may emit at most ${MAX_EMITS_PER_DELIVERY} events` };
        }
        this._emitCount += 1;
        const id = `emitted-${this.emitted.length + 1}`;
        this.emitted.push(new EmittedEvent(event, id));
        return { id };
      },
      log: (level, message) => {
        this.logs.push({ level, message });
      },
      configGet: (key) => this._config.get(key),
      // A copy: bytes changed in place by the handler are not the stored
      // ones, which a failed run must leave as they were.
      stateGet: (key) => this._state.get(key)?.slice(),
      stateSet: (key, value) => {
        const keyBytes = encoder.encode(key).length;
        if (keyBytes === 0 || keyBytes > MAX_STATE_KEY_BYTES) {
          return { error: `a state key is 1 to ${MAX_STATE_KEY_BYTES} bytes; this one is ${keyBytes}` };
        }
        if (value.length > MAX_STATE_VALUE_BYTES) {
          return {
            error: `the value of state ${JSON.stringify(key)} is ${value.length} bytes; the limit is ${MAX_STATE_VALUE_BYTES}`,
          };
        }
        this._state.set(key, Uint8Array.from(value));
        return undefined;
      },
      stateDelete: (key) => {
        this._state.delete(key);
      },
    };
  }
}

/** Why the host would refuse `event`, or undefined.
 * @param {import('./index.js').OutgoingEvent} event @returns {string | undefined} */
function checkOutgoing(event) {
  if (event.type === '') return 'type: must not be empty';
  if (event.subject === '') return 'subject: must not be empty';
  for (const [name] of event.extensions) {
    if (!/^[a-z0-9]{1,20}$/.test(name)) {
      return `${name}: extension attribute names are 1 to 20 lowercase letters or digits`;
    }
    if (RESERVED.has(name)) return `${name}: this attribute name is reserved`;
  }
  return undefined;
}
