"""One TCP connection through one wasm network filter, the way Envoy runs
``envoy.filters.network.wasm`` in front of ``envoy.filters.network.tcp_proxy``.

Sans-IO: the connection receives the client's bytes (downstream data), the upstream's bytes
(upstream data) and the ends of either side, calls the matching ``proxy_on_*`` callback
through :class:`~proxywasm_host.core.vm.Vm`, and keeps what reached each side.

What it reproduces (Envoy ``source/extensions/common/wasm/context.cc`` ``onNewConnection``,
``onData``, ``onWrite``, ``onEvent``, ``onCloseTCP``; ``source/common/network/filter_manager_impl.cc``;
the tcp_proxy filter; docs/abi-notes.md §7.5):

- a new connection creates the context (``proxy_on_context_create``) and calls
  ``proxy_on_new_connection``; Continue lets tcp_proxy connect upstream (to the cluster in
  filter state ``envoy.tcp_proxy.cluster`` if the filter set one, else the default cluster);
  Pause holds the connection before tcp_proxy;
- client bytes accumulate in the connection's read buffer (``DOWNSTREAM_DATA``); each read
  calls ``proxy_on_downstream_data(size of that buffer, end_of_stream)``.  Pause keeps the
  bytes (the next read reports them again with the new ones); Continue hands them to
  tcp_proxy.  tcp_proxy disables reading on the connection as soon as it is created and
  enables it once it connected upstream, so nothing the client sends is read (no
  ``proxy_on_downstream_data``) while the filter holds the new connection: the bytes wait in
  the socket until the filter resumes (``proxy_continue_stream(DOWNSTREAM)``) and are then
  read at once (measured with Envoy 1.40);
- upstream bytes go to ``proxy_on_upstream_data(size, end_of_stream)`` (``UPSTREAM_DATA``);
  Pause keeps them until the next upstream bytes; end of stream is followed by
  ``proxy_on_upstream_connection_close(UNKNOWN)`` (Envoy synthesizes it there);
- ``proxy_continue_stream(DOWNSTREAM)`` resumes reading after the guest call returns,
  ``UPSTREAM`` is UNIMPLEMENTED; ``proxy_close_stream(DOWNSTREAM|UPSTREAM)`` closes the
  connection (FlushWrite) after the guest call returns;
- the connection closes when both directions have ended (half close, as tcp_proxy enables
  it) or the filter closed it: ``proxy_on_downstream_connection_close(LOCAL|REMOTE)``, then
  ``proxy_on_done``, ``proxy_on_log``, ``proxy_on_delete`` (TCP order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxywasm_host.core.context import Context, RootContext
from proxywasm_host.core.filter_state import set_envoy_filter_state
from proxywasm_host.core.properties import Int, UInt, _navigate
from proxywasm_host.core.types import BufferType, PeerType, Status, StreamType
from proxywasm_host.errors import FilterTrap, HarnessUsageError

if TYPE_CHECKING:
    from proxywasm_host.core.vm import Vm

#: the network callbacks: a module exporting one of them is a network filter
NETWORK_CALLBACKS = (
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
)

@dataclass
class NetworkCallbackRecord:
    """One network callback the host delivered and what it returned."""

    callback: str
    args: tuple[int, ...]
    result: int


class NetworkContext(Context):
    """A stream context for one TCP connection through a network filter."""

    kind = "tcp"

    def __init__(
        self,
        vm: Vm,
        root: RootContext,
        *,
        source_address: str = "127.0.0.1:52400",
        destination_address: str = "127.0.0.1:10000",
        upstream_addresses: dict[str, str] | None = None,
        default_cluster: str = "upstream",
        attributes: dict[tuple[str, ...], Any] | None = None,
    ) -> None:
        super().__init__(vm.host, vm.host.allocate_context_id())
        self.vm = vm
        self._root = root
        self.source_address = source_address
        self.destination_address = destination_address
        #: cluster -> the upstream host address tcp_proxy connects to (upstream.address)
        self.upstream_addresses = dict(upstream_addresses or {})
        self.upstream_address = ""
        self.default_cluster = default_cluster
        self.attributes: dict[tuple[str, ...], Any] = dict(attributes or {})
        #: the connection's read buffer: client bytes at the filter, not yet given to tcp_proxy
        self.read_buffer = bytearray()
        #: upstream bytes at the filter, not yet written to the client
        self.write_buffer = bytearray()
        self.to_upstream = bytearray()  # every byte that reached the upstream
        self.to_downstream = bytearray()  # every byte the client got
        self.unread = bytearray()  # sent by the client, not read yet (reading disabled)
        self.client_ended = False  # the client half-closed (FIN), read or not
        self.downstream_ended = False  # the client's FIN was read
        self.upstream_ended = False  # the upstream half-closed (FIN)
        self.upstream_end_forwarded = False  # tcp_proxy passed the client's FIN upstream
        self.downstream_end_forwarded = False  # the client got the upstream's FIN
        self.tcp_proxy_started = False  # tcp_proxy got onNewConnection (it connected upstream)
        self.cluster: str | None = None  # the cluster tcp_proxy connected to
        self.closed = False
        self.closed_by: str | None = None  # "downstream" | "upstream" | "filter"
        self.close_event: PeerType | None = None
        self.first_end: str | None = None  # who ended first: "downstream" | "upstream"
        self._downstream_exposed = False
        self._upstream_exposed = False
        self._close_requested = False
        self._continue_requested = False
        self.read_stopped = False  # the filter returned Pause for the bytes in read_buffer
        self.write_stopped = False
        self.filter_state_data: dict[bytes, bytes] = {}
        self.callback_log: list[NetworkCallbackRecord] = []
        self.connection_id = self.id
        self.host.register(self)

    @property
    def root(self) -> RootContext:
        return self._root

    # ------------------------------------------------------------------------------------
    # hostcall-facing state
    # ------------------------------------------------------------------------------------
    def get_buffer(self, buffer_type: int) -> tuple[Status, bytes | bytearray | None]:
        if buffer_type == BufferType.DOWNSTREAM_DATA:
            return Status.OK, self.read_buffer if self._downstream_exposed else b""
        if buffer_type == BufferType.UPSTREAM_DATA:
            return Status.OK, self.write_buffer if self._upstream_exposed else b""
        return super().get_buffer(buffer_type)

    def set_buffer(self, buffer_type: int, start: int, size: int, data: bytes) -> Status:
        if buffer_type == BufferType.DOWNSTREAM_DATA:
            if not self._downstream_exposed:
                return Status.NOT_FOUND
            return _copy_from(self.read_buffer, start, size, data)
        if buffer_type == BufferType.UPSTREAM_DATA:
            if not self._upstream_exposed:
                return Status.NOT_FOUND
            return _copy_from(self.write_buffer, start, size, data)
        return super().set_buffer(buffer_type, start, size, data)

    def get_map(self, map_type: int, *, for_write: bool) -> tuple[Status, Any]:
        return super().get_map(map_type, for_write=for_write)

    def continue_stream(self, stream_type: int) -> Status:
        if stream_type == StreamType.UPSTREAM:
            return Status.UNIMPLEMENTED
        if stream_type == StreamType.DOWNSTREAM:
            self._continue_requested = True
            self.host.deferred.append(self._after_guest_call)
        # HTTP_REQUEST / HTTP_RESPONSE: Envoy has no decoder/encoder callbacks here: OK, nothing
        return Status.OK

    def close_stream(self, stream_type: int) -> Status:
        if stream_type in (StreamType.DOWNSTREAM, StreamType.UPSTREAM):
            self._close_requested = True
            self.host.deferred.append(self._after_guest_call)
        return Status.OK

    def set_filter_state(self, key: bytes, value: bytes) -> Status:
        self.filter_state_data[key] = value
        return Status.OK

    def filter_state(self, key: bytes) -> bytes | None:
        return self.filter_state_data.get(key)

    def set_envoy_filter_state(self, path: str, value: bytes, span: int) -> Status:
        return set_envoy_filter_state(self.filter_state_data, path, value)

    def stream_property(self, segments: list[str]) -> tuple[bool, Any]:
        for length in range(min(len(segments), 3), 0, -1):
            key = tuple(segments[:length])
            if key in self.attributes:
                return _navigate(self.attributes[key], segments[length:])
        head = tuple(segments[:2])
        compute = _ATTRIBUTES.get(head) or _ATTRIBUTES.get(head[:1])
        if compute is None:
            return False, None
        width = 2 if head in _ATTRIBUTES else 1
        value = compute(self)
        if value is _ABSENT:
            return False, None
        return _navigate(value, segments[width:])

    # ------------------------------------------------------------------------------------
    # the guest
    # ------------------------------------------------------------------------------------
    def _call(self, name: str, args: tuple[int, ...]) -> int | None:
        """A network callback; None when the VM failed (Envoy then closes the connection,
        FlushWrite, unless the plugin fails open)."""
        vm = self.vm
        if vm.failed is not None:
            if self._fail_open:
                return 0
            self._fail_closed()
            return None
        try:
            result = vm.call_with(self, name, args)
        except FilterTrap:
            self.host.deferred.clear()
            if not self._fail_open:
                self._fail_closed()
            if vm.raise_on_trap:
                raise
            return 0 if self._fail_open else None
        if vm.runtime.has_export(name):
            self.callback_log.append(NetworkCallbackRecord(name, args, result))
            observer = self.host.observer
            if observer is not None and observer.coverage is not None:
                key = f"callback:{name}"
                observer.coverage[key] = observer.coverage.get(key, 0) + 1
        return result

    @property
    def _fail_open(self) -> bool:
        return self.root.plugin.failure_policy == "fail_open"

    def _fail_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_by = self.closed_by or "filter"
            self.host.forget(self)

    def _flush(self) -> None:
        host = self.host
        if host.deferred or host.posted_queue_ready:
            self.vm.flush()

    # ------------------------------------------------------------------------------------
    # events
    # ------------------------------------------------------------------------------------
    def open(self) -> int | None:
        """The client connected: on_context_create, on_new_connection; Continue starts tcp_proxy."""
        self.created = True
        try:
            self.vm.call_with(self, "proxy_on_context_create", (self.id, self._root.id))
        except FilterTrap:
            self.host.deferred.clear()
            self._fail_closed()
            if self.vm.raise_on_trap:
                raise
            return None
        result = self._call("proxy_on_new_connection", (self.id,))
        self._flush()
        if result is None or self.closed:
            return result
        if result == 0:
            self._start_tcp_proxy()
        return result

    def _start_tcp_proxy(self) -> None:
        """tcp_proxy's onNewConnection: pick the cluster (filter state first) and connect."""
        self.tcp_proxy_started = True
        state = self.filter_state_data.get(b"envoy.tcp_proxy.cluster")
        self.cluster = state.decode("utf-8", "surrogateescape") if state is not None else self.default_cluster
        self.upstream_address = self.upstream_addresses.get(self.cluster, "127.0.0.1:20000")
        # connected: tcp_proxy enables reading; what the client sent meanwhile is read now
        if self.unread or (self.client_ended and not self.downstream_ended):
            self.read_buffer += self.unread
            self.unread.clear()
            self.downstream_ended = self.client_ended
            self._read()

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise HarnessUsageError(
                f"cannot {what}: the connection is closed (closed by {self.closed_by}); "
                "open a new one with plugin.tcp_connection()"
            )

    def receive_downstream(self, data: bytes, end_of_stream: bool) -> int | None:
        """Bytes from the client (end_of_stream: the client half-closed after them)."""
        self._check_open("send downstream data")
        if self.client_ended:
            raise HarnessUsageError("the client already ended its side (end_of_stream was sent)")
        if end_of_stream:
            self.client_ended = True
            self.first_end = self.first_end or "downstream"
        if not self.tcp_proxy_started:
            # tcp_proxy keeps reading disabled until it is connected: nothing is read yet
            self.unread += data
            return None
        self.read_buffer += data
        self.downstream_ended = self.client_ended
        return self._read()

    def _read(self) -> int | None:
        """One pass of Envoy's read filter chain over the read buffer."""
        end = self.downstream_ended
        self._downstream_exposed = True
        result = self._call("proxy_on_downstream_data", (self.id, len(self.read_buffer), int(end)))
        if result is None:
            return None
        if result != 0:
            self.read_stopped = True
        else:
            self.read_stopped = False
            self._downstream_exposed = False
        self._flush()
        if result == 0 and not self.closed:
            self._to_tcp_proxy()
        return result

    def _to_tcp_proxy(self) -> None:
        self.to_upstream += self.read_buffer
        self.read_buffer.clear()
        if self.downstream_ended and not self.upstream_end_forwarded:
            self.upstream_end_forwarded = True
            self._maybe_close()

    def receive_upstream(self, data: bytes, end_of_stream: bool) -> int | None:
        """Bytes from the upstream towards the client (end_of_stream: the upstream half-closed)."""
        self._check_open("send upstream data")
        if not self.tcp_proxy_started:
            raise HarnessUsageError(
                "no upstream connection yet: the filter paused the connection before tcp_proxy "
                "(on_new_connection / on_downstream_data returned Pause)"
            )
        if self.upstream_ended:
            raise HarnessUsageError("the upstream already ended its side (end_of_stream was sent)")
        self.write_buffer += data
        if end_of_stream:
            self.upstream_ended = True
            self.first_end = self.first_end or "upstream"
        self._upstream_exposed = True
        result = self._call("proxy_on_upstream_data", (self.id, len(self.write_buffer), int(end_of_stream)))
        if result is None:
            return None
        if result == 0:
            self.write_stopped = False
            self._upstream_exposed = False
            self.to_downstream += self.write_buffer
            self.write_buffer.clear()
        else:
            self.write_stopped = True
        if end_of_stream:
            self._call("proxy_on_upstream_connection_close", (self.id, int(PeerType.UNKNOWN)))
            if result == 0:
                self.downstream_end_forwarded = True
        self._flush()
        if not self.closed:
            self._maybe_close()
        return result

    def _maybe_close(self) -> None:
        """Half close on both sides closes the connection: the side that ended last decides
        Envoy's event (our FIN flushed last: LocalClose; the client's FIN read last: RemoteClose)."""
        if self.upstream_end_forwarded and self.downstream_end_forwarded:
            event = PeerType.REMOTE if self.first_end == "upstream" else PeerType.LOCAL
            self._close(event, self.first_end or "downstream")

    def _close(self, event: PeerType, by: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.closed_by = by
        self.close_event = event
        self._call("proxy_on_downstream_connection_close", (self.id, int(event)))
        self._destroy()

    def _destroy(self) -> None:
        """Envoy's onCloseTCP: on_done, on_log, on_delete (once)."""
        if self.vm.failed is None:
            args = (self.id,)
            for name in ("proxy_on_done", "proxy_on_log", "proxy_on_delete"):
                self._call(name, args)
                if self.vm.failed is not None:
                    break
            self._flush()
        self.deleted = True
        self.host.forget(self)

    def _after_guest_call(self) -> None:
        if self.closed:
            return
        if self._close_requested:
            self._close_requested = False
            self._close(PeerType.LOCAL, "filter")
            return
        if self._continue_requested:
            self._continue_requested = False
            if self.read_stopped:
                self.read_stopped = False
                self._downstream_exposed = False
                self._to_tcp_proxy()
            elif not self.tcp_proxy_started:
                self._start_tcp_proxy()

    def close_abruptly(self) -> None:
        """The client went away (RST / full close before the proxy ended): RemoteClose."""
        self._check_open("close the connection")
        self.first_end = self.first_end or "downstream"
        self._close(PeerType.REMOTE, "downstream")

    @property
    def callbacks(self) -> list[NetworkCallbackRecord]:
        return list(self.callback_log)


def _copy_from(buf: bytearray, start: int, size: int, data: bytes) -> Status:
    """Envoy's Buffer::copyFrom: start 0 drains ``size`` then prepends; start at or past
    the end appends; anything else is BAD_ARGUMENT."""
    if start == 0:
        del buf[: min(size, len(buf))]
        buf[0:0] = data
    elif start >= len(buf):
        buf.extend(data)
    else:
        return Status.BAD_ARGUMENT
    return Status.OK


_ABSENT: Any = object()


def _host_port(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host, int(port)


def _port(address: str) -> Any:
    port = _host_port(address)[1]
    return _ABSENT if port is None else Int(port)


def _upstream(value: Any) -> Any:
    def compute(ctx: NetworkContext) -> Any:
        return value(ctx) if ctx.tcp_proxy_started else _ABSENT

    return compute


_ATTRIBUTES: dict[tuple[str, ...], Any] = {
    ("source", "address"): lambda ctx: ctx.source_address,
    ("source", "port"): lambda ctx: _port(ctx.source_address),
    ("destination", "address"): lambda ctx: ctx.destination_address,
    ("destination", "port"): lambda ctx: _port(ctx.destination_address),
    ("connection", "id"): lambda ctx: UInt(ctx.connection_id),
    ("connection_id",): lambda ctx: UInt(ctx.connection_id),
    ("connection", "mtls"): lambda ctx: False,
    ("connection", "requested_server_name"): lambda ctx: "",
    ("upstream", "address"): _upstream(lambda ctx: ctx.upstream_address),
    ("upstream", "port"): _upstream(lambda ctx: _port(ctx.upstream_address)),
    ("xds", "cluster_name"): _upstream(lambda ctx: ctx.cluster),
}
