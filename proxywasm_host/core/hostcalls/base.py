"""ABI state of one VM instance (contexts, memory access, logs, tokens) that every group of hostcalls works on."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from mypy_extensions import mypyc_attr

from proxywasm_host.core import codec
from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.context import Context, PluginConfig, RootContext
from proxywasm_host.core.guest import NO_GUEST, Guest, GuestMemoryError, MemoryAccess
from proxywasm_host.core.higress import REDIS_CALL_RESPONSE, RedisCall
from proxywasm_host.core.observer import HostcallObserver, LogEntry
from proxywasm_host.core.spec import _U32, _U64, MASK32, MASK64
from proxywasm_host.core.state import Clock, Metric, SharedState
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import (
    AbiVersion,
    BufferType,
    LogLevel,
    MapType,
    MetricType,
)

# Plain ints of what the hot hostcalls compare against: reading an IntEnum member
# (``Status.OK``) goes through the enum class (~0.1 µs each), a module global does not
# (the statuses themselves: types.OK etc.).
_LAST_MAP_TYPE = int(MapType.HTTP_CALL_RESPONSE_TRAILERS)
_LAST_BUFFER_TYPE = int(BufferType.FOREIGN_FUNCTION_ARGUMENTS)
_LOG_LEVELS = tuple(LogLevel)  # _LOG_LEVELS[n] is LogLevel(n) without the enum call
_CRITICAL = int(LogLevel.CRITICAL)
_pack_u32 = _U32.pack_into

#: callout_history keeps every pending callout and at least this many of the most recent ones
CALLOUT_HISTORY = 200


class Delivery(Protocol):
    """Runs the callbacks an AbiHost defers or is answered for: implemented by the Vm."""

    def root_done(self, root: RootContext) -> None:
        """proxy_on_delete after the root called proxy_done."""

    def http_response(
        self,
        callout: HttpCallout,
        headers: list[tuple[str, str]] | None,
        body: bytes,
        trailers: list[tuple[str, str]],
        status: tuple[int, bytes] | None,
    ) -> None:
        """proxy_on_http_call_response for an answered, failed or timed-out callout."""

    def grpc_event(self, call: GrpcCall, kind: str, payload: object) -> None:
        """The proxy_on_grpc_* callback for one event of a call or stream."""

    def dns_answers(self, root: RootContext, token: int, answers: list[tuple[str, int]]) -> None:
        """envoy_on_resolve_dns."""

    def redis_response(self, call: RedisCall, status: int, reply: bytes) -> None:
        """proxy_on_redis_call_response (Higress's ABI)."""


class _NoDelivery:
    def _fail(self) -> None:
        raise RuntimeError("AbiHost has no VM to deliver callbacks (a Vm attaches itself as AbiHost.delivery)")

    def root_done(self, *args: object) -> None:
        self._fail()

    def http_response(self, *args: object) -> None:
        self._fail()

    def grpc_event(self, *args: object) -> None:
        self._fail()

    def dns_answers(self, *args: object) -> None:
        self._fail()

    def redis_response(self, *args: object) -> None:
        self._fail()


_NO_DELIVERY: Delivery = _NoDelivery()


@mypyc_attr(allow_interpreted_subclasses=True)
class AbiHostBase:
    """ABI state of one VM instance; the hostcalls themselves are its subclasses' methods."""


    def __init__(
        self,
        abi_version: AbiVersion,
        *,
        vm_id: str = "",
        vm_configuration: bytes = b"",
        clock: Clock | None = None,
        shared: SharedState | None = None,
        environment: dict[str, str] | None = None,
        log_level: LogLevel = LogLevel.TRACE,
        random_seed: int | None = None,
        foreign_functions: dict[str, Callable[[bytes], bytes | None]] | None = None,
    ) -> None:
        self.abi_version = abi_version
        self.vm_id = vm_id
        self.vm_configuration = vm_configuration
        self.clock = clock or Clock()
        self.shared = shared or SharedState()
        self.environment = dict(environment or {})
        #: told dropped_log_level() whenever it changes (see watch_log_filter)
        self._log_filter_listener: Callable[[int], None] | None = None
        self._log_level = log_level
        self.foreign_functions = dict(foreign_functions or {})
        self.guest: Guest = NO_GUEST
        #: copies in and out of guest memory: the Python ones until a runtime attaches its own
        self.read: Callable[[int, int], bytes] = self._read_py
        self.give: Callable[[bytes | bytearray | memoryview], int] = self._give_py
        self.write_u32_pair: Callable[[int, int, int, int], None] = self._write_u32_pair_py
        #: the VM that runs callbacks this host defers (set by the Vm)
        self.delivery: Delivery = _NO_DELIVERY
        #: tracing / fault injection / strict mode (the ``observer`` property); None keeps the
        #: hot path untouched (the @hostcall guard reads this field)
        self._observer: HostcallObserver | None = None
        self.logs: list[LogEntry] = []
        self.host_errors: list[str] = []
        #: what the host refused and how the test can change that (e.g. an undeclared cluster)
        self.notices: list[str] = []
        self.metrics: dict[int, Metric] = {}
        self._metric_ids = {MetricType.COUNTER: 4, MetricType.GAUGE: 5, MetricType.HISTOGRAM: 6}
        self.metrics_by_name: dict[tuple[MetricType, str], int] = {}
        self.vm_context = Context(self, 0)
        self.contexts: dict[int, Context] = {0: self.vm_context}
        self._next_context_id = 1
        self.current: Context = self.vm_context
        self.effective: Context | None = None
        self.plugin_in_flight: RootContext | None = None
        #: work Envoy defers until the running guest call returns
        self.deferred: list[Callable[[], None]] = []
        #: on_queue_ready notifications posted to this VM: (root id, token)
        self.posted_queue_ready: list[tuple[int, int]] = []
        #: set by the Vm: delivers this VM's posted notifications when another VM posted them
        self.wake: Callable[[], None] | None = None
        self.random = random.Random(random_seed)
        #: cluster name -> optional URL of a real upstream; None accepts every name
        self.clusters: dict[str, str | None] | None = None
        self.http_callouts: dict[int, HttpCallout] = {}
        self._next_http_token = 4
        self.grpc_calls: dict[int, GrpcCall] = {}
        self._next_grpc_call = 5
        self._next_grpc_stream = 6
        self.on_http_callout: Callable[[HttpCallout], None] | None = None
        #: called (after the guest call returns) when a gRPC call/stream opens, and when the
        #: filter half-closes a stream
        self.on_grpc_call: Callable[[GrpcCall], None] | None = None
        #: name -> [(address, ttl seconds)] for envoy_resolve_dns; unknown names fail (size 0)
        self.dns: dict[str, list[tuple[str, int]]] = {}
        self._next_dns_token = 2
        #: CallData (buffer type 8) exposed only during envoy_on_resolve_dns
        self.call_data: bytes | None = None
        #: the HTTP/gRPC callouts dispatched in this VM, in order: every pending one and at
        #: least the CALLOUT_HISTORY most recent (see record_callout)
        self.callout_history: list[HttpCallout | GrpcCall] = []
        #: Higress (ABI 0.2.100): clusters set up with proxy_redis_init -> (username, password,
        #: timeout ms); Redis calls by token, and every one in order
        self.redis_clusters: dict[str, tuple[str, str, int]] = {}
        self.redis_calls: dict[int, RedisCall] = {}
        self.redis_history: list[RedisCall] = []
        self._next_redis_token = 7
        self.on_redis_call: Callable[[RedisCall], None] | None = None
        #: the highest buffer type this ABI knows (Higress adds 9, the Redis reply)
        self.last_buffer_type = REDIS_CALL_RESPONSE if abi_version is AbiVersion.V0_2_100 else _LAST_BUFFER_TYPE
        self._history_trim_at = 2 * CALLOUT_HISTORY

    # -- log level and observer: what a runtime may drop without calling proxy_log ----------
    @property
    def log_level(self) -> LogLevel:
        """proxy_log below this level is dropped (Envoy's component log level)."""
        return self._log_level

    @log_level.setter
    def log_level(self, level: LogLevel) -> None:
        self._log_level = level
        self._log_filter_changed()

    @property
    def observer(self) -> HostcallObserver | None:
        """Sees every hostcall (trace, faults, strict mode, coverage), or None."""
        return self._observer

    @observer.setter
    def observer(self, observer: HostcallObserver | None) -> None:
        self._observer = observer
        self._log_filter_changed()

    def dropped_log_level(self) -> int:
        """proxy_log calls below this level may be answered OK without calling
        :meth:`proxy_log` (as Envoy drops them without copying the message): the log level
        while no observer is attached (an observer sees every hostcall), else 0 (none).
        A call with a message outside guest memory must still reach proxy_log (it fails)."""
        return int(self._log_level) if self._observer is None else 0

    def watch_log_filter(self, listener: Callable[[int], None]) -> None:
        """Tell ``listener`` :meth:`dropped_log_level` now and whenever the log level or the
        observer changes (the runtime's C crossings drop such logs themselves)."""
        self._log_filter_listener = listener
        listener(self.dropped_log_level())

    def _log_filter_changed(self) -> None:
        listener = self._log_filter_listener
        if listener is not None:
            listener(self.dropped_log_level())

    def record_callout(self, call: HttpCallout | GrpcCall) -> None:
        """Add a dispatched callout to :attr:`callout_history`, bounded as Plugin.streams is:
        a long run (Hypothesis, a benchmark, a test loop reading ``grpc_calls[-1]``) must
        not keep every call ever made, or each read walks all of them.  Finished calls but
        the CALLOUT_HISTORY most recent are dropped when the list has doubled (O(1) per
        call, also with many pending)."""
        history = self.callout_history
        history.append(call)
        if len(history) >= self._history_trim_at:
            keep = CALLOUT_HISTORY
            history[:] = [c for c in history[:-keep] if c.pending] + history[-keep:]
            self._history_trim_at = max(2 * CALLOUT_HISTORY, 2 * len(history))

    # -- context bookkeeping -----------------------------------------------------------
    def allocate_context_id(self) -> int:
        cid = self._next_context_id
        while cid in self.contexts or cid == 0:
            cid = (cid + 1) & MASK32
        self._next_context_id = (cid + 1) & MASK32
        return cid

    def new_root_context(self, plugin: PluginConfig) -> RootContext:
        root = RootContext(self, self.allocate_context_id(), plugin)
        self.contexts[root.id] = root
        return root

    def register(self, context: Context) -> None:
        self.contexts[context.id] = context

    def forget(self, context: Context) -> None:
        self.contexts.pop(context.id, None)

    @property
    def active(self) -> Context:
        """The context a hostcall acts on (current, unless the guest set an effective one)."""
        return self.effective if self.effective is not None else self.current

    # -- guest memory helpers -----------------------------------------------------------
    def attach_guest(self, guest: Guest, memory_access: MemoryAccess | None = None) -> None:
        """Bind the guest this host serves; ``memory_access`` replaces the Python copies in
        and out of its linear memory with the runtime's own (same contracts)."""
        self.guest = guest
        if memory_access is not None:
            self.read = memory_access.read
            self.give = memory_access.give
            self.write_u32_pair = memory_access.write_u32_pair
        else:
            self.read, self.give, self.write_u32_pair = self._read_py, self._give_py, self._write_u32_pair_py

    def _read_py(self, ptr: int, size: int) -> bytes:
        if size == 0:
            return b""
        mem = self.guest.memory()
        end = ptr + size
        if end > len(mem):
            raise GuestMemoryError
        return mem[ptr:end].tobytes()

    def read_view(self, ptr: int, size: int) -> memoryview:
        mem = self.guest.memory()
        if ptr + size > len(mem):
            raise GuestMemoryError
        return mem[ptr : ptr + size]

    def write_u32(self, ptr: int, value: int) -> None:
        mem = self.guest.memory()
        if ptr + 4 > len(mem):
            raise GuestMemoryError
        _pack_u32(mem, ptr, value & MASK32)

    def write_u64(self, ptr: int, value: int) -> None:
        mem = self.guest.memory()
        if ptr + 8 > len(mem):
            raise GuestMemoryError
        _U64.pack_into(mem, ptr, value & MASK64)

    def write(self, ptr: int, data: bytes) -> None:
        mem = self.guest.memory()
        if ptr + len(data) > len(mem):
            raise GuestMemoryError
        mem[ptr : ptr + len(data)] = data

    def _give_py(self, data: bytes | bytearray | memoryview) -> int:
        """Copy non-empty ``data`` into a new guest allocation; its address.  A failed
        allocation (0, or a range outside memory) is GuestMemoryError."""
        guest = self.guest
        size = len(data)
        ptr = guest.allocate(size)
        mem = guest.memory()  # after the allocator ran: it may have grown memory
        if ptr == 0 or ptr + size > len(mem):
            raise GuestMemoryError
        mem[ptr : ptr + size] = data
        return ptr

    def _write_u32_pair_py(self, ptr1: int, value1: int, ptr2: int, value2: int) -> None:
        """Two u32 out-params, in order: the first is written before the second is checked."""
        mem = self.guest.memory()
        last = len(mem) - 4  # highest address a u32 fits at
        if ptr1 > last:
            raise GuestMemoryError
        _pack_u32(mem, ptr1, value1 & MASK32)
        if ptr2 > last:
            raise GuestMemoryError
        _pack_u32(mem, ptr2, value2 & MASK32)

    def return_bytes(self, ret_ptr_ptr: int, ret_size_ptr: int, data: bytes | bytearray | memoryview) -> int:
        """Hand ``data`` to the guest: allocate, copy, write (ptr, size) (docs/abi-notes.md §3.2).

        A failed allocation (0 or out of bounds) and a bad result pointer are
        INVALID_MEMORY_ACCESS; ``ret_ptr_ptr`` is written before ``ret_size_ptr`` is checked.
        Empty data is (0, 0) without an allocation.
        """
        size = len(data)
        self.write_u32_pair(ret_ptr_ptr, self.give(data) if size else 0, ret_size_ptr, size)
        return _OK

    def return_pairs(self, ret_ptr_ptr: int, ret_size_ptr: int, pairs: Sequence[tuple[bytes, bytes]]) -> int:
        """Serialize a map into a guest allocation; no pairs is (0, 0), no allocation."""
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, codec.encode_pairs(pairs) if pairs else b"")

    def read_pairs(self, ptr: int, size: int) -> list[tuple[bytes, bytes]]:
        """Parse a guest map in place; malformed or oversized input is an empty map (Envoy)."""
        if size == 0:
            return []
        pairs = codec.decode_pairs(self.read_view(ptr, size))
        return pairs if pairs is not None else []

    # -- logging --------------------------------------------------------------------------
    def emit_log(self, level: LogLevel, message: bytes, source: str = "proxy_log") -> None:
        ctx = self.effective if self.effective is not None else self.current  # self.active
        root = ctx.root
        entry = LogEntry(level, message.decode("utf-8", "replace"), ctx.id, source, root.id if root else 0)
        self.logs.append(entry)
