"""What a finished stream keeps alive, and the snapshots and lazily made parts behind that.

Plugin.streams keeps recent streams; everything each one holds is work for Python's cyclic
GC (objects it counts, collects, walks), so a stream keeps few containers and no cycles."""

from __future__ import annotations

import gc
from typing import Any

from conftest import fixture_wasm

from proxywasm_host import HeaderMap, Host
from proxywasm_host.core.stream import Direction

REQUEST = [(":authority", "localhost:8080"), (":path", "/hello"), (":method", "GET"), (":scheme", "http")]
RESPONSE = [(":status", "200"), ("content-length", "0")]


def _owned(stream: Any, shared: set[int]) -> list[Any]:
    """GC-tracked objects reachable from ``stream`` but not from the plugin/host it uses."""
    seen: dict[int, Any] = {}
    todo = [stream]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in shared or isinstance(obj, type) or callable(obj):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return [o for o in seen.values() if gc.is_tracked(o)]


def test_a_finished_stream_keeps_few_tracked_objects_and_no_cycles() -> None:
    plugin = Host().load_plugin(fixture_wasm("hello_world-wasm32-unknown-unknown"))
    stream = plugin.http_stream()
    stream.send_request_headers(REQUEST, end_of_stream=True)
    stream.send_response_headers(RESPONSE, end_of_stream=True)
    assert stream.completed and stream.request_headers["x-hello"]
    shared = {id(o) for o in (plugin, plugin.vm, plugin.root, plugin.host, plugin.vm.host, plugin.vm.runtime)}
    gc.collect()
    gc.collect()  # a tuple of tuples is untracked once its items are: a second pass
    kept = sorted(type(o).__name__ for o in _owned(stream, shared))
    # the stream, its context, two directions, the filter's view of both header maps
    assert kept == ["Direction", "Direction", "HeaderMap", "HeaderMap", "HttpContext", "HttpStream"]
    # freed by reference counting alone once dropped: nothing for the cyclic GC to find
    plugin.streams.clear()
    gc.collect()
    gc.disable()
    try:
        del stream
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_forwarded_headers_are_a_snapshot() -> None:
    d = Direction("request")
    assert d.forwarded_headers is None
    d.headers = HeaderMap([("A", "1")])
    d.forwarded_headers = d.headers
    d.headers.add(b"b", b"2")
    d.headers.replace(b"a", b"x")
    assert d.forwarded_headers == [("a", "1")]
    view = d.forwarded_headers
    assert view is not None
    view.add(b"c", b"3")  # a read gives a fresh map: changing it changes nothing kept
    assert d.forwarded_headers == [("a", "1")]
    d.forwarded_headers = None
    assert d.forwarded_headers is None
    assert "forwarded_headers=None" in repr(d)


def test_upstream_sees_headers_as_forwarded_not_later_changes() -> None:
    plugin = Host().load_plugin(fixture_wasm("hello_world-wasm32-unknown-unknown"))
    stream = plugin.http_stream()
    stream.send_request_headers(REQUEST, end_of_stream=True)
    stream.context.request.headers.add(b"x-late", b"1")  # type: ignore[union-attr]
    assert "x-late" in stream.request_headers
    up = stream.upstream_request
    assert up is not None and "x-late" not in dict(up.headers) and dict(up.headers)["x-hello"]


def test_filter_state_and_attributes_are_made_when_first_needed() -> None:
    plugin = Host().load_plugin(fixture_wasm("hello_world-wasm32-unknown-unknown"))
    ctx = plugin.http_stream().context
    assert ctx.filter_state(b"wasm.x") is None
    assert ctx.stream_property(["custom"]) == (False, None)
    assert ctx.filter_state_data == {} and ctx.attributes == {}
    ctx.attributes[("custom",)] = "v"  # the dicts handed out are the ones used
    ctx.filter_state_data[b"wasm.x"] = b"1"
    assert ctx.stream_property(["custom"]) == (True, "v")
    assert ctx.filter_state(b"wasm.x") == b"1"
    with_attrs = plugin.http_stream(attributes={"a.b": 1}).context
    assert with_attrs.stream_property(["a", "b"]) == (True, 1) and with_attrs.current_attributes()[("a", "b")] == 1


def test_header_lists_passed_in_are_not_changed() -> None:
    plugin = Host().load_plugin(fixture_wasm("hello_world-wasm32-unknown-unknown"))
    request, response = list(REQUEST), [("content-length", "0")]
    stream = plugin.http_stream()
    stream.send_request_headers(request, end_of_stream=True)
    stream.send_response_headers(response, end_of_stream=True)  # no :status: 200 is added...
    assert request == REQUEST and response == [("content-length", "0")]  # ...to the stream, not the list
    assert stream.downstream_response is not None and stream.downstream_response.status == 200
