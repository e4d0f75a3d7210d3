"""Callback order, arguments and forwarding decisions as Envoy's filter manager makes them,
observed with a WAT module that records every callback and returns chosen actions."""

from __future__ import annotations

import struct

import pytest
from conftest import WAT

from proxywasm_host import Action, HarnessUsageError, Host, Plugin


def recorder(headers_action: int = 0, body_action: int = 0, trailers_action: int = 0) -> Plugin:
    plugin = Host().load_plugin(WAT / "callback_recorder.wat")
    mem = plugin.vm.runtime.memory()  # type: ignore[attr-defined]
    struct.pack_into("<III", mem, 0, headers_action, body_action, trailers_action)
    return plugin


def calls(stream) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [(c.callback.removeprefix("proxy_on_"), *c.args[1:]) for c in stream.callbacks]


def test_plugin_start_sequence() -> None:
    plugin = recorder()
    assert plugin.log_messages() == ["context_create", "vm_start", "configure"]
    assert plugin.context_id == 1


def test_get_without_body() -> None:
    plugin = recorder()
    s = plugin.http_stream()
    assert s.send_request_headers({":method": "GET", ":path": "/"}, end_of_stream=True) == Action.CONTINUE
    assert s.upstream_request is not None and s.upstream_request.body == b""
    s.send_response_headers({":status": "200"}, end_of_stream=True)
    assert calls(s) == [
        ("request_headers", 2, 1),
        ("response_headers", 1, 1),
        ("log",),
        ("done",),
        ("delete",),
    ]
    assert s.completed and s.context_id == 2


def test_bodies_and_trailers_place_end_of_stream_like_envoy() -> None:
    plugin = recorder()
    s = plugin.http_stream()
    s.send_request_headers({":method": "POST", ":path": "/"})
    s.send_request_body(b"hello")
    s.send_request_body(b" world")
    s.send_request_trailers({"x-t": "1"})
    s.send_response_headers({":status": "200", "content-type": "text/plain"})
    s.send_response_body(b"ok", end_of_stream=True)
    assert calls(s) == [
        ("request_headers", 2, 0),
        ("request_body", 5, 0),
        ("request_body", 6, 0),
        ("request_trailers", 1),
        ("response_headers", 2, 0),
        ("response_body", 2, 1),
        ("log",),
        ("done",),
        ("delete",),
    ]
    up = s.upstream_request
    assert up is not None and up.body == b"hello world" and up.trailers == [("x-t", "1")]
    down = s.downstream_response
    assert down is not None and down.status == 200 and down.body == b"ok"


def test_paused_headers_hold_body_and_trailers_until_continue() -> None:
    plugin = recorder(headers_action=1)
    s = plugin.http_stream()
    assert s.send_request_headers({":path": "/"}) == Action.PAUSE
    assert s.send_request_body(b"abc") is None
    assert s.send_request_body(b"def", end_of_stream=True) is None
    assert s.request_paused and s.upstream_request is None
    assert calls(s) == [("request_headers", 1, 0)]
    with pytest.raises(HarnessUsageError, match="request headers have not reached the upstream"):
        s.send_response_headers({":status": "200"})
    # The filter continues (as from a tick with the stream as effective context).
    plugin.vm.host.current = s.context
    assert s.context.continue_stream(0) == 0
    plugin.vm.flush()
    assert calls(s)[-1] == ("request_body", 6, 1)  # buffered data delivered at once
    assert s.upstream_request is not None and s.upstream_request.body == b"abcdef"


def test_stop_and_buffer_reports_cumulative_sizes() -> None:
    plugin = recorder(body_action=1)
    s = plugin.http_stream()
    s.send_request_headers({":path": "/"})
    s.send_request_body(b"aaaa")
    s.send_request_body(b"bb")
    s.send_request_body(b"c", end_of_stream=True)
    assert [c[1:] for c in calls(s) if c[0] == "request_body"] == [(4, 0), (6, 0), (7, 1)]
    assert s.upstream_request is not None and s.upstream_request.body == b""
    assert s.request_body == b"aaaabbc"


def test_misuse_messages_say_what_to_do() -> None:
    plugin = recorder()
    s = plugin.http_stream()
    with pytest.raises(HarnessUsageError, match="send the request headers before its body"):
        s.send_request_body(b"x")
    s.send_request_headers({":path": "/"}, end_of_stream=True)
    with pytest.raises(HarnessUsageError, match="already ended"):
        s.send_request_body(b"x")
    with pytest.raises(HarnessUsageError, match="already sent"):
        s.send_request_headers({":path": "/"})
    with pytest.raises(HarnessUsageError, match="dict or a list of"):
        s.send_response_headers(["bad"])  # type: ignore[list-item]
    s.send_response_headers({}, end_of_stream=True)
    with pytest.raises(HarnessUsageError, match="stream is complete"):
        s.send_response_body(b"late")


def test_malformed_header_lists_are_refused_and_change_nothing() -> None:
    """The harness hands header lists to the header map unchecked; the map refuses a bad item
    with the same message, before the stream records anything, so the test can go on."""
    plugin = recorder()
    s = plugin.http_stream()
    for bad in (["x-a"], [("x-a", "1", "2")], [(":path", "/"), b"raw"], [(":path",)]):
        with pytest.raises(HarnessUsageError, match="dict or a list of"):
            s.send_request_headers(bad)  # type: ignore[arg-type]
    assert calls(s) == []  # no callback ran, the stream is as new
    s.send_request_headers([[":path", "/"], (b"X-Raw", b"v")], end_of_stream=True)  # lists and bytes are fine
    assert s.upstream_request.headers == [(":path", "/"), ("x-raw", "v")]
    with pytest.raises(HarnessUsageError, match="dict or a list of"):
        s.send_response_headers([("content-length", "0"), ("x",)])
    s.send_response_headers([["content-length", "0"]], end_of_stream=True)  # :status 200 added
    assert s.context.response.headers.items() == [(":status", "200"), ("content-length", "0")]
    assert s.downstream_response.status == 200
    assert [c[0] for c in calls(s)] == ["request_headers", "response_headers", "log", "done", "delete"]


def test_several_streams_alive_at_once() -> None:
    plugin = recorder()
    a, b = plugin.http_stream(), plugin.http_stream()
    a.send_request_headers({":path": "/a"})
    b.send_request_headers({":path": "/b"}, end_of_stream=True)
    a.send_request_body(b"x", end_of_stream=True)
    b.send_response_headers({}, end_of_stream=True)
    a.send_response_headers({}, end_of_stream=True)
    assert {a.context_id, b.context_id} == {2, 3}
    assert a.completed and b.completed
    assert a.upstream_request.body == b"x"  # type: ignore[union-attr]


def test_ticks_follow_the_virtual_clock() -> None:
    plugin = Host().load_plugin(WAT / "hostcall_probe.wat")
    host = plugin.host
    plugin.vm.call(plugin.root, "call_proxy_set_tick_period_milliseconds", 250)
    assert plugin.tick_period_ms == 250
    assert host.advance_time(1000) == 4
    assert host.advance_time(249) == 0
    assert host.advance_time(1) == 1
    plugin.vm.call(plugin.root, "call_proxy_set_tick_period_milliseconds", 0)
    assert host.advance_time(10_000) == 0


def test_take_body_drains_forwarded_bytes() -> None:
    plugin = recorder()
    s = plugin.http_stream()
    s.send_request_headers({":path": "/", ":method": "POST"})
    s.send_request_body(b"abc")
    assert s.take_request_body() == b"abc"
    s.send_request_body(b"de", end_of_stream=True)
    assert s.take_request_body() == b"de"
    assert s.take_request_body() == b""
    assert s.upstream_request is not None and s.upstream_request.body == b""  # all taken
    assert s.context.request.forwarded_bytes == 5  # request.size still counts every byte
    s.send_response_headers({":status": "200"})
    s.send_response_body(b"xyz", end_of_stream=True)
    assert s.take_response_body() == b"xyz"
