"""The HTTP server's shared parts: :class:`Limits`, one ASGI request (:class:`_Stream`), the connection base."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.net.httpserver import HttpServer

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_READ = 65536
EXT_RAW_HEADERS = "proxywasm.raw_request_headers"
EXT_TRAILERS = "proxywasm.request_trailers"
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Payload Too Large",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
            503: b"Service Unavailable"}


@dataclass
class Limits:
    """Connection limits, with Envoy's HTTP connection manager names and defaults where it has one.

    ``request_headers_timeout``: seconds from the first byte of a request until its headers are
    complete (Envoy ``request_headers_timeout``; Envoy's default is off, ours 10 s so that a
    client trickling headers does not hold a connection); ``idle_timeout``: seconds a connection
    may stay open with no request in flight (Envoy ``common_http_protocol_options.idle_timeout``,
    1 h); ``max_header_bytes``: the request header block (Envoy ``max_request_headers_kb``,
    60 KiB → 431); ``max_connections``: open connections, more are closed at accept (Envoy's
    listener ``max_connections``; None: no limit); ``max_concurrent_streams``: per HTTP/2
    connection (SETTINGS_MAX_CONCURRENT_STREAMS); ``graceful_timeout``: seconds in-flight
    requests get at shutdown.  A timeout of None or 0 is off."""

    request_headers_timeout: float | None = 10.0
    idle_timeout: float | None = 3600.0
    max_header_bytes: int = 60 * 1024
    max_connections: int | None = None
    max_concurrent_streams: int = 100
    graceful_timeout: float = 1.0
    h2_window: int = 256 * 1024


#: the fewest closed HTTP/2 streams a connection keeps a record of (see bound_h2_closed_streams)
H2_CLOSED_STREAMS_KEPT = 100


def bound_h2_closed_streams(max_concurrent_streams: int) -> None:
    """Bound the record h2 keeps of a connection's closed streams (how each was closed, to
    answer a late frame on it with a stream error rather than a connection error) to the
    last ``max(100, max_concurrent_streams)`` (of the server started last in the process),
    instead of h2's 65,536 (~100 bytes each: a
    long-lived HTTP/2 connection's memory grew with every request until then).

    ``H2Connection.MAX_CLOSED_STREAMS`` is the setting h2 documents for this (its 3.1.0 release
    notes); it is read when a connection is created, and hypercorn creates its connections
    itself, so it is set on the class, for every HTTP/2 connection of the process (ours and
    hypercorn's alike).  RFC 9113 §5.1 lets an endpoint limit how long it tells late frames on
    a closed stream apart.  docs/serve.md ("Memory") says why this and not a cap on requests
    per connection."""
    import h2.connection

    h2.connection.H2Connection.MAX_CLOSED_STREAMS = max(H2_CLOSED_STREAMS_KEPT, max_concurrent_streams)


class _Disconnected(Exception):
    pass


class _Stream:
    """One request: the ASGI app's receive/send, on HTTP/1.1 or HTTP/2."""

    def __init__(self, conn: _Connection, scope: dict[str, Any], stream_id: int) -> None:
        self.conn = conn
        self.scope = scope
        self.stream_id = stream_id
        self.inbox: deque[dict[str, Any]] = deque()
        self.inbox_event = asyncio.Event()
        self.request_done = False  # the last body message is queued
        self.gone = False  # the client reset the stream / went away
        self.started = False  # response headers sent
        self.start: dict[str, Any] | None = None
        self.finished = False  # response complete
        self.trailers_declared = False
        self.task: asyncio.Task[Any] | None = None

    def push(self, message: dict[str, Any]) -> None:
        self.inbox.append(message)
        self.inbox_event.set()

    def disconnect(self) -> None:
        self.gone = True
        self.inbox_event.set()

    async def receive(self) -> dict[str, Any]:
        while not self.inbox:
            if self.gone:
                return {"type": "http.disconnect"}
            self.inbox_event.clear()
            self.conn.want_body(self)
            await self.inbox_event.wait()
        message = self.inbox.popleft()
        self.conn.consumed(self, message)
        return message

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone or self.finished:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            self.trailers_declared = bool(message.get("trailers"))
            return
        if kind == "http.response.body":
            if self.start is None:
                raise RuntimeError("http.response.body before http.response.start")
            more = bool(message.get("more_body", False))
            body = bytes(message.get("body", b""))
            if not self.started:
                # the end always comes after the headers (HTTP/2: an empty DATA frame with
                # END_STREAM, never END_STREAM on HEADERS), as common ASGI servers do: the
                # conformance profiles rely on that "empty last body event" shape
                self.started = True
                await self.conn.send_headers(self, int(self.start["status"]), list(self.start.get("headers", [])),
                                             end=False)
            if body:
                await self.conn.send_data(self, body)
            if not more and not self.trailers_declared:
                self.finished = True
                await self.conn.send_end(self, None)
            return
        if kind == "http.response.trailers":
            if not self.started or message.get("more_trailers", False):
                return
            self.finished = True
            await self.conn.send_end(self, list(message.get("headers", [])))
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r}")


class _Connection:
    """What the two protocols share: the socket, the app, the limits."""

    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.limits = server.limits
        sock = writer.get_extra_info("socket")
        self.client = _addr(writer.get_extra_info("peername"))
        self.local = _addr(writer.get_extra_info("sockname"))
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.closing = False

    def scope(self, version: str, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "method": method,
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.client,
            "server": self.local,
            "extensions": {"http.response.trailers": {}} if version == "2" else {},
        }

    async def run_app(self, stream: _Stream) -> None:
        try:
            await self.server.app(stream.scope, stream.receive, stream.send)
        except asyncio.CancelledError:
            await self.app_failed(stream)
            raise
        except Exception as exc:  # noqa: BLE001 - the app's failure is this request's 500 / reset
            if not isinstance(exc, ConnectionAbortedError):
                self.server.report(f"request failed: {exc!r}")
            await self.app_failed(stream)
        else:
            if not stream.finished and not stream.gone:
                await self.app_failed(stream)

    def want_body(self, stream: _Stream) -> None: ...
    def consumed(self, stream: _Stream, message: dict[str, Any]) -> None: ...
    async def send_headers(self, stream: _Stream, status: int, headers: list[Any], *, end: bool) -> None: ...
    async def send_data(self, stream: _Stream, data: bytes) -> None: ...
    async def send_end(self, stream: _Stream, trailers: list[Any] | None) -> None: ...
    async def app_failed(self, stream: _Stream) -> None: ...
    def shutdown(self) -> None: ...

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self.writer.is_closing():
            raise _Disconnected()
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            raise _Disconnected() from None

    def close(self) -> None:
        self.closing = True
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass


def _addr(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


def _deadline(timeout: float | None) -> float | None:
    return None if not timeout else time.monotonic() + timeout
