"""A small HTTP/1.1 + cleartext HTTP/2 server (h11 and h2 on asyncio) that runs an ASGI app.

It is what ``serve`` and the test upstream listen with.  Everything it does is public h11/h2
API; what an off-the-shelf ASGI server hides and the proxy needs is here on purpose:

* request trailers (HTTP/1.1 chunked trailers, HTTP/2 trailing HEADERS) in the scope's
  extension ``proxywasm.request_trailers``, set before the last ``http.request`` message;
* the request's raw header list (HTTP/2: pseudo-headers included, in frame order) in
  ``proxywasm.raw_request_headers``; with ``raw_h1_headers`` the HTTP/1.1 scope headers keep
  their original case and order;
* Envoy's connection limits (:class:`Limits`): request headers timeout, connection idle
  timeout, header size, concurrent connections and streams; ``Content-Length`` together with
  ``Transfer-Encoding`` refused with 400 as Envoy's codec does; a quick shutdown (GOAWAY,
  in-flight streams get ``graceful_timeout`` seconds, then everything is closed).

Back-pressure: a request body is read from the socket only as fast as the app receives it
(HTTP/1.1: one chunk ahead; HTTP/2: flow-control windows are returned as the app consumes the
data); ``send`` waits for the socket to drain (HTTP/2: for the peer's window).

HTTP/1.1 response trailers are not sent (the proxy never sends them to HTTP/1.1 clients);
HTTP/2 responses with trailers declared and none given end with an empty DATA frame.
Cleartext HTTP/2 comes with prior knowledge or ``Upgrade: h2c`` (bodyless requests).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from proxywasm_host.net._h1 import _H1
from proxywasm_host.net._h2 import _H2
from proxywasm_host.net._http_conn import (
    _PREFACE,
    _READ,
    EXT_RAW_HEADERS,
    EXT_TRAILERS,
    ASGIApp,
    Limits,
    _Connection,
    _deadline,
    bound_h2_closed_streams,
)

__all__ = ["EXT_RAW_HEADERS", "EXT_TRAILERS", "ASGIApp", "HttpServer", "Limits"]


class HttpServer:
    """Serve ``app`` on listening sockets until ``shutdown`` is set (see the module doc).

    ``report(message, level)`` receives the server's own log lines (default: dropped)."""

    def __init__(self, app: ASGIApp, *, limits: Limits | None = None, raw_h1_headers: bool = False, h2c: bool = True,
                 report: Callable[[str, str], None] | None = None) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.raw_h1_headers = raw_h1_headers
        self.h2c = h2c
        self._report = report
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.refused_connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def report(self, message: str, level: str = "warn") -> None:
        if self._report is not None:
            self._report(message, level)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limit = self.limits.max_connections
        if self.stopping or (limit is not None and len(self.connections) >= limit):
            self.refused_connections += 1
            if self.refused_connections == 1 or self.refused_connections % 1000 == 0:
                self.report(f"connection limit ({limit}) reached: closing new connections "
                            f"({self.refused_connections} so far)")
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        h1conn = _H1(self, reader, writer)
        conn: _Connection = h1conn
        self.connections.add(conn)
        try:
            # HTTP/2 with prior knowledge starts with the preface; anything else is HTTP/1.x.
            # Until the first byte: the idle timeout; from it: the request headers timeout.
            first = b""
            since: float | None = None
            limits = self.limits
            while len(first) < len(_PREFACE) and _PREFACE.startswith(first):
                deadline = _deadline(limits.idle_timeout) if since is None else (
                    since + limits.request_headers_timeout if limits.request_headers_timeout else None)
                try:
                    timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
                    chunk = await asyncio.wait_for(reader.read(_READ), timeout)
                except asyncio.TimeoutError:
                    break
                except (ConnectionError, OSError):
                    chunk = b""
                if not chunk:
                    return
                if since is None:
                    since = time.monotonic()
                first += chunk
            if first.startswith(_PREFACE):
                self.connections.discard(conn)
                h2conn = _H2(self, reader, writer)
                conn = h2conn
                self.connections.add(conn)
                await h2conn.run(first)
            elif first:
                await h1conn.run(first, since)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not end the server
            self.report(f"connection from {conn.client} failed: {exc!r}", level="error")
        finally:
            conn.close()
            self.connections.discard(conn)
            if task is not None:
                self._tasks.discard(task)

    async def serve(self, sockets: list[socket.socket], shutdown: asyncio.Event) -> None:
        """Accept on ``sockets`` until ``shutdown`` is set; then close quickly (module doc)."""
        bound_h2_closed_streams(self.limits.max_concurrent_streams)
        servers = [await asyncio.start_server(self._accept, sock=sock, limit=self.limits.max_header_bytes * 2)
                   for sock in sockets]
        try:
            await shutdown.wait()
        finally:
            self.stopping = True
            for srv in servers:
                srv.close()
            for conn in list(self.connections):
                conn.shutdown()
            deadline = time.monotonic() + self.limits.graceful_timeout
            while self.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=1.0)
