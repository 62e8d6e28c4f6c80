// Outbound HTTP for handlers: `ctx.http()` returns an `HttpClient`, a
// small synchronous client. Inside the component the requests go through
// the world's `wasi:http/outgoing-handler` import (see wasi-http.js);
// under `node --test` the test context answers them with canned
// responses (see testing.js). This module imports no bindings.
//
// The host sends a request only to an origin the plugin's manifest allows
// (`[http] allow = [...]`), adds an `Idempotency-Key` (the same on every
// attempt of the delivery) and a `traceparent`, and bounds the sizes and
// times. Redirects are never followed: a 3xx is returned as it is.

import { HandlerError } from './index.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** The kinds of HttpError, as the Rust SDK's `HttpError` variants. */
export const HTTP_ERROR_KINDS = Object.freeze([
  'denied',
  'timeout',
  'too-large',
  'connection',
  'invalid-request',
  'invalid-response',
  'other',
]);

/**
 * Why a request failed, by kind as the Rust SDK's `HttpError`; each kind
 * is a subclass: `HttpDenied` (the allow-list, a private address, or the
 * requests-per-delivery limit), `HttpTimeout`, `HttpTooLarge` (a body or
 * header over a limit), `HttpConnection` (DNS, refused, reset, TLS, a
 * broken response), `HttpInvalidRequest` (a URL that is not absolute
 * http(s), a bad method, header or body), `HttpInvalidResponse` (a body
 * that is not the text or JSON asked for), `HttpOther` (anything else).
 * `code` is the wasi:http `error-code` case (such as
 * `HTTP-request-denied`) when the host gave one. Uncaught, it fails the
 * delivery as `toHandlerError()` says: retryable for a timeout, a
 * connection failure or another error, permanent for the rest (a retry
 * would meet them again).
 */
export class HttpError extends Error {
  /**
   * @param {'denied' | 'timeout' | 'too-large' | 'connection' | 'invalid-request' | 'invalid-response' | 'other'} kind
   * @param {string} message
   * @param {string} [code] the wasi:http error-code case
   */
  constructor(kind, message, code) {
    super(message);
    this.name = 'HttpError';
    /** @type {'denied' | 'timeout' | 'too-large' | 'connection' | 'invalid-request' | 'invalid-response' | 'other'} */
    this.kind = kind;
    /** @type {string | undefined} */
    this.code = code;
  }

  /** Whether delivering the event again may succeed. @returns {boolean} */
  get retryable() {
    return this.kind === 'timeout' || this.kind === 'connection' || this.kind === 'other';
  }

  /** The handler error this failure means: retryable or permanent as
   * `retryable` says, with this message. @returns {HandlerError} */
  toHandlerError() {
    return this.retryable ? HandlerError.retryable(this.message) : HandlerError.permanent(this.message);
  }
}

/** The host refused the request: its origin is not in the manifest's
 * `[http] allow`, its address is private, or the delivery sent too many. */
export class HttpDenied extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('denied', message, code);
    this.name = 'HttpDenied';
  }
}

/** Connecting, the first byte or the whole exchange took too long. */
export class HttpTimeout extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('timeout', message, code);
    this.name = 'HttpTimeout';
  }
}

/** A body or a header section was over a limit. */
export class HttpTooLarge extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('too-large', message, code);
    this.name = 'HttpTooLarge';
  }
}

/** The connection failed: DNS, refused, reset, TLS, a broken response. */
export class HttpConnection extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('connection', message, code);
    this.name = 'HttpConnection';
  }
}

/** The request cannot be sent as it is: a URL that is not absolute http
 * or https, a bad method or header, a body that has no JSON form. */
export class HttpInvalidRequest extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('invalid-request', message, code);
    this.name = 'HttpInvalidRequest';
  }
}

/** The response is not what was asked for: a body that is not UTF-8 for
 * `text()`, or not JSON for `json()`. */
export class HttpInvalidResponse extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('invalid-response', message, code);
    this.name = 'HttpInvalidResponse';
  }
}

/** Anything else, with the host's words. */
export class HttpOther extends HttpError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super('other', message, code);
    this.name = 'HttpOther';
  }
}

const KIND_OF_CODE = new Map([
  ['HTTP-request-denied', 'denied'],
  ['HTTP-request-method-invalid', 'invalid-request'],
  ['HTTP-request-URI-invalid', 'invalid-request'],
  ['HTTP-request-length-required', 'invalid-request'],
  ['connection-limit-reached', 'connection'],
  ['destination-IP-prohibited', 'denied'],
  ['DNS-timeout', 'timeout'],
  ['connection-timeout', 'timeout'],
  ['connection-read-timeout', 'timeout'],
  ['connection-write-timeout', 'timeout'],
  ['HTTP-response-timeout', 'timeout'],
  ['HTTP-request-body-size', 'too-large'],
  ['HTTP-request-header-section-size', 'too-large'],
  ['HTTP-request-header-size', 'too-large'],
  ['HTTP-request-trailer-section-size', 'too-large'],
  ['HTTP-request-trailer-size', 'too-large'],
  ['HTTP-request-URI-too-long', 'too-large'],
  ['HTTP-response-body-size', 'too-large'],
  ['HTTP-response-header-section-size', 'too-large'],
  ['HTTP-response-header-size', 'too-large'],
  ['HTTP-response-trailer-section-size', 'too-large'],
  ['HTTP-response-trailer-size', 'too-large'],
  ['DNS-error', 'connection'],
  ['destination-not-found', 'connection'],
  ['destination-unavailable', 'connection'],
  ['destination-IP-unroutable', 'connection'],
  ['connection-refused', 'connection'],
  ['connection-terminated', 'connection'],
  ['TLS-protocol-error', 'connection'],
  ['TLS-certificate-error', 'connection'],
  ['TLS-alert-received', 'connection'],
  ['HTTP-response-incomplete', 'connection'],
  ['HTTP-protocol-error', 'connection'],
]);

const CLASS_OF_KIND = {
  denied: HttpDenied,
  timeout: HttpTimeout,
  'too-large': HttpTooLarge,
  connection: HttpConnection,
  'invalid-request': HttpInvalidRequest,
  'invalid-response': HttpInvalidResponse,
  other: HttpOther,
};

/**
 * The HttpError for a wasi:http `error-code` (as componentize-js maps the
 * variant: `{tag, val}`), naming the request.
 * @param {{tag: string, val?: unknown}} code
 * @param {string} what such as `POST https://api.example.com/x`
 * @returns {HttpError}
 */
export function errorFromCode(code, what) {
  const tag = code && typeof code.tag === 'string' ? code.tag : 'internal-error';
  const kind = KIND_OF_CODE.get(tag) ?? 'other';
  let detail = '';
  const val = code?.val;
  if (typeof val === 'string' && val !== '') detail = `: ${val}`;
  else if (typeof val === 'bigint' || typeof val === 'number') detail = ` (${val})`;
  else if (val !== null && typeof val === 'object') {
    const parts = Object.entries(val)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => `${k} ${v}`);
    if (parts.length > 0) detail = ` (${parts.join(', ')})`;
  }
  const Class = CLASS_OF_KIND[kind];
  return new Class(`${what} failed: ${tag}${detail}`, tag);
}

/**
 * A response: the status, the headers (names in lowercase, in the order
 * received) and the whole body.
 */
export class HttpResponse {
  /**
   * @param {number} status
   * @param {Array<[string, string]>} headers
   * @param {Uint8Array} body
   */
  constructor(status, headers, body) {
    /** The status code. @type {number} */
    this.status = status;
    /** The headers as name/value pairs, names in lowercase.
     * @type {Array<[string, string]>} */
    this.headers = headers.map(([k, v]) => [String(k).toLowerCase(), String(v)]);
    /** The body. @type {Uint8Array} */
    this.body = body;
  }

  /** True for a 2xx status. @returns {boolean} */
  get ok() {
    return this.status >= 200 && this.status < 300;
  }

  /** The first value of header `name` (any case), or undefined.
   * @param {string} name @returns {string | undefined} */
  header(name) {
    const lower = String(name).toLowerCase();
    return this.headers.find(([k]) => k === lower)?.[1];
  }

  /** The body as UTF-8 text; a body that is not UTF-8 is an
   * HttpInvalidResponse.
   * @returns {string} */
  text() {
    try {
      return decoder.decode(this.body);
    } catch {
      throw new HttpInvalidResponse(`the body of the ${this.status} response is not UTF-8`);
    }
  }

  /** The body parsed as JSON; a body that is not JSON is an
   * HttpInvalidResponse.
   * @returns {any} */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new HttpInvalidResponse(`the body of the ${this.status} response is not JSON: ${e instanceof Error ? e.message : e}`);
    }
  }
}

/**
 * A request as the SDK hands it to its host: validated, the URL split,
 * the body as bytes.
 * @typedef {object} HttpRequest
 * @property {string} method in uppercase, such as `POST`
 * @property {string} url the whole URL, as given
 * @property {'http' | 'https'} scheme
 * @property {string} authority host and port (the port only when not the scheme's default)
 * @property {string} pathWithQuery such as `/hooks/1?x=y`
 * @property {Array<[string, string]>} headers
 * @property {Uint8Array} body
 * @property {number | undefined} timeoutMs
 */

/**
 * The options of a request.
 * @typedef {object} RequestOptions
 * @property {Record<string, string> | Array<[string, string]>} [headers]
 * @property {Uint8Array | string} [body] the body, bytes or UTF-8 text
 * @property {unknown} [json] a value sent as JSON (sets `content-type:
 *   application/json` unless given); not with `body`
 * @property {number} [timeout] milliseconds for connecting, for the first
 *   byte and between bytes (the host's limits and the delivery's deadline
 *   still apply)
 */

const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Validates and normalises a request. Throws an HttpInvalidRequest for a
 * bad URL, method, header or option.
 * @param {string} method @param {string | URL} url @param {RequestOptions} [options]
 * @returns {HttpRequest}
 */
export function buildRequest(method, url, options = {}) {
  const m = String(method).toUpperCase();
  if (!METHOD.test(m)) throw new HttpInvalidRequest(`${JSON.stringify(String(method))} is not an HTTP method`);
  const text = String(url);
  let parsed;
  try {
    parsed = new URL(text);
  } catch {
    throw new HttpInvalidRequest(`${JSON.stringify(text)} is not an absolute URL`);
  }
  const scheme = parsed.protocol.slice(0, -1);
  if (scheme !== 'http' && scheme !== 'https') {
    throw new HttpInvalidRequest(`${JSON.stringify(text)}: only http and https URLs can be requested`);
  }
  if (parsed.username !== '' || parsed.password !== '') {
    throw new HttpInvalidRequest(`${JSON.stringify(text)}: a URL with credentials is refused; send them in a header`);
  }
  if (parsed.host === '') throw new HttpInvalidRequest(`${JSON.stringify(text)} has no host`);
  const what = `${m} ${text}`;
  /** @type {Array<[string, string]>} */
  const headers = [];
  const given = options.headers ?? [];
  for (const [k, v] of Array.isArray(given) ? given : Object.entries(given)) {
    headers.push([String(k).toLowerCase(), String(v)]);
  }
  let body;
  if (options.json !== undefined) {
    if (options.body !== undefined) throw new HttpInvalidRequest(`${what}: give body or json, not both`);
    let json;
    try {
      json = JSON.stringify(options.json);
    } catch (e) {
      throw new HttpInvalidRequest(`${what}: the json option has no JSON form: ${e instanceof Error ? e.message : e}`);
    }
    body = encoder.encode(json);
    if (!headers.some(([k]) => k === 'content-type')) headers.push(['content-type', 'application/json']);
  } else if (typeof options.body === 'string') {
    body = encoder.encode(options.body);
  } else if (options.body instanceof Uint8Array) {
    body = options.body;
  } else if (options.body === undefined || options.body === null) {
    body = new Uint8Array(0);
  } else {
    throw new HttpInvalidRequest(`${what}: body must be a Uint8Array or a string`);
  }
  const timeout = options.timeout;
  if (timeout !== undefined && !(typeof timeout === 'number' && Number.isFinite(timeout) && timeout > 0)) {
    throw new HttpInvalidRequest(`${what}: timeout must be a positive number of milliseconds`);
  }
  return {
    method: m,
    url: text,
    scheme,
    authority: parsed.host,
    pathWithQuery: `${parsed.pathname || '/'}${parsed.search}`,
    headers,
    body,
    timeoutMs: timeout === undefined ? undefined : Math.ceil(timeout),
  };
}

/**
 * A small synchronous HTTP client. Each call blocks until the whole
 * response has arrived and returns an HttpResponse (whatever its status:
 * a 404 or a 302 is a response, not an error), or throws an HttpError.
 */
export class HttpClient {
  /** @param {(request: HttpRequest) => HttpResponse} send */
  constructor(send) {
    /** @private */
    this._send = send;
  }

  /**
   * Sends a request.
   * @param {string} method such as `GET`, `POST`, `PATCH`
   * @param {string | URL} url an absolute http or https URL
   * @param {RequestOptions} [options]
   * @returns {HttpResponse}
   */
  request(method, url, options = {}) {
    return this._send(buildRequest(method, url, options));
  }

  /** @param {string | URL} url @param {RequestOptions} [options] @returns {HttpResponse} */
  get(url, options) {
    return this.request('GET', url, options);
  }

  /** @param {string | URL} url @param {RequestOptions} [options] @returns {HttpResponse} */
  post(url, options) {
    return this.request('POST', url, options);
  }

  /** @param {string | URL} url @param {RequestOptions} [options] @returns {HttpResponse} */
  put(url, options) {
    return this.request('PUT', url, options);
  }

  /** @param {string | URL} url @param {RequestOptions} [options] @returns {HttpResponse} */
  delete(url, options) {
    return this.request('DELETE', url, options);
  }
}
