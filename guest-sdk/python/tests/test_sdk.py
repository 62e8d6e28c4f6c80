"""Tests of the SDK and of its test context (``pytest``)."""

from typing import List

import pytest

import plugbus
from plugbus import Context, EmitError, Event, HandlerError, Level, OutgoingEvent, StateError
from plugbus.testing import MAX_EMITS_PER_DELIVERY, MAX_STATE_KEY_BYTES, TestContext

# Events


def test_a_test_event_has_the_documented_defaults() -> None:
    event = Event("order.created")
    assert (event.id, event.source, event.tenant, event.attempt) == ("test-event-1", "test", "test-tenant", 1)
    assert event.datacontenttype == "application/json"
    assert event.data == b"" and event.subject is None and dict(event.extensions) == {}


def test_json_decodes_the_payload() -> None:
    event = Event.from_json("order.created", {"id": "o-1", "total": 12}, subject="o-1", attempt=3)
    assert event.json() == {"id": "o-1", "total": 12}
    assert event.subject == "o-1" and event.attempt == 3
    assert event.text() == '{"id":"o-1","total":12}'


def test_a_payload_that_is_not_json_is_a_permanent_error_naming_the_event() -> None:
    with pytest.raises(HandlerError) as err:
        Event("order.created", data=b"{nope", id="e-7").json()
    assert err.value.is_permanent
    assert "order.created" in err.value.message and "e-7" in err.value.message
    with pytest.raises(HandlerError):
        Event("order.created", data=b"\xff").json()
    assert Event("x", data=b"\xff").text() is None


def test_extensions_and_replace() -> None:
    event = Event("x", extensions={"correlationid": "c-1"})
    assert event.extension("correlationid") == "c-1"
    assert event.extension("missing") is None
    assert event.replace(attempt=2).attempt == 2 and event.attempt == 1


# Handler errors


def test_handler_errors_say_their_kind() -> None:
    retry = HandlerError.retryable("db down")
    assert retry.is_retryable and not retry.is_permanent and str(retry) == "retryable: db down"
    permanent = HandlerError.permanent("bad sku")
    assert permanent.is_permanent and permanent.message == "bad sku"
    assert repr(permanent) == "HandlerError.permanent('bad sku')"
    with pytest.raises(ValueError):
        HandlerError("maybe", "x")
    assert EmitError("too many").is_permanent and StateError("too big").is_permanent


# The test context


def test_emits_logs_and_config_are_served_and_recorded() -> None:
    def handle(ctx: Context, event: Event) -> None:
        greeting = ctx.config("greeting", "hello")
        ctx.trace("t")
        ctx.debug("d")
        ctx.info(f"{greeting} {event.id}")
        ctx.warn("w")
        ctx.error("e")
        ctx.log(Level.INFO, "direct")
        first = ctx.emit("raw.event", "text", subject="s", extensions={"partitionkey": "p"})
        second = ctx.emit_json("json.event", {"a": [1, 2]}, dataschema="urn:x")
        assert (first, second) == ("emitted-1", "emitted-2")

    ctx = TestContext(config={"greeting": "hi"})
    ctx.run(handle, Event("order.created", id="o-1"))
    assert ctx.logs == [
        (Level.TRACE, "t"),
        (Level.DEBUG, "d"),
        (Level.INFO, "hi o-1"),
        (Level.WARN, "w"),
        (Level.ERROR, "e"),
        (Level.INFO, "direct"),
    ]
    assert ctx.messages(Level.WARN) == ["w"]
    assert ctx.emitted[0] == OutgoingEvent(
        type="raw.event", data=b"text", subject="s", extensions={"partitionkey": "p"}
    )
    assert ctx.emitted[1].datacontenttype == "application/json"
    assert ctx.emitted[1].dataschema == "urn:x"
    assert ctx.emitted[1].json() == {"a": [1, 2]}


def test_typed_config() -> None:
    seen: List[object] = []

    def handle(ctx: Context, event: Event) -> None:
        seen.extend(
            [
                ctx.config_int("n"),
                ctx.config_int("missing", 7),
                ctx.config_float("ratio"),
                ctx.config_bool("on"),
                ctx.config_json("list"),
                ctx.config("missing"),
            ]
        )

    TestContext(config={"n": " 12 ", "ratio": "0.5", "on": "yes", "list": "[1]"}).run(handle, Event("x"))
    assert seen == [12, 7, 0.5, True, [1], None]
    for key, value in [("n", "ten"), ("ratio", "half"), ("on", "perhaps"), ("list", "[")]:
        ctx = TestContext(config={key: value})

        def read(ctx: Context, event: Event, key: str = key) -> None:
            {"n": ctx.config_int, "ratio": ctx.config_float, "on": ctx.config_bool, "list": ctx.config_json}[key](key)

        with pytest.raises(HandlerError) as err:
            ctx.run(read, Event("x"))
        assert err.value.is_permanent and key in err.value.message and value in err.value.message


def test_state_bytes_and_json_see_the_runs_own_writes() -> None:
    def handle(ctx: Context, event: Event) -> None:
        assert ctx.state.get("missing") is None
        assert ctx.state.get_json("missing", 0) == 0
        ctx.state.set("raw", b"\x00\x01")
        ctx.state.set("text", "héllo")
        ctx.state.set_json("count", ctx.state.get_json("count", 0) + 1)
        assert ctx.state.get_json("count") == 6
        ctx.state.delete("old")
        ctx.state.delete("never-there")

    ctx = TestContext(state={"count": 5, "old": b"x"})
    ctx.run(handle, Event("x"))
    assert ctx.state == {"count": b"6", "raw": b"\x00\x01", "text": "héllo".encode()}
    assert ctx.state_json("count") == 6


def test_state_that_does_not_decode_is_a_permanent_error() -> None:
    def handle(ctx: Context, event: Event) -> None:
        ctx.state.get_json("raw")

    with pytest.raises(HandlerError) as err:
        TestContext(state={"raw": b"\xff"}).run(handle, Event("x"))
    assert err.value.is_permanent and "'raw'" in err.value.message


def test_a_failed_run_undoes_its_writes_and_emits_but_keeps_its_logs() -> None:
    def handle(ctx: Context, event: Event) -> None:
        ctx.state.set_json("count", ctx.state.get_json("count", 0) + 1)
        ctx.state.delete("keep")
        ctx.emit_json("counted", {"n": ctx.state.get_json("count")})
        ctx.info("counted")
        if event.type == "fail":
            raise HandlerError.retryable("after writing")

    ctx = TestContext(state={"keep": "k"})
    ctx.run(handle, Event("ok"))
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, Event("fail"))
    assert err.value.is_retryable and err.value.message == "after writing"
    assert ctx.state_json("count") == 1
    assert "keep" not in ctx.state
    assert [e.json() for e in ctx.emitted] == [{"n": 1}]
    assert ctx.messages() == ["counted", "counted"]


def test_an_uncaught_exception_is_a_retryable_failure_with_type_text_and_traceback() -> None:
    def helper() -> None:
        raise KeyError("sku-9")

    def handle(ctx: Context, event: Event) -> None:
        ctx.state.set("k", b"v")
        ctx.emit("x.y")
        helper()

    ctx = TestContext()
    with pytest.raises(HandlerError) as err:
        ctx.run(handle, Event("x"))
    message = err.value.message
    assert err.value.is_retryable
    assert message.startswith("uncaught KeyError: 'sku-9'")
    assert "Traceback (last lines):" in message and "in helper" in message
    assert isinstance(err.value.__cause__, KeyError)
    assert ctx.state == {} and ctx.emitted == []


def test_sys_exit_and_an_exception_whose_str_raises_are_failures_too() -> None:
    import sys

    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def exits(ctx: Context, event: Event) -> None:
        ctx.state.set("k", b"v")
        sys.exit(3)

    def broken(ctx: Context, event: Event) -> None:
        raise Broken()

    ctx = TestContext()
    with pytest.raises(HandlerError) as err:
        ctx.run(exits, Event("x"))
    assert err.value.is_retryable and err.value.message.startswith("uncaught SystemExit: 3")
    assert ctx.state == {}
    with pytest.raises(HandlerError) as err:
        ctx.run(broken, Event("x"))
    assert err.value.message.startswith("uncaught ")
    assert "Broken: <str() of the exception failed>" in err.value.message


def test_a_handler_error_message_that_is_not_a_string_is_kept_as_text() -> None:
    assert HandlerError.permanent(123).message == "123"  # type: ignore[arg-type]


def test_the_exception_message_is_bounded_and_keeps_its_head() -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("x" * 5000)
        deep(n - 1)

    try:
        deep(50)
    except ValueError as e:
        message = plugbus.describe_exception(e)
    assert len(message) <= plugbus.MAX_FAILURE_CHARS
    assert message.startswith("uncaught ValueError: xxx")

    class Custom(Exception):
        pass

    try:
        deep(50)
        raise Custom("short")
    except Exception:
        pass
    try:
        raise Custom("short")
    except Custom as e:
        message = plugbus.describe_exception(e)
    assert "Custom: short" in message
    assert message.count("\n") <= 13


def test_host_refusals_raise_like_in_the_component() -> None:
    def emit(type: str, **extensions: str):  # type: ignore[no-untyped-def]
        def handle(ctx: Context, event: Event) -> None:
            ctx.emit(type, extensions=extensions)

        return handle

    for handler, words in [
        (emit(""), "must not be empty"),
        (emit("bad\ntype"), "control character"),
        (emit("x", causationid="c"), "set by the host"),
        (emit("x", Bad="v"), "lowercase letters or digits"),
        (emit("x", subject="v"), "reserved"),
    ]:
        ctx = TestContext()
        with pytest.raises(EmitError) as err:
            ctx.run(handler, Event("x"))
        assert err.value.is_permanent and words in err.value.message, err.value.message

    def flood(ctx: Context, event: Event) -> None:
        for _ in range(MAX_EMITS_PER_DELIVERY + 1):
            ctx.emit("x")

    with pytest.raises(EmitError) as err:
        TestContext().run(flood, Event("x"))
    assert f"at most {MAX_EMITS_PER_DELIVERY}" in err.value.message

    def long_key(ctx: Context, event: Event) -> None:
        ctx.state.set("k" * (MAX_STATE_KEY_BYTES + 1), b"")

    with pytest.raises(StateError) as state_err:
        TestContext().run(long_key, Event("x"))
    assert state_err.value.is_permanent and "state write refused" in str(state_err.value)


def test_a_caught_refusal_lets_the_handler_go_on() -> None:
    def handle(ctx: Context, event: Event) -> None:
        try:
            ctx.emit("x")
        except EmitError as e:
            ctx.warn(f"skipped: {e.reason}")

    ctx = TestContext(refuse_emits="chain depth limit reached")
    ctx.run(handle, Event("x"))
    assert ctx.messages() == ["skipped: chain depth limit reached"]


def test_the_attempt_reaches_the_context() -> None:
    seen: List[int] = []

    def handle(ctx: Context, event: Event) -> None:
        seen.append(ctx.attempt)

    TestContext().run(handle, Event("x", attempt=4))
    assert seen == [4]


def test_run_takes_the_exported_class_and_export_stays_native() -> None:
    calls: List[str] = []

    def handle(ctx: Context, event: Event) -> None:
        calls.append(event.type)

    world = plugbus.export(handle)
    TestContext().run(world, Event("via.class"))
    assert calls == ["via.class"]
    with pytest.raises(RuntimeError):
        world().handle(object())


def test_json_that_does_not_serialise_is_a_permanent_error() -> None:
    def handle(ctx: Context, event: Event) -> None:
        ctx.emit_json("x", {"f": float("nan")})

    with pytest.raises(HandlerError) as err:
        TestContext().run(handle, Event("x"))
    assert err.value.is_permanent and "JSON" in err.value.message

    def store(ctx: Context, event: Event) -> None:
        ctx.state.set_json("k", object())

    with pytest.raises(HandlerError):
        TestContext().run(store, Event("x"))


# Secrets and outbound HTTP


from plugbus import (  # noqa: E402
    HttpConnectionError,
    HttpDeniedError,
    HttpError,
    HttpInvalidRequestError,
    HttpOtherError,
    HttpTimeoutError,
    HttpTooLargeError,
    Request,
    Response,
)
from plugbus.http import WASI_HTTP_ERROR_CODES, error_for_code  # noqa: E402
from plugbus.testing import (  # noqa: E402
    MAX_REQUESTS_PER_DELIVERY,
    TEST_TRACEPARENT,
    UncannedRequest,
    idempotency_key,
)


def test_secrets_are_served_by_name_and_none_otherwise() -> None:
    seen: List[object] = []
    ctx = TestContext(secrets={"webhook_token": "t0k"})
    ctx.run(lambda c, e: seen.extend([c.secret("webhook_token"), c.secret("other")]), Event("x"))
    assert seen == ["t0k", None]


def _post_alert(ctx: Context, event: Event) -> None:
    url = ctx.config("webhook_url")
    token = ctx.secret("webhook_token")
    response = ctx.http().post(url, json={"sku": event.json()["sku"]}, headers={"Authorization": f"Bearer {token}"})
    if response.status >= 500:
        raise HandlerError.retryable(f"the webhook answered {response.status}")
    ctx.emit_json("alert.sent", {"status": response.status, "reply": response.json()})


def test_canned_responses_answer_and_requests_are_recorded() -> None:
    ctx = TestContext(
        config={"webhook_url": "https://hooks.example.com/stock"},
        secrets={"webhook_token": "t0k"},
        http={("post", "https://hooks.example.com/stock"): Response.from_json(201, {"id": 7})},
    )
    ctx.run(_post_alert, Event.from_json("x", {"sku": "a"}))
    [request] = ctx.requests
    assert (request.method, request.url) == ("POST", "https://hooks.example.com/stock")
    assert request.header("authorization") == "Bearer t0k"
    assert request.header("Content-Type") == "application/json"
    assert request.json() == {"sku": "a"}
    assert ctx.emitted[0].json() == {"status": 201, "reply": {"id": 7}}


def test_a_request_with_no_canned_answer_is_a_clear_error_even_when_caught() -> None:
    def swallow(ctx: Context, event: Event) -> None:
        try:
            ctx.http().get("https://api.example.com/x")
        except Exception:
            pass
        ctx.emit("after")

    ctx = TestContext(http={"https://api.example.com/y": 200})
    with pytest.raises(UncannedRequest) as err:
        ctx.run(swallow, Event("x"))
    assert "GET https://api.example.com/x" in str(err.value)
    assert "https://api.example.com/y" in str(err.value)
    assert ctx.emitted == [] and len(ctx.requests) == 1


def test_canned_answers_take_every_documented_form() -> None:
    ctx = TestContext(
        http={
            "https://a.example/status": 204,
            "https://a.example/bytes": (200, b"\x00\x01"),
            "https://a.example/text": (200, "h\u00e9"),
            "https://a.example/json": (200, {"k": [1]}),
            ("PUT", "https://a.example/fn"): lambda r: Response(200, body=r.body[::-1]),
        }
    )
    got: List[Response] = []

    def handler(c: Context, e: Event) -> None:
        http = c.http()
        got.append(http.delete("https://a.example/status"))
        got.append(http.get("https://a.example/bytes"))
        got.append(http.get("https://a.example/text"))
        got.append(http.get("https://a.example/json"))
        got.append(http.put("https://a.example/fn", body="abc"))

    ctx.run(handler, Event("x"))
    status, raw, text, data, fn = got
    assert status.status == 204 and status.body == b"" and status.ok
    assert raw.body == b"\x00\x01"
    assert text.text() == "h\u00e9" and text.header("content-type").startswith("text/plain")
    assert data.json() == {"k": [1]} and data.header("Content-Type") == "application/json"
    assert fn.text() == "cba"
    assert [r.method for r in ctx.requests] == ["DELETE", "GET", "GET", "GET", "PUT"]


def test_a_function_answers_every_request() -> None:
    ctx = TestContext(http=lambda r: (500, f"no {r.url}") if "fail" in r.url else 200)
    ctx.run(lambda c, e: c.http().get("https://a.example/ok"), Event("x"))
    with pytest.raises(HandlerError) as err:
        ctx.run(_post_alert, Event.from_json("x", {"sku": "a"}))  # no webhook_url: url None
    assert isinstance(err.value, HttpInvalidRequestError) and err.value.is_permanent
    assert "invalid-url" in err.value.message
    ctx.config["webhook_url"] = "https://a.example/fail"
    with pytest.raises(HandlerError) as err:
        ctx.run(_post_alert, Event.from_json("x", {"sku": "a"}))
    assert err.value.is_retryable and "answered 500" in err.value.message


def test_request_options_headers_and_bodies() -> None:
    ctx = TestContext(http=lambda r: 200)

    def handler(c: Context, e: Event) -> None:
        http = c.http()
        http.request("patch", "https://a.example/1", headers=[("X-Twice", "1"), ("x-twice", "2")], body=b"raw", timeout=2.5)
        http.post("https://a.example/2", json=[1], headers={"content-type": "application/vnd.x+json"})
        http.post("https://a.example/3", body="t\u00e9xt")

    ctx.run(handler, Event("x"))
    first, second, third = ctx.requests
    assert first.method == "PATCH" and first.timeout == 2.5 and first.body == b"raw"
    assert first.headers[:2] == [("X-Twice", "1"), ("x-twice", "2")] and first.header("x-TWICE") == "1"
    assert second.header("content-type") == "application/vnd.x+json" and second.body == b"[1]"
    assert [n for n, _ in second.headers].count("content-type") == 1
    assert third.text() == "t\u00e9xt" and third.timeout is None
    with pytest.raises(HandlerError):  # body and json at once: a ValueError, uncaught
        ctx.run(lambda c, e: c.http().post("https://a.example/", body=b"x", json={}), Event("x"))
    with pytest.raises(HandlerError):
        ctx.run(lambda c, e: c.http().get("https://a.example/", timeout=0), Event("x"))
    with pytest.raises(HttpInvalidRequestError) as bad:
        ctx.run(lambda c, e: c.http().request("GE T", "https://a.example/"), Event("x"))
    assert bad.value.is_permanent and bad.value.code == "HTTP-request-method-invalid"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (HttpDeniedError("HTTP-request-denied"), "permanent"),
        (HttpTimeoutError("HTTP-response-timeout"), "retryable"),
        (HttpTooLargeError("HTTP-response-body-size"), "permanent"),
        (HttpConnectionError("connection-refused"), "retryable"),
        (HttpInvalidRequestError("invalid-header"), "permanent"),
        (HttpOtherError("internal-error"), "retryable"),
    ],
)
def test_a_canned_error_is_raised_and_left_uncaught_fails_the_delivery_by_its_kind(error: HttpError, kind: str) -> None:
    ctx = TestContext(http={"https://a.example/": error})

    def handler(c: Context, e: Event) -> None:
        c.state.set("k", b"v")
        c.http().get("https://a.example/")

    with pytest.raises(HttpError) as err:
        ctx.run(handler, Event("x"))
    assert err.value is error and err.value.kind == kind and ctx.state == {}
    plain = error.to_handler_error("posting the alert")
    assert type(plain) is HandlerError and plain.kind == kind
    assert plain.message.startswith("posting the alert: outbound HTTP request")
    assert error.code in plain.message


def test_every_wasi_error_code_maps_to_a_class() -> None:
    assert len(WASI_HTTP_ERROR_CODES) == 39
    classes = {code: type(error_for_code(code)) for code in WASI_HTTP_ERROR_CODES}
    assert classes["HTTP-request-denied"] is HttpDeniedError
    assert classes["destination-IP-prohibited"] is HttpDeniedError
    assert classes["DNS-timeout"] is HttpTimeoutError and classes["connection-read-timeout"] is HttpTimeoutError
    assert classes["HTTP-response-body-size"] is HttpTooLargeError
    assert classes["HTTP-request-body-size"] is HttpTooLargeError
    assert classes["connection-refused"] is HttpConnectionError and classes["TLS-certificate-error"] is HttpConnectionError
    assert classes["HTTP-protocol-error"] is HttpConnectionError
    assert classes["HTTP-request-URI-invalid"] is HttpInvalidRequestError
    assert classes["internal-error"] is HttpOtherError and classes["loop-detected"] is HttpOtherError
    assert error_for_code("HTTP-request-URI-invalid").is_permanent
    assert error_for_code("no-such-code").code == "no-such-code"
    denied = error_for_code("HTTP-request-denied", "origin not allowed")
    assert str(denied) == (
        "permanent: outbound HTTP request denied: HTTP-request-denied (origin not allowed): "
        "is its origin in the manifest's [http] allow?"
    )
    assert repr(denied) == "HttpDeniedError('HTTP-request-denied')"


def test_bindings_error_codes_are_named_as_the_wit_spells_them() -> None:
    from plugbus.http import _code_name

    class ErrorCode_HttpRequestUriTooLong:  # noqa: N801  (the bindings' spelling)
        pass

    class Payload:
        def __init__(self) -> None:
            self.field_name = "x-big"
            self.field_size = None

    class ErrorCode_HttpResponseHeaderSize:  # noqa: N801
        value = Payload()

    class ErrorCode_InternalError:  # noqa: N801
        value = "boom"

    assert _code_name(ErrorCode_HttpRequestUriTooLong()) == ("HTTP-request-URI-too-long", None)
    assert _code_name(ErrorCode_HttpResponseHeaderSize()) == ("HTTP-response-header-size", "field_name=x-big")
    assert _code_name(ErrorCode_InternalError()) == ("internal-error", "boom")


def test_urls_are_split_for_wasi_http_or_refused() -> None:
    from plugbus.http import _split_url

    assert _split_url("https://API.example.com:8443/a/b?c=d#frag") == ("https", "API.example.com:8443", "/a/b?c=d")
    assert _split_url("http://127.0.0.1") == ("http", "127.0.0.1", "/")
    for bad in ("not a url", "/relative", "ftp://x.example/f", "https://user:pw@x.example/", "http://x.example:99999/"):
        with pytest.raises(HttpInvalidRequestError) as err:
            _split_url(bad)
        assert err.value.code == "invalid-url" and err.value.is_permanent


def test_a_delivery_sends_at_most_the_hosts_default_number_of_requests() -> None:
    ctx = TestContext(http=lambda r: 200)

    def handler(c: Context, e: Event) -> None:
        for _ in range(MAX_REQUESTS_PER_DELIVERY + 1):
            c.http().get("https://a.example/")

    with pytest.raises(HttpDeniedError):
        ctx.run(handler, Event("x"))
    assert len(ctx.requests) == MAX_REQUESTS_PER_DELIVERY
    ctx.run(lambda c, e: c.http().get("https://a.example/"), Event("x"))  # counted per delivery


def test_requests_and_responses_read_like_events() -> None:
    request = Request("POST", "https://a.example/", [("A", "1")], b"{bad")
    with pytest.raises(HandlerError) as err:
        request.json()
    assert err.value.is_permanent and "POST https://a.example/" in err.value.message
    response = Response(404, body=b"\xffnope")
    assert not response.ok and response.text() == "\ufffdnope" and response.header("x") is None
    with pytest.raises(HandlerError):
        response.json()
    with pytest.raises(TypeError):
        ctx = TestContext(http={"https://a.example/": object()})
        ctx.run(lambda c, e: c.http().get("https://a.example/"), Event("x"))


def test_requests_carry_the_hosts_headers_the_same_on_every_attempt() -> None:
    ctx = TestContext(http=lambda r: 500)

    def handler(c: Context, e: Event) -> None:
        for path in ("a", "b"):
            c.http().get(f"https://a.example/{path}")
        raise HandlerError.retryable("again")

    for attempt in (1, 2):
        with pytest.raises(HandlerError):
            ctx.run(handler, Event("x", id="evt-9", attempt=attempt))
    keys = [r.header("idempotency-key") for r in ctx.requests]
    assert keys == [idempotency_key("evt-9", 0), idempotency_key("evt-9", 1)] * 2
    assert all(r.header("traceparent") == TEST_TRACEPARENT for r in ctx.requests)
    with pytest.raises(HttpInvalidRequestError):  # refused before it is recorded
        ctx.run(lambda c, e: c.http().get("ftp://a.example/"), Event("x"))
    assert len(ctx.requests) == 4
