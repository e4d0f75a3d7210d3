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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11

__all__ = ["ASGIApp", "HttpServer", "Limits"]

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
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


class _Disconnected(Exception):
    pass


class _Stream:
    """One request: the ASGI app's receive/send, on HTTP/1.1 or HTTP/2."""

    def __init__(self, conn: _Connection, scope: dict, stream_id: int) -> None:
        self.conn = conn
        self.scope = scope
        self.stream_id = stream_id
        self.inbox: deque[dict] = deque()
        self.inbox_event = asyncio.Event()
        self.request_done = False  # the last body message is queued
        self.gone = False  # the client reset the stream / went away
        self.started = False  # response headers sent
        self.start: dict | None = None
        self.finished = False  # response complete
        self.trailers_declared = False
        self.task: asyncio.Task | None = None

    def push(self, message: dict) -> None:
        self.inbox.append(message)
        self.inbox_event.set()

    def disconnect(self) -> None:
        self.gone = True
        self.inbox_event.set()

    async def receive(self) -> dict:
        while not self.inbox:
            if self.gone:
                return {"type": "http.disconnect"}
            self.inbox_event.clear()
            self.conn.want_body(self)
            await self.inbox_event.wait()
        message = self.inbox.popleft()
        self.conn.consumed(self, message)
        return message

    async def send(self, message: dict) -> None:
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
                self.started = True
                bodyless = not more and not body and not self.trailers_declared
                await self.conn.send_headers(self, int(self.start["status"]), list(self.start.get("headers", [])),
                                             end=bodyless)
                if bodyless:
                    self.finished = True
                    return
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

    def scope(self, version: str, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
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
    def consumed(self, stream: _Stream, message: dict) -> None: ...
    async def send_headers(self, stream: _Stream, status: int, headers: list, *, end: bool) -> None: ...
    async def send_data(self, stream: _Stream, data: bytes) -> None: ...
    async def send_end(self, stream: _Stream, trailers: list | None) -> None: ...
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


# ---------------------------------------------------------------------------------------------
# HTTP/1.1
# ---------------------------------------------------------------------------------------------


class _H1(_Connection):
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(server, reader, writer)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.stream: _Stream | None = None
        self.body_wanted = asyncio.Event()
        self.eof = False

    async def _read(self, timeout: float | None) -> bytes:
        try:
            if timeout is None:
                data = await self.reader.read(_READ)
            else:
                data = await asyncio.wait_for(self.reader.read(_READ), max(timeout, 0.0))
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
        return data

    async def run(self, initial: bytes, since: float | None = None) -> None:
        conn = self.h11
        conn.receive_data(initial)
        limits = self.limits
        first_since = since
        try:
            while not self.closing:
                # -- wait for a request's headers: idle timeout until its first byte, then the
                # request headers timeout
                idle_deadline = _deadline(limits.idle_timeout)
                headers_deadline: float | None = None
                if first_since is not None and limits.request_headers_timeout:
                    headers_deadline = first_since + limits.request_headers_timeout
                first_since = None
                event: Any = None
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError as exc:
                        await self._refuse(exc.error_status_hint or 400, str(exc))
                        return
                    if event is h11.NEED_DATA:
                        if conn.trailing_data[0] and headers_deadline is None:
                            headers_deadline = _deadline(limits.request_headers_timeout)
                        deadline = headers_deadline if headers_deadline is not None else idle_deadline
                        if self.server.stopping:
                            return
                        data = await self._read(None if deadline is None else deadline - time.monotonic())
                        if not data:
                            if not self.eof and headers_deadline is not None:  # timed out mid-headers
                                await self._refuse(408, "request headers timeout")
                            return
                        if headers_deadline is None:
                            headers_deadline = _deadline(limits.request_headers_timeout)
                        conn.receive_data(data)
                        continue
                    break
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    return
                if not await self._request(event):
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE and not self.closing:
                    conn.start_next_cycle()
                else:
                    return
        except _Disconnected:
            pass
        finally:
            self.close()

    async def _refuse(self, status: int, reason: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (reason + "\n").encode()
        head = (f"HTTP/1.1 {status} ".encode() + _REASONS.get(status, b"Error") + b"\r\n"
                + b"content-type: text/plain\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n")
        try:
            await self.write(head + body)
        except _Disconnected:
            pass
        self.server.report(f"refused a request from {self.client}: {status} {reason}", level="debug")

    async def _request(self, request: h11.Request) -> bool:
        """Run one request; True when the connection may carry another."""
        raw = list(request.headers.raw_items())
        names = [k.lower() for k, _ in raw]
        if b"content-length" in names and b"transfer-encoding" in names:
            # RFC 9112 §6.1 lets a server refuse; Envoy's codec does (unless allow_chunked_length)
            await self._refuse(400, "both Content-Length and Transfer-Encoding")
            return False
        version = request.http_version.decode()
        lowered = [(k.lower(), v) for k, v in raw]
        upgrade = {k: v for k, v in lowered if k in (b"upgrade", b"http2-settings")}
        if (upgrade.get(b"upgrade", b"").lower() == b"h2c" and b"http2-settings" in upgrade
                and b"content-length" not in names and b"transfer-encoding" not in names and self.server.h2c):
            await self._upgrade(request, lowered, upgrade[b"http2-settings"])
            return False
        scope = self.scope(version, request.method.decode("latin-1"), request.target,
                           raw if self.server.raw_h1_headers else lowered)
        stream = _Stream(self, scope, 1)
        self.stream = stream
        stream.task = asyncio.get_running_loop().create_task(self.run_app(stream))
        conn = self.h11
        try:
            # the body: one event ahead of the app
            while not stream.request_done and not stream.gone:
                if stream.inbox:
                    self.body_wanted.clear()
                    waiter = asyncio.ensure_future(self.body_wanted.wait())
                    done, _ = await asyncio.wait({waiter, stream.task}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if stream.task in done:
                        break
                    continue
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    stream.disconnect()
                    if not stream.started:
                        stream.finished = True
                        await self._refuse(exc.error_status_hint or 400, str(exc))
                    return False
                if event is h11.NEED_DATA:
                    reader = asyncio.ensure_future(self._read(None))
                    done, _ = await asyncio.wait({reader, stream.task}, return_when=asyncio.FIRST_COMPLETED)
                    if reader not in done:
                        reader.cancel()
                        break  # the app is done without the rest of the body: the connection closes
                    data = reader.result()
                    if not data:
                        stream.disconnect()
                        break
                    conn.receive_data(data)
                elif isinstance(event, h11.Data):
                    stream.push({"type": "http.request", "body": bytes(event.data), "more_body": True})
                elif isinstance(event, h11.EndOfMessage):
                    if event.headers:
                        scope["extensions"][EXT_TRAILERS] = [(k.decode("latin-1"), v.decode("latin-1"))
                                                             for k, v in event.headers.raw_items()]
                    stream.push({"type": "http.request", "body": b"", "more_body": False})
                    stream.request_done = True
                else:
                    break
            # request read: watch for the client going away while the app answers
            while not stream.task.done():
                if self.eof:
                    stream.disconnect()
                    await stream.task
                    break
                if len(conn.trailing_data[0]) > self.limits.max_header_bytes:
                    await stream.task  # pipelined far ahead: read no more until this one is answered
                    break
                reader = asyncio.ensure_future(self._read(None))
                done, _ = await asyncio.wait({reader, stream.task}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    data = reader.result()
                    if not data:
                        stream.disconnect()
                    else:
                        conn.receive_data(data)  # pipelined: h11 keeps it for the next cycle
                else:
                    reader.cancel()
            await stream.task
        finally:
            if stream.task is not None and not stream.task.done():
                stream.disconnect()
                stream.task.cancel()
            self.stream = None
        return stream.finished and not stream.gone and not self.eof

    def want_body(self, stream: _Stream) -> None:
        self.body_wanted.set()

    def consumed(self, stream: _Stream, message: dict) -> None:
        self.body_wanted.set()

    async def send_headers(self, stream: _Stream, status: int, headers: list, *, end: bool) -> None:
        conn = self.h11
        if conn.their_state is not h11.DONE or self.server.stopping:
            headers = [*headers, (b"connection", b"close")]
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers))
            if end:
                data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            raise RuntimeError(f"bad response: {exc}") from None
        await self.write(data or b"")

    async def send_data(self, stream: _Stream, data: bytes) -> None:
        try:
            out = self.h11.send(h11.Data(data=data))
        except h11.LocalProtocolError as exc:
            raise RuntimeError(f"bad response body: {exc}") from None
        await self.write(out or b"")

    async def send_end(self, stream: _Stream, trailers: list | None) -> None:
        try:
            out = self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise RuntimeError(f"bad response end: {exc}") from None
        await self.write(out or b"")

    async def app_failed(self, stream: _Stream) -> None:
        stream.finished = True
        if not stream.started and not stream.gone:
            stream.started = True
            await self._refuse(500, "internal error")
        self.close()  # a response cut short: the client sees the connection end

    def shutdown(self) -> None:
        if self.stream is None:
            self.close()

    async def _upgrade(self, request: h11.Request, lowered: list[tuple[bytes, bytes]], settings: bytes) -> None:
        await self.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n")
        headers = [(b":method", request.method), (b":scheme", b"http"), (b":path", request.target)]
        authority = next((v for k, v in lowered if k == b"host"), None)
        if authority is not None:
            headers.insert(2, (b":authority", authority))
        skip = {b"host", b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"proxy-connection",
                b"transfer-encoding", b"te"}
        headers += [(k, v) for k, v in lowered if k not in skip]
        h2conn = _H2(self.server, self.reader, self.writer)
        self.closing = True  # the H2 connection owns the socket from here
        await h2conn.run(self.h11.trailing_data[0], upgrade=(settings, headers))


def _deadline(timeout: float | None) -> float | None:
    return None if not timeout else time.monotonic() + timeout


# ---------------------------------------------------------------------------------------------
# HTTP/2
# ---------------------------------------------------------------------------------------------


class _H2(_Connection):
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(server, reader, writer)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _Stream] = {}
        self.window_open = asyncio.Event()
        self.write_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.goaway_sent = False
        self.changed = asyncio.Event()  # a stream ended, or shutdown: the read loop looks again

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            async with self.write_lock:
                await self.write(data)

    async def run(self, initial: bytes, upgrade: tuple[bytes, list] | None = None) -> None:
        conn = self.h2
        limits = self.limits
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.h2_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        try:
            if upgrade is not None:
                conn.initiate_upgrade_connection(upgrade[0])
                self._start_stream(1, upgrade[1], ended=True)
            else:
                conn.initiate_connection()
            await self.flush()
            data = initial
            headers_deadline = _deadline(limits.request_headers_timeout)
            idle_deadline = _deadline(limits.idle_timeout)
            reader: asyncio.Task | None = None
            while not self.closing:
                if data:
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError as exc:
                        self.server.report(f"HTTP/2 protocol error from {self.client}: {exc}", level="debug")
                        await self.flush()
                        return
                    for event in events:
                        self._event(event)
                    await self.flush()
                    data = b""
                if self.streams:
                    headers_deadline = idle_deadline = None
                else:
                    if self.goaway_sent:
                        return
                    if idle_deadline is None:
                        idle_deadline = _deadline(limits.idle_timeout)
                deadline = min((d for d in (headers_deadline, idle_deadline) if d is not None), default=None)
                if reader is None:
                    reader = asyncio.ensure_future(self.reader.read(_READ))
                self.changed.clear()
                waker = asyncio.ensure_future(self.changed.wait())
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
                done, _ = await asyncio.wait({reader, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if reader in done:
                    try:
                        data = reader.result()
                    except (ConnectionError, OSError):
                        data = b""
                    reader = None
                    if not data:
                        return
                elif not done and not self.streams:  # idle / headers timeout
                    conn.close_connection()
                    await self.flush()
                    return
            if reader is not None:
                reader.cancel()
        except _Disconnected:
            pass
        finally:
            for stream in self.streams.values():
                stream.disconnect()
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            self.close()

    def _start_stream(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, ended: bool) -> None:
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        regular = [(k, v) for k, v in headers if not k.startswith(b":")]
        authority = pseudo.get(b":authority")
        if authority is not None and not any(k == b"host" for k, _ in regular):
            regular = [(b"host", authority), *regular]
        scope = self.scope("2", pseudo.get(b":method", b"GET").decode("latin-1"), pseudo.get(b":path", b"/"), regular)
        scope["scheme"] = pseudo.get(b":scheme", b"http").decode("latin-1")
        scope["extensions"][EXT_RAW_HEADERS] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        stream = _Stream(self, scope, stream_id)
        self.streams[stream_id] = stream
        if ended:
            stream.push({"type": "http.request", "body": b"", "more_body": False})
            stream.request_done = True
        task = asyncio.get_running_loop().create_task(self._run_stream(stream))
        stream.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_stream(self, stream: _Stream) -> None:
        try:
            await self.run_app(stream)
        finally:
            self.streams.pop(stream.stream_id, None)
            self.changed.set()

    def _event(self, event: Any) -> None:
        conn = self.h2
        if isinstance(event, h2.events.RequestReceived):
            if self.goaway_sent:
                conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            self._start_stream(event.stream_id, list(event.headers), ended=event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.request_done:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.push({"type": "http.request", "body": bytes(event.data), "more_body": True,
                         "_flow": event.flow_controlled_length})
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.scope["extensions"][EXT_TRAILERS] = [(k.decode("latin-1"), v.decode("latin-1"))
                                                            for k, v in event.headers]
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.request_done:
                stream.push({"type": "http.request", "body": b"", "more_body": False})
                stream.request_done = True
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.disconnect()
            self.window_open.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            for stream in self.streams.values():
                stream.disconnect()
            self.closing = True
            self.window_open.set()

    def consumed(self, stream: _Stream, message: dict) -> None:
        flow = message.pop("_flow", 0)
        if flow and not self.closing:
            try:
                self.h2.acknowledge_received_data(flow, stream.stream_id)
            except (h2.exceptions.ProtocolError, KeyError):
                return
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._safe_flush())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _safe_flush(self) -> None:
        try:
            await self.flush()
        except _Disconnected:
            pass

    async def send_headers(self, stream: _Stream, status: int, headers: list, *, end: bool) -> None:
        out = [(b":status", str(status).encode())]
        out += [(bytes(k).lower(), bytes(v)) for k, v in headers
                if bytes(k).lower() not in (b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                                            b"proxy-connection")]
        try:
            self.h2.send_headers(stream.stream_id, out, end_stream=end)
        except h2.exceptions.StreamClosedError:
            stream.disconnect()
            raise ConnectionAbortedError("stream closed") from None
        await self.flush()

    async def send_data(self, stream: _Stream, data: bytes) -> None:
        conn = self.h2
        view = memoryview(data)
        while view:
            if stream.gone or self.closing:
                raise ConnectionAbortedError("stream closed")
            try:
                window = conn.local_flow_control_window(stream.stream_id)
            except h2.exceptions.StreamClosedError:
                stream.disconnect()
                raise ConnectionAbortedError("stream closed") from None
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            size = min(window, conn.max_outbound_frame_size, len(view))
            conn.send_data(stream.stream_id, bytes(view[:size]))
            view = view[size:]
            await self.flush()

    async def send_end(self, stream: _Stream, trailers: list | None) -> None:
        try:
            if trailers:
                self.h2.send_headers(stream.stream_id, [(bytes(k).lower(), bytes(v)) for k, v in trailers],
                                     end_stream=True)
            else:
                self.h2.end_stream(stream.stream_id)
        except h2.exceptions.StreamClosedError:
            stream.disconnect()
            return
        await self.flush()

    async def app_failed(self, stream: _Stream) -> None:
        stream.finished = True
        if stream.gone or self.closing:
            return
        try:
            if not stream.started:
                stream.started = True
                self.h2.send_headers(stream.stream_id, [(b":status", b"500"), (b"content-length", b"0")],
                                     end_stream=True)
            else:
                self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            await self.flush()
        except (h2.exceptions.ProtocolError, _Disconnected):
            pass

    def shutdown(self) -> None:
        if self.goaway_sent or self.closing:
            return
        self.goaway_sent = True
        try:
            self.h2.close_connection(last_stream_id=max(self.streams, default=0))
        except h2.exceptions.ProtocolError:
            pass
        self._schedule_flush()
        self.changed.set()


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------


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
        self._tasks: set[asyncio.Task] = set()

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
        conn: _Connection = _H1(self, reader, writer)
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
                conn = _H2(self, reader, writer)
                self.connections.add(conn)
                await conn.run(first)  # type: ignore[attr-defined]
            elif first:
                await conn.run(first, since)  # type: ignore[attr-defined]
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
