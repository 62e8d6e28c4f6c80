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
//
// Outbound HTTP never reaches the network: give canned responses, by
// method and URL or by a function, and read what was sent in `requests`:
//
//   const ctx = new TestContext()
//     .withSecret('webhook_token', 't0k3n')
//     .withHttpResponse('POST', 'https://hooks.example.com/alert', { status: 204 });
//   ctx.run(handle, event);
//   assert.equal(ctx.requests[0].header('authorization'), 'Bearer t0k3n');
//   assert.equal(ctx.requests[0].header('idempotency-key'), idempotencyKey(event.id, 0));
//
// A request with no canned response throws an UncannedRequest (not an
// HttpError, so a handler's `catch` of HttpError does not hide it).
import { Context, HandlerError, HttpError, HttpResponse, runHandler } from './index.js';

/** The most bytes of a state key, as the host's default. */
export const MAX_STATE_KEY_BYTES = 512;
/** The most bytes of a state value, as the host's default. */
export const MAX_STATE_VALUE_BYTES = 1 << 20;
/** The `traceparent` the test context adds to every request, as the host
 * adds one continuing the delivery's trace. */
export const TEST_TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

/**
 * The `Idempotency-Key` the test context adds to request number `index`
 * (from 0) of a run of the event `eventId`: the same on every run of the
 * same event, as the host's is on every attempt of a delivery (the host's
 * is the hex SHA-256 of the event id, the plugin and the index). The same
 * as the Rust SDK's test context.
 * @param {string} eventId @param {number} index @returns {string}
 */
export function idempotencyKey(eventId, index) {
  return `test-idempotency-key-${eventId}-${index}`;
}

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
 * A canned response: the status (200 when left out), headers, and a body
 * as bytes, text, or a value sent as JSON (which sets `content-type`).
 * @typedef {object} CannedResponse
 * @property {number} [status]
 * @property {Record<string, string> | Array<[string, string]>} [headers]
 * @property {Uint8Array | string} [body]
 * @property {unknown} [json]
 */

/** A request the handler sent, as the test context recorded it. */
export class RecordedRequest {
  /** @param {import('./http.js').HttpRequest} request */
  constructor(request) {
    /** In uppercase, such as `POST`. @type {string} */
    this.method = request.method;
    /** The URL as the handler gave it. @type {string} */
    this.url = request.url;
    /** The headers, names in lowercase, with the `idempotency-key` and
     * `traceparent` the host adds. @type {Array<[string, string]>} */
    this.headers = request.headers.map(([k, v]) => [k, v]);
    /** @type {Uint8Array} */
    this.body = Uint8Array.from(request.body);
    /** The timeout option in milliseconds, or undefined. @type {number | undefined} */
    this.timeoutMs = request.timeoutMs;
  }

  /** The first value of header `name` (any case), or undefined.
   * @param {string} name @returns {string | undefined} */
  header(name) {
    const lower = String(name).toLowerCase();
    return this.headers.find(([k]) => k === lower)?.[1];
  }

  /** The body as text. @returns {string} */
  text() {
    return decoder.decode(this.body);
  }

  /** The body parsed as JSON. @returns {any} */
  json() {
    return JSON.parse(this.text());
  }
}

/** A request the test did not give a response for. Not an HttpError: a
 * handler that catches HttpError does not hide it. */
export class UncannedRequest extends Error {
  /** @param {RecordedRequest} request */
  constructor(request) {
    super(
      `no canned response for ${request.method} ${request.url}: give one with ` +
        `ctx.withHttpResponse(${JSON.stringify(request.method)}, ${JSON.stringify(request.url)}, { status: 200, body: '...' }) ` +
        'or ctx.withHttpHandler((request) => ...)',
    );
    this.name = 'UncannedRequest';
    /** @type {RecordedRequest} */
    this.request = request;
  }
}

/** @param {CannedResponse | HttpResponse} canned @returns {HttpResponse} */
function toResponse(canned) {
  if (canned instanceof HttpResponse) return canned;
  const given = canned.headers ?? [];
  const headers = (Array.isArray(given) ? given : Object.entries(given)).map(([k, v]) => [String(k), String(v)]);
  let body;
  if (canned.json !== undefined) {
    body = encoder.encode(JSON.stringify(canned.json));
    if (!headers.some(([k]) => k.toLowerCase() === 'content-type')) headers.push(['content-type', 'application/json']);
  } else if (typeof canned.body === 'string') {
    body = encoder.encode(canned.body);
  } else {
    body = canned.body === undefined ? new Uint8Array(0) : Uint8Array.from(canned.body);
  }
  return new HttpResponse(canned.status ?? 200, headers, body);
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
    /** @type {Map<string, string>} */
    this._secrets = new Map();
    /** @type {Array<{method: string, url: string, answer: CannedResponse | HttpResponse | HttpError}>} */
    this._canned = [];
    /** @type {Array<(request: RecordedRequest) => CannedResponse | HttpResponse | undefined>} */
    this._httpHandlers = [];
    /** Every request the handler sent, in order, failed runs included
     * (a request, unlike an emit, has happened once sent).
     * @type {RecordedRequest[]} */
    this.requests = [];
    /** The event being run, for the idempotency keys. */
    this._eventId = 'outside-a-run';
    this._requestIndex = 0;
  }

  /** Sets the tenant's secret `name`, as granted to the plugin; a name
   * not given reads as undefined. @param {string} name @param {string} value */
  withSecret(name, value) {
    this._secrets.set(String(name), String(value));
    return this;
  }

  /**
   * Answers every request of `method` (any case) to exactly `url` with
   * `response`, or fails them with `response` when it is an HttpError
   * (such as `new HttpTimeout('slow')`). A later answer for the same
   * request replaces an earlier one.
   * @param {string} method @param {string} url
   * @param {CannedResponse | HttpResponse | HttpError} response
   */
  withHttpResponse(method, url, response) {
    this._canned.unshift({ method: String(method).toUpperCase(), url: String(url), answer: response });
    return this;
  }

  /**
   * Answers requests with a function of the RecordedRequest: it returns a
   * response, or undefined to leave the request to the next function or
   * to the responses of `withHttpResponse` (which come first), or throws
   * an HttpError to fail it.
   * @param {(request: RecordedRequest) => CannedResponse | HttpResponse | undefined} handler
   */
  withHttpHandler(handler) {
    this._httpHandlers.push(handler);
    return this;
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
    this._eventId = event.id;
    this._requestIndex = 0;
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
      secretGet: (name) => this._secrets.get(name),
      httpSend: (request) => {
        const headers = request.headers.filter(([k]) => k !== 'idempotency-key' && k !== 'traceparent');
        headers.push(['idempotency-key', idempotencyKey(this._eventId, this._requestIndex)]);
        headers.push(['traceparent', TEST_TRACEPARENT]);
        this._requestIndex += 1;
        const recorded = new RecordedRequest({ ...request, headers });
        this.requests.push(recorded);
        const canned = this._canned.find((c) => c.method === recorded.method && c.url === recorded.url);
        if (canned !== undefined) {
          if (canned.answer instanceof HttpError) throw canned.answer;
          return toResponse(canned.answer);
        }
        for (const handler of this._httpHandlers) {
          const answer = handler(recorded);
          if (answer !== undefined) return toResponse(answer);
        }
        throw new UncannedRequest(recorded);
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
