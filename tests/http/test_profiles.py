"""Envoy stream profiles (proxywasm_host.http.profiles): pure rules, and the filter's view in-process.

Every expectation here was measured on Envoy 1.40 (see docs/conformance.md);
tests/envoy/test_conformance.py checks the same rules against a real Envoy.
"""

from __future__ import annotations

import pytest
from conftest import RUST_TARGETS, fixture_wasm

from proxywasm_host import Host
from proxywasm_host.envoy.differential import exchange_with_profile
from proxywasm_host.http.profiles import (
    DEFAULT_REQUEST_ID,
    StreamProfile,
    envoy_request_body,
    envoy_request_headers,
    envoy_response_body,
    envoy_response_headers,
    get_profile,
)
from proxywasm_host.http.scenario import DownstreamResponse, ExchangeResult, HttpRequest, HttpResponse

RID = DEFAULT_REQUEST_ID


def test_http1_request_headers_as_envoy_hands_them_to_the_filter() -> None:
    headers = envoy_request_headers(
        [
            (":method", "POST"),
            (":path", "/a/b?c=d"),
            ("User-Agent", "UA/1"),
            ("Host", "Example.COM:8080"),
            ("X-Dup", "1"),
            ("x-dup", "2"),
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "foo"),
            ("Proxy-Connection", "x"),
            ("X-Empty", ""),
        ]
    )
    assert headers == [
        (":authority", "Example.COM:8080"),  # Host becomes :authority, value case kept
        (":path", "/a/b?c=d"),
        (":method", "POST"),
        (":scheme", "http"),
        ("user-agent", "UA/1"),
        ("x-dup", "1"),
        ("x-dup", "2"),
        ("x-empty", ""),
        ("x-forwarded-proto", "http"),
        ("x-request-id", RID),
    ]


def test_http1_defaults_and_authority_from_the_pseudo_header() -> None:
    assert envoy_request_headers([(":authority", "a.example")], request_id="rid") == [
        (":authority", "a.example"),
        (":path", "/"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "rid"),
    ]
    # No authority at all: our client sends "Host: localhost".
    assert envoy_request_headers([])[0] == (":authority", "localhost")
    # Host wins over :authority on HTTP/1.1 (only Host goes on the wire).
    assert envoy_request_headers([(":authority", "a"), ("host", "b")])[0] == (":authority", "b")


def test_client_x_forwarded_proto_and_x_request_id_are_kept_in_place() -> None:
    headers = envoy_request_headers(
        [("host", "h"), ("X-Forwarded-Proto", "https"), ("X-Request-Id", "rid-1"), ("x-after", "1")]
    )
    # ... and an http/https x-forwarded-proto sets :scheme on HTTP/1.1.
    assert headers == [
        (":authority", "h"),
        (":path", "/"),
        (":method", "GET"),
        (":scheme", "https"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "rid-1"),
        ("x-after", "1"),
    ]


def test_te_survives_only_as_trailers_and_x_envoy_internal_is_removed() -> None:
    kept = envoy_request_headers([("TE", "trailers"), ("x-envoy-internal", "true"), ("x-envoy-foo", "1")])
    assert ("te", "trailers") in kept and ("x-envoy-foo", "1") in kept
    assert not any(k == "x-envoy-internal" for k, _ in kept)
    assert not any(k == "te" for k, _ in envoy_request_headers([("te", "gzip")]))


def test_http2_keeps_the_clients_pseudo_header_order() -> None:
    headers = envoy_request_headers(
        [(":scheme", "https"), (":path", "/x"), ("host", "a.example"), ("X-Y", "1")], protocol="HTTP/2", request_id="r"
    )
    assert headers == [
        (":scheme", "https"),
        (":path", "/x"),
        (":method", "GET"),
        (":authority", "a.example"),  # from host; host itself (equal to :authority) is dropped
        ("x-y", "1"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "r"),
    ]


def test_http2_cookie_crumbs_are_joined_after_the_clients_headers() -> None:
    """Envoy 1.40 (measured, docs/abi-notes.md §5.4): an HTTP/2 client's cookie headers reach the
    filter as one, joined with '; ', after its other headers and before x-forwarded-proto /
    x-request-id; an HTTP/1.1 client's stay where they were, one entry each."""
    client = [(":authority", "a"), (":path", "/x"), ("cookie", "a=1"), ("x-b", "2"), ("Cookie", "c=3"), ("x-d", "4")]
    assert envoy_request_headers([(":method", "GET"), (":scheme", "http"), *client], protocol="HTTP/2", request_id="r") == [
        (":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/x"),
        ("x-b", "2"), ("x-d", "4"), ("cookie", "a=1; c=3"), ("x-forwarded-proto", "http"), ("x-request-id", "r"),
    ]
    assert envoy_request_headers(client, protocol="HTTP/1.1", request_id="r") == [
        (":authority", "a"), (":path", "/x"), (":method", "GET"), (":scheme", "http"),
        ("cookie", "a=1"), ("x-b", "2"), ("cookie", "c=3"), ("x-d", "4"), ("x-forwarded-proto", "http"), ("x-request-id", "r"),
    ]
    # a client's own x-request-id stays where it was: the cookie goes after it (the codec
    # appends the joined cookie before the HCM looks at x-request-id)
    assert envoy_request_headers([("cookie", "a"), ("x-request-id", "mine")], protocol="HTTP/2")[-3:] == [
        ("x-request-id", "mine"), ("cookie", "a"), ("x-forwarded-proto", "http"),
    ]


def test_empty_http2_cookie_crumbs_are_skipped() -> None:
    """Envoy's HTTP/2 codec appends each crumb with ``"; "`` and skips an empty one (its header
    append returns on empty data): no ``"a=1; "``, and only empty crumbs give no cookie header.
    Hypothesis found ``"0; "`` (a trailing space Envoy never delivers) before this rule."""
    out = envoy_request_headers([("cookie", "a=1"), ("cookie", ""), ("cookie", "c=3")], protocol="HTTP/2", request_id="r")
    assert [v for k, v in out if k == "cookie"] == ["a=1; c=3"]
    out = envoy_request_headers([("cookie", ""), ("x-b", "2")], protocol="HTTP/2", request_id="r")
    assert "cookie" not in [k for k, _ in out]


@pytest.mark.parametrize(
    "chunks, trailers, h1, h2",
    [
        ((), None, ((), None), ((), None)),
        ((b"abc", b"de"), None, ((b"abc", b"de", b""), None), ((b"abc", b"de"), None)),
        ((b"abc", b"", b"de"), None, ((b"abc", b"de", b""), None), ((b"abc", b"de"), None)),
        ((b"abc",), (("X-T", "1"),), ((b"abc", b""), None), ((b"abc",), (("x-t", "1"),))),
        ((), (("x-t", "1"),), ((b"",), None), ((), (("x-t", "1"),))),
    ],
)
def test_request_body_events(chunks, trailers, h1, h2) -> None:  # type: ignore[no-untyped-def]
    assert envoy_request_body(chunks, trailers, protocol="HTTP/1.1") == h1
    assert envoy_request_body(chunks, trailers, protocol="HTTP/2") == h2


def test_response_headers_and_body() -> None:
    assert envoy_response_headers([("X-Up", "u"), ("Connection", "close")]) == [
        ("x-up", "u"),
        ("x-envoy-upstream-service-time", "0"),
    ]
    # the router sets the header: an upstream's own value is replaced where it is
    assert envoy_response_headers([("x-envoy-upstream-service-time", "9"), ("a", "b")]) == [
        ("x-envoy-upstream-service-time", "0"),
        ("a", "b"),
    ]
    # an HTTP/1.1 upstream frames a body without content-length as chunked, and the filter sees it
    assert envoy_response_headers([("x-a", "1")], upstream_protocol="HTTP/1.1") == [
        ("x-a", "1"),
        ("transfer-encoding", "chunked"),
        ("x-envoy-upstream-service-time", "0"),
    ]
    assert envoy_response_body((), None) == ((b"",), None)
    assert envoy_response_body((b"a", b"b"), (("Grpc-Status", "0"),)) == ((b"a", b"b"), (("grpc-status", "0"),))
    assert envoy_response_body((b"a",), (("x", "1"),), upstream_protocol="HTTP/1.1") == ((b"a", b""), None)
    assert envoy_response_body((), None, upstream_protocol="HTTP/1.1", status=204) == ((), None)


def test_raw_profile_changes_nothing_and_names_resolve() -> None:
    raw = get_profile("raw")
    req = HttpRequest(((":path", "/"), ("X-A", "1")), (b"x",), (("t", "1"),))
    resp = HttpResponse(201, (("X-B", "2"),), (b"y",), (("u", "2"),))
    assert raw.apply(req, resp) == (req, resp)
    assert get_profile(None) is raw
    custom = StreamProfile("mine", "HTTP/2", request_id="r")
    assert get_profile(custom) is custom
    with pytest.raises(ValueError, match="unknown stream profile"):
        get_profile("envoy-http3")


@pytest.mark.parametrize("name", ["envoy", "envoy-http1", "envoy-http2"])
def test_profiles_are_idempotent(name: str) -> None:
    """Applying a profile twice equals applying it once (so a caller and Plugin.exchange may both apply it)."""
    p = get_profile(name)
    req = HttpRequest((("Host", "A"), ("X-Y", "1"), ("Connection", "x")), (b"ab", b"c"), (("T", "1"),))
    resp = HttpResponse(200, (("X-U", "2"),), (b"o", b"k"), (("grpc-status", "0"),))
    once = p.apply(req, resp)
    assert p.apply(*once) == once


def test_apply_result_drops_response_trailers_for_an_http1_client() -> None:
    result = ExchangeResult("0.2.1", None, DownstreamResponse(200, [], b"", [("grpc-status", "0")]))
    assert get_profile("envoy-http1").apply_result(result).downstream_response.trailers is None
    assert get_profile("envoy-http2").apply_result(result).downstream_response.trailers == [("grpc-status", "0")]


# -- what the filter sees in-process with a profile (no Envoy needed) ---------------------------


def _exchange(fixture: str, profile: str, request: HttpRequest, response: HttpResponse = HttpResponse()):  # type: ignore[no-untyped-def]
    host = Host()
    plugin = host.load_plugin(fixture_wasm(f"{fixture}-{RUST_TARGETS[0]}"))
    result = exchange_with_profile(plugin, request, response, profile=profile)
    return result, plugin.streams[-1]


def test_hello_world_with_a_host_header_works_only_with_a_profile() -> None:
    """Raw, the tutorial filter panics (no :authority); Envoy turns Host into :authority."""
    request = HttpRequest((("Host", "Example.COM"), (":path", "/")))
    result, _ = _exchange("hello_world", "envoy-http1", request)
    assert ("x-hello", "Hello world from Example.COM") in result.upstream_request.headers
    assert [m.message for m in result.logs][:4] == [
        "#2 -> :authority: Example.COM",
        "#2 -> :path: /",
        "#2 -> :method: GET",
        "#2 -> :scheme: http",
    ]


def test_end_of_stream_placement_per_profile() -> None:
    request = HttpRequest(((":authority", "a"), (":method", "POST")), (b"abc", b"de"), (("x-t", "1"),))
    response = HttpResponse(200, (), (b"ok",))
    _, h1 = _exchange("trailers", "envoy-http1", request, response)
    assert [(c.callback, c.args[1:]) for c in h1.callbacks if "body" in c.callback or "trailers" in c.callback] == [
        ("proxy_on_request_body", (3, 0)),
        ("proxy_on_request_body", (2, 0)),
        ("proxy_on_request_body", (0, 1)),  # HTTP/1.1: trailers dropped, an empty end event
        ("proxy_on_response_body", (2, 0)),
        ("proxy_on_response_body", (0, 1)),
    ]
    _, h2 = _exchange("trailers", "envoy-http2", request, response)
    assert [(c.callback, c.args[1:]) for c in h2.callbacks if "body" in c.callback or "trailers" in c.callback] == [
        ("proxy_on_request_body", (3, 0)),
        ("proxy_on_request_body", (2, 0)),
        ("proxy_on_request_trailers", (1,)),
        ("proxy_on_response_body", (2, 0)),
        ("proxy_on_response_body", (0, 1)),
    ]


def test_the_envoy_profile_picks_http2_for_trailers() -> None:
    auto = get_profile("envoy")
    assert get_profile() is auto
    plain = HttpRequest(((":path", "/"),), (b"x",))
    with_trailers = HttpRequest(((":path", "/"),), (b"x",), (("t", "1"),))
    assert auto.resolve(plain).protocol == "HTTP/1.1"
    assert auto.resolve(with_trailers).protocol == "HTTP/2"
    assert auto.resolve(plain, HttpResponse(200, (), (), (("grpc-status", "0"),))).protocol == "HTTP/2"
    # the request trailers survive: the client is an HTTP/2 one
    assert auto.apply(with_trailers, HttpResponse())[0].trailers == (("t", "1"),)
    assert auto.apply(plain, HttpResponse())[0].body_chunks == (b"x", b"")
