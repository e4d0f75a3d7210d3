"""HTTP/1.1 connections of the HTTP server (h11), with the ``Upgrade: h2c`` hand-over."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import h11

from proxywasm_host.net._h2 import _H2
from proxywasm_host.net._http_conn import (
    _READ,
    _REASONS,
    EXT_TRAILERS,
    _Connection,
    _deadline,
    _Disconnected,
    _Stream,
)

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.net.httpserver import HttpServer

class _H1(_Connection):
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(server, reader, writer)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.stream: _Stream | None = None
        self.body_wanted = asyncio.Event()
        self.eof = False

    async def _read(self, timeout: float | None) -> bytes:
        """The next bytes; b"" at end of stream (``eof`` set) or when ``timeout`` passed."""
        try:
            if timeout is None:
                data = await self.reader.read(_READ)
            else:
                data = await asyncio.wait_for(self.reader.read(_READ), max(timeout, 0.0))
        except asyncio.TimeoutError:  # before OSError: TimeoutError is one since 3.11
            return b""
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

    def consumed(self, stream: _Stream, message: dict[str, Any]) -> None:
        self.body_wanted.set()

    async def send_headers(self, stream: _Stream, status: int, headers: list[Any], *, end: bool) -> None:
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

    async def send_end(self, stream: _Stream, trailers: list[Any] | None) -> None:
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
