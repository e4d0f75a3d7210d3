"""One HTTP stream through one wasm filter, the way Envoy's filter manager runs it.

The stream context receives request and response events (headers, body
chunks, trailers), calls the matching ``proxy_on_*`` callback, and decides
from the result and from what the filter did meanwhile (continue_stream,
send_local_response, close_stream) what is forwarded upstream or downstream.
Sans-IO: guest calls go through :class:`~proxywasm_host.core.vm.Vm`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from proxywasm_host.core.attributes import ABSENT, ATTRIBUTES, HEADER_MAPS, joined_value
from proxywasm_host.core.context import Context, RootContext
from proxywasm_host.core.filter_state import set_envoy_filter_state
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.local_reply import local_reply_headers
from proxywasm_host.core.properties import _navigate
from proxywasm_host.core.text import to_text as _s
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import NOT_FOUND as _NOT_FOUND
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import (
    AbiVersion,
    BufferType,
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    MapType,
    Phase,
    Status,
    StreamType,
)
from proxywasm_host.errors import FilterTrap, HarnessUsageError

if TYPE_CHECKING:
    from proxywasm_host.core.vm import Vm
REQUEST, RESPONSE = "request", "response"

# Built once: ``x in (MapType.A, MapType.B)`` inside a function looks up both members and
# builds the tuple on every call, and get_map runs for every header hostcall.
# The stream's four maps as plain ints (compiled: compared as machine ints, where a set of
# enum members is a hash lookup and an enum comparison a generic call): request headers and
# trailers are the two lowest, trailers the odd ones of the four.
_LAST_REQUEST_MAP: Final = 1
_REQUEST_TRAILERS_MAP: Final = 1
_RESPONSE_TRAILERS_MAP: Final = 3
_FIRST_CALLOUT_MAP: Final = 4
assert (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_REQUEST_TRAILERS, MapType.HTTP_RESPONSE_TRAILERS,
        MapType.GRPC_CALL_INITIAL_METADATA) == (0, _REQUEST_TRAILERS_MAP, _RESPONSE_TRAILERS_MAP, _FIRST_CALLOUT_MAP)
_HTTP_BODIES = frozenset((BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY))
# (enum members as globals, see types.OK)
_ABI_0_1_0 = AbiVersion.V0_1_0
_HEADERS, _BODY, _TRAILERS = Phase.HEADERS, Phase.BODY, Phase.TRAILERS
#: what the filter's return value means (plain ints: compared once per callback)
_HEADERS_GO_ON = frozenset((int(FilterHeadersStatus.CONTINUE), int(FilterHeadersStatus.CONTINUE_AND_END_STREAM)))
_DATA_CONTINUE = int(FilterDataStatus.CONTINUE)
_DATA_KEEP_BUFFERING = frozenset((int(FilterDataStatus.STOP_ITERATION_AND_BUFFER), int(FilterDataStatus.STOP_ITERATION_AND_WATERMARK)))
_TRAILERS_CONTINUE = int(FilterTrailersStatus.CONTINUE)


@dataclass
class LocalResponse:
    """What the filter passed to ``proxy_send_local_response``: the one type for a local
    reply, in-process and from Envoy (``LocalReply`` in :mod:`proxywasm_host.http.scenario`
    is this class)."""

    status_code: int
    body: bytes
    headers: list[tuple[str, str]]
    details: str
    grpc_status: int | None

    @property
    def status(self) -> int:
        """The HTTP status (the same as :attr:`status_code`)."""
        return self.status_code


@dataclass
class CallbackRecord:
    """One stream callback the host delivered and what it returned."""

    callback: str
    args: tuple[int, ...]
    result: int


#: Direction's fields, in order (its __slots__, and what its repr shows)
_DIRECTION_FIELDS = (
    "name", "headers", "trailers", "buffer", "_forwarded_headers", "forwarded_body", "forwarded_bytes",
    "forwarded_trailers", "end_received", "end_forwarded", "stopped", "queued_trailers",
    "continue_requested", "maps_released", "body_writable", "trailers_creatable", "headers_received",
    "headers_released", "received_pairs",
)


class Direction:
    """State of one direction (request: decoder path, response: encoder path)."""

    # __slots__ and a plain __init__: two per stream, and a dataclass's generated __init__
    # with 17 defaulted parameters took longer than the rest of stream creation.  (Compiled
    # by mypyc the class has fixed fields anyway, and no __slots__ attribute to read back.)
    __slots__ = _DIRECTION_FIELDS

    def __init__(self, name: str) -> None:
        self.name = name
        self.headers: HeaderMap | None = None
        self.trailers: HeaderMap | None = None
        self.buffer = bytearray()  # body held at this filter (HTTP_*_BODY)
        self._forwarded_headers: tuple[tuple[bytes, bytes], ...] | None = None  # see forwarded_headers
        self.forwarded_body = bytearray()  # forwarded, not yet taken
        self.forwarded_bytes = 0  # every body byte forwarded so far (taken or not)
        self.forwarded_trailers: HeaderMap | None = None
        self.end_received = False  # the peer finished sending
        self.end_forwarded = False
        self.stopped: Phase | None = None
        self.queued_trailers: HeaderMap | None = None  # trailers held while stopped at headers
        self.continue_requested = False
        self.maps_released = False  # Envoy drops request/response pointers after continue_stream
        self.body_writable = False
        self.trailers_creatable = False
        self.headers_received = False
        # Envoy forgets the header map when the headers callback returns Continue: later
        # callbacks get BAD_ARGUMENT for it (docs/conformance.md, issue 12)
        self.headers_released = False
        self.received_pairs: tuple[tuple[bytes, bytes], ...] = ()  # the headers as they arrived

    # What went past the filter is kept as the header map's immutable pairs, not as a second
    # HeaderMap: two fewer objects per stream for Python's GC to count and collect, and
    # every stream forwards its headers.  A read gives a fresh map (a snapshot: changing
    # it changes nothing here).
    @property
    def forwarded_headers(self) -> HeaderMap | None:
        pairs = self._forwarded_headers
        return None if pairs is None else HeaderMap.from_pairs(pairs)

    @forwarded_headers.setter
    def forwarded_headers(self, hmap: HeaderMap | None) -> None:
        self._forwarded_headers = None if hmap is None else hmap.frozen_pairs()

    @property
    def forwarded_pairs(self) -> tuple[tuple[bytes, bytes], ...] | None:
        """What went past the filter as its immutable pairs (no map made), or None."""
        return self._forwarded_headers

    def __repr__(self) -> str:
        fields = [k.lstrip("_") for k in _DIRECTION_FIELDS]
        return "Direction(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in fields) + ")"


class HttpContext(Context):
    """A stream context: one HTTP request/response through the filter."""

    kind = "http"

    def __init__(self, vm: Vm, root: RootContext, *, attributes: dict[tuple[str, ...], Any] | None = None) -> None:
        host = vm.host
        # Context.__init__, inline (one stream per request)
        self.host = host
        self.id = host.allocate_context_id()
        self.created = False
        self.deleted = False
        self.vm = vm
        self._root = root
        self.request = Direction(REQUEST)
        self.response = Direction(RESPONSE)
        # callback, args, result, callback, args, result, ... for every delivered callback:
        # one flat tuple (re-made per callback, a stream gets a handful), because a stream is
        # kept for a while (Plugin.streams) and Python's cyclic GC visits every container it
        # holds at each collection, except tuples of atomic values, which it stops tracking;
        # the CallbackRecords are built only when a test reads them (see ``callbacks``)
        self._callback_log: tuple[Any, ...] = ()
        self.local_response: LocalResponse | None = None
        self._pending_local: LocalResponse | None = None
        self._local_in_flight = False
        self._reset_requested = False
        self.reset = False
        # A local reply after the request headers went upstream but before the request ended:
        # Envoy resets the upstream request, the upstream never gets a whole request
        # (docs/abi-notes.md §7.4)
        self.upstream_reset = False
        self.completed = False
        self.in_log = False
        # made when first needed (see the properties below): most streams have neither, and
        # two fewer allocations per stream let Python's GC collect less often
        self._filter_state: dict[bytes, bytes] | None = None
        self._attributes: dict[tuple[str, ...], Any] | None = dict(attributes) if attributes else None
        self.request_time_ns = host.clock.wall_ns
        self.upstream_override_host: str | None = None  # Higress's proxy_set_upstream_override_host
        host.register(self)

    @property
    def root(self) -> RootContext:
        return self._root

    @property
    def filter_state_data(self) -> dict[bytes, bytes]:
        """What the filter stored with proxy_set_property (Envoy filter state), by key."""
        if self._filter_state is None:
            self._filter_state = {}
        return self._filter_state

    @property
    def attributes(self) -> dict[tuple[str, ...], Any]:
        """User-supplied attributes (``http_stream(attributes=...)``), by path."""
        if self._attributes is None:
            self._attributes = {}
        return self._attributes

    @property
    def callbacks(self) -> list[CallbackRecord]:
        """Every stream callback delivered so far, in order, with its arguments and result."""
        log = self._callback_log
        return [CallbackRecord(*log[i : i + 3]) for i in range(0, len(log), 3)]

    def _direction(self, stream_type: int) -> Direction:
        return self.request if stream_type == StreamType.HTTP_REQUEST else self.response

    # ------------------------------------------------------------------------------------
    # hostcall-facing state
    # ------------------------------------------------------------------------------------
    def get_map(self, map_type: int, *, for_write: bool) -> tuple[Status, HeaderMap | None]:
        if map_type >= _FIRST_CALLOUT_MAP:
            return super().get_map(map_type, for_write=for_write)
        d = self.request if map_type <= _LAST_REQUEST_MAP else self.response
        is_trailers = map_type == _REQUEST_TRAILERS_MAP or map_type == _RESPONSE_TRAILERS_MAP
        if self.in_log or self.completed:
            # on_log sees read-only copies; request trailers are gone (docs/abi-notes.md §4.2)
            if for_write or map_type == _REQUEST_TRAILERS_MAP:
                return (_BAD_ARGUMENT if for_write else _NOT_FOUND), None
            hmap = d.forwarded_trailers if is_trailers else (d.forwarded_headers or d.headers)
            return (_OK, hmap) if hmap is not None else (_NOT_FOUND, None)
        if d.maps_released:
            return _BAD_ARGUMENT, None
        if is_trailers:
            if d.trailers is None and d.trailers_creatable and for_write:
                d.trailers = HeaderMap()
            return (_OK, d.trailers) if d.trailers is not None else (_BAD_ARGUMENT, None)
        if d.headers is None or d.headers_released:
            return _BAD_ARGUMENT, None
        return _OK, d.headers

    def get_buffer(self, buffer_type: int) -> tuple[Status, bytes | bytearray | None]:
        if buffer_type == BufferType.HTTP_REQUEST_BODY:
            return _OK, self.request.buffer
        if buffer_type == BufferType.HTTP_RESPONSE_BODY:
            return _OK, self.response.buffer
        return super().get_buffer(buffer_type)

    def set_buffer(self, buffer_type: int, start: int, size: int, data: bytes) -> Status:
        if buffer_type not in _HTTP_BODIES:
            return super().set_buffer(buffer_type, start, size, data)
        d = self.request if buffer_type == BufferType.HTTP_REQUEST_BODY else self.response
        if not d.body_writable:
            return _NOT_FOUND
        buf = d.buffer
        # Envoy today: start == 0 drains `size` bytes then prepends; start >= len appends;
        # anything else is BAD_ARGUMENT (docs/abi-notes.md §5.3).
        if start == 0:
            del buf[: min(size, len(buf))]
            buf[0:0] = data
        elif start >= len(buf):
            buf.extend(data)
        else:
            return _BAD_ARGUMENT
        return _OK

    def continue_stream(self, stream_type: int) -> Status:
        if stream_type == StreamType.UPSTREAM:
            return Status.UNIMPLEMENTED
        if stream_type == StreamType.DOWNSTREAM:
            return _OK
        d = self._direction(stream_type)
        d.continue_requested = True
        # After an HTTP continue Envoy forgets its request-side pointers (even for HTTP_RESPONSE).
        self.request.maps_released = True
        self.host.deferred.append(self._after_guest_call)
        return _OK

    def close_stream(self, stream_type: int) -> Status:
        self._reset_requested = True
        self.host.deferred.append(self._after_guest_call)
        return _OK

    def send_local_response(
        self, status: int, details: bytes, body: bytes, headers: list[tuple[bytes, bytes]], grpc_status: int
    ) -> Status:
        if self._local_in_flight or self.completed or self._pending_local is not None:
            # Envoy ignores a local reply sent while one is being encoded, and a second one
            # in the same callback: the client gets the first (docs/conformance.md, issue 12)
            return Status.OK
        self._pending_local = LocalResponse(
            status_code=status,
            body=bytes(body),
            headers=[(_s(k).lower(), _s(v)) for k, v in headers],
            details="_".join(_s(details).split()),
            grpc_status=grpc_status if 0 <= grpc_status <= 16 else None,
        )
        self.host.deferred.append(self._after_guest_call)
        return Status.OK

    def set_filter_state(self, key: bytes, value: bytes) -> Status:
        self.filter_state_data[key] = value
        return Status.OK

    def filter_state(self, key: bytes) -> bytes | None:
        return None if self._filter_state is None else self._filter_state.get(key)

    def inject_encoded_data(self, data: bytes, end_stream: bool) -> Status:
        """Higress: bytes for the client, after this filter (they join what it forwarded)."""
        resp = self.response
        resp.forwarded_body += data
        resp.forwarded_bytes += len(data)
        return _OK

    def set_upstream_override_host(self, host: str) -> Status:
        """Higress: the upstream host this request should go to (kept for the test)."""
        self.upstream_override_host = host
        return _OK

    def set_envoy_filter_state(self, path: str, value: bytes, span: int) -> Status:
        return set_envoy_filter_state(self.filter_state_data, path, value)

    def stream_property(self, segments: list[str]) -> tuple[bool, Any]:
        """The longest attribute path that prefixes ``segments``, navigated into for the rest.
        User-supplied attributes win over the stream's own and may be any number of segments
        deep (Envoy's metadata paths are four and more: ``metadata.filter_metadata.<filter>.<key>``);
        the stream's own attributes are at most 3 deep.  Only the attribute asked for is
        computed (see ATTRIBUTES): a filter may read properties on every request, and
        rebuilding every attribute (both header dicts included) for each lookup cost ~13 µs."""
        user = self._attributes
        if user is not None:
            for length in range(len(segments), 0, -1):
                key = tuple(segments[:length])
                if key in user:
                    return _navigate(user[key], segments[length:])
        for length in range(min(len(segments), 3), 0, -1):
            key = tuple(segments[:length])
            if length == 2 and len(segments) == 3 and key in HEADER_MAPS:
                # request.headers.<name>: that header alone, not the dict of all of them
                hmap = HEADER_MAPS[key](self)
                if hmap is None:
                    continue
                value = joined_value(hmap, segments[2])
                return (False, None) if value is None else (True, value)
            compute = ATTRIBUTES.get(key)
            if compute is not None:
                # (its own name: compiled, a variable keeps the type of its first assignment)
                attribute = compute(self)
                if attribute is not ABSENT:
                    return (True, attribute) if length == len(segments) else _navigate(attribute, segments[length:])
        return False, None

    def current_attributes(self) -> dict[tuple[str, ...], Any]:
        """Envoy attributes this stream has right now (docs/abi-notes.md §10), user-supplied ones included."""
        attrs: dict[tuple[str, ...], Any] = {}
        for key, compute in ATTRIBUTES.items():
            value = compute(self)
            if value is not ABSENT:
                attrs[key] = value
        if self._attributes is not None:
            attrs.update(self._attributes)
        return attrs

    # ------------------------------------------------------------------------------------
    # events from the peers
    # ------------------------------------------------------------------------------------
    # _call and _invoke take the callback's arguments as one tuple (this context's id
    # first), built once per callback rather than re-packed at every level.
    def _call(self, name: str, args: tuple[int, ...]) -> int:
        vm = self.vm
        result = vm.call_with(self, name, args)
        if vm.exported(name):
            self._callback_log += (name, args, result)
        return result

    @property
    def _fail_open(self) -> bool:
        return self.root.plugin.failure_policy == "fail_open"

    def _invoke(self, name: str, args: tuple[int, ...]) -> int | None:
        """A stream callback with Envoy's failure handling: after a trap (now or earlier) the
        stream is failed closed (503) or, with ``fail_open``, the filter is skipped (Continue)."""
        if self.vm.failed is not None:
            if self._fail_open:
                return 0
            self._fail_closed()
            return None
        vm = self.vm
        try:  # self._call(name, args), inline: two of these per request
            result = vm.call_with(self, name, args)
            if vm.exported(name):
                self._callback_log += (name, args, result)
            return result
        except FilterTrap:
            self.host.deferred.clear()
            self._pending_local = None
            if not self._fail_open:
                self._fail_closed()
            if self.vm.raise_on_trap:
                raise
            return 0 if self._fail_open else None

    def _ensure_created(self) -> None:
        if not self.created:
            self.created = True
            try:
                self.vm.call_with(self, "proxy_on_context_create", (self.id, self._root.id))
            except FilterTrap:
                # the same failure handling as any stream callback (see _invoke)
                self.host.deferred.clear()
                if not self._fail_open:
                    self._fail_closed()
                if self.vm.raise_on_trap:
                    raise

    def _check_open(self, d: Direction, part: str) -> None:
        """Raise unless ``d`` may still receive its ``part`` ("headers", "body", "trailers")."""
        if self.completed:
            raise HarnessUsageError(
                f"cannot send {d.name} {part}: the stream is complete (on_log/on_done/on_delete ran). "
                "Open a new stream with plugin.http_stream() for another request."
            )
        if d.end_received:
            raise HarnessUsageError(
                f"cannot send {d.name} {part}: the {d.name} already ended (end_of_stream was sent or trailers "
                f"arrived). Pass end_of_stream=False on the last {d.name} event if more is to follow."
            )

    def receive_headers(self, d: Direction, pairs: Iterable[Sequence[str | bytes]], end_of_stream: bool) -> int | None:
        if d.headers_received:
            raise HarnessUsageError(
                f"{d.name} headers were already sent on this stream; send body chunks or trailers next, "
                "or open a new stream for another request."
            )
        if self.completed or d.end_received:
            self._check_open(d, "headers")  # raises
        if d is self.response:
            self._check_response_allowed("response headers")
        headers = HeaderMap(pairs)  # first: malformed headers raise with the stream untouched
        d.headers_received = True
        d.headers = headers
        d.received_pairs = headers._pairs
        d.end_received = end_of_stream
        vm = self.vm
        if not self.created and vm.failed is None:
            self._ensure_created()
        name = "proxy_on_request_headers" if d is self.request else "proxy_on_response_headers"
        count = len(headers._pairs)  # (not len(headers): a Python-level __len__ call)
        if self.host.abi_version == _ABI_0_1_0:
            result = self._invoke(name, (self.id, count))
        else:
            result = self._invoke(name, (self.id, count, 1 if end_of_stream else 0))
        if result is None:
            return None
        if self._pending_local is None and not self._reset_requested:
            if result in _HEADERS_GO_ON:  # Envoy treats ContinueAndEndStream as Continue
                d.headers_released = True
                self._forward_headers(d)
            else:
                d.stopped = _HEADERS
        host = self.host
        if host.deferred or host.posted_queue_ready:  # (the call costs more than the test)
            vm.flush()
        return result

    def receive_data(self, d: Direction, chunk: bytes, end_of_stream: bool) -> int | None:
        self._check_open(d, "body")
        if not d.headers_received:
            raise HarnessUsageError(f"send the {d.name} headers before its body (Envoy never delivers a body first).")
        if d is self.response:
            self._check_response_allowed("response body")
        if self._aborted(d):
            d.end_received = end_of_stream
            return None
        d.buffer += chunk
        d.end_received = end_of_stream
        if d.stopped == _HEADERS:
            return None  # held by the filter manager until the filter continues
        return self._deliver_body(d)

    def _deliver_body(self, d: Direction) -> int | None:
        end = d.end_received and d.queued_trailers is None and d.trailers is None
        name = "proxy_on_request_body" if d is self.request else "proxy_on_response_body"
        d.body_writable = True
        d.trailers_creatable = end
        try:
            result = self._invoke(name, (self.id, len(d.buffer), int(end)))
        finally:
            d.trailers_creatable = False
        if result is None:
            return None
        if self._pending_local is None and not self._reset_requested:
            if result == _DATA_CONTINUE:
                self._forward_body(d)
            elif result in _DATA_KEEP_BUFFERING:
                d.stopped = _BODY
            else:  # StopIterationNoBuffer (or an unknown status): the filter owns the data
                d.buffer.clear()
                d.stopped = _BODY
        if d.stopped != _BODY:
            d.body_writable = False
        self.vm.flush()
        return result

    def receive_trailers(self, d: Direction, pairs: Iterable[Sequence[str | bytes]]) -> int | None:
        self._check_open(d, "trailers")
        if not d.headers_received:
            raise HarnessUsageError(f"send the {d.name} headers before its trailers.")
        if d is self.response:
            self._check_response_allowed("response trailers")
        d.end_received = True
        if self._aborted(d):
            return None
        trailers = HeaderMap(pairs)
        if d.stopped == _HEADERS:
            d.queued_trailers = trailers
            return None
        d.trailers = trailers
        return self._deliver_trailers(d)

    def _deliver_trailers(self, d: Direction) -> int | None:
        assert d.trailers is not None
        name = "proxy_on_request_trailers" if d is self.request else "proxy_on_response_trailers"
        result = self._invoke(name, (self.id, len(d.trailers)))
        if result is None:
            return None
        if self._pending_local is None and not self._reset_requested:
            if result == _TRAILERS_CONTINUE:
                self._forward_body(d)
                self._forward_trailers(d)
            else:
                d.stopped = _TRAILERS
        self.vm.flush()
        return result

    # ------------------------------------------------------------------------------------
    # forwarding
    # ------------------------------------------------------------------------------------
    def _aborted(self, d: Direction) -> bool:
        return self.reset or (d is self.request and self.local_response is not None)

    def _check_response_allowed(self, what: str) -> None:
        if self._local_in_flight:
            return
        if self.local_response is not None:
            raise HarnessUsageError(
                f"cannot send {what}: the filter answered locally with {self.local_response.status_code}, "
                "so no upstream response reaches the client. Inspect stream.local_response instead."
            )
        if self.reset:
            raise HarnessUsageError(f"cannot send {what}: the filter reset the stream (proxy_close_stream).")
        if not self.request.end_forwarded and self.request._forwarded_headers is None:
            raise HarnessUsageError(
                f"cannot send {what}: the request headers have not reached the upstream yet "
                f"(the filter paused them in {self._last_request_callback()}). Let the filter resume the "
                "request first (e.g. advance the clock to fire its tick, or answer its callout)."
            )

    def _last_request_callback(self) -> str:
        for name in self._callback_log[-3::-3]:  # the names, last first
            if "request" in name:
                return str(name)
        return "proxy_on_request_headers"

    def _forward_headers(self, d: Direction) -> None:
        assert d.headers is not None
        d._forwarded_headers = d.headers.frozen_pairs()
        d.stopped = None
        if d.end_received and not d.buffer and d.trailers is None and d.queued_trailers is None:
            self._end(d)

    def _forward_body(self, d: Direction) -> None:
        d.forwarded_body += d.buffer
        d.forwarded_bytes += len(d.buffer)
        d.buffer.clear()
        d.stopped = None
        d.body_writable = False
        if d.end_received and d.trailers is None and d.queued_trailers is None:
            self._end(d)

    def _forward_trailers(self, d: Direction) -> None:
        d.forwarded_trailers = d.trailers.copy() if d.trailers is not None else None
        d.stopped = None
        self._end(d)

    def _end(self, d: Direction) -> None:
        if d.end_forwarded:
            return
        d.end_forwarded = True
        if d is self.response:
            self.complete()

    def _resume(self, d: Direction) -> None:
        stopped, d.stopped = d.stopped, None
        if stopped == _HEADERS:
            self._forward_headers(d)
            if d.buffer or (d.end_received and not d.end_forwarded and d.queued_trailers is None):
                self._deliver_body(d)
            if d.queued_trailers is not None and d.stopped is None and not self._aborted(d) and not self.completed:
                d.trailers, d.queued_trailers = d.queued_trailers, None
                self._deliver_trailers(d)
        elif stopped == _BODY:
            self._forward_body(d)
        elif stopped == _TRAILERS:
            self._forward_body(d)
            self._forward_trailers(d)

    def _after_guest_call(self) -> None:
        """Deferred work after a guest call returns: local reply, reset, continue."""
        if self.completed:
            return
        if self._pending_local is not None:
            reply, self._pending_local = self._pending_local, None
            self.request.continue_requested = self.response.continue_requested = False
            self._apply_local_reply(reply)
            return
        if self._reset_requested:
            self._reset_requested = False
            self.reset = True
            self.complete()
            return
        for d in (self.request, self.response):
            if d.continue_requested:
                d.continue_requested = False
                if d.stopped is not None:
                    self._resume(d)

    def is_grpc_request(self) -> bool:
        """Envoy's test (``Grpc::Common::isGrpcRequestHeaders``) on the request headers as they
        arrived: ``content-type`` is ``application/grpc``, optionally followed by ``+...`` or ``;...``."""
        for k, v in self.request.received_pairs:
            if k == b"content-type":
                return v.startswith(b"application/grpc") and (len(v) == 16 or v[16:17] in (b"+", b";"))
        return False

    def _reset_incomplete_upstream_request(self) -> None:
        """A local reply (the filter's, or Envoy's fail-closed one) while the request's headers
        are upstream but its end is not: Envoy resets the upstream request (docs/abi-notes.md §7.4)."""
        req = self.request
        if req._forwarded_headers is not None and not req.end_forwarded:
            self.upstream_reset = True

    def _apply_local_reply(self, reply: LocalResponse) -> None:
        self.local_response = reply
        self._reset_incomplete_upstream_request()
        self.request.stopped = None
        grpc = self.is_grpc_request()
        headers = local_reply_headers(reply, grpc=grpc)
        body = b"" if grpc else reply.body  # (a gRPC reply carries it in grpc-message)
        resp = self.response
        if resp._forwarded_headers is not None:
            # Response already started downstream: Envoy can only reset the stream.
            self.reset = True
            self.complete()
            return
        if resp.headers_received:
            # Upstream response is being encoded: Envoy replies directly, bypassing the filter.
            resp.headers = HeaderMap(headers)
            resp.trailers = None
            resp.buffer = bytearray()
            resp.forwarded_headers = resp.headers.copy()
            resp.forwarded_body = bytearray(body)
            resp.forwarded_bytes = len(body)
            resp.forwarded_trailers = None
            resp.stopped = None
            self._end(resp)
            return
        # Local reply during decoding: it runs through this filter's encoder callbacks.
        self._local_in_flight = True
        try:
            resp.headers_received = False
            self.receive_headers(resp, headers, end_of_stream=not body)
            if body and not self.completed:
                resp.buffer += body
                resp.end_received = True
                if resp.stopped != _HEADERS:
                    self._deliver_body(resp)
        finally:
            self._local_in_flight = False

    def _fail_closed(self) -> None:
        """Envoy with a failed VM and fail-closed policy: 503 local reply, empty body,
        gRPC status UNAVAILABLE, details wasm_fail_stream; no more callbacks."""
        if self.completed:
            return
        self.local_response = reply = LocalResponse(503, b"", [], "wasm_fail_stream", 14)
        self._reset_incomplete_upstream_request()
        resp = self.response
        resp.forwarded_headers = HeaderMap(local_reply_headers(reply, grpc=self.is_grpc_request()))
        resp.forwarded_body = bytearray()
        self.request.stopped = self.response.stopped = None
        self.completed = True
        self.host.forget(self)

    # ------------------------------------------------------------------------------------
    # end of stream
    # ------------------------------------------------------------------------------------
    def complete(self) -> None:
        """Access-log phase and destruction: on_log → on_done → on_delete (Envoy HTTP order)."""
        if self.completed:
            return
        self.completed = True
        if self.vm.failed is not None:
            self.host.forget(self)
            return
        if not self.created:
            self._ensure_created()
        args = (self.id,)
        self.in_log = True
        try:
            self._call("proxy_on_log", args)
        finally:
            self.in_log = False
        self._call("proxy_on_done", args)
        self._call("proxy_on_delete", args)
        self.deleted = True
        self.host.forget(self)
