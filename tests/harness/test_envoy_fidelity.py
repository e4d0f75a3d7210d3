"""Issue 12: behaviours where the in-process host differed from Envoy 1.40, each as Envoy
was measured doing it (docs/conformance.md, issue 12 table; the same scenarios run through a
real Envoy in tests/envoy/test_fidelity_envoy.py and the conformance suite's ``probe``
groups).  The filter is fixtures/rust/probe: request header ``x-probe`` lists its actions."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RUST_TARGETS, fixture_wasm

from proxywasm_host import Host, HttpRequest, HttpResponse

A = (":authority", "example.com")


@pytest.fixture(params=RUST_TARGETS)
def probe(request: pytest.FixtureRequest) -> Any:
    return Host(clusters={"auth_cluster": None, "grpc_cluster": None}).load_plugin(
        fixture_wasm(f"probe-{request.param}")
    )


def names(headers: Any) -> list[str]:
    return [k for k, _ in headers]


# -- 1. a replaced header moves to the end (pseudo-headers: to the end of their block) ------
def test_replaced_request_header_goes_to_the_end(probe: Any) -> None:
    result = probe.exchange(
        HttpRequest((A, (":path", "/"), ("x-a", "1"), ("x-b", "2"), ("x-probe", "replace"))), profile="envoy-http1"
    )
    up = result.upstream_request
    assert up is not None
    assert names(up.headers) == [
        ":authority", ":path", ":method", ":scheme", "x-b", "x-probe", "x-forwarded-proto", "x-request-id", "x-a",
    ]
    assert ("x-a", "new") in up.headers and ("x-a", "1") not in up.headers


@pytest.mark.parametrize("http2", [False, True])
def test_replaced_authority_goes_after_the_other_pseudo_headers(probe: Any, http2: bool) -> None:
    headers = ((":method", "GET"), (":scheme", "http"), A, (":path", "/"), ("x-a", "1"), ("x-probe", "authority"))
    result = probe.exchange(HttpRequest(headers), profile="envoy-http2" if http2 else "envoy-http1")
    up = result.upstream_request
    assert up is not None
    pseudo = [":method", ":scheme", ":path"] if http2 else [":path", ":method", ":scheme"]
    assert names(up.headers)[:5] == pseudo + [":authority", "x-a"]
    assert (":authority", "new.example") in up.headers


def test_replaced_response_header_goes_to_the_end(probe: Any) -> None:
    result = probe.exchange(
        HttpRequest((A, (":path", "/"), ("x-probe-resp", "replace"))),
        HttpResponse(200, (("x-a", "up"), ("x-b", "up2")), (b"hi",)),
        profile="envoy-http1",
    )
    down = result.downstream_response
    assert down is not None
    assert names(down.headers) == ["x-b", "x-envoy-upstream-service-time", "x-a"]


def test_replaced_local_reply_header_goes_to_the_end(probe: Any) -> None:
    result = probe.exchange(HttpRequest((A, (":path", "/"), ("x-probe", "local"), ("x-probe-resp", "replace"))))
    down = result.downstream_response
    assert down is not None and down.status == 403
    assert down.headers == [("x-b", "2"), ("content-length", "6"), ("content-type", "text/plain"), ("x-a", "new")]


def test_header_map_pseudo_headers_stay_in_front() -> None:
    from proxywasm_host.core.headers import HeaderMap

    m = HeaderMap([(":path", "/"), ("x-a", "1"), ("x-b", "2"), ("x-a", "3")])
    m.replace(b"x-a", b"9")
    assert m.items() == [(":path", "/"), ("x-b", "2"), ("x-a", "9")]
    m.add(b":authority", b"h")
    assert m.items() == [(":path", "/"), (":authority", "h"), ("x-b", "2"), ("x-a", "9")]
    m.replace(b":path", b"/new")
    assert m.items() == [(":authority", "h"), (":path", "/new"), ("x-b", "2"), ("x-a", "9")]
    m.set_pairs([(b"x-z", b"1"), (b":status", b"200")])
    assert m.items() == [(":status", "200"), ("x-z", "1")]


# -- 2. local replies and gRPC ---------------------------------------------------------------
GRPC_H2 = ((":method", "POST"), (":scheme", "http"), A, (":path", "/pkg.Svc/M"), ("content-type", "application/grpc"))


def test_grpc_status_local_reply_to_a_grpc_request_is_trailers_only(probe: Any) -> None:
    result = probe.exchange(HttpRequest(GRPC_H2 + (("x-probe", "grpc-local"),)), profile="envoy-http2")
    down = result.downstream_response
    assert down is not None and result.upstream_request is None
    assert (down.status, down.body) == (200, b"")
    assert down.headers == [("content-type", "application/grpc"), ("grpc-status", "7"), ("grpc-message", "no access")]
    assert result.local_reply is not None and result.local_reply.grpc_status == 7 and result.local_reply.body == b""
    stream = probe.streams[-1]
    # the headers end the stream: no on_response_body
    assert [(c.callback, c.args[1:]) for c in stream.callbacks if "response" in c.callback] == [
        ("proxy_on_response_headers", (4, 1))
    ]


def test_http_local_reply_to_a_grpc_request_maps_the_status(probe: Any) -> None:
    headers = GRPC_H2[:4] + (("content-type", "application/grpc+proto"), ("x-probe", "local"))
    result = probe.exchange(HttpRequest(headers), profile="envoy-http2")
    down = result.downstream_response
    assert down is not None
    assert (down.status, down.body) == (200, b"")
    assert down.headers == [
        ("x-a", "1"), ("x-b", "2"), ("content-type", "application/grpc"), ("grpc-status", "7"), ("grpc-message", "denied"),
    ]


def test_grpc_status_is_ignored_for_a_plain_http_request(probe: Any) -> None:
    result = probe.exchange(HttpRequest((A, (":path", "/"), ("x-probe", "grpc-local"))), profile="envoy-http1")
    down = result.downstream_response
    assert down is not None
    assert (down.status, down.body) == (200, b"no access")
    assert down.headers == [("content-length", "9"), ("content-type", "text/plain")]


def test_grpc_message_is_percent_encoded() -> None:
    from proxywasm_host.core.local_reply import grpc_percent_encode, http_to_grpc_status

    assert grpc_percent_encode("50% off\n é".encode()) == "50%25 off%0A %C3%A9"
    assert [http_to_grpc_status(c) for c in (400, 401, 403, 404, 429, 502, 503, 504, 500, 200)] == [
        13, 16, 7, 12, 14, 14, 14, 14, 2, 2,
    ]


def test_failed_vm_answers_a_grpc_request_with_grpc_status_14(target: str = RUST_TARGETS[0]) -> None:
    host = Host(raise_on_trap=False)
    plugin = host.load_plugin(fixture_wasm(f"panic-{target}"))
    result = plugin.exchange(HttpRequest(GRPC_H2 + (("x-panic", "1"),)), profile="envoy-http2")
    down = result.downstream_response
    assert down is not None
    assert (down.status, down.headers) == (200, [("content-type", "application/grpc"), ("grpc-status", "14")])


# -- 6. two local replies in one callback: the first wins -----------------------------------
def test_second_local_reply_in_one_callback_is_ignored(probe: Any) -> None:
    result = probe.exchange(HttpRequest((A, (":path", "/"), ("x-probe", "local-twice"))))
    down = result.downstream_response
    assert down is not None
    assert (down.status, down.body) == (401, b"first")
    assert down.headers[0] == ("x-first", "1")
    assert probe.log_messages("info") == ["registered probe_q as 1", "local-twice: Ok(()) Ok(())"]


# -- found on the way: request headers are gone once on_request_headers continued ------------
def test_request_headers_unreadable_after_on_request_headers_continued(probe: Any) -> None:
    probe.exchange(
        HttpRequest((A, (":path", "/"), (":method", "POST"), ("x-a", "1"), ("x-probe-resp", "read-request")), (b"body",)),
        HttpResponse(200, (("x-up", "1"),), (b"hi",)),
        profile="envoy-http1",
    )
    logs = [m for m in probe.log_messages("info") if "status" in m]
    assert logs == [
        "request body 4 false: request header x-a status 2",
        "request body 0 true: request header x-a status 2",
        "response headers: request header x-a status 2",
        "response body 2 false: request header x-a status 2, response header x-up status 2",
        "response body 0 true: request header x-a status 2, response header x-up status 2",
    ]


# -- 3. gRPC calls time out on the virtual clock --------------------------------------------
def test_grpc_call_times_out_on_the_virtual_clock(probe: Any) -> None:
    stream = probe.http_stream()
    stream.send_request_headers([A, (":path", "/t"), ("x-probe", "grpc"), ("x-grpc-timeout", "300")], end_of_stream=True)
    assert stream.request_paused
    call = probe.grpc_calls[-1]
    assert call.pending and call.timeout_ms == 300
    probe.host.advance_time(299)
    assert call.pending and stream.request_paused
    assert probe.host.advance_time(1) == 1
    assert call.state == "closed" and not stream.request_paused
    assert ("x-grpc-status", "14") in stream.upstream_request.headers  # type: ignore[union-attr]
    assert probe.log_messages("info")[-1] == (
        f"grpc {call.token} status=14 size=0 get_status=(14, upstream request timeout{{response_timeout}})"
    )


def test_grpc_stream_has_no_timeout(probe: Any) -> None:
    stream = probe.http_stream()
    stream.send_request_headers([A, (":path", "/s"), ("x-probe", "grpc-stream")], end_of_stream=True)
    assert probe.host.advance_time(seconds=60) == 0
    assert probe.grpc_calls[-1].pending and stream.request_paused
    with pytest.raises(Exception, match="no timeout"):
        probe.grpc_calls[-1].time_out()


# -- 4. stream attributes deeper than three segments ----------------------------------------
def test_stream_attributes_any_depth(probe: Any) -> None:
    stream = probe.http_stream(attributes={
        ("metadata", "filter_metadata", "envoy.filters.http.wasm", "auth"): "alice",
        ("metadata", "filter_metadata", "envoy.filters.http.wasm", "nested"): {"k": "v"},
    })
    for path, want in (
        ("metadata/filter_metadata/envoy.filters.http.wasm/auth", "alice"),
        ("metadata/filter_metadata/envoy.filters.http.wasm/nested/k", "v"),
        ("metadata/filter_metadata/envoy.filters.http.wasm/missing", "<none>"),
    ):
        stream = probe.http_stream(attributes={
            ("metadata", "filter_metadata", "envoy.filters.http.wasm", "auth"): "alice",
            ("metadata", "filter_metadata", "envoy.filters.http.wasm", "nested"): {"k": "v"},
        })
        stream.send_request_headers([A, (":path", "/"), ("x-probe", "prop"), ("x-prop", path)], end_of_stream=True)
        assert stream.request_headers["x-prop-value"] == want, path


# -- 5. a shared queue of another VM: its owner gets on_queue_ready -------------------------
def test_enqueue_to_another_vms_queue_notifies_the_owner() -> None:
    host = Host()
    wasm = fixture_wasm(f"probe-{RUST_TARGETS[0]}")
    a = host.load_plugin(wasm, vm_id="vm-a", configuration="a", name="pa")
    b = host.load_plugin(wasm, vm_id="vm-b", configuration="b", name="pb")
    assert a.vm is not b.vm
    stream = a.http_stream()
    stream.send_request_headers([A, (":path", "/q1"), ("x-probe-a", "enqueue"), ("x-queue-vm", "vm-b")], end_of_stream=True)
    assert a.log_messages("info")[-1] == "enqueued to vm-b/probe_q (2): Ok(())"
    assert b.log_messages("info")[-1] == "queue 2 dequeued /q1"
    stream = b.http_stream()
    stream.send_request_headers([A, (":path", "/q2"), ("x-probe-b", "enqueue"), ("x-queue-vm", "vm-a")], end_of_stream=True)
    assert a.log_messages("info")[-1] == "queue 1 dequeued /q2"


# -- 7. local reply from the request headers: nothing goes upstream --------------------------
@pytest.mark.parametrize("action", ["local", "local-continue"])
def test_local_reply_from_request_headers_sends_nothing_upstream(probe: Any, action: str) -> None:
    result = probe.exchange(
        HttpRequest((A, (":method", "POST"), (":path", "/"), ("x-probe", action)), (b"data",)), profile="envoy-http1"
    )
    assert result.upstream_request is None
    assert result.downstream_response is not None and result.downstream_response.status == 403


# -- 8. the callout history is bounded -----------------------------------------------------
def test_callout_history_is_bounded_and_keeps_pending_calls(probe: Any) -> None:
    from proxywasm_host.core.hostcalls.base import CALLOUT_HISTORY

    held = probe.http_stream()
    held.send_request_headers([A, (":path", "/held"), ("x-probe", "grpc")], end_of_stream=True)
    first = probe.grpc_calls[-1]
    for i in range(3 * CALLOUT_HISTORY):
        stream = probe.http_stream()
        stream.send_request_headers([A, (":path", f"/{i}"), ("x-probe", "grpc")], end_of_stream=True)
        probe.grpc_calls[-1].respond(b"ok")
    calls = probe.grpc_calls
    assert CALLOUT_HISTORY <= len(calls) <= 2 * CALLOUT_HISTORY + 1
    assert calls[0] is first and first.pending  # the pending one is kept
    tokens = [c.token for c in calls]
    assert tokens == sorted(tokens)  # still in dispatch order
    first.respond(b"late")
    assert ("x-grpc-reply", "late") in held.upstream_request.headers  # type: ignore[union-attr]


# -- gRPC answered by the test: Host(grpc_router=...) ---------------------------------------
def test_grpc_router_answers_calls_and_streams() -> None:
    seen: list[Any] = []

    def router(call: Any) -> None:
        seen.append((call.service, call.method, call.streaming, list(call.sent_messages)))
        if call.streaming:
            call.send_initial_metadata([("x-server", "test")])
            for message in call.sent_messages:
                call.send_message(b"echo:" + message)
            call.close(0)
        elif call.message == b"fail":
            call.close(7, "nope")
        else:
            call.respond(b"pong:" + call.message)

    host = Host(clusters={"grpc_cluster": None}, grpc_router=router)
    plugin = host.load_plugin(fixture_wasm(f"probe-{RUST_TARGETS[0]}"))
    up = plugin.exchange(HttpRequest((A, (":path", "/"), ("x-probe", "grpc"), ("x-grpc-message", "hi")))).upstream_request
    assert up is not None and ("x-grpc-reply", "pong:hi") in up.headers and ("x-grpc-status", "0") in up.headers
    up = plugin.exchange(HttpRequest((A, (":path", "/"), ("x-probe", "grpc"), ("x-grpc-message", "fail")))).upstream_request
    assert up is not None and ("x-grpc-status", "7") in up.headers and ("x-grpc-detail", "nope") in up.headers
    up = plugin.exchange(HttpRequest((A, (":path", "/"), ("x-probe", "grpc-stream")))).upstream_request
    assert up is not None and ("x-grpc-messages", "echo:one echo:two") in up.headers
    # the router got each call once (a stream: when opened, before its messages were sent)
    assert seen == [
        ("pkg.Svc", "Call", False, [b"hi"]), ("pkg.Svc", "Call", False, [b"fail"]),
        ("pkg.Svc", "Stream", True, [b"one", b"two"]),
    ]


def test_grpc_call_to_an_http_cluster_url_is_a_usage_error() -> None:
    host = Host(clusters={"grpc_cluster": "http://127.0.0.1:9"})
    plugin = host.load_plugin(fixture_wasm(f"probe-{RUST_TARGETS[0]}"))
    with pytest.raises(Exception, match="grpc://host:port"):
        plugin.http_stream().send_request_headers([A, (":path", "/"), ("x-probe", "grpc")], end_of_stream=True)


# -- corpus divergence C: a callout with an empty :authority -----------------------------------
def test_callout_with_an_empty_authority_carries_an_empty_host() -> None:
    """Envoy 1.40 sends such a callout over HTTP/1.1 with ``host:`` empty and the upstream answers
    it (measured, docs/abi-notes.md §7.7); the host used to send no Host at all, which an HTTP/1.1
    server refuses (the Go SDK example multiple_dispatches then saw 400s)."""
    from proxywasm_host.net.upstream import UpstreamServer

    with UpstreamServer(HttpResponse(200, (), (b"ok",))) as upstream:
        plugin = Host(clusters={"httpbin": upstream.url}).load_plugin(fixture_wasm("go_ex_multiple_dispatches-wasip1"))
        result = plugin.exchange(HttpRequest((A, (":path", "/"))), HttpResponse(200, (), (b"hi",)))
        assert len(upstream.requests) == 10
        assert all(r.header("host") == "" for r in upstream.requests), upstream.requests[0].headers
    assert result.downstream_response is not None
    assert ("total-dispatched", "10") in result.downstream_response.headers
    assert [r.message for r in result.logs][-1] == "response resumed after processed 10 dispatched request"


# -- corpus divergence D: a local reply from the body callback after the headers went on ---------
@pytest.mark.parametrize("profile", ["envoy-http1", "envoy-http2"])
def test_local_reply_after_the_headers_went_on_resets_the_upstream_request(profile: str) -> None:
    """The Go SDK example json_validation continues the request headers, buffers the body and
    answers 403 from the body callback. Envoy 1.40 (measured, docs/abi-notes.md §7.4): the router
    had the headers (and may have put them on the wire), the local reply resets the upstream
    request, the upstream never gets a whole request; the client gets the 403. In-process the
    upstream request is None, as when the filter answers from the headers."""
    plugin = Host().load_plugin(fixture_wasm("go_ex_json_validation-wasip1"), configuration=b'{"requiredKeys": ["id", "token"]}')
    json = ((":method", "POST"), A, (":path", "/"), ("content-type", "application/json"))
    result = plugin.exchange(HttpRequest(json, (b'{"id": "abc123"}',)), profile=profile)
    assert result.upstream_request is None
    assert result.local_reply is not None and (result.local_reply.status, result.local_reply.body) == (403, b"invalid payload")
    assert result.downstream_response is not None and result.downstream_response.status == 403
    # a valid body: the whole request goes upstream
    ok = plugin.exchange(HttpRequest(json, (b'{"id": 1, "token": 2}',)), profile=profile)
    assert ok.upstream_request is not None and ok.upstream_request.body == b'{"id": 1, "token": 2}'
    # step by step: the headers are upstream until the reply resets the request
    stream = plugin.http_stream()
    stream.send_request_headers([*json, ("x-request-id", "r")], end_of_stream=False)
    assert stream.upstream_request is not None and stream.upstream_request.body == b""
    stream.send_request_body(b"{nope", end_of_stream=True)
    assert stream.local_response is not None and stream.upstream_request is None


def test_a_trap_after_the_headers_went_on_resets_the_upstream_request_too() -> None:
    """Envoy's fail-closed reply (503, wasm_fail_stream) from the body callback resets the
    upstream request like the filter's own local reply (measured with the same WAT module in
    tests/envoy/test_corpus_fidelity.py); with fail_open the request goes on whole."""
    from conftest import WAT

    request = HttpRequest((A, (":path", "/"), (":method", "POST")), (b"data",))
    closed = Host(raise_on_trap=False).load_plugin(WAT / "trap_in_body.wat").exchange(request)
    assert closed.upstream_request is None
    assert closed.local_reply is not None and closed.local_reply.details == "wasm_fail_stream"
    opened = Host(raise_on_trap=False).load_plugin(WAT / "trap_in_body.wat", failure_policy="fail_open").exchange(request)
    assert opened.upstream_request is not None and opened.upstream_request.body == b"data"
