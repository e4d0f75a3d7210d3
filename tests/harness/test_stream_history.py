"""Plugin.streams: every open stream, in the order opened, and only the most recent completed
ones (Plugin._trim_streams keeps a long run's memory and GC work bounded)."""

from __future__ import annotations

from conftest import fixture_wasm

from proxywasm_host import Host
from proxywasm_host.harness.plugin import STREAM_HISTORY

REQUEST = [(":authority", "a.example"), (":path", "/"), (":method", "GET")]


def test_open_streams_are_kept_in_order_and_completed_ones_are_bounded() -> None:
    plugin = Host().load_plugin(fixture_wasm("hello_world-wasm32-unknown-unknown"))
    opened = []
    last = None
    for i in range(3000):
        stream = plugin.http_stream()
        stream.send_request_headers(REQUEST, end_of_stream=True)
        if i % 7 == 0:  # held: waits for its response
            opened.append(stream)
        else:
            stream.send_response_headers([(":status", "200")], end_of_stream=True)
            last = stream
        assert len(plugin.streams) <= len(opened) + 2 * STREAM_HISTORY
    held = [s for s in plugin.streams if not s.completed]
    assert held == opened  # all of them, in the order opened
    done = [s for s in plugin.streams if s.completed]
    assert done and done[-1] is last and len(done) <= 2 * STREAM_HISTORY
    # once they complete, later trims drop them too
    for stream in opened:
        stream.send_response_headers([(":status", "200")], end_of_stream=True)
    for _ in range(4 * len(opened) + 4 * STREAM_HISTORY):
        stream = plugin.http_stream()
        stream.send_request_headers(REQUEST, end_of_stream=True)
        stream.send_response_headers([(":status", "200")], end_of_stream=True)
    assert len(plugin.streams) <= 2 * STREAM_HISTORY
    assert plugin.streams[-1] is stream
