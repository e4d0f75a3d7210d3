"""One HTTP stream driven by a test: :class:`HttpStream` sends the events and shows what the filter did."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from proxywasm_host.core.callouts import HttpCallout
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.lazy import Later
from proxywasm_host.core.observer import (
    LogEntry,
)
from proxywasm_host.core.stream import CallbackRecord, HttpContext, LocalResponse
from proxywasm_host.core.text import Headers
from proxywasm_host.core.text import body_bytes as _bytes
from proxywasm_host.core.text import header_pairs as _pairs
from proxywasm_host.core.text import header_pairs_for_map as _pairs_for_map
from proxywasm_host.core.types import Action
from proxywasm_host.http.scenario import (
    DownstreamResponse,
    ExchangeResult,
    LocalReply,
    LogRecord,
    UpstreamRequest,
)

if TYPE_CHECKING:
    from proxywasm_host.harness.plugin import Plugin


def _has_status(pairs: list[Any]) -> bool:
    """Whether a response header list has ``:status`` (malformed lists count as having it:
    nothing is added, the HeaderMap reports them)."""
    for item in pairs:  # a loop, not any(<generator>): this runs for every response
        if isinstance(item, (str, bytes)) or len(item) != 2:
            return True
        k = item[0]
        if (k if type(k) is str else str(k)) == ":status":
            return True
    return False


#: the return values tests compare most, as the enum (an unknown status stays an int)
_ACTIONS: dict[int, int] = {0: Action(0), 1: Action(1)}


def _action(result: int | None) -> int | None:
    if result is None:
        return None
    return _ACTIONS.get(result, result)


@mypyc_attr(allow_interpreted_subclasses=True)
class HttpStream:
    """Drive one HTTP stream and read back what the filter did with it."""

    # Compiled with the hot core (speedups.COMPILED_MODULES): a test's send_* calls reach the
    # stream context without an interpreted frame each.  One per request, kept for a while
    # (Plugin.streams): two fields, no __dict__.
    __slots__ = ("plugin", "context")

    def __init__(self, plugin: Plugin, ctx: HttpContext) -> None:
        self.plugin = plugin
        self.context = ctx

    @property
    def context_id(self) -> int:
        return self.context.id

    # -- driving ---------------------------------------------------------------------------
    def send_request_headers(self, headers: Headers, *, end_of_stream: bool = False) -> int | None:
        """Deliver request headers (pseudo-headers like ``:authority`` included); return the action."""
        return _action(self.context.receive_headers(self.context.request, _pairs_for_map(headers), end_of_stream))

    def send_request_body(self, data: str | bytes, *, end_of_stream: bool = False) -> int | None:
        """Deliver one request body chunk; returns the action, or None when Envoy would hold it."""
        return _action(self.context.receive_data(self.context.request, _bytes(data), end_of_stream))

    def send_request_trailers(self, trailers: Headers) -> int | None:
        return _action(self.context.receive_trailers(self.context.request, _pairs(trailers)))

    def send_response_headers(self, headers: Headers, *, end_of_stream: bool = False) -> int | None:
        """Deliver the upstream's response headers; include ``:status`` (default 200 if absent)."""
        pairs = _pairs_for_map(headers)
        if not _has_status(pairs):
            pairs = [(":status", "200"), *pairs]  # (may be the caller's list: not changed in place)
        return _action(self.context.receive_headers(self.context.response, pairs, end_of_stream))

    def send_response_body(self, data: str | bytes, *, end_of_stream: bool = False) -> int | None:
        return _action(self.context.receive_data(self.context.response, _bytes(data), end_of_stream))

    def send_response_trailers(self, trailers: Headers) -> int | None:
        return _action(self.context.receive_trailers(self.context.response, _pairs(trailers)))

    def complete(self) -> None:
        """End the stream now (Envoy: access log, then filter destruction)."""
        self.context.complete()

    def take_request_body(self) -> bytes:
        """The request body bytes forwarded upstream since the last take, forgotten here: a
        proxy streaming large bodies drains them instead of keeping them until the stream
        ends (``upstream_request.body`` then holds only what was not taken)."""
        return self._take(self.context.request)

    def take_response_body(self) -> bytes:
        """Like :meth:`take_request_body`, for the body forwarded downstream."""
        return self._take(self.context.response)

    @staticmethod
    def _take(d: Any) -> bytes:
        data = bytes(d.forwarded_body)
        d.forwarded_body.clear()
        return data

    # -- the stream as the filter left it -----------------------------------------------------
    @property
    def request_headers(self) -> HeaderMap:
        return self.context.request.headers or HeaderMap()

    @property
    def request_body(self) -> bytes:
        d = self.context.request
        return bytes(d.forwarded_body + d.buffer)

    @property
    def request_trailers(self) -> HeaderMap | None:
        return self.context.request.trailers

    @property
    def response_headers(self) -> HeaderMap:
        return self.context.response.headers or HeaderMap()

    @property
    def response_body(self) -> bytes:
        d = self.context.response
        return bytes(d.forwarded_body + d.buffer)

    @property
    def response_trailers(self) -> HeaderMap | None:
        return self.context.response.trailers

    @property
    def request_paused(self) -> bool:
        """True while the filter holds the request (returned Pause and has not continued)."""
        return self.context.request.stopped is not None

    @property
    def response_paused(self) -> bool:
        return self.context.response.stopped is not None

    @property
    def local_response(self) -> LocalResponse | None:
        return self.context.local_response

    @property
    def callbacks(self) -> list[CallbackRecord]:
        return self.context.callbacks  # a fresh list each time

    @property
    def completed(self) -> bool:
        return self.context.completed

    @property
    def was_reset(self) -> bool:
        return self.context.reset

    @property
    def logs(self) -> list[LogEntry]:
        return [e for e in self.plugin.vm.host.logs if e.context_id == self.context.id]

    @property
    def http_callouts(self) -> list[HttpCallout]:
        """The HTTP callouts dispatched while this stream was the current context."""
        return [c for c in self.plugin.http_callouts if c.context_id == self.context.id]

    @property
    def upstream_request(self) -> UpstreamRequest | None:
        """What reached the upstream: None while (or because) the filter held or answered it.
        A local reply after the headers went on but before the request ended resets the
        upstream request (Envoy 1.40): None too, the upstream never got the whole request."""
        if self.context.upstream_reset:
            return None
        d = self.context.request
        return upstream_request(d.forwarded_headers, bytes(d.forwarded_body), d.forwarded_trailers)

    @property
    def downstream_response(self) -> DownstreamResponse | None:
        """What the client received: None until the response headers got through the filter."""
        d = self.context.response
        return downstream_response(d.forwarded_headers, bytes(d.forwarded_body), d.forwarded_trailers)


def snapshot(headers: HeaderMap | None) -> HeaderMap | None:
    """A copy that later changes to ``headers`` do not reach (it shares the immutable entries)."""
    return None if headers is None else headers.copy()


def upstream_request(headers: HeaderMap | None, body: bytes, trailers: HeaderMap | None) -> UpstreamRequest | None:
    """What reached the upstream, from the request direction's forwarded headers, body, trailers."""
    if headers is None:
        return None
    return UpstreamRequest(headers.items(), body, None if trailers is None else trailers.items())


def upstream_request_of(
    pairs: tuple[tuple[bytes, bytes], ...], body: bytes, trailers: HeaderMap | None
) -> UpstreamRequest | None:
    """:func:`upstream_request` from the forwarded headers' frozen pairs (``Plugin.exchange``)."""
    return upstream_request(HeaderMap.from_pairs(pairs), body, trailers)


def downstream_response_of(
    pairs: tuple[tuple[bytes, bytes], ...], body: bytes, trailers: HeaderMap | None
) -> DownstreamResponse | None:
    """:func:`downstream_response` from the forwarded headers' frozen pairs (``Plugin.exchange``)."""
    return downstream_response(HeaderMap.from_pairs(pairs), body, trailers)


def downstream_response(
    headers: HeaderMap | None, body: bytes, trailers: HeaderMap | None
) -> DownstreamResponse | None:
    """What the client received, from the response direction's forwarded headers, body, trailers."""
    if headers is None:
        return None
    status = None
    pairs = []
    for k, v in headers.items():  # one pass: the first :status, every other entry
        if k != ":status":
            pairs.append((k, v))
        elif status is None:
            status = v
    return DownstreamResponse(int(status or 0), pairs, body, None if trailers is None else trailers.items())


# -- one whole exchange (Plugin.exchange) -------------------------------------------------
# Here, compiled with the stream driver: an exchange's own work around the callbacks is
# what Plugin.exchange costs more than the stream driven by hand (benchmarks/README.md).
def deliver_side(
    context: HttpContext, d: Any, headers: list[Any], chunks: Sequence[Any], trailers: Headers | None
) -> None:
    """One side's events as a profile gives them: headers, body chunks, trailers, the end on
    the last; what a local reply cuts short is not delivered (Envoy reads no more of it)."""
    context.receive_headers(d, headers, not chunks and trailers is None)
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        if context.completed:
            break
        context.receive_data(d, _bytes(chunk), i == last and trailers is None)
    if trailers is not None and not context.completed:
        context.receive_trailers(d, _pairs(trailers))


def run_exchange(
    plugin: Plugin,
    stream: HttpStream,
    drops_response_trailers: bool,
    request_events: tuple[Any, Sequence[Any], Headers | None],
    response_events: tuple[Any, Sequence[Any], Headers | None],
    wait_ms: float,
    wait: Callable[[HttpStream, float, Callable[[], bool]], None],
    log_mark: int,
) -> ExchangeResult:
    """Plugin.exchange after the profile is resolved (its events given) and the stream opened: deliver both
    sides, let ``wait`` advance the clock while the stream is held (up to ``wait_ms``), and
    report what each side saw."""
    context = stream.context
    headers, chunks, trailers = request_events
    deliver_side(context, context.request, _pairs_for_map(headers), chunks, trailers)
    if wait_ms > 0:
        wait(stream, wait_ms, lambda: stream.request_paused)
    if context.request.forwarded_pairs is not None and not context.completed:  # (the pairs: no map made)
        headers, chunks, trailers = response_events  # (:status first: StreamProfile.exchange_events)
        deliver_side(context, context.response, headers, chunks, trailers)
        if wait_ms > 0:
            wait(stream, wait_ms, lambda: not stream.completed)
    host_logs = plugin.vm.host.logs
    root_id = plugin.root.id
    logs = [
        LogRecord(e.level.label, e.message)
        for e in host_logs[log_mark:]
        if e.root_id == root_id or e.root_id == 0
    ] if len(host_logs) > log_mark else []
    local = context.local_response
    # Both sides as they are now (immutable snapshots: the forwarded headers' frozen pairs, a
    # copy of the trailers), decoded when first read; an HTTP/1.1 client gets no response
    # trailers (StreamProfile.apply_result's rule, applied here so that it does not decode the
    # response to look at them).
    d = context.request
    pairs = d.forwarded_pairs
    # (a local reply after the headers went on reset the upstream request: HttpStream.upstream_request)
    upstream = None if pairs is None or context.upstream_reset else Later(
        upstream_request_of, pairs, bytes(d.forwarded_body), snapshot(d.forwarded_trailers))
    d = context.response
    pairs = d.forwarded_pairs
    down_body = bytes(d.forwarded_body)
    downstream = None if pairs is None else Later(
        downstream_response_of, pairs, down_body,
        None if drops_response_trailers else snapshot(d.forwarded_trailers))
    # A local reply's body is what the client got (a gRPC request gets none: the text travels
    # in grpc-message), as the Envoy backend reports it.
    local_body = b"" if local is None else (local.body if pairs is None else down_body)
    return ExchangeResult.of(
        plugin.vm.abi_version._value_,
        upstream,
        downstream,
        None if local is None else LocalReply(local.status_code, local_body, list(local.headers), local.details, local.grpc_status),
        logs,
    )
