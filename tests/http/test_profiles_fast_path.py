"""The fast exchange path gives what the straightforward rules give.

``envoy_request_headers`` is one pass over the client's headers, ``StreamProfile`` remembers
the events of requests it has seen, ``HeaderMap.items`` remembers decoded entries and
``Plugin.exchange`` reads the stream once: each is checked here against the plain version
(kept below as the reference, as it was before the fast path) on generated input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from conftest import fixture_wasm
from hypothesis import given, settings
from hypothesis import strategies as st

from proxywasm_host import Host
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.stream import CallbackRecord
from proxywasm_host.harness import Plugin
from proxywasm_host.http.profiles import HOP_BY_HOP, get_profile
from proxywasm_host.http.scenario import HttpRequest, HttpResponse, header_list

Pairs = list[tuple[str, str]]


# -- the reference: the rules written out step by step ----------------------------------------
def _te(value: str) -> str | None:
    tokens = [t.split(";", 1)[0].strip().lower() for t in value.split(",")]
    return "trailers" if "trailers" in tokens else None


def _clean(pairs: Iterable[tuple[str, str]]) -> Pairs:
    out: Pairs = []
    for name, value in pairs:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            continue
        if lname == "te":
            te = _te(value)
            if te is None:
                continue
            value = te
        out.append((lname, value))
    return out


def _first(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    for k, v in pairs:
        if k.lower() == name:
            return v
    return None


def reference_request_headers(headers: Sequence[tuple[str, str]], http2: bool, request_id: str) -> Pairs:
    pseudo: dict[str, str] = {}
    order: list[str] = []
    regular: Pairs = []
    for name, value in header_list(headers):
        if name.startswith(":"):
            key = name.lower()
            if key not in pseudo:
                order.append(key)
            pseudo[key] = value
        else:
            regular.append((name, value))
    host = _first(regular, "host")
    values = {
        ":method": pseudo.get(":method", "GET"),
        ":path": pseudo.get(":path", "/"),
        ":scheme": pseudo.get(":scheme", "http"),
        ":authority": pseudo.get(":authority", host if host is not None else "localhost"),
    }
    if not http2:
        if host is not None:
            values[":authority"] = host
        body = [(k, v) for k, v in _clean(regular) if k != "host"]
        xfp = _first(body, "x-forwarded-proto")
        values[":scheme"] = xfp if xfp is not None and xfp.lower() in ("http", "https") else "http"
        out = [(k, values[k]) for k in (":authority", ":path", ":method", ":scheme")]
    else:
        names = order + [k for k in (":method", ":scheme", ":authority", ":path") if k not in pseudo]
        out = [(k, values.get(k, pseudo.get(k, ""))) for k in names]
        body = [(k, v) for k, v in _clean(regular) if not (k == "host" and v == values[":authority"])]
    body = [(k, v) for k, v in body if k != "x-envoy-internal"]
    out += body
    if _first(body, "x-forwarded-proto") is None:
        out.append(("x-forwarded-proto", "http"))
    if _first(body, "x-request-id") is None:
        out.append(("x-request-id", request_id))
    return out


# -- generated requests: the names the rules treat specially, in any case ----------------------
NAMES = [
    ":method",
    ":path",
    ":authority",
    ":scheme",
    ":protocol",
    "host",
    "Host",
    "HOST",
    "x-forwarded-proto",
    "X-Forwarded-Proto",
    "x-request-id",
    "te",
    "TE",
    "connection",
    "Keep-Alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "x-envoy-internal",
    "x-a",
    "X-A",
    "content-length",
]
VALUES = ["", "a", "http", "HTTPS", "ftp", "trailers", "gzip, trailers;q=1", "deflate", "localhost", "Example.COM:80"]
headers_st = st.lists(
    st.tuples(st.sampled_from(NAMES) | st.text(max_size=5), st.sampled_from(VALUES) | st.text(max_size=5)), max_size=12
).map(tuple)


@settings(max_examples=400, deadline=None)
@given(headers=headers_st, http2=st.booleans())
def test_request_headers_match_the_reference(headers: tuple[tuple[str, str], ...], http2: bool) -> None:
    profile = get_profile("envoy-http2" if http2 else "envoy-http1").with_request_id("rid")
    expected = reference_request_headers(headers, http2, "rid")
    request = HttpRequest(headers)
    assert profile.apply_request(request).headers == tuple(expected)
    # twice: the second answer comes from the profile's memory of the first
    assert list(profile.request_events(request)[0]) == expected
    assert list(profile.request_events(HttpRequest(tuple(headers)))[0]) == expected  # an equal request


def test_remembered_events_are_not_shared_with_the_caller() -> None:
    profile = get_profile("envoy-http1")
    request = HttpRequest(((":path", "/x"),))
    first = profile.request_events(request)[0]
    assert isinstance(first, list)
    first.append(("x-changed", "1"))  # the caller's list: changing it changes nothing remembered
    assert ("x-changed", "1") not in profile.request_events(request)[0]


def test_equal_but_differently_typed_requests_are_not_confused() -> None:
    # True == 1 and hash(True) == hash(1): a request with either must not answer for the other
    profile = get_profile("envoy-http1")
    one = profile.request_events(HttpRequest((("x-a", 1),)))[0]  # type: ignore[arg-type]
    true = profile.request_events(HttpRequest((("x-a", True),)))[0]  # type: ignore[arg-type]
    assert ("x-a", "1") in one
    assert ("x-a", "True") in true
    # an unhashable request (a list of headers) still works, unremembered
    assert ("x-b", "2") in profile.request_events(HttpRequest([("x-b", "2")]))[0]  # type: ignore[arg-type]


def test_response_events_are_remembered_per_response() -> None:
    profile = get_profile("envoy-http1")
    plain = profile.response_events(HttpResponse(200, (("x-a", "1"),)))
    again = profile.response_events(HttpResponse(200, (("x-a", "1"),)))
    assert list(plain[0]) == list(again[0]) == [("x-a", "1"), ("x-envoy-upstream-service-time", "0")]
    assert plain[1:] == again[1:] == ((b"",), None)
    no_body = profile.response_events(HttpResponse(204, (("x-a", "1"),)))
    assert no_body[1:] == ((b"",), None)  # an HTTP/2 upstream (the default) still sends the empty end


def test_header_map_items_decode_the_same_remembered_or_not() -> None:
    raw = [(b"x-a", b"\xff\xfe"), (b"x-b", b"ok"), (b"x-a", b"\xff\xfe")]
    first = HeaderMap(raw).items()
    second = HeaderMap(raw).items()  # remembered now
    assert first == second == [("x-a", "\udcff\udcfe"), ("x-b", "ok"), ("x-a", "\udcff\udcfe")]
    m = HeaderMap([("x-c", "v")])
    m.set_pairs([(b"x-c", bytearray(b"w"))])  # type: ignore[list-item]  # unhashable: decoded as before
    assert m.items() == [("x-c", "w")]


_PLUGINS: list[Plugin] = []


def _plugin() -> Plugin:
    if not _PLUGINS:
        _PLUGINS.append(Host().load_plugin(fixture_wasm("hello_world-wasm32-unknown-unknown")))
    return _PLUGINS[0]


@settings(max_examples=60, deadline=None)
@given(
    headers=headers_st,
    body=st.lists(st.binary(max_size=4), max_size=3),
    trailers=st.booleans(),
    profile=st.sampled_from(["envoy", "envoy-http1", "envoy-http2", "raw"]),
)
def test_exchange_delivers_what_the_applied_profile_says(
    headers: tuple[tuple[str, str], ...], body: list[bytes], trailers: bool, profile: str
) -> None:
    """Plugin.exchange (events straight from the profile) sees what a stream driven with the
    profile's HttpRequest/HttpResponse sees: the same callbacks, the same result."""
    headers = tuple((k, v) for k, v in headers if k.isascii() and k.strip() and v.isascii())
    if profile == "raw":
        headers = ((":authority", "a"), *((k.lower(), v) for k, v in headers if k.lower() != ":authority"))
    plugin = _plugin()
    request = HttpRequest(headers, tuple(body), (("x-t", "1"),) if trailers else None)
    response = HttpResponse(200, (("content-type", "text/plain"),), (b"ab",), None)
    result = plugin.exchange(request, response, profile=profile)
    stream = plugin.streams[-1]
    prof = get_profile(profile).resolve(request, response)
    req, resp = prof.apply(request, response)
    # the exchange as it was written before the fast path: through HttpStream's send_* methods
    manual = plugin.http_stream()
    manual.send_request_headers(list(req.headers), end_of_stream=not req.body_chunks and req.trailers is None)
    for i, chunk in enumerate(req.body_chunks):
        if manual.completed:
            break
        manual.send_request_body(chunk, end_of_stream=i == len(req.body_chunks) - 1 and req.trailers is None)
    if req.trailers is not None and not manual.completed:
        manual.send_request_trailers(list(req.trailers))
    if manual.upstream_request is not None and not manual.completed:
        manual.send_response_headers([(":status", "200"), *resp.headers], end_of_stream=not resp.body_chunks and resp.trailers is None)
        for i, chunk in enumerate(resp.body_chunks):
            if manual.completed:
                break
            manual.send_response_body(chunk, end_of_stream=i == len(resp.body_chunks) - 1 and resp.trailers is None)

    def seen(callbacks: list[CallbackRecord]) -> list[tuple[str, tuple[int, ...], int]]:
        return [(c.callback, c.args[1:], c.result) for c in callbacks]  # args[0]: the context id

    assert seen(stream.callbacks) == seen(manual.callbacks)
    assert result.upstream_request == manual.upstream_request
    assert result.local_reply == manual.local_response
    assert (
        result.downstream_response
        == prof.apply_result(type(result)(result.abi_version, manual.upstream_request, manual.downstream_response)).downstream_response
    )


def test_remembered_events_stay_bounded() -> None:
    from proxywasm_host.http import profiles

    profile = profiles.StreamProfile("bounded", profiles.HTTP1)
    for i in range(3 * profiles._MEMO_MAX):
        profile.request_events(HttpRequest(((":path", f"/{i}"),)))  # all different
        profile.request_events(HttpRequest(((":path", "/same"),)))  # equal, a new object each time
    assert len(profile._memo) <= profiles._MEMO_MAX + 2
    assert list(profile.request_events(HttpRequest(((":path", "/same"),)))[0])[1] == (":path", "/same")


def test_exchange_result_sides_are_snapshots_made_when_read() -> None:
    import dataclasses
    import pickle

    from proxywasm_host.http.scenario import ExchangeResult

    plugin = _plugin()
    request = HttpRequest(((":authority", "a"), (":method", "POST")), (b"abc",), (("x-t", "1"),))
    response = HttpResponse(200, (("x-r", "1"),), (b"de",), (("grpc-status", "0"),))
    result = plugin.exchange(request, response, profile="envoy-http2")
    stream = plugin.streams[-1]
    expected_up, expected_down = stream.upstream_request, stream.downstream_response
    assert "_upstream_request" in vars(result)  # not read yet
    # what happens to the stream afterwards does not change the result
    stream.take_request_body()
    stream.context.response.forwarded_body.clear()
    assert result.upstream_request == expected_up and result.upstream_request.body == b"abc"
    assert result.downstream_response == expected_down and result.downstream_response.body == b"de"
    assert result.downstream_response.trailers == [("grpc-status", "0")]
    plain = ExchangeResult(result.abi_version, expected_up, expected_down, result.local_reply, result.logs)
    assert result == plain and plain == result and repr(result) == repr(plain)
    fresh = plugin.exchange(request, response, profile="envoy-http2")
    again = pickle.loads(pickle.dumps(fresh))
    assert (again.upstream_request, again.downstream_response) == (expected_up, expected_down)
    assert dataclasses.replace(plugin.exchange(request, response, profile="envoy-http2"), logs=[]).downstream_response == expected_down
    # an HTTP/1.1 client gets no response trailers (apply_result's rule), read or not
    http1 = plugin.exchange(request, response, profile="envoy-http1")
    assert http1.downstream_response is not None and http1.downstream_response.trailers is None
    assert get_profile("envoy-http1").apply_result(http1) == http1


def test_exchange_result_of_is_the_constructor() -> None:
    """``ExchangeResult.of`` (Plugin.exchange's way to make one) gives what the dataclass's
    constructor gives: every field, the same instance dict, Later sides made when read."""
    import dataclasses

    from proxywasm_host.http.scenario import (
        DownstreamResponse,
        ExchangeResult,
        Later,
        LocalReply,
        LogRecord,
        UpstreamRequest,
    )

    up = UpstreamRequest([(":path", "/")], b"x", None)
    down = DownstreamResponse(200, [("a", "b")], b"", [("t", "1")])
    args = ("0.2.1", up, down, LocalReply(403, b"no", [], "d", None), [LogRecord("info", "m")])
    made, plain = ExchangeResult.of(*args), ExchangeResult(*args)
    assert made == plain and repr(made) == repr(plain)
    assert vars(made) == vars(plain)
    assert [getattr(made, f.name) for f in dataclasses.fields(ExchangeResult)] == list(args)
    later = ExchangeResult.of("0.2.1", Later(lambda: up), Later(lambda: down), None, [])
    assert later.upstream_request is up and later.downstream_response is down


def test_a_repeated_exchange_reuses_its_events_only_while_they_cannot_change() -> None:
    """Plugin.exchange keeps the last exchange's events (a test looping over one request):
    the same objects again give the same result; a request whose headers are a list (it can
    change in place) is worked out anew every time."""
    plugin = _plugin()
    request = HttpRequest(((":authority", "a.example"), (":path", "/")))
    first = plugin.exchange(request)
    for _ in range(3):
        again = plugin.exchange(request)  # (its logs name another context id)
        assert (again.upstream_request, again.downstream_response) == (first.upstream_request, first.downstream_response)
    assert first.upstream_request is not None
    assert ("x-hello", "Hello world from a.example") in first.upstream_request.headers
    # the same objects under another profile: its own events (HTTP/2 keeps the client's order)
    h2 = plugin.exchange(request, profile="envoy-http2")
    assert h2.upstream_request is not None
    assert [k for k, _ in h2.upstream_request.headers][:3] == [":authority", ":path", ":method"]
    assert [k for k, _ in plugin.exchange(request, profile="envoy-http1").upstream_request.headers][:4] == [  # type: ignore[union-attr]
        ":authority", ":path", ":method", ":scheme"]
    headers = [(":authority", "one.example"), (":path", "/")]
    mutable = HttpRequest(headers)  # type: ignore[arg-type]
    for _ in range(2):
        up = plugin.exchange(mutable).upstream_request
        assert up is not None and ("x-hello", "Hello world from one.example") in up.headers
    headers[0] = (":authority", "two.example")
    up = plugin.exchange(mutable).upstream_request
    assert up is not None and ("x-hello", "Hello world from two.example") in up.headers
