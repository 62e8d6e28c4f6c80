// The JavaScript SDK for plugbus plugins: event handlers built into
// WebAssembly components of the WIT world `plugbus:plugin/handler@0.3.0`
// with componentize-js.
//
// A plugin is a module `handler.js` that exports `handle(ctx, event)`:
//
//   import { HandlerError } from './plugbus/index.js';
//   export function handle(ctx, event) {
//     const change = event.json();
//     ctx.emitJson('inventory.low_stock', { sku: change.sku }, { subject: change.sku });
//     ctx.info(`${change.sku} is low`);
//   }
//
// Returning (anything) means the event was handled; throwing a
// `HandlerError` says whether a retry can help; any other exception is a
// retryable failure whose message carries the exception's name, text and
// the top of its stack; an uncaught `HttpError` fails as its
// `toHandlerError()` says. This module never imports the WIT bindings, so
// it runs natively under `node --test` (see `testing.js`); `component.js`
// connects it to the host inside the component.

import { HttpClient, HttpError } from './http.js';

export {
  HttpClient,
  HttpConnection,
  HttpDenied,
  HttpError,
  HttpInvalidRequest,
  HttpInvalidResponse,
  HttpOther,
  HttpResponse,
  HttpTimeout,
  HttpTooLarge,
  HTTP_ERROR_KINDS,
} from './http.js';

/** The most bytes of the stack an uncaught exception's message carries. */
export const MAX_STACK_CHARS = 1500;
/** The most stack lines an uncaught exception's message carries. */
export const MAX_STACK_LINES = 8;

/** Why a handler failed, so that the host knows whether a retry can help. */
export class HandlerError extends Error {
  /**
   * @param {'retryable' | 'permanent'} kind
   * @param {string} message
   */
  constructor(kind, message) {
    super(message);
    this.name = 'HandlerError';
    /** @type {'retryable' | 'permanent'} */
    this.kind = kind;
  }

  /** A passing failure: delivering the same event again may succeed.
   * @param {string} message */
  static retryable(message) {
    return new HandlerError('retryable', String(message));
  }

  /** The event can never be handled: delivering it again cannot help.
   * @param {string} message */
  static permanent(message) {
    return new HandlerError('permanent', String(message));
  }

  /** True for a retryable error. */
  get retryable() {
    return this.kind === 'retryable';
  }

  toString() {
    return `${this.kind}: ${this.message}`;
  }
}

/** The host refused an emitted event (an invalid event, too many events,
 * or the chain depth limit). Uncaught, it fails the delivery permanently:
 * the same event would be refused again. */
export class EmitError extends Error {
  /** @param {string} reason the host's message */
  constructor(reason) {
    super(`emit refused: ${reason}`);
    this.name = 'EmitError';
    this.reason = reason;
  }
}

/** The host refused a state write (a bad key, a value or delivery over the
 * host's limits). Uncaught, it fails the delivery permanently. */
export class StateError extends Error {
  /** @param {string} reason the host's message */
  constructor(reason) {
    super(`state write refused: ${reason}`);
    this.name = 'StateError';
    this.reason = reason;
  }
}

/** The severities of a log line, in increasing order. */
export const LEVELS = Object.freeze(['trace', 'debug', 'info', 'warn', 'error']);

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** @param {Uint8Array | string | ArrayBuffer | ArrayBufferView} data */
function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (typeof data === 'string') return encoder.encode(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data === undefined || data === null) return new Uint8Array(0);
  throw new TypeError(`event data must be a Uint8Array or a string, not ${typeof data}`);
}

/**
 * The attributes of an event as the host delivers them (the WIT record
 * `event`, as componentize-js maps it).
 * @typedef {object} EventAttributes
 * @property {string} id
 * @property {string} source
 * @property {string} type
 * @property {string} [subject]
 * @property {string} [time]
 * @property {string} [datacontenttype]
 * @property {string} [dataschema]
 * @property {Uint8Array} data
 * @property {Array<[string, string]>} extensions
 * @property {string} tenant
 * @property {number} attempt
 */

/** A CloudEvents 1.0 event delivered to the handler, read through accessors. */
export class Event {
  /** @param {EventAttributes} attributes */
  constructor(attributes) {
    /** @type {EventAttributes} */
    this._a = attributes;
  }

  /**
   * An event for a native test, with documented defaults: id
   * `test-event-1`, source `test`, tenant `test-tenant`, content type
   * `application/json`, attempt 1, no data. `json` sets the data to a
   * value as JSON; `data` to bytes or a string.
   * @param {string} type
   * @param {{id?: string, source?: string, subject?: string, time?: string,
   *   datacontenttype?: string, dataschema?: string, data?: Uint8Array | string,
   *   json?: unknown, extensions?: Record<string, string> | Array<[string, string]>,
   *   tenant?: string, attempt?: number}} [options]
   */
  static create(type, options = {}) {
    const data = 'json' in options ? JSON.stringify(options.json) : options.data;
    const ext = options.extensions ?? [];
    return new Event({
      id: options.id ?? 'test-event-1',
      source: options.source ?? 'test',
      type,
      subject: options.subject,
      time: options.time,
      datacontenttype: 'datacontenttype' in options ? options.datacontenttype : 'application/json',
      dataschema: options.dataschema,
      data: toBytes(data),
      extensions: Array.isArray(ext) ? ext.map(([k, v]) => [k, v]) : Object.entries(ext),
      tenant: options.tenant ?? 'test-tenant',
      attempt: options.attempt ?? 1,
    });
  }

  /** The event's id, unique per source. @returns {string} */
  get id() { return this._a.id; }
  /** Where the event happened, a URI-reference. @returns {string} */
  get source() { return this._a.source; }
  /** The kind of event, such as `inventory.stock_changed`. @returns {string} */
  get type() { return this._a.type; }
  /** The subject, such as a SKU, or undefined. @returns {string | undefined} */
  get subject() { return this._a.subject ?? undefined; }
  /** When it happened, RFC 3339, or undefined. @returns {string | undefined} */
  get time() { return this._a.time ?? undefined; }
  /** The media type of the data, or undefined. @returns {string | undefined} */
  get datacontenttype() { return this._a.datacontenttype ?? undefined; }
  /** The URI of the data's schema, or undefined. @returns {string | undefined} */
  get dataschema() { return this._a.dataschema ?? undefined; }
  /** The payload bytes. @returns {Uint8Array} */
  get data() { return this._a.data; }
  /** The extension attributes as name/value pairs. @returns {Array<[string, string]>} */
  get extensions() { return this._a.extensions; }
  /** The tenant that owns the event. @returns {string} */
  get tenant() { return this._a.tenant; }
  /** 1 for the first delivery, 2 for the first retry, and so on. @returns {number} */
  get attempt() { return this._a.attempt; }

  /** The value of extension `name`, or undefined.
   * @param {string} name @returns {string | undefined} */
  extension(name) {
    const found = this._a.extensions.find(([k]) => k === name);
    return found ? found[1] : undefined;
  }

  /** The payload as UTF-8 text; a payload that is not UTF-8 is a
   * permanent HandlerError. @returns {string} */
  text() {
    try {
      return decoder.decode(this._a.data);
    } catch {
      throw HandlerError.permanent(`the payload of ${this.type} event ${this.id} is not UTF-8`);
    }
  }

  /** The payload parsed as JSON; a payload that is not JSON is a permanent
   * HandlerError naming the event. @returns {any} */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw HandlerError.permanent(
        `the payload of ${this.type} event ${this.id} is not the expected JSON: ${e instanceof Error ? e.message : e}`,
      );
    }
  }
}

/**
 * The options of an emitted event.
 * @typedef {object} EmitOptions
 * @property {string} [subject] the subject, such as a SKU or an order id
 * @property {string} [datacontenttype] the payload's media type
 * @property {string} [dataschema] the URI of the payload's schema
 * @property {Record<string, string> | Array<[string, string]>} [extensions]
 *   extension attributes: names of 1 to 20 lowercase letters or digits;
 *   `partitionkey` keeps the events of one key in order
 */

/**
 * An event a handler publishes (the WIT record `outgoing-event`).
 * @typedef {object} OutgoingEvent
 * @property {string} type
 * @property {Uint8Array} data
 * @property {string} [subject]
 * @property {string} [datacontenttype]
 * @property {string} [dataschema]
 * @property {Array<[string, string]>} extensions
 */

/**
 * What a context needs from its host: the component's imports, or the
 * test context. Each refusal is returned as `{ error: message }`.
 * @typedef {object} HostApi
 * @property {(event: OutgoingEvent) => {id: string} | {error: string}} emit
 * @property {(level: string, message: string) => void} log
 * @property {(key: string) => string | undefined} configGet
 * @property {(key: string) => Uint8Array | undefined} stateGet
 * @property {(key: string, value: Uint8Array) => {error: string} | undefined} stateSet
 * @property {(key: string) => void} stateDelete
 * @property {(name: string) => string | undefined} secretGet
 * @property {(request: import('./http.js').HttpRequest) => import('./http.js').HttpResponse} httpSend
 *   sends a request and returns the whole response, or throws an HttpError
 */

/** What a handler uses to talk to the host: emit, log, config, state,
 * secrets and outbound HTTP. */
export class Context {
  /** @param {HostApi} host */
  constructor(host) {
    /** @private */
    this._host = host;
    /** @private @type {HttpClient | undefined} */
    this._http = undefined;
  }

  /**
   * The value of the tenant's secret `name`, or undefined when the secret
   * is not granted to this plugin (`[secrets] grant` in its manifest) or
   * the operator did not set it. Never log it or put it in an event.
   * @param {string} name such as `webhook_token`
   * @returns {string | undefined}
   */
  secret(name) {
    return this._host.secretGet(String(name)) ?? undefined;
  }

  /**
   * The HTTP client: synchronous requests to the origins the manifest's
   * `[http] allow` lists. Redirects are not followed.
   * @returns {HttpClient}
   */
  http() {
    this._http ??= new HttpClient((request) => this._host.httpSend(request));
    return this._http;
  }

  /**
   * Publishes an event and returns its id. The host routes it once the
   * handler has succeeded; the emits of a failed delivery are discarded.
   * Throws an EmitError when the host refuses it.
   * @param {string} type
   * @param {Uint8Array | string} data
   * @param {EmitOptions} [options]
   * @returns {string}
   */
  emit(type, data, options = {}) {
    const ext = options.extensions ?? [];
    /** @type {OutgoingEvent} */
    const event = {
      type: String(type),
      data: toBytes(data),
      subject: options.subject ?? undefined,
      datacontenttype: options.datacontenttype ?? undefined,
      dataschema: options.dataschema ?? undefined,
      extensions: (Array.isArray(ext) ? ext : Object.entries(ext)).map(([k, v]) => [String(k), String(v)]),
    };
    const result = this._host.emit(event);
    if ('error' in result) throw new EmitError(result.error);
    return result.id;
  }

  /**
   * Publishes `value` as JSON (content type `application/json`) and
   * returns the event's id. A value without a JSON form is an EmitError.
   * @param {string} type
   * @param {unknown} value
   * @param {EmitOptions} [options]
   * @returns {string}
   */
  emitJson(type, value, options = {}) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (e) {
      throw new EmitError(`cannot serialise the payload of ${type} as JSON: ${e instanceof Error ? e.message : e}`);
    }
    if (text === undefined) throw new EmitError(`the payload of ${type} has no JSON form`);
    return this.emit(type, text, { datacontenttype: 'application/json', ...options });
  }

  /** Writes a log line at `level` (one of LEVELS).
   * @param {'trace' | 'debug' | 'info' | 'warn' | 'error'} level
   * @param {string} message */
  log(level, message) {
    if (!LEVELS.includes(level)) throw new TypeError(`unknown log level ${JSON.stringify(level)}; one of ${LEVELS.join(', ')}`);
    this._host.log(level, String(message));
  }

  /** @param {string} message */
  trace(message) { this.log('trace', message); }
  /** @param {string} message */
  debug(message) { this.log('debug', message); }
  /** @param {string} message */
  info(message) { this.log('info', message); }
  /** @param {string} message */
  warn(message) { this.log('warn', message); }
  /** @param {string} message */
  error(message) { this.log('error', message); }

  /** The value of `key` in the manifest's `[config]`, or undefined.
   * @param {string} key @returns {string | undefined} */
  config(key) {
    return this._host.configGet(key) ?? undefined;
  }

  /** `config(key)` as an integer, or undefined when unset; a value that is
   * not an integer is a permanent HandlerError naming the key.
   * @param {string} key @returns {number | undefined} */
  configInt(key) {
    const value = this.config(key);
    if (value === undefined) return undefined;
    if (!/^[+-]?\d+$/.test(value.trim()) || !Number.isSafeInteger(Number(value))) {
      throw HandlerError.permanent(`config ${key} = ${JSON.stringify(value)} is invalid: not an integer`);
    }
    return Number(value);
  }

  /** `config(key)` as a number, or undefined when unset.
   * @param {string} key @returns {number | undefined} */
  configNumber(key) {
    const value = this.config(key);
    if (value === undefined) return undefined;
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) {
      throw HandlerError.permanent(`config ${key} = ${JSON.stringify(value)} is invalid: not a number`);
    }
    return n;
  }

  /** `config(key)` as a boolean (`true` or `false`), or undefined when unset.
   * @param {string} key @returns {boolean | undefined} */
  configBool(key) {
    const value = this.config(key);
    if (value === undefined) return undefined;
    if (value === 'true') return true;
    if (value === 'false') return false;
    throw HandlerError.permanent(`config ${key} = ${JSON.stringify(value)} is invalid: not true or false`);
  }

  /** The state stored under `key` as bytes, or undefined. Sees this
   * delivery's own writes.
   * @param {string} key @returns {Uint8Array | undefined} */
  stateBytes(key) {
    return this._host.stateGet(key) ?? undefined;
  }

  /** The state stored under `key` parsed as JSON, or undefined; a value
   * that is not JSON is a permanent HandlerError naming the key.
   * @param {string} key @returns {any} */
  state(key) {
    const bytes = this.stateBytes(key);
    if (bytes === undefined) return undefined;
    try {
      return JSON.parse(decoder.decode(bytes));
    } catch (e) {
      throw HandlerError.permanent(`state ${JSON.stringify(key)} does not decode as JSON: ${e instanceof Error ? e.message : e}`);
    }
  }

  /** Stores bytes (or a string as UTF-8) under `key`; committed with the
   * delivery only when the handler succeeds. Throws a StateError when the
   * host refuses the write.
   * @param {string} key @param {Uint8Array | string} value */
  setStateBytes(key, value) {
    const refused = this._host.stateSet(String(key), toBytes(value));
    if (refused) throw new StateError(refused.error);
  }

  /** Stores `value` as JSON under `key`.
   * @param {string} key @param {unknown} value */
  setState(key, value) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (e) {
      throw new StateError(`state ${JSON.stringify(key)} does not encode as JSON: ${e instanceof Error ? e.message : e}`);
    }
    if (text === undefined) throw new StateError(`state ${JSON.stringify(key)} has no JSON form`);
    this.setStateBytes(key, text);
  }

  /** Removes `key`; removing a missing key does nothing.
   * @param {string} key */
  deleteState(key) {
    this._host.stateDelete(String(key));
  }
}

/** Formats what a handler threw that is not a HandlerError (a TypeError, a
 * thrown string, …): its name, its text and the top of its stack, bounded.
 * @param {unknown} thrown @returns {string} */
export function describeUncaught(thrown) {
  try {
    return describe(thrown);
  } catch {
    // A throwing `message` getter or `toString`: still a clean failure.
    return 'uncaught exception: its description threw';
  }
}

/** @param {unknown} thrown @returns {string} */
function describe(thrown) {
  let head;
  let stack = '';
  if (thrown instanceof Error) {
    head = `${thrown.name || 'Error'}: ${thrown.message}`;
    stack = typeof thrown.stack === 'string' ? thrown.stack : '';
  } else if (typeof thrown === 'string') {
    head = `string: ${thrown}`;
  } else {
    let text;
    try {
      text = JSON.stringify(thrown);
    } catch {
      text = undefined;
    }
    head = `${thrown === null ? 'null' : typeof thrown}: ${text ?? String(thrown)}`;
  }
  // The frames below the handler (this SDK's runner, the component's
  // glue) say nothing about the failure: cut them.
  const all = stack.split('\n');
  const runner = all.findIndex((l) => l.includes('runHandler'));
  const lines = (runner >= 0 ? all.slice(0, runner) : all)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith(`${head}`))
    .slice(0, MAX_STACK_LINES);
  // The same head as the Python SDK's: "uncaught <Type>: <text>".
  let message = `uncaught ${head}`;
  if (lines.length > 0) message += `\nstack:\n  ${lines.join('\n  ')}`;
  if (message.length > MAX_STACK_CHARS) message = `${message.slice(0, MAX_STACK_CHARS - 3)}...`;
  return message;
}

/**
 * Runs `handler` on `event` with `ctx` and says how it ended, as the
 * component returns it to the host: `undefined` when handled, or
 * `{kind, message}`. Uncaught EmitError and StateError are permanent, an
 * HttpError as its `toHandlerError()` says, any other exception retryable
 * (described by `describeUncaught`).
 * @param {(ctx: Context, event: Event) => unknown} handler
 * @param {Event} event
 * @param {Context} ctx
 * @returns {undefined | {kind: 'retryable' | 'permanent', message: string}}
 */
export function runHandler(handler, event, ctx) {
  try {
    const result = handler(ctx, event);
    if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
      return {
        kind: 'permanent',
        message: 'the handler returned a promise: plugbus handlers are synchronous (the host functions are)',
      };
    }
    return undefined;
  } catch (e) {
    if (e instanceof HandlerError) return { kind: e.kind, message: e.message };
    if (e instanceof HttpError) {
      const error = e.toHandlerError();
      return { kind: error.kind, message: error.message };
    }
    if (e instanceof EmitError || e instanceof StateError) return { kind: 'permanent', message: e.message };
    return { kind: 'retryable', message: describeUncaught(e) };
  }
}
