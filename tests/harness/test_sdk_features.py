"""Callouts, gRPC, shared data and queues, metrics, foreign functions, proxy_done and
hostile guests, each with real filters from the Rust, Go and AssemblyScript SDKs."""

from __future__ import annotations

import pytest
from conftest import RUST_TARGETS, fixture_wasm

from proxywasm_host import Action, FilterTrap, Host, Plugin

GET = {":authority": "example.com", ":path": "/resource", ":method": "GET", ":scheme": "http"}

# (fixture file, load options) for the callout filters of the three SDKs
CALLOUT_FILTERS = {
    "rust": (f"http_callout-{RUST_TARGETS[0]}", {}),
    "rust-wasip1": (f"http_callout-{RUST_TARGETS[1]}", {}),
    "go": ("go_callout-wasip1", {}),
    "assemblyscript": ("as_callout", {"root_id": "as_callout", "configuration": "{}"}),
}
SHARED_FILTERS = {
    "rust": (f"shared_state-{RUST_TARGETS[0]}", {}),
    "go": ("go_shared-wasip1", {}),
    "assemblyscript": ("as_shared", {"root_id": "as_shared", "configuration": "{}"}),
}


def load(spec: tuple[str, dict], host: Host | None = None, **extra) -> Plugin:  # type: ignore[type-arg,no-untyped-def]
    name, options = spec
    return (host or Host()).load_plugin(fixture_wasm(name), **{**options, **extra})


@pytest.mark.parametrize("sdk", CALLOUT_FILTERS)
def test_http_callout_allows(sdk: str) -> None:
    plugin = load(CALLOUT_FILTERS[sdk])
    stream = plugin.http_stream()
    assert stream.send_request_headers(GET, end_of_stream=True) == Action.PAUSE
    assert stream.upstream_request is None
    callout = plugin.http_callout()
    assert callout.cluster == "auth_cluster"
    assert callout.header(":path") == "/check" and callout.header(":authority") == "auth.example"
    assert callout.header(":method") == "GET"
    assert callout.timeout_ms == 5000
    assert stream.http_callouts == [callout]
    callout.respond(200, {"content-type": "text/plain"}, b"user=alice")
    up = stream.upstream_request
    assert up is not None
    assert ("x-auth-status", "200") in up.headers and ("x-auth-body", "user=alice") in up.headers
    assert callout.state == "answered" and not plugin.pending_http_callouts


@pytest.mark.parametrize("sdk", CALLOUT_FILTERS)
def test_http_callout_denies(sdk: str) -> None:
    plugin = load(CALLOUT_FILTERS[sdk])
    stream = plugin.http_stream()
    stream.send_request_headers(GET, end_of_stream=True)
    plugin.http_callout().respond(401, body=b"nope")
    assert stream.upstream_request is None
    assert stream.local_response is not None and stream.local_response.status_code == 403
    assert stream.local_response.body == b"denied by callout"
    assert stream.downstream_response is not None and stream.downstream_response.status == 403


def test_http_callout_reset_and_timeout_rust() -> None:
    plugin = load(CALLOUT_FILTERS["rust"])
    failed = plugin.http_stream()
    failed.send_request_headers(GET, end_of_stream=True)
    plugin.http_callout().fail()
    assert "callout failed: 11 reset" in plugin.log_messages("warn")
    assert failed.local_response is not None and failed.local_response.status_code == 503
    timed = plugin.http_stream()
    timed.send_request_headers(GET, end_of_stream=True)
    callout = plugin.http_callout()
    assert callout.header("x-original-path") == "/resource"
    assert plugin.host.advance_time(4999) == 0
    assert plugin.host.advance_time(1) == 1  # the 5 s timeout fires on the virtual clock
    assert callout.state == "timed_out"
    assert timed.local_response is not None and timed.local_response.status_code == 403
    assert ("x-callout-status", "504") in timed.local_response.headers


def test_http_callout_to_unknown_cluster_fails_dispatch() -> None:
    plugin = load(CALLOUT_FILTERS["rust"], host=Host(clusters=["other"]))
    stream = plugin.http_stream()
    stream.send_request_headers(GET, end_of_stream=True)
    assert plugin.log_messages("error") == ["dispatch failed: BadArgument"]
    assert stream.local_response is not None and stream.local_response.status_code == 500


def test_callout_answered_by_a_real_upstream() -> None:
    from proxywasm_host.http.scenario import HttpResponse
    from proxywasm_host.net.upstream import UpstreamServer

    with UpstreamServer(HttpResponse(status=200, body_chunks=(b"from-real-server",))) as upstream:
        host = Host(clusters={"auth_cluster": upstream.url})
        plugin = load(CALLOUT_FILTERS["go"], host=host)
        stream = plugin.http_stream()
        stream.send_request_headers(GET, end_of_stream=True)
        assert plugin.http_callouts[0].state == "answered"
        assert ("x-auth-body", "from-real-server") in stream.upstream_request.headers  # type: ignore[union-attr]
        assert upstream.requests[0].path == "/check"


def test_grpc_unary_call_rust() -> None:
    plugin = Host().load_plugin(fixture_wasm(f"grpc_callout-{RUST_TARGETS[0]}"))
    stream_call = plugin.grpc_calls[0]  # opened by the root at start
    assert stream_call.streaming and (stream_call.service, stream_call.method) == ("pkg.Events", "Watch")
    ok = plugin.http_stream()
    assert ok.send_request_headers(GET, end_of_stream=True) == Action.PAUSE
    call = plugin.grpc_calls[-1]
    assert (call.cluster, call.service, call.method) == ("grpc_cluster", "pkg.Auth", "Check")
    assert call.message == b"/resource" and call.initial_metadata == [("x-md", "1")]
    call.respond(b"granted")
    assert ("x-grpc-reply", "granted") in ok.upstream_request.headers  # type: ignore[union-attr]
    denied = plugin.http_stream()
    denied.send_request_headers(GET, end_of_stream=True)
    plugin.grpc_calls[-1].close(7, "permission denied")
    assert denied.local_response is not None and denied.local_response.body == b"grpc denied"
    assert f"grpc {plugin.grpc_calls[-1].token} status=7 size=0" in plugin.log_messages("info")


def test_grpc_stream_rust() -> None:
    plugin = Host().load_plugin(fixture_wasm(f"grpc_callout-{RUST_TARGETS[0]}"))
    stream = plugin.grpc_calls[0]
    stream.send_initial_metadata({"x-server": "unit-test"})
    stream.send_message(b"event-1")
    stream.send_trailing_metadata({"grpc-status": "0"})
    stream.close(0)
    assert stream.sent_messages == [b"ack"]
    assert plugin.log_messages("info") == [
        f"stream opened {stream.token}",
        "stream md 1",
        "x-server=unit-test",
        "stream message event-1",
        "stream trailers 1",
        "stream closed 0",
    ]


@pytest.mark.parametrize("sdk", SHARED_FILTERS)
def test_shared_data_and_queue(sdk: str) -> None:
    plugin = load(SHARED_FILTERS[sdk])
    counts = []
    for path in ("/a", "/b", "/c"):
        s = plugin.http_stream()
        s.send_request_headers({**GET, ":path": path}, end_of_stream=True)
        counts.append(s.request_headers["x-request-count"])
    assert counts == ["1", "2", "3"]
    info = plugin.log_messages("info")
    assert [m for m in info if m.startswith("dequeued")] == ["dequeued /a", "dequeued /b", "dequeued /c"]


@pytest.mark.parametrize("sdk", SHARED_FILTERS)
def test_cas_mismatch_path(sdk: str) -> None:
    from proxywasm_host import Status

    host = Host()
    plugin = load(SHARED_FILTERS[sdk], host=host)
    host.inject_fault("proxy_set_shared_data", Status.CAS_MISMATCH, times=2)
    s = plugin.http_stream()
    s.send_request_headers(GET, end_of_stream=True)
    logged = plugin.log_messages("warn") + plugin.log_messages("error")
    assert any("cas mismatch" in m or "shared data update failed" in m for m in logged), logged


def test_shared_data_is_scoped_by_vm_id() -> None:
    host = Host()
    spec = SHARED_FILTERS["rust"]
    a = load(spec, host=host, root_id="a", vm_id="one")
    b = load(spec, host=host, root_id="b", vm_id="one")
    c = load(spec, host=host, root_id="c", vm_id="two")
    seen = []
    for plugin in (a, b, c, a):
        s = plugin.http_stream()
        s.send_request_headers(GET, end_of_stream=True)
        seen.append(s.request_headers["x-request-count"])
    assert seen == ["1", "2", "1", "3"]


def test_metrics_rust() -> None:
    plugin = load(SHARED_FILTERS["rust"])
    for path in ("/a", "/bbbb"):
        plugin.http_stream().send_request_headers({**GET, ":path": path}, end_of_stream=True)
    assert plugin.metric("requests_total") == 2
    assert plugin.metric("last_path_len") == 5
    assert plugin.histogram("path_len_hist") == [2, 5]


def test_foreign_functions_rust() -> None:
    import zlib

    plugin = Host().load_plugin(
        fixture_wasm(f"foreign-{RUST_TARGETS[0]}"), foreign_functions={"reverse": lambda data: data[::-1]}
    )
    s = plugin.http_stream()
    s.send_request_headers(GET, end_of_stream=True)
    assert s.request_headers["x-reversed"] == "ecruoser/"
    # "compress" is one of Envoy's own foreign functions: zlib, 16 bytes here as in Envoy
    assert s.request_headers["x-compressed-len"] == str(len(zlib.compress(b"hello hello hello"))) == "16"
    bare = Host().load_plugin(fixture_wasm(f"foreign-{RUST_TARGETS[0]}")).http_stream()
    bare.send_request_headers(GET, end_of_stream=True)
    assert bare.request_headers["x-reversed-error"] == "NotFound"  # unknown name: Envoy's answer


def test_proxy_done_after_on_done_returned_false() -> None:
    plugin = Host().load_plugin(fixture_wasm(f"done_later-{RUST_TARGETS[0]}"))
    assert plugin.shutdown() is False
    assert not plugin.root.deleted
    plugin.host.advance_time(500)
    assert plugin.log_messages("info")[-2:] == ["on_done: waiting", "done called: Ok(())"]
    assert plugin.root.deleted


def test_busy_loop_is_stopped() -> None:
    plugin = Host(callback_deadline_s=0.5).load_plugin(fixture_wasm(f"busy_loop-{RUST_TARGETS[0]}"))
    plugin.http_stream().send_request_headers(GET, end_of_stream=True)  # no x-spin: fine
    with pytest.raises(FilterTrap, match="deadline exceeded"):
        plugin.http_stream().send_request_headers({**GET, "x-spin": "1"}, end_of_stream=True)


@pytest.mark.parametrize("target", RUST_TARGETS)
def test_memory_hog_hits_the_cap(target: str) -> None:
    plugin = Host(memory_limit_bytes=256 << 20).load_plugin(fixture_wasm(f"memory_hog-{target}"))
    with pytest.raises(FilterTrap) as info:
        plugin.http_stream().send_request_headers({**GET, "x-hog": "1"}, end_of_stream=True)
    assert info.value.callback == "proxy_on_request_headers"
    assert "hogged 192 MiB" in plugin.log_messages("info")
    assert len(plugin.vm.runtime.memory()) <= 256 << 20  # type: ignore[attr-defined]


HELLO_FILTERS = {
    "rust-0.2": (f"hello_world-{RUST_TARGETS[0]}", {}),
    "rust-0.2-wasip1": (f"hello_world-{RUST_TARGETS[1]}", {}),
    "rust-0.1": (f"hello_world_0_1-{RUST_TARGETS[0]}", {}),
    "rust-0.1-wasip1": (f"hello_world_0_1-{RUST_TARGETS[1]}", {}),
    "go": ("go_hello_world-wasip1", {}),
    "assemblyscript": ("as_hello_world", {"root_id": "as_hello_world", "configuration": "{}"}),
}


@pytest.mark.parametrize("sdk", HELLO_FILTERS)
def test_tutorial_filter_in_every_sdk(sdk: str) -> None:
    from proxywasm_host import HttpRequest
    from proxywasm_host.http.profiles import DEFAULT_REQUEST_ID

    plugin = load(HELLO_FILTERS[sdk])
    result = plugin.exchange(HttpRequest(headers=tuple(GET.items())))
    assert result.upstream_request is not None
    # the default "envoy" profile adds what Envoy adds before the filter runs
    assert result.upstream_request.headers == [
        *GET.items(),
        ("x-forwarded-proto", "http"),
        ("x-request-id", DEFAULT_REQUEST_ID),
        ("x-hello", "Hello world from example.com"),
    ]
    assert result.downstream_response is not None and result.downstream_response.status == 200
    assert result.abi_version == {"go": "0.2.0", "assemblyscript": "0.2.0"}.get(sdk, "0.1.0" if "0.1" in sdk else "0.2.1")


def test_callout_router_answers_callouts() -> None:
    seen = []

    def router(callout):  # type: ignore[no-untyped-def]
        seen.append(callout.cluster)
        callout.respond(200, body=b"routed")

    plugin = load(CALLOUT_FILTERS["rust"], host=Host(callout_router=router))
    stream = plugin.http_stream()
    stream.send_request_headers(GET, end_of_stream=True)
    assert seen == ["auth_cluster"]
    assert ("x-auth-body", "routed") in stream.upstream_request.headers  # type: ignore[union-attr]
