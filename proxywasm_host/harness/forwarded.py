"""What a stream forwarded, as events a proxy consumes (:class:`ForwardedReader`), instead of its fields.

A proxy around the host (``serve``) calls the filter, then asks what the filter let through
since last time: request headers once, body bytes as they are released, the end (with
trailers or not), the same for the response, a local reply, a reset, the stream's end.  The
body bytes are taken (forgotten by the stream), so a streamed body is never held twice.

This module is the only place outside the core that reads a stream's direction state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxywasm_host.core.stream import LocalResponse

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.harness.host import HttpStream

__all__ = ["Forwarded", "ForwardedReader"]

BytePairs = list[tuple[bytes, bytes]]


@dataclass
class Forwarded:
    """What the filter let through since the previous :meth:`ForwardedReader.take`.

    ``request_headers``/``response_headers`` appear once (the pairs as forwarded, pseudo-headers
    included); ``*_body`` is what was released since last time; ``*_end`` is set once, together
    with ``*_trailers`` when the direction ended with trailers.  ``local_reply`` comes with the
    response headers of a local reply (``proxy_send_local_response``, or the 503 of a failed
    filter: ``details == "wasm_fail_stream"``)."""

    request_headers: BytePairs | None = None
    request_body: bytes = b""
    request_end: bool = False
    request_trailers: BytePairs | None = None
    response_headers: BytePairs | None = None
    response_body: bytes = b""
    response_end: bool = False
    response_trailers: BytePairs | None = None
    local_reply: LocalResponse | None = None
    reset: bool = False  # the filter reset the stream (proxy_close_stream)
    completed: bool = False  # the stream is over (on_log/on_done ran)


class ForwardedReader:
    """Reads one :class:`~proxywasm_host.harness.host.HttpStream`'s output, event by event."""

    __slots__ = ("_request_end", "_request_headers", "_reset", "_response_end", "_response_headers", "stream")

    def __init__(self, stream: HttpStream) -> None:
        self.stream = stream
        self._request_headers = self._request_end = False
        self._response_headers = self._response_end = False
        self._reset = False

    def take(self, *, request: bool = True, response: bool = True) -> Forwarded:
        """The events since the last take; ``request=False`` leaves the request side's for later
        (a proxy with no upstream yet), ``response=False`` the response side's."""
        ctx = self.stream.context
        out = Forwarded(completed=ctx.completed)
        if ctx.reset and not self._reset:
            self._reset = out.reset = True
        req, resp = ctx.request, ctx.response
        if request:
            if not self._request_headers and req.forwarded_headers is not None:
                self._request_headers = True
                out.request_headers = list(req.forwarded_headers.pairs())
            if self._request_headers and not self._request_end:
                out.request_body = self.stream.take_request_body()
                if req.end_forwarded:
                    self._request_end = out.request_end = True
                    if req.forwarded_trailers is not None:
                        out.request_trailers = list(req.forwarded_trailers.pairs())
        if response:
            if not self._response_headers and resp.forwarded_headers is not None:
                self._response_headers = True
                out.response_headers = list(resp.forwarded_headers.pairs())
                out.local_reply = ctx.local_response
            if self._response_headers and not self._response_end:
                out.response_body = self.stream.take_response_body()
                if resp.end_forwarded or ctx.completed:
                    self._response_end = out.response_end = True
                    if resp.forwarded_trailers is not None:
                        out.response_trailers = list(resp.forwarded_trailers.pairs())
        return out

    # -- the stream's state, for flow control ----------------------------------------------------
    @property
    def local_reply(self) -> LocalResponse | None:
        """The local reply under way, if any (the upstream is then of no more use)."""
        return self.stream.context.local_response

    @property
    def completed(self) -> bool:
        return bool(self.stream.context.completed)

    @property
    def paused(self) -> bool:
        """The filter holds a direction (StopIteration): only it can move the stream on."""
        ctx = self.stream.context
        return (ctx.request.stopped is not None or ctx.response.stopped is not None) and not ctx.completed

    @property
    def request_buffered(self) -> int:
        """Request body bytes the filter holds (buffered, not forwarded)."""
        return len(self.stream.context.request.buffer)

    @property
    def response_buffered(self) -> int:
        return len(self.stream.context.response.buffer)

    @property
    def request_received(self) -> bool:
        """The whole request was handed to the filter."""
        return bool(self.stream.context.request.end_received)

    @property
    def response_started(self) -> bool:
        """Response headers were handed to the filter."""
        return bool(self.stream.context.response.headers_received)

    @property
    def response_received(self) -> bool:
        return bool(self.stream.context.response.end_received)

    def accepts_request(self) -> bool:
        """More request events may be given to the filter."""
        ctx = self.stream.context
        return not ctx.completed and not ctx.request.end_received

    def accepts_response(self) -> bool:
        """Upstream response events may be given to the filter (no local reply, not over)."""
        ctx = self.stream.context
        return not ctx.completed and ctx.local_response is None and not ctx.response.end_received
