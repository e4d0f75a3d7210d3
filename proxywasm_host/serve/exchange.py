"""One request through the filter: the client (ASGI) on one side, the upstream leg on the other."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from proxywasm_host.errors import HarnessUsageError
from proxywasm_host.harness.forwarded import Forwarded, ForwardedReader
from proxywasm_host.http.profiles import envoy_request_headers
from proxywasm_host.net.httpserver import EXT_RAW_HEADERS, EXT_TRAILERS
from proxywasm_host.serve.config import HOP_BY_HOP, SERVER_NAME, text
from proxywasm_host.serve.legs import UpstreamLeg

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.harness import HttpStream, Plugin
    from proxywasm_host.serve.server import FilterServer

__all__ = ["Exchange"]


#: response headers not sent to the client: hop-by-hop ones and ``server`` (serve adds its own)
_NOT_FORWARDED = frozenset(name.encode() for name in HOP_BY_HOP) | {b"server"}
_SERVER = SERVER_NAME.encode()


if sys.version_info >= (3, 11):
    async def receive_within(receive: Callable[[], Awaitable[dict[str, Any]]], seconds: float) -> dict[str, Any]:
        """``await receive()``, or :class:`asyncio.TimeoutError` after ``seconds``: a timer on
        this task (``asyncio.wait_for`` would run the receive in a task of its own, per request)."""
        async with asyncio.timeout(seconds):
            return await receive()
else:  # pragma: no cover - Python 3.10
    async def receive_within(receive: Callable[[], Awaitable[dict[str, Any]]], seconds: float) -> dict[str, Any]:
        return await asyncio.wait_for(receive(), timeout=seconds)


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """Now as an HTTP ``date`` value (formatted once a second)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _plain_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a plain-text answer serve gives itself (a timeout, a failure of its own)."""
    return [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
            (b"date", http_date()), (b"server", _SERVER)]


def _wire_text(value: str) -> str:
    """A header the HTTP server decoded as latin-1 (HTTP/2 raw list) → serve's text."""
    return text(value.encode("latin-1"))


class Exchange(UpstreamLeg):
    """One request/response through the filter: ASGI on one side, the upstream on the other."""

    def __init__(self, server: FilterServer, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        self.server = server
        self.scope = scope
        self.receive = receive
        self.send = send
        self.h2 = scope.get("http_version") == "2"
        self.stream: HttpStream = None  # type: ignore[assignment]  # set in run()
        self.plugin: Plugin = None  # type: ignore[assignment]
        self.out: ForwardedReader = None  # type: ignore[assignment]
        self.stream_id = 0
        self.started_at = time.monotonic()
        # upstream leg
        self.up_task: asyncio.Task[Any] | None = None
        self.up_queue: deque[bytes | None] = deque()
        self.up_event = asyncio.Event()
        self.up_pending = 0
        self.up_drained = asyncio.Event()
        self.up_sent = 0
        self.up_eos = False
        self.up_trailers: list[tuple[str, str]] | None = None
        self.up_started_at = 0.0
        # downstream
        self.down: deque[dict[str, Any]] = deque()
        self.down_pending = 0
        self.down_drained = asyncio.Event()
        self.wake = asyncio.Event()
        self.down_started = False
        self.down_sent = 0
        self.down_done = False
        self.want_trailers = False
        self.trailers_declared = False
        self.held_start: dict[str, Any] | None = None  # hypercorn: a response start not sent yet (trailers?)
        self.status = 0
        self.aborted: str | None = None
        self.reader: asyncio.Task[Any] | None = None
        self.last_activity = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None

    # -- request side ----------------------------------------------------------------------------
    def _filter_headers(self) -> list[tuple[str, str]] | tuple[int, str]:
        """The request headers as Envoy's HCM hands them to the filters (the one normaliser,
        :func:`proxywasm_host.http.profiles.envoy_request_headers`), or (status, reason) for a
        request Envoy would refuse."""
        scope = self.scope
        version = scope.get("http_version", "1.1")
        if version == "1.0":
            return 426, "HTTP/1.0 is not accepted (Envoy's default: accept_http_10 false)"
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = text(raw_path) + (("?" + text(scope["query_string"])) if scope.get("query_string") else "")
        if method == "CONNECT":
            return 405, "CONNECT is not supported"
        if not target.startswith("/"):
            return 400, f"request target {target!r} is not an absolute path"
        regular = [(text(k).lower(), text(v)) for k, v in scope["headers"]]
        if not self.h2 and any(k == "transfer-encoding" for k, _ in regular) and any(k == "content-length" for k, _ in regular):
            # Envoy's codec refuses the request smuggling shape (and closes the connection); h11
            # lets it through (Transfer-Encoding wins), so it is refused here
            return 400, "both Content-Length and Transfer-Encoding"
        raw_h2 = (scope.get("extensions") or {}).get(EXT_RAW_HEADERS)
        client: list[tuple[str, str]]
        if self.h2 and raw_h2:
            client = [(k, _wire_text(v)) for k, v in raw_h2]
        elif self.h2:
            # hypercorn hands over the regular headers with ``host`` from :authority first: the
            # pseudo-headers come back in the order most clients send them
            authority = next((v for k, v in regular if k == "host"), "")
            client = [(":method", method), (":scheme", scope.get("scheme", "http")), (":authority", authority),
                      (":path", target), *((k, v) for k, v in regular if k != "host")]
        else:
            if not any(k == "host" for k, _ in regular):
                return 400, "missing Host header"
            client = [(":method", method), (":path", target), (":scheme", scope.get("scheme", "http")), *regular]
        return envoy_request_headers(client, protocol="HTTP/2" if self.h2 else "HTTP/1.1", request_id=str(uuid.uuid4()))

    def _request_has_no_body(self) -> bool:
        if self.h2:
            return False  # known only from the first ASGI message
        length = b"0"
        for k, v in self.scope["headers"]:
            k = k.lower()
            if k == b"transfer-encoding":
                return False
            if k == b"content-length":
                length = v
        return length.strip() in (b"", b"0")

    def _attributes(self) -> dict[Any, Any]:
        from proxywasm_host.core.properties import Int

        attrs: dict[Any, Any] = {("request", "protocol"): "HTTP/2" if self.h2 else "HTTP/1.1"}
        client, server = self.scope.get("client"), self.scope.get("server")
        if client:
            attrs[("source", "address")] = f"{client[0]}:{client[1]}"
            attrs[("source", "port")] = Int(int(client[1]))
        if server and server[1] is not None:
            attrs[("destination", "address")] = f"{server[0]}:{server[1]}"
            attrs[("destination", "port")] = Int(int(server[1]))
        return attrs

    async def run(self) -> None:
        server = self.server
        config = server.config
        server.stats["requests"] += 1
        headers = self._filter_headers()
        if isinstance(headers, tuple):
            server.stats["bad_requests"] += 1
            await self._plain(headers[0], headers[1])
            return
        first: dict[str, Any] | None = None
        if self._request_has_no_body():
            eos = True
        else:
            # end_of_stream on the headers is known with the first body event (HTTP/2, or a body)
            wait = min(t for t in (config.idle_timeout, config.request_timeout, 3600.0) if t > 0)
            try:
                message = await receive_within(self.receive, wait)
            except asyncio.TimeoutError:
                await self._plain(408, "request timeout" if wait == config.request_timeout else "stream timeout")
                return
            if message["type"] == "http.disconnect":
                return  # gone before the request started: no stream, as in Envoy
            first = message
            eos = not message.get("more_body", False) and not message.get("body") and self._request_trailers() is None
        try:
            self.plugin = server.plugin  # the build this stream runs on to its end (--reload)
            self.stream = self.plugin.http_stream(attributes=self._attributes())
        except HarnessUsageError as exc:
            await self._plain(503, str(exc))
            return
        self.out = ForwardedReader(self.stream)
        self.stream_id = self.stream.context_id
        self.want_trailers = self.h2 and any(k == "te" and v.lower() == "trailers" for k, v in headers)
        server.active.add(self)
        if config.request_timeout > 0:
            remaining = max(config.request_timeout - (time.monotonic() - self.started_at), 0.0)
            self._request_timer = asyncio.get_running_loop().call_later(remaining, self._request_timed_out)
        try:
            stream = self.stream
            server.filter_call(lambda: stream.send_request_headers(headers, end_of_stream=eos), self)
            if first is not None and not eos:
                self._request_message(first)
                more = first.get("more_body", False)
            else:
                more = False
            self.reader = asyncio.get_running_loop().create_task(self._read_request(more))
            await self._send_loop()
        finally:
            await self._finish()

    def _request_trailers(self) -> list[tuple[str, str]] | None:
        trailers = (self.scope.get("extensions") or {}).get(EXT_TRAILERS)
        return None if trailers is None else [(k.lower(), _wire_text(v)) for k, v in trailers]

    def _request_message(self, message: dict[str, Any]) -> None:
        """Deliver one ASGI request-body message to the filter."""
        self.last_activity = time.monotonic()
        if self.out.completed or self.aborted or not self.out.accepts_request():
            return
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        trailers = None if more else self._request_trailers()
        stream = self.stream
        if chunk or (not more and trailers is None):
            self.server.filter_call(lambda: stream.send_request_body(chunk, end_of_stream=not more and trailers is None), self)
        if trailers is not None and self.out.accepts_request():
            self.server.filter_call(lambda: stream.send_request_trailers(trailers), self)
        if self.out.request_buffered > self.server.config.buffer_limit and not self.down_started:
            self._fail_locally(413, "request payload too large (the filter buffered more than the buffer limit)")

    async def _read_request(self, more: bool) -> None:
        """Feed the request body as it arrives; afterwards watch for the client going away."""
        try:
            while more:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.abort("client disconnected")
                    return
                self._request_message(message)
                more = message.get("more_body", False)
                while self.up_pending > self.server.config.buffer_limit and not self.aborted and not self.down_done:
                    self.up_drained.clear()
                    await self.up_drained.wait()
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if not self.down_done:
                        self.abort("client disconnected")
                    return
        except asyncio.CancelledError:
            pass

    def _request_timed_out(self) -> None:
        """Envoy's ``request_timeout``: the whole request was not received in time (disarmed
        once it was, or once the response started)."""
        self._request_timer = None
        if self.aborted or self.down_started or self.out.request_received:
            return
        self._fail_locally(408, "request timeout")

    # -- the filter's output -> upstream / downstream ------------------------------------------------
    def pump(self) -> None:
        """Move on whatever the filter released since last time (sync; called after every
        filter call)."""
        out = self.out
        if out is None:
            return
        ev = out.take()
        if ev.reset:
            self.abort("the filter reset the stream")
            return
        local = out.local_reply
        if local is not None and self.up_task is not None and not self.up_task.done():
            self.up_task.cancel()  # a local reply ends the upstream request
        self._pump_request(ev, local is None)
        self._pump_response(ev)
        if ev.completed and not self.down_started and not self.aborted:
            self.abort("the stream ended without a response")
        if out.paused:
            self.server.waiting.add(self)
        else:
            self.server.waiting.discard(self)
        if out.response_buffered > self.server.config.buffer_limit and not out.completed:
            self._fail_locally(500, "response too large for the buffer limit (the filter buffered it)")

    def _pump_request(self, ev: Forwarded, upstream_wanted: bool) -> None:
        if ev.request_headers is not None and upstream_wanted and not self.aborted and self.up_task is None:
            self.up_started_at = time.monotonic()
            self.up_task = asyncio.get_running_loop().create_task(self._upstream(ev.request_headers))
        if self.up_task is None or self.up_eos:
            return
        if ev.request_body:
            self.up_sent += len(ev.request_body)
            self.up_queue.append(ev.request_body)
            self.up_pending += len(ev.request_body)
            self.up_event.set()
        if ev.request_end:
            if ev.request_trailers is not None:
                self.up_trailers = [(text(k), text(v)) for k, v in ev.request_trailers]
            self.up_eos = True
            self.up_queue.append(None)
            self.up_event.set()

    def _pump_response(self, ev: Forwarded) -> None:
        if ev.response_headers is not None and not self.down_started:
            self.down_started = True
            status = next((v for k, v in ev.response_headers if k == b":status"), b"0")
            self.status = int(status) if status.isdigit() else 0
            if ev.local_reply is not None:
                self.server.stats["local_replies"] += 1
                if ev.local_reply.details == "wasm_fail_stream":
                    self.server.stats["fail_closed"] += 1
            headers = []
            dated = False
            for k, v in ev.response_headers:
                name = k.lower()
                if name[:1] != b":" and name not in _NOT_FORWARDED:
                    headers.append((name, v))
                    if name == b"date":
                        dated = True
            if not dated:  # Envoy's connection manager keeps the response's date, else adds one
                headers.append((b"date", http_date()))
            headers.append((b"server", _SERVER))
            start: dict[str, Any] = {"type": "http.response.start", "status": self.status or 502, "headers": headers}
            if self.want_trailers and self.server.config.http_server == "hypercorn":
                # hypercorn cannot end an HTTP/2 stream whose trailers were declared with an empty
                # trailers block: trailers are declared only if known before the start is sent
                self.held_start = start
            elif self.want_trailers:
                start["trailers"] = self.trailers_declared = True
            self._down_append(start)
        if not self.down_started or self.down_done:
            return
        if ev.response_body:
            self.down_sent += len(ev.response_body)
            # the last chunk carries the end (one ASGI message, not two)
            self._down_append({"type": "http.response.body", "body": ev.response_body, "more_body": not ev.response_end})
        if ev.response_end:
            self.down_done = True
            if not ev.response_body:
                self._down_append({"type": "http.response.body", "body": b"", "more_body": False})
            if self.held_start is not None and ev.response_trailers:
                self.held_start["trailers"] = self.trailers_declared = True
            self.held_start = None
            if self.trailers_declared:
                pairs = [(k.lower(), v) for k, v in ev.response_trailers or ()]
                self._down_append({"type": "http.response.trailers", "headers": pairs, "more_trailers": False})
            elif ev.response_trailers:
                why = ("the client did not ask for them (HTTP/1.1, or no te: trailers)" if not self.want_trailers else
                       "they came after the response started (hypercorn; --http-server builtin sends them)")
                self.server.log("debug", f"[{self.server.name} ctx={self.stream_id}] response trailers dropped: {why}")

    def _down_append(self, message: dict[str, Any]) -> None:
        self.last_activity = time.monotonic()
        self.down.append(message)
        self.down_pending += len(message.get("body", b""))
        self.wake.set()

    def abort(self, reason: str) -> None:
        if self.aborted:
            return
        self.aborted = reason
        if self.up_task is not None and not self.up_task.done():
            self.up_task.cancel()
        self.server.waiting.discard(self)
        self.wake.set()
        self.up_drained.set()
        self.down_drained.set()

    def _fail_locally(self, status: int, reason: str) -> None:
        """A failure of the proxy itself (not of the filter): answer directly, end the stream."""
        self.server.log("warn", f"[{self.server.name} ctx={self.stream_id}] {reason}")
        if not self.down_started:
            self.down_started = True
            self.status = status
            body = (reason + "\n").encode()
            self._down_append({"type": "http.response.start", "status": status, "headers": _plain_headers(body)})
            self._down_append({"type": "http.response.body", "body": body, "more_body": False})
            self.down_done = True
            if self.up_task is not None and not self.up_task.done():
                self.up_task.cancel()
        else:
            self.abort(reason)
        if not self.out.completed:
            self.server.filter_call(self.stream.complete)

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        idle = self.server.config.idle_timeout
        self.last_activity = time.monotonic()
        if idle > 0:
            self._timer = loop.call_later(idle, self._idle_check)
        try:
            while True:
                while self.down:
                    message = self.down.popleft()
                    if message is self.held_start:
                        self.held_start = None  # sent: no trailers can be declared any more
                    self.down_pending -= len(message.get("body", b""))
                    await self.send(message)
                self.down_drained.set()
                if self.aborted or (self.down_done and not self.down):
                    return
                self.wake.clear()
                await self.wake.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None

    def _idle_check(self) -> None:
        """Envoy's stream idle timeout: nothing moved for ``idle_timeout`` seconds."""
        idle = self.server.config.idle_timeout
        quiet = time.monotonic() - self.last_activity
        self._timer = None
        if self.down_done or self.aborted:
            return
        if quiet < idle:
            self._timer = asyncio.get_running_loop().call_later(idle - quiet, self._idle_check)
            return
        if not self.down_started:
            self.server.log("warn", f"[{self.server.name} ctx={self.stream_id}] stream idle for {idle:g} s: 408")
            self._fail_locally(408, "stream timeout")
        else:
            self.abort(f"stream idle for {idle:g} s")

    async def _finish(self) -> None:
        server = self.server
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        if self.up_task is not None and not self.up_task.done():
            self.up_task.cancel()
        server.active.discard(self)
        server.waiting.discard(self)
        if self.out is not None and not self.out.completed:
            server.filter_call(self.stream.complete)  # client gone / aborted: on_log, on_done, on_delete
        if self.stream is not None:
            server.forget_stream(self.stream, self.plugin)
        if server.config.access_log:
            took = (time.monotonic() - self.started_at) * 1000
            line = f'"{self.scope["method"]} {self.scope["path"]} HTTP/{self.scope.get("http_version")}" {self.status or "-"}'
            if self.aborted:
                line += f" aborted ({self.aborted})"
            server.log("info", f"{line} {took:.1f} ms", source="access")
        if self.aborted and self.down_started and not self.down_done:
            raise ConnectionAbortedError(self.aborted)  # the HTTP server resets the stream / connection

    async def _plain(self, status: int, reason: str) -> None:
        body = (reason + "\n").encode()
        self.status = status
        headers = _plain_headers(body)
        if status == 400 and not self.h2:
            headers.append((b"connection", b"close"))  # as Envoy's codec errors: the connection goes
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
