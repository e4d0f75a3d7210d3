"""The upstream leg of one exchange: the built-in echo in-process, or an http:// upstream through aiohttp."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from proxywasm_host.serve.config import HOP_BY_HOP, raw, text
from proxywasm_host.serve.echo import ECHO_TRAILERS_EXT, echo_app

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.harness import HttpStream
    from proxywasm_host.harness.forwarded import ForwardedReader
    from proxywasm_host.serve.server import FilterServer

__all__ = ["UpstreamFailure", "UpstreamLeg", "upstream_url"]


def upstream_url(base: str, target: str) -> Any:
    """The URL for aiohttp: ``base``'s scheme, host and path prefix, then the filter's
    ``:path`` as it is (``encoded``: aiohttp would otherwise re-quote it; Envoy sends the path
    unchanged), as a ``yarl.URL``, the type aiohttp takes."""
    from yarl import URL

    parts = urlsplit(base)
    return URL(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{target}", encoded=True)


class UpstreamFailure(Exception):
    """The upstream could not be reached or timed out: the router's own reply (status, body)."""

    def __init__(self, status: int, body: str, details: str):
        super().__init__(body)
        self.status, self.body, self.details = status, body, details


class UpstreamLeg:
    """The upstream half of :class:`~proxywasm_host.serve.exchange.Exchange`: request events the
    filter forwarded go out (``up_queue``), the upstream's response goes into the filter."""

    server: FilterServer
    stream: HttpStream
    out: ForwardedReader
    aborted: str | None
    stream_id: int
    up_queue: deque[bytes | None]
    up_event: asyncio.Event
    up_pending: int
    up_drained: asyncio.Event
    up_sent: int
    up_eos: bool
    up_trailers: list[tuple[str, str]] | None
    up_started_at: float
    down_pending: int
    down_drained: asyncio.Event

    def abort(self, reason: str) -> None:
        raise NotImplementedError

    def pump(self) -> None:
        """Move on what the filter released (the exchange's)."""
        raise NotImplementedError

    # -- the upstream leg ------------------------------------------------------------------------------
    async def _request_body(self) -> AsyncIterator[bytes]:
        while True:
            while not self.up_queue:
                self.up_event.clear()
                await self.up_event.wait()
            chunk = self.up_queue.popleft()
            if chunk is None:
                return
            self.up_pending -= len(chunk)
            self.up_drained.set()
            yield chunk

    async def _upstream(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the request the filter forwarded (its header pairs as the stream holds them)."""
        try:
            if self.server.config.upstream is None:
                await self._echo_upstream(headers)
            else:
                await self._http_upstream(headers)
        except asyncio.CancelledError:
            raise
        except UpstreamFailure as failure:
            self.server.stats["upstream_errors"] += 1
            self._router_reply(failure.status, failure.body)
        except Exception as exc:  # noqa: BLE001 - any upstream failure is the client's 503
            self.server.stats["upstream_errors"] += 1
            self.server.log("warn", f"[{self.server.name} ctx={self.stream_id}] upstream failed: {exc!r}")
            self._router_reply(503, "upstream connect error or disconnect/reset before headers. "
                                    f"reset reason: {type(exc).__name__}")

    def _router_reply(self, status: int, text: str) -> None:
        """The router's own reply when the upstream fails (Envoy: it runs through the filter's
        encoder callbacks like a response)."""
        stream, out = self.stream, self.out
        if self._upstream_gone:
            return
        if out.response_started:
            self.abort(f"upstream failed mid-response: {text}")
            return
        body = text.encode()
        headers = [(":status", str(status)), ("content-length", str(len(body))), ("content-type", "text/plain")]
        self.server.filter_call(lambda: stream.send_response_headers(headers, end_of_stream=False), self)
        if out.accepts_response():
            self.server.filter_call(lambda: stream.send_response_body(body, end_of_stream=True), self)

    def _upstream_headers(self, status: int, headers: list[tuple[str, str]], eos: bool) -> None:
        stream = self.stream
        if self._upstream_gone:
            return
        took = int((time.monotonic() - self.up_started_at) * 1000)
        pairs = [(":status", str(status))] + [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        pairs.append(("x-envoy-upstream-service-time", str(took)))
        self.server.filter_call(lambda: stream.send_response_headers(pairs, end_of_stream=eos), self)

    def _upstream_body(self, chunk: bytes, eos: bool) -> None:
        stream = self.stream
        if self._upstream_gone or self.out.response_received:
            return
        self.server.filter_call(lambda: stream.send_response_body(chunk, end_of_stream=eos), self)

    def _upstream_trailers(self, pairs: list[tuple[str, str]]) -> None:
        stream = self.stream
        if self._upstream_gone or self.out.response_received:
            return
        self.server.filter_call(lambda: stream.send_response_trailers(pairs), self)

    async def _down_room(self) -> None:
        while self.down_pending > self.server.config.buffer_limit and not self.aborted:
            self.down_drained.clear()
            await self.down_drained.wait()

    @property
    def _upstream_gone(self) -> bool:
        return self.out.completed or bool(self.aborted) or self.out.local_reply is not None

    async def _echo_upstream(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Call :func:`echo_app` in-process, as an ASGI server would (the header bytes as they are)."""
        values = {k: v for k, v in reversed(headers)}
        path, _, query = text(values.get(b":path", b"/")).partition("?")
        scope_headers = [(b"host", values.get(b":authority", b""))] + [(k, v) for k, v in headers if k[:1] != b":"]
        scope_headers.append((b"x-envoy-expected-rq-timeout-ms", str(int(self.server.config.upstream_timeout * 1000)).encode()))
        extensions: dict[str, Any] = {"http.response.trailers": {}}
        scope = {"type": "http", "http_version": "1.1", "method": text(values.get(b":method", b"GET")),
                 "scheme": text(values.get(b":scheme", b"http")), "path": unquote(path), "raw_path": raw(path),
                 "query_string": raw(query), "headers": scope_headers, "extensions": extensions}
        body_iter = self._request_body()
        status_holder: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            try:
                chunk = await body_iter.__anext__()
            except StopAsyncIteration:
                if self.up_trailers is not None:
                    extensions[ECHO_TRAILERS_EXT] = list(self.up_trailers)
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: dict[str, Any]) -> None:
            if self._upstream_gone:
                return
            kind = message["type"]
            if kind == "http.response.start":
                status_holder["start"] = message
            elif kind == "http.response.body":
                start = status_holder.pop("start", None)
                more = message.get("more_body", False)
                trailers_follow = bool(status_holder.get("trailers_declared"))
                if start is not None:
                    status_holder["trailers_declared"] = trailers_follow = bool(start.get("trailers"))
                    hdrs = [(text(k).lower(), text(v)) for k, v in start.get("headers", [])]
                    body = message.get("body", b"")
                    eos_on_headers = not more and not body and not trailers_follow
                    self._upstream_headers(int(start["status"]), hdrs, eos_on_headers)
                    if eos_on_headers:
                        return
                if message.get("body") or not more:
                    self._upstream_body(message.get("body", b""), not more and not trailers_follow)
                await self._down_room()
            elif kind == "http.response.trailers":
                pairs = [(text(k).lower(), text(v)) for k, v in message.get("headers", [])]
                if pairs:
                    self._upstream_trailers(pairs)
                else:
                    self._upstream_body(b"", True)

        await echo_app(scope, receive, send)

    async def _http_upstream(self, forwarded: list[tuple[bytes, bytes]]) -> None:
        import aiohttp

        config = self.server.config
        headers = [(text(k), text(v)) for k, v in forwarded]
        values = {k: v for k, v in reversed(headers)}
        base = config.upstream or ""
        target = values.get(":path", "/")
        method = values.get(":method", "GET")
        url = upstream_url(base, target)
        out = [("host", values.get(":authority", "") or urlsplit(base).netloc)]
        out += [(k, v) for k, v in headers if not k.startswith(":") and k != "host"]
        out.append(("x-envoy-expected-rq-timeout-ms", str(int(config.upstream_timeout * 1000))))
        content: Any = None
        if self.up_eos and self.up_trailers is None:
            # the whole body is known already: send it with its length
            content = b"".join(c for c in self.up_queue if c is not None) or None
            self.up_queue.clear()
            self.up_pending = 0
            self.up_drained.set()
        elif self.up_sent or not self.up_eos:
            content = self._request_body()
        if self.up_trailers:
            self.server.log("debug", f"[{self.server.name} ctx={self.stream_id}] request trailers not sent: "
                                     "the HTTP client library cannot send trailers")
        try:
            response = await self.server.client.request(method, url, headers=out, data=content, allow_redirects=False,
                                                        compress=None, chunked=None)
        except asyncio.TimeoutError:
            raise UpstreamFailure(504, "upstream request timeout", "upstream_response_timeout") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise UpstreamFailure(503, "upstream connect error or disconnect/reset before headers. "
                                        f"reset reason: connection failure ({exc})",
                                   "upstream_reset_before_response_started") from None
        try:
            pairs = [(text(k).lower(), text(v)) for k, v in response.raw_headers]
            length = response.headers.get("content-length")
            status = response.status
            eos = method == "HEAD" or status in (204, 304) or (length is not None and length.strip() == "0")
            self._upstream_headers(status, pairs, eos)
            if eos:
                return
            expected = int(length) if length is not None and length.strip().isdigit() else None
            received = 0
            async for chunk in response.content.iter_any():
                if self._upstream_gone:
                    return
                received += len(chunk)
                last = expected is not None and received >= expected
                self._upstream_body(chunk, last)
                if last:
                    return
                await self._down_room()
            self._upstream_body(b"", True)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            if self.out.response_started:
                self.abort(f"upstream failed mid-response: {exc!r}")
            else:
                raise UpstreamFailure(504, "upstream request timeout", "upstream_response_timeout") from None
        finally:
            response.release()
