"""A real upstream HTTP server for backend tests on 127.0.0.1 (our h11/h2 server, :mod:`.httpserver`).

:class:`UpstreamServer` serves one ASGI app on an ephemeral loopback port,
speaking HTTP/1.1 and cleartext HTTP/2 (h2c with prior knowledge, which is
what Envoy's ``http2_protocol_options`` cluster sends) on the same port.  It
runs the server on its own asyncio loop in a background thread, records every
request it gets, and answers each with a scenario's :class:`HttpResponse`.

What is recorded (:class:`ReceivedRequest`), and how faithful it is:

* HTTP/2: ``headers`` is the exact HEADERS-frame list as the h2 library
  decoded it (cookie crumbs not joined), pseudo-headers included, in arrival order (for example
  ``[(':method','GET'), (':scheme','http'), (':authority','x'),
  (':path','/'), ('user-agent', ...), ...]``), from the server's
  ``proxywasm.raw_request_headers`` scope extension.  Request trailers (a
  trailing HEADERS frame) are recorded the same way.
* HTTP/1.1: there are no pseudo-headers on the wire.  ``headers`` starts with
  two synthesised entries, ``(':method', M)`` and ``(':path', target)``
  taken from the request line, followed by the header lines exactly as
  received (original case and order; ``host`` stays ``host``, no
  ``:authority`` is invented).  Chunked-encoding trailers are recorded too.
* ``body`` is the concatenation of the DATA frames / chunks;
  ``body_chunks`` keeps them as the server delivered them (its boundaries
  are not guaranteed to match the sender's frames).
* ``requests`` are the requests that ended; a request whose stream was reset
  (or whose connection closed) before its end goes to ``reset_requests``
  instead, with the headers and the body as far as they came, and is not
  answered.

Responses: status, headers (names lower-cased on HTTP/2, as HTTP/2 demands;
as given on HTTP/1.1), each body chunk as its own ASGI body message, and
trailers when the request arrived over HTTP/2.  HTTP/1.1 response trailers
are not sent: they are dropped and :attr:`ReceivedRequest.trailers_dropped`
is set.  No ``date`` or ``server`` header is added, so the response carries
exactly the scenario's headers (plus ``content-length`` /
``transfer-encoding`` framing that h11 adds on HTTP/1.1 when the scenario
gives none).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from proxywasm_host.http.scenario import HttpResponse, UpstreamRequest
from proxywasm_host.net.asgi import run_lifespan
from proxywasm_host.net.httpserver import (
    EXT_RAW_HEADERS,
    EXT_TRAILERS,
    HttpServer,
    Limits,
)

__all__ = ["ReceivedRequest", "UpstreamServer"]

_EXT_HEADERS = EXT_RAW_HEADERS
_EXT_TRAILERS = EXT_TRAILERS


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


def _pairs(headers: Any) -> list[tuple[str, str]]:
    return [(_text(k), _text(v)) for k, v in headers]


@dataclass
class ReceivedRequest:
    """One request as the upstream server saw it (see the module doc)."""

    http_version: str  # "1.1", "1.0" or "2"
    method: str
    path: str  # raw request target, query string included
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] | None = None
    trailers_dropped: bool = False  # response trailers could not be sent (HTTP/1.x)

    def to_upstream_request(self) -> UpstreamRequest:
        return UpstreamRequest(
            headers=list(self.headers),
            body=self.body,
            trailers=None if self.trailers is None else list(self.trailers),
        )

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive name), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


ResponseSource = Union[HttpResponse, Callable[[ReceivedRequest], HttpResponse]]  # noqa: UP007 - a runtime alias on 3.10
_EMPTY_RESPONSE = HttpResponse()

# --------------------------------------------------------------------------


class UpstreamServer:
    """Context manager running the HTTP server on 127.0.0.1 in a background thread.

    ``response`` is an :class:`HttpResponse` or a callable that receives the
    :class:`ReceivedRequest` (complete, body included) and returns one.  It
    may be replaced between exchanges (``server.response = ...``).
    """

    def __init__(self, response: ResponseSource = _EMPTY_RESPONSE, *, host: str = "127.0.0.1", chunk_gap: float = 0.0):
        """``chunk_gap``: seconds to wait between response body chunks (and
        before trailers) when there is more than one piece, so that each chunk
        leaves as its own DATA frame / write instead of being coalesced by
        the server's send buffer."""
        self.response: ResponseSource = response
        self.host = host
        self.chunk_gap = chunk_gap
        self.port: int = 0
        self.requests: list[ReceivedRequest] = []
        #: requests whose stream was reset (or connection closed) before they ended: the
        #: headers and the body as far as they came
        self.reset_requests: list[ReceivedRequest] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- public API -------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> UpstreamServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"upstream-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("upstream server did not start")
        if self._startup_error is not None:
            raise RuntimeError("upstream server failed to start") from self._startup_error

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
        self._thread.join(10)
        self._thread = None

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.reset_requests.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests completed (body read)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= count, timeout)

    # -- server thread ----------------------------------------------------

    def _run(self, sock: socket.socket) -> None:
        limits = Limits(request_headers_timeout=None, idle_timeout=30, graceful_timeout=0.2)
        server = HttpServer(self._app, limits=limits, raw_h1_headers=True)
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._stop = asyncio.Event()
            loop.call_soon(self._ready.set)
            loop.run_until_complete(server.serve([sock], self._stop))
        except BaseException as exc:  # noqa: BLE001 - reported to the starter
            self._startup_error = exc
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._serve_http(scope, receive, send)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    async def _serve_http(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # the client reset the stream (or closed the connection) before the request ended
                with self._cond:
                    self.reset_requests.append(self._record(scope, chunks))
                return
            if message.get("body"):
                chunks.append(bytes(message["body"]))
            if not message.get("more_body", False):
                break

        await self._answer(scope, self._record(scope, chunks), send)

    def _record(self, scope: dict[str, Any], chunks: list[bytes]) -> ReceivedRequest:
        version = scope.get("http_version", "1.1")
        extensions = scope.get("extensions") or {}
        raw_target = scope.get("raw_path") or scope["path"].encode()
        target = _text(raw_target)
        if scope.get("query_string") and b"?" not in raw_target:
            target += "?" + _text(scope["query_string"])
        if version == "2" and _EXT_HEADERS in extensions:
            headers = list(extensions[_EXT_HEADERS])
        else:
            headers = [(":method", scope["method"]), (":path", target)] + _pairs(scope["headers"])
        trailers = extensions.get(_EXT_TRAILERS)
        return ReceivedRequest(
            http_version=version,
            method=scope["method"],
            path=target,
            headers=headers,
            body=b"".join(chunks),
            body_chunks=chunks,
            trailers=None if trailers is None else list(trailers),
        )

    async def _answer(self, scope: dict[str, Any], record: ReceivedRequest, send: Callable[..., Any]) -> None:
        extensions = scope.get("extensions") or {}
        version = scope.get("http_version", "1.1")
        source = self.response
        response = source(record) if callable(source) else source
        can_trail = "http.response.trailers" in extensions
        send_trailers = bool(response.trailers) and can_trail
        if response.trailers and not can_trail:
            record.trailers_dropped = True
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()

        lower = version == "2"
        out_headers = [
            ((k.lower() if lower else k).encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers
        ]
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": response.status,
            "headers": out_headers,
        }
        if send_trailers:
            start["trailers"] = True
        await send(start)
        body_chunks = [c for c in response.body_chunks if c]
        gap = self.chunk_gap if len(body_chunks) + (1 if send_trailers else 0) > 1 else 0.0
        for i, chunk in enumerate(body_chunks):
            if i and gap:
                await asyncio.sleep(gap)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if send_trailers:
            if gap and body_chunks:
                await asyncio.sleep(gap)
            await send(
                {
                    "type": "http.response.trailers",
                    "headers": [
                        (k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in response.trailers or ()
                    ],
                    "more_trailers": False,
                }
            )
