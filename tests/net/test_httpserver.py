"""The h11/h2 HTTP server serve and the test upstream listen with (proxywasm_host.net.httpserver).

Real sockets on 127.0.0.1, raw h11/h2 clients, bounded waits.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

h2_connection = pytest.importorskip("h2.connection")
import h2.events  # noqa: E402

from proxywasm_host.net.httpserver import EXT_RAW_HEADERS, EXT_TRAILERS, HttpServer, Limits  # noqa: E402


class Served:
    """An ASGI app under HttpServer on its own loop in a thread; the app records what it saw."""

    def __init__(self, app: Any, **limits: Any) -> None:
        self.app = app
        self.limits = Limits(**limits)
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            sock.setblocking(False)
            self.port = sock.getsockname()[1]
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self._ready.set()
            await HttpServer(self.app, limits=self.limits).serve([sock], self.stop)

        asyncio.run(main())

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()


def _h2_client(port: int) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2_connection.H2Connection()
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def test_request_trailers_and_raw_headers_reach_the_app_on_both_protocols():
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        ext = scope["extensions"]
        seen.append({"version": scope["http_version"], "body": body, "trailers": ext.get(EXT_TRAILERS),
                     "raw": ext.get(EXT_RAW_HEADERS)})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with Served(app) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        sock.close()
        sock, conn = _h2_client(srv.port)
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/p"), (":authority", "a")])
        conn.send_data(1, b"xyz")
        conn.send_headers(1, [("x-t", "2")], end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            for event in conn.receive_data(sock.recv(65536)):
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
        sock.close()
    assert seen[0] == {"version": "1.1", "body": b"abc", "trailers": [("X-T", "1")], "raw": None}
    assert seen[1]["body"] == b"xyz" and seen[1]["trailers"] == [("x-t", "2")]
    assert seen[1]["raw"] == [(":method", "POST"), (":scheme", "http"), (":path", "/p"), (":authority", "a")]


def test_an_http2_upload_is_held_back_by_flow_control_while_the_app_does_not_read():
    """Back-pressure: the server buffers at most its window (256 KiB) of a body the app has not
    taken; the rest waits at the client."""
    release = threading.Event()
    got: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while not release.is_set():
            await asyncio.sleep(0.05)
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        got.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    size = 4 * 1024 * 1024
    with Served(app) as srv:
        sock, conn = _h2_client(srv.port)
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "a")])
        sent = 0
        sock.settimeout(0.3)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent < size:
            window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size, size - sent)
            if window > 0:
                conn.send_data(1, b"u" * window)
                sent += window
                sock.sendall(conn.data_to_send())
                continue
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            conn.receive_data(data)
            sock.sendall(conn.data_to_send())
        held_back = sent
        assert held_back <= 256 * 1024 + 65535, held_back  # the window, not the body
        release.set()
        sock.settimeout(10)
        ended = False
        deadline = time.monotonic() + 30
        while not ended and time.monotonic() < deadline:
            window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size, size - sent)
            if sent < size and window > 0:
                conn.send_data(1, b"u" * window, end_stream=sent + window == size)
                sent += window
                sock.sendall(conn.data_to_send())
                continue
            for event in conn.receive_data(sock.recv(65536)):
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
        sock.close()
    assert got == [size]


def test_pipelined_http1_requests_are_answered_in_order():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    with Served(app) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
    assert data.index(b"/one") < data.index(b"/two") and data.count(b"HTTP/1.1 200") == 2


def test_a_response_cut_short_resets_the_http2_stream_and_keeps_the_connection():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if scope["path"] == "/cut":
            raise ConnectionAbortedError("cut")
        await send({"type": "http.response.body", "body": b""})

    with Served(app) as srv:
        sock, conn = _h2_client(srv.port)
        for stream_id, path in ((1, "/cut"), (3, "/ok")):
            conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "a")],
                              end_stream=True)
        sock.sendall(conn.data_to_send())
        reset, ended = set(), set()
        deadline = time.monotonic() + 10
        while len(reset | ended) < 2 and time.monotonic() < deadline:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.StreamReset):
                    reset.add(event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())
        sock.close()
    assert reset == {1} and ended == {3}


def test_http2_raw_headers_keep_cookie_crumbs_where_they_were_sent():
    """The raw header list is the HEADERS frame as sent (h2's inbound normalisation would join the
    cookie crumbs and move them last: the test upstream then misreported the order Envoy sends,
    docs/abi-notes.md §5.4); the ASGI scope gets them joined (RFC 9113 §8.2.3)."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        seen.append({"raw": scope["extensions"].get(EXT_RAW_HEADERS), "headers": scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    with Served(app) as srv:
        sock, conn = _h2_client(srv.port)
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"),
                              ("cookie", "a=1"), ("x-b", "2"), ("cookie", "c=3"), ("x-d", "4")], end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            for event in conn.receive_data(sock.recv(65536)):
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
        sock.close()
    assert seen[0]["raw"] == [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"),
                              ("cookie", "a=1"), ("x-b", "2"), ("cookie", "c=3"), ("x-d", "4")]
    assert seen[0]["headers"] == [(b"host", b"a"), (b"x-b", b"2"), (b"x-d", b"4"), (b"cookie", b"a=1; c=3")]
