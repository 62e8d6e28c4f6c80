// ctx.http() and ctx.secret() natively: the client, its errors, and the
// test context's canned responses, secrets and recorded requests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Event,
  HandlerError,
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
} from '../plugbus/index.js';
import { errorFromCode, buildRequest } from '../plugbus/http.js';
import { RecordedRequest, TEST_TRACEPARENT, TestContext, UncannedRequest, idempotencyKey } from '../plugbus/testing.js';

/** Posts an alert with the secret token; a failure fails as its kind says. */
function notify(ctx, event) {
  const token = ctx.secret('webhook_token');
  if (token === undefined) throw HandlerError.permanent('no webhook_token');
  const response = ctx.http().post('https://hooks.example.com/alert', {
    headers: { Authorization: `Bearer ${token}` },
    json: { sku: event.json().sku },
    timeout: 2000,
  });
  if (!response.ok) throw HandlerError.retryable(`the webhook answered ${response.status}`);
  ctx.emitJson('alert.sent', { id: response.json().id });
}

const event = () => Event.create('inventory.low_stock', { json: { sku: 'sku-1' } });

test('a canned response answers by method and URL; the request is recorded', () => {
  const ctx = new TestContext()
    .withSecret('webhook_token', 't0k3n')
    .withHttpResponse('post', 'https://hooks.example.com/alert', { status: 201, json: { id: 'a-1' } });
  ctx.run(notify, event());
  assert.deepEqual(ctx.emitted[0].json(), { id: 'a-1' });
  assert.equal(ctx.requests.length, 1);
  const [sent] = ctx.requests;
  assert.ok(sent instanceof RecordedRequest);
  assert.equal(sent.method, 'POST');
  assert.equal(sent.url, 'https://hooks.example.com/alert');
  assert.equal(sent.header('authorization'), 'Bearer t0k3n');
  assert.equal(sent.header('Content-Type'), 'application/json');
  assert.deepEqual(sent.json(), { sku: 'sku-1' });
  assert.equal(sent.timeoutMs, 2000);
});

test('a secret not given reads as undefined', () => {
  const ctx = new TestContext().withSecret('other', 'x');
  let seen = 'unset';
  ctx.run((c) => {
    seen = c.secret('webhook_token');
  }, event());
  assert.equal(seen, undefined);
  assert.throws(() => ctx.run(notify, event()), { kind: 'permanent', message: 'no webhook_token' });
  assert.equal(ctx.requests.length, 0);
});

test('an uncanned request throws a clear error that a catch of HttpError does not hide', () => {
  const ctx = new TestContext().withSecret('webhook_token', 't');
  const swallowing = (c) => {
    try {
      c.http().get('https://api.example.com/x?y=1');
    } catch (e) {
      if (!(e instanceof HttpError)) throw e;
    }
  };
  assert.throws(
    () => ctx.run(swallowing, event()),
    (e) =>
      e instanceof HandlerError &&
      e.cause instanceof UncannedRequest &&
      /no canned response for GET https:\/\/api\.example\.com\/x\?y=1/.test(e.message) &&
      /withHttpResponse/.test(e.message),
  );
  // Recorded all the same.
  assert.equal(ctx.requests[0].url, 'https://api.example.com/x?y=1');
});

test('a function answers what the canned responses do not; undefined passes on', () => {
  const ctx = new TestContext()
    .withHttpResponse('GET', 'https://a.example.com/fixed', { body: 'fixed' })
    .withHttpHandler((r) => (r.url.endsWith('/skip') ? undefined : { status: 202, headers: { 'X-Echo': r.method }, body: r.body }))
    .withHttpHandler((r) => (r.url.endsWith('/skip') ? { status: 404 } : undefined));
  const seen = [];
  ctx.run((c) => {
    const client = c.http();
    for (const [method, url, options] of [
      ['GET', 'https://a.example.com/fixed', {}],
      ['PUT', 'https://a.example.com/any', { body: 'put me' }],
      ['DELETE', 'https://a.example.com/skip', {}],
    ]) {
      const r = client.request(method, url, options);
      seen.push([r.status, r.header('x-echo'), r.text()]);
    }
  }, event());
  assert.deepEqual(seen, [
    [200, undefined, 'fixed'],
    [202, 'PUT', 'put me'],
    [404, undefined, ''],
  ]);
});

test('the helpers send their method; headers may be pairs', () => {
  const ctx = new TestContext().withHttpHandler(() => ({ status: 200 }));
  ctx.run((c) => {
    const h = c.http();
    h.get('https://x.example.com/');
    h.post('https://x.example.com/', { body: new Uint8Array([1, 2]) });
    h.put('https://x.example.com/', { headers: [['X-A', '1'], ['x-a', '2']] });
    h.delete('https://x.example.com/');
    h.request('patch', 'http://x.example.com:8080/p');
  }, event());
  assert.deepEqual(
    ctx.requests.map((r) => r.method),
    ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'],
  );
  assert.deepEqual([...ctx.requests[1].body], [1, 2]);
  assert.deepEqual(ctx.requests[2].headers, [
    ['x-a', '1'],
    ['x-a', '2'],
    ['idempotency-key', idempotencyKey('test-event-1', 2)],
    ['traceparent', TEST_TRACEPARENT],
  ]);
});

test('a canned HttpError fails the request; uncaught, it fails the delivery as its kind says', () => {
  for (const [error, kind] of [
    [new HttpDenied('not allowed', 'HTTP-request-denied'), 'permanent'],
    [new HttpTooLarge('too big'), 'permanent'],
    [new HttpTimeout('slow'), 'retryable'],
    [new HttpConnection('refused'), 'retryable'],
    [new HttpOther('odd'), 'retryable'],
    [new HttpInvalidRequest('bad'), 'permanent'],
    [new HttpInvalidResponse('not json'), 'permanent'],
  ]) {
    const ctx = new TestContext()
      .withSecret('webhook_token', 't')
      .withHttpResponse('POST', 'https://hooks.example.com/alert', error);
    assert.throws(() => ctx.run(notify, event()), (e) => e instanceof HandlerError && e.kind === kind && e.message === error.message);
    assert.equal(ctx.emitted.length, 0);
    // Caught, the handler sees the HttpError itself.
    ctx.run((c) => {
      try {
        c.http().post('https://hooks.example.com/alert');
        assert.fail('no error');
      } catch (e) {
        assert.equal(e, error);
        assert.equal(e.toHandlerError().kind, kind);
      }
    }, event());
  }
});

test('a non-2xx response is a response; redirects are returned, not followed', () => {
  const ctx = new TestContext().withHttpResponse('GET', 'https://a.example.com/old', {
    status: 302,
    headers: { Location: 'https://elsewhere.example.net/' },
  });
  let response;
  ctx.run((c) => {
    response = c.http().get('https://a.example.com/old');
  }, event());
  assert.equal(response.status, 302);
  assert.equal(response.ok, false);
  assert.equal(response.header('location'), 'https://elsewhere.example.net/');
  assert.equal(ctx.requests.length, 1);
});

test('a response body that is not JSON or not UTF-8 is an HttpInvalidResponse, permanent', () => {
  assert.throws(() => new HttpResponse(200, [], new TextEncoder().encode('nope')).json(), (e) => e instanceof HttpInvalidResponse && !e.retryable);
  assert.throws(() => new HttpResponse(200, [], new Uint8Array([0xff, 0xfe])).text(), HttpInvalidResponse);
  assert.deepEqual(new HttpResponse(200, [['A', 'b']], new TextEncoder().encode('[1]')).json(), [1]);
});

test('bad requests are refused before they are sent', () => {
  const refused = [
    ['GET', 'not a url', {}, /not an absolute URL/],
    ['GET', 'ftp://files.example.com/x', {}, /only http and https/],
    ['GET', 'https://user:pw@example.com/', {}, /credentials/],
    ['BAD METHOD', 'https://example.com/', {}, /not an HTTP method/],
    ['POST', 'https://example.com/', { body: 'a', json: 1 }, /body or json, not both/],
    ['POST', 'https://example.com/', { body: 42 }, /Uint8Array or a string/],
    ['GET', 'https://example.com/', { timeout: -1 }, /positive number/],
    ['POST', 'https://example.com/', { json: 1n }, /no JSON form/],
  ];
  for (const [method, url, options, message] of refused) {
    assert.throws(
      () => buildRequest(method, url, options),
      (e) => e instanceof HttpInvalidRequest && e.kind === 'invalid-request' && !e.retryable && message.test(e.message),
      `${method} ${url}`,
    );
  }
  const ctx = new TestContext();
  ctx.run((c) => {
    assert.throws(() => c.http().get('ftp://x/'), HttpInvalidRequest);
  }, event());
  assert.equal(ctx.requests.length, 0);
});

test('a request is split as wasi:http wants it', () => {
  const r = buildRequest('post', 'https://API.example.com:8443/a/b?c=d#frag', { json: { a: 1 } });
  assert.equal(r.method, 'POST');
  assert.equal(r.scheme, 'https');
  assert.equal(r.authority, 'api.example.com:8443');
  assert.equal(r.pathWithQuery, '/a/b?c=d');
  assert.deepEqual(r.headers, [['content-type', 'application/json']]);
  assert.equal(buildRequest('GET', 'http://example.com:80').authority, 'example.com');
  assert.equal(buildRequest('GET', 'http://example.com').pathWithQuery, '/');
  assert.equal(buildRequest('GET', 'http://[::1]:8080/').authority, '[::1]:8080');
});

test('wasi:http error codes map to the kinds of the Rust SDK', () => {
  const cases = [
    [{ tag: 'HTTP-request-denied' }, HttpDenied, false],
    [{ tag: 'destination-IP-prohibited' }, HttpDenied, false],
    [{ tag: 'connection-timeout' }, HttpTimeout, true],
    [{ tag: 'HTTP-response-timeout' }, HttpTimeout, true],
    [{ tag: 'HTTP-response-body-size', val: 4194305n }, HttpTooLarge, false],
    [{ tag: 'HTTP-request-body-size', val: undefined }, HttpTooLarge, false],
    [{ tag: 'connection-refused' }, HttpConnection, true],
    [{ tag: 'DNS-error', val: { rcode: 'NXDOMAIN', infoCode: undefined } }, HttpConnection, true],
    [{ tag: 'connection-limit-reached' }, HttpConnection, true],
    [{ tag: 'HTTP-request-URI-invalid' }, HttpInvalidRequest, false],
    [{ tag: 'HTTP-request-method-invalid' }, HttpInvalidRequest, false],
    [{ tag: 'internal-error', val: 'boom' }, HttpOther, true],
    [{ tag: 'something-new' }, HttpOther, true],
  ];
  for (const [code, Class, retryable] of cases) {
    const e = errorFromCode(code, 'GET https://x.example.com/');
    assert.ok(e instanceof Class, code.tag);
    assert.ok(e instanceof HttpError);
    assert.equal(e.code, code.tag);
    assert.equal(e.retryable, retryable, code.tag);
    assert.ok(e.message.startsWith(`GET https://x.example.com/ failed: ${code.tag}`), e.message);
    assert.ok(HTTP_ERROR_KINDS.includes(e.kind));
  }
  assert.match(errorFromCode({ tag: 'HTTP-response-body-size', val: 5n }, 'x').message, /\(5\)/);
  assert.match(errorFromCode({ tag: 'DNS-error', val: { rcode: 'NXDOMAIN' } }, 'x').message, /rcode NXDOMAIN/);
  assert.match(errorFromCode({ tag: 'internal-error', val: 'boom' }, 'x').message, /: boom$/);
});

test('requests of a failed run stay recorded; its emits do not', () => {
  const ctx = new TestContext()
    .withSecret('webhook_token', 't')
    .withHttpResponse('POST', 'https://hooks.example.com/alert', { status: 503 });
  assert.throws(() => ctx.run(notify, event()), { kind: 'retryable', message: 'the webhook answered 503' });
  assert.equal(ctx.requests.length, 1);
  assert.equal(ctx.emitted.length, 0);
});

test('every request carries the idempotency key of its index in the run, the same on a retry', () => {
  const ctx = new TestContext().withHttpHandler(() => ({ status: 200 }));
  const twice = (c) => {
    c.http().get('https://a.example.com/1');
    c.http().get('https://a.example.com/2');
  };
  const retried = Event.create('x', { id: 'evt-9' });
  ctx.run(twice, retried);
  ctx.run(twice, Event.create('x', { id: 'evt-9', attempt: 2 }));
  assert.deepEqual(
    ctx.requests.map((r) => r.header('idempotency-key')),
    [0, 1, 0, 1].map((i) => idempotencyKey('evt-9', i)),
  );
  assert.ok(ctx.requests.every((r) => r.header('traceparent') === TEST_TRACEPARENT));
  // A handler's own idempotency-key is replaced, as the host replaces it.
  ctx.run((c) => c.http().get('https://a.example.com/3', { headers: { 'Idempotency-Key': 'mine' } }), Event.create('x', { id: 'evt-10' }));
  assert.equal(ctx.requests[4].header('idempotency-key'), idempotencyKey('evt-10', 0));
  assert.equal(ctx.requests[4].headers.filter(([k]) => k === 'idempotency-key').length, 1);
});
