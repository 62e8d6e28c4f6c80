// Connects a handler to the host inside the component. The entry module
// that the build generates (see build.js) imports the WIT interfaces and
// calls `exportHandler`; native tests never load this file's callers.
import { Context, Event, runHandler } from './index.js';
import { wasiSender } from './wasi-http.js';

/** The text of what an import threw for an `err` result.
 * @param {unknown} e @returns {string} */
function errText(e) {
  if (typeof e === 'string') return e;
  if (e !== null && typeof e === 'object' && 'payload' in e) return String(/** @type {any} */ (e).payload);
  return e instanceof Error ? e.message : String(e);
}

/**
 * The WIT export `handle` for `handler`, given the imported interfaces:
 * `plugbus:plugin/host@0.3.0`, `state@0.3.0`, `secrets@0.3.0`,
 * `wasi:http/outgoing-handler@0.2.12` and `wasi:http/types@0.2.12`.
 * @param {(ctx: Context, event: Event) => unknown} handler
 * @param {{host: any, state: any, secrets: any, outgoingHandler: any, httpTypes: any}} imports
 * @returns {(event: any) => void}
 */
export function exportHandler(handler, { host, state, secrets, outgoingHandler, httpTypes }) {
  if (typeof handler !== 'function') {
    throw new TypeError('handler.js must export a function `handle(ctx, event)`');
  }
  const ctx = new Context({
    emit(event) {
      try {
        return { id: host.emit(event) };
      } catch (e) {
        return { error: errText(e) };
      }
    },
    log: (level, message) => host.log(level, message),
    configGet: (key) => host.configGet(key),
    stateGet: (key) => state.get(key),
    stateSet(key, value) {
      try {
        state.set(key, value);
        return undefined;
      } catch (e) {
        return { error: errText(e) };
      }
    },
    stateDelete: (key) => state.delete(key),
    secretGet: (name) => secrets.get(name),
    httpSend: wasiSender(outgoingHandler, httpTypes),
  });
  return function handle(event) {
    const failure = runHandler(handler, new Event(event), ctx);
    if (failure !== undefined) {
      // componentize-js returns a thrown value as the `err` of the result.
      throw { tag: failure.kind, val: failure.message };
    }
  };
}
