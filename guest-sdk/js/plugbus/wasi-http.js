// Sends a request through the world's `wasi:http/outgoing-handler@0.2.12`
// import, synchronously: the handler's export is synchronous, so the SDK
// waits on the response's pollable (`block`) instead of a promise. Only
// component.js loads this module (native tests never do).
//
// Resources are dropped explicitly, children before parents (a stream
// before its body, a pollable before its future), as wasi:http requires.
import { HttpInvalidRequest, HttpOther, HttpResponse, errorFromCode } from './http.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const dispose = Symbol.dispose ?? Symbol.for('dispose');
/** The bytes written to an output stream at once (wasi:io's bound is 4096). */
const WRITE_CHUNK = 4096;
/** The bytes asked of an input stream at once. */
const READ_CHUNK = 65536n;
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);

/** Drops a resource, ignoring one already gone. @param {any} resource */
function drop(resource) {
  try {
    resource?.[dispose]?.();
  } catch {
    // Already consumed by a call that took ownership.
  }
}

/** What an import threw for an `err` result: its payload. @param {unknown} e */
function payload(e) {
  return e !== null && typeof e === 'object' && 'payload' in e ? /** @type {any} */ (e).payload : e;
}

/**
 * The send function of the component's HttpClient.
 * @param {any} outgoingHandler `wasi:http/outgoing-handler@0.2.12`
 * @param {any} types `wasi:http/types@0.2.12`
 * @returns {(request: import('./http.js').HttpRequest) => HttpResponse}
 */
export function wasiSender(outgoingHandler, types) {
  /** The HttpError for an io error of a body stream. @param {any} ioError @param {string} what */
  function streamError(ioError, what) {
    let code;
    try {
      code = types.httpErrorCode(ioError);
    } catch {
      code = undefined;
    }
    let text = '';
    try {
      text = ioError.toDebugString();
    } catch {
      // No text: the code says enough.
    }
    drop(ioError);
    return code !== undefined ? errorFromCode(code, what) : new HttpOther(`${what} failed: ${text || 'stream error'}`);
  }

  return function send(req) {
    const what = `${req.method} ${req.url}`;
    let fields;
    try {
      fields = types.Fields.fromList(req.headers.map(([k, v]) => [k, encoder.encode(v)]));
    } catch (e) {
      const p = payload(e);
      throw new HttpInvalidRequest(`${what}: a header is refused (${p?.tag ?? String(p)})`);
    }
    const request = new types.OutgoingRequest(fields);
    let body;
    let options;
    let future;
    try {
      const setOk = (/** @type {() => void} */ call, /** @type {string} */ field) => {
        try {
          call();
        } catch {
          throw new HttpInvalidRequest(`${what}: the ${field} is refused`);
        }
      };
      setOk(() => request.setMethod(METHODS.has(req.method) ? { tag: req.method.toLowerCase() } : { tag: 'other', val: req.method }), 'method');
      setOk(() => request.setScheme({ tag: req.scheme === 'https' ? 'HTTPS' : 'HTTP' }), 'scheme');
      setOk(() => request.setAuthority(req.authority), 'authority');
      setOk(() => request.setPathWithQuery(req.pathWithQuery), 'path');
      body = request.body();
      if (req.timeoutMs !== undefined) {
        options = new types.RequestOptions();
        const ns = BigInt(req.timeoutMs) * 1_000_000n;
        // A host that does not support a timeout refuses it: its own apply.
        for (const set of ['setConnectTimeout', 'setFirstByteTimeout', 'setBetweenBytesTimeout']) {
          try {
            options[set](ns);
          } catch {
            // Not supported.
          }
        }
      }
    } catch (e) {
      drop(body);
      drop(options);
      drop(request);
      throw e;
    }
    try {
      future = outgoingHandler.handle(request, options);
    } catch (e) {
      drop(body);
      throw errorFromCode(payload(e), what);
    }
    try {
      // The body, then the response.
      let writeFailure;
      if (req.body.length > 0) {
        const stream = body.write();
        try {
          for (let at = 0; at < req.body.length; at += WRITE_CHUNK) {
            stream.blockingWriteAndFlush(req.body.subarray(at, at + WRITE_CHUNK));
          }
        } catch (e) {
          const p = payload(e);
          writeFailure = p?.tag === 'last-operation-failed' ? streamError(p.val, what) : new HttpOther(`${what} failed: the request body stream closed`);
        } finally {
          drop(stream);
        }
      }
      if (writeFailure === undefined) {
        try {
          types.OutgoingBody.finish(body, undefined);
        } catch (e) {
          writeFailure = errorFromCode(payload(e), what);
        }
      } else {
        drop(body);
      }
      body = undefined;
      const pollable = future.subscribe();
      try {
        pollable.block();
      } finally {
        drop(pollable);
      }
      const got = future.get();
      if (got === undefined) throw new HttpOther(`${what} failed: no response after waiting`);
      if (got.tag !== 'ok') throw new HttpOther(`${what} failed: the response was taken twice`);
      // The exchange's own error says why a body write failed (a refused
      // request closes its body stream); a response that came anyway (a
      // server answering before it read the whole body) is the answer.
      if (got.val.tag !== 'ok') throw errorFromCode(got.val.val, what);
      return readResponse(got.val.val, what, streamError, types);
    } finally {
      drop(body);
      drop(future);
    }
  };
}

/**
 * Reads a whole incoming response and drops it.
 * @param {any} response @param {string} what
 * @param {(ioError: any, what: string) => Error} streamError
 * @param {any} types
 * @returns {HttpResponse}
 */
function readResponse(response, what, streamError, types) {
  let incoming;
  let stream;
  try {
    const status = response.status();
    const fields = response.headers();
    /** @type {Array<[string, string]>} */
    let headers;
    try {
      headers = fields.entries().map(([k, v]) => [k, decoder.decode(v)]);
    } finally {
      drop(fields);
    }
    incoming = response.consume();
    stream = incoming.stream();
    /** @type {Uint8Array[]} */
    const chunks = [];
    let total = 0;
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(READ_CHUNK);
      } catch (e) {
        const p = payload(e);
        if (p?.tag === 'closed') break;
        throw p?.tag === 'last-operation-failed' ? streamError(p.val, what) : new HttpOther(`${what} failed: reading the body: ${String(p)}`);
      }
      if (chunk.length > 0) {
        chunks.push(chunk);
        total += chunk.length;
      }
    }
    drop(stream);
    stream = undefined;
    const trailers = types.IncomingBody.finish(incoming);
    incoming = undefined;
    drop(trailers);
    const bytes = new Uint8Array(total);
    let at = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, at);
      at += chunk.length;
    }
    return new HttpResponse(status, headers, bytes);
  } finally {
    drop(stream);
    drop(incoming);
    drop(response);
  }
}
