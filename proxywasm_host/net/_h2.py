"""HTTP/2 connections of the HTTP server (h2): flow control both ways, GOAWAY at shutdown."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from proxywasm_host.net._http_conn import (
    _READ,
    EXT_RAW_HEADERS,
    EXT_TRAILERS,
    _Connection,
    _deadline,
    _Disconnected,
    _Stream,
)

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.net.httpserver import HttpServer

class _H2(_Connection):
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(server, reader, writer)
        # normalize_inbound_headers=False: h2 would join cookie crumbs and move the one cookie
        # header to the end of the list, so the raw headers would not be the HEADERS frame as
        # sent (the test upstream records what Envoy sends; docs/abi-notes.md §5.4). The ASGI
        # scope gets the crumbs joined (_start_stream).
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True, normalize_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _Stream] = {}
        self.window_open = asyncio.Event()
        self.write_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.goaway_sent = False
        self.changed = asyncio.Event()  # a stream ended, or shutdown: the read loop looks again

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            async with self.write_lock:
                await self.write(data)

    async def run(self, initial: bytes, upgrade: tuple[bytes, list[Any]] | None = None) -> None:
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
            if limits.h2_window > 65535:  # the connection's window too, not only each stream's
                conn.increment_flow_control_window(limits.h2_window - 65535)
            await self.flush()
            data = initial
            headers_deadline = _deadline(limits.request_headers_timeout)
            idle_deadline = _deadline(limits.idle_timeout)
            reader: asyncio.Task[Any] | None = None
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
        regular = [(k, v) for k, v in headers if not k.startswith(b":") and k != b"cookie"]
        cookies = [v for k, v in headers if k == b"cookie"]
        if cookies:  # RFC 9113 §8.2.3: crumbs joined for a non-HTTP/2 context (here: the ASGI app)
            regular.append((b"cookie", b"; ".join(cookies)))
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

    def consumed(self, stream: _Stream, message: dict[str, Any]) -> None:
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

    async def send_headers(self, stream: _Stream, status: int, headers: list[Any], *, end: bool) -> None:
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

    async def send_end(self, stream: _Stream, trailers: list[Any] | None) -> None:
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
