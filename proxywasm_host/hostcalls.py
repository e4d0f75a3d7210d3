"""Every host function of the proxy-wasm ABI, implemented against an abstract guest.

:class:`AbiHost` holds the ABI state of one VM instance (contexts, logs,
clock, shared data, metrics, ...) and implements each ``proxy_*`` import and
each WASI import as a method taking and returning plain ints.  It never
imports wasmtime: the runtime layer hands it a :class:`Guest` (memory view,
allocator, exports) and binds the methods listed in :data:`HOSTCALLS` as
imports.  Statuses follow Envoy/cpp-host where the spec text differs
(``ABI_FACTS.md`` §4, §8).

A hostcall never lets a Python exception escape into wasmtime: bad guest
memory becomes ``INVALID_MEMORY_ACCESS`` (or WASI ``EFAULT``), anything else
is recorded in :attr:`AbiHost.host_errors` and answered ``INTERNAL_FAILURE``.
"""

from __future__ import annotations

import functools
import inspect
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from . import codec, properties
from .callouts import GrpcCall, HttpCallout, decode_pairs_text
from .context import Context, PluginConfig, RootContext
from .headers import HeaderMap
from .types import AbiVersion, BufferType, LogLevel, MapType, MetricType, Status
from .types import BAD_ARGUMENT as _BAD_ARGUMENT, NOT_FOUND as _NOT_FOUND, OK as _OK

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

ALL_ABIS = frozenset(AbiVersion)
ABI_0_1 = frozenset({AbiVersion.V0_1_0})
ABI_0_2 = frozenset({AbiVersion.V0_2_0, AbiVersion.V0_2_1})
ABI_0_2_1 = frozenset({AbiVersion.V0_2_1})

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")

# WASI errno values used here (ABI_FACTS §3.11)
ESUCCESS, EBADF, EFAULT, EINVAL, ENOENT, ENOSYS, ENOTDIR, ENOTSUP = 0, 8, 21, 28, 44, 52, 20, 58

RANDOM_GET_LIMIT = 65536

# Plain ints of what the hot hostcalls compare against: reading an IntEnum member
# (``Status.OK``) goes through the enum class (~0.1 µs each), a module global does not
# (the statuses themselves: types.OK etc.).
_LAST_MAP_TYPE = int(MapType.HTTP_CALL_RESPONSE_TRAILERS)
_LAST_BUFFER_TYPE = int(BufferType.FOREIGN_FUNCTION_ARGUMENTS)
_LOG_LEVELS = tuple(LogLevel)  # _LOG_LEVELS[n] is LogLevel(n) without the enum call
_CRITICAL = int(LogLevel.CRITICAL)
_pack_u32 = _U32.pack_into


class GuestMemoryError(Exception):
    """A guest pointer/size pair outside linear memory."""


class GuestTrapped(Exception):
    """The guest trapped during a re-entrant call made from inside a hostcall."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class Guest(Protocol):
    """What the runtime layer provides to the ABI state."""

    def memory(self) -> memoryview:
        """A writable byte view of the whole linear memory, valid until the guest runs again."""

    def allocate(self, size: int) -> int:
        """Call the guest allocator; 0 when it failed."""


@dataclass(frozen=True)
class HostcallSpec:
    module: str  # "env" or "wasi"
    name: str
    params: str  # one letter per param: u = i32 (masked unsigned), q = signed i64, Q = unsigned i64
    results: str  # "" or "i" (i32)
    abis: frozenset[AbiVersion]
    method: str
    wasi_errno: bool = False

    @property
    def wasm_params(self) -> tuple[str, ...]:
        return tuple("i64" if p in "qQ" else "i32" for p in self.params)

    @property
    def wasm_results(self) -> tuple[str, ...]:
        return ("i32",) if self.results else ()


#: every import this host can link, keyed by name (WASI names are linked under both modules)
HOSTCALLS: dict[str, HostcallSpec] = {}


def hostcall(
    name: str,
    params: str,
    results: str = "i",
    *,
    abis: frozenset[AbiVersion] = ALL_ABIS,
    module: str = "env",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a method as the implementation of one import, with its wasm signature."""
    wasi = module == "wasi"

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        failure = EFAULT if wasi else Status.INVALID_MEMORY_ACCESS
        param_names = tuple(inspect.signature(fn).parameters)[1:]

        def failed(self: "AbiHost", exc: Exception) -> int | None:
            """What the guest gets when ``fn`` raised ``exc``."""
            if isinstance(exc, GuestMemoryError):
                return int(failure) if results else None
            if isinstance(exc, GuestTrapped):
                raise exc  # let wasmtime unwind the guest: the allocator itself trapped
            # a bug of ours must not crash the guest's host
            self.host_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return int(Status.INTERNAL_FAILURE) if results else None

        def run(self: "AbiHost", args: tuple[int, ...]) -> int | None:
            try:
                return fn(self, *args)
            except Exception as exc:
                return failed(self, exc)

        @functools.wraps(fn)
        def guarded(self: "AbiHost", *args: int) -> int | None:
            if self.observer is not None:
                return self.observer.around(self, name, param_names, args, lambda: run(self, args))
            try:  # run()'s body inlined: this is the hot path of every hostcall
                return fn(self, *args)
            except Exception as exc:
                return failed(self, exc)

        # The same guard with the arguments spelled out, for the arities of proxy_log and the
        # header-map and buffer hostcalls (the ones every request makes): passing *args
        # through costs ~0.1 µs per call.
        @functools.wraps(fn)
        def guarded3(self: "AbiHost", a: int, b: int, c: int) -> int | None:
            if self.observer is not None:
                return guarded(self, a, b, c)
            try:
                return fn(self, a, b, c)
            except Exception as exc:
                return failed(self, exc)

        @functools.wraps(fn)
        def guarded5(self: "AbiHost", a: int, b: int, c: int, d: int, e: int) -> int | None:
            if self.observer is not None:
                return guarded(self, a, b, c, d, e)
            try:
                return fn(self, a, b, c, d, e)
            except Exception as exc:
                return failed(self, exc)

        HOSTCALLS[name] = HostcallSpec(module, name, params, results, abis, fn.__name__, wasi)
        return {3: guarded3, 5: guarded5}.get(len(params), guarded)

    return decorate


@dataclass
class HostcallRecord:
    """One hostcall as the guest made it (trace mode)."""

    context_id: int
    name: str
    args: dict[str, Any]
    result: int | None
    injected: bool = False

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" if isinstance(v, bytes) else f"{k}={v}" for k, v in self.args.items())
        result = "" if self.result is None else f" -> {_status_name(self.name, self.result)}"
        return f"ctx={self.context_id} {self.name}({args}){result}{' [injected]' if self.injected else ''}"


def _status_name(name: str, value: int) -> str:
    spec = HOSTCALLS.get(name)
    if spec is not None and not spec.wasi_errno:
        try:
            return Status(value).name
        except ValueError:
            return str(value)
    return f"errno {value}"


@dataclass
class Fault:
    status: int
    times: int | None  # None = every call


class HostcallObserver:
    """Tracing, fault injection, strict mode and coverage counting, all off by default."""

    def __init__(self) -> None:
        self.trace: list[HostcallRecord] | None = None
        self.faults: dict[str, Fault] = {}
        self.allowed: frozenset[str] | None = None
        self.violations: list[str] = []
        self.coverage: dict[str, int] | None = None

    def _decode(self, host: "AbiHost", names: tuple[str, ...], args: tuple[int, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        i = 0
        while i < len(args):
            pname = names[i]
            if pname.endswith("_ptr") and i + 1 < len(args) and names[i + 1].endswith(("_len", "_size")) and not pname.startswith("ret"):
                base = pname[: -len("_ptr")]
                try:
                    data = host.read(args[i], min(args[i + 1], 256))
                    out[base] = data + (b"..." if args[i + 1] > 256 else b"")
                except GuestMemoryError:
                    out[base] = f"<bad memory {args[i]:#x}+{args[i + 1]}>"
                i += 2
                continue
            out[pname] = args[i]
            i += 1
        return out

    def around(self, host: "AbiHost", name: str, names: tuple[str, ...], args: tuple[int, ...],
               call: Callable[[], int | None]) -> int | None:
        if self.coverage is not None:
            self.coverage[name] = self.coverage.get(name, 0) + 1
        if self.allowed is not None and name not in self.allowed:
            self.violations.append(f"unexpected hostcall {name} from context {host.active.id}")
        decoded = self._decode(host, names, args) if self.trace is not None else {}
        fault = self.faults.get(name)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[name]
            result: int | None = fault.status
            injected = True
        else:
            result = call()
            injected = False
        if self.trace is not None:
            self.trace.append(HostcallRecord(host.active.id, name, decoded, None if result is None else int(result), injected))
        return result


@dataclass
class LogEntry:
    """One line the filter logged (``proxy_log`` or stdout/stderr through ``fd_write``)."""

    level: LogLevel
    message: str
    context_id: int
    source: str = "proxy_log"  # or "stdout" / "stderr" / "host"
    root_id: int = 0

    def __str__(self) -> str:
        return f"[{self.level.label}] {self.message}"


@dataclass
class Clock:
    """Virtual time shared by ticks, proxy_get_current_time_nanoseconds and WASI clocks."""

    wall_ns: int = 1_700_000_000_000_000_000
    #: like a machine's uptime; never 0 (Go's runtime aborts when its monotonic clock reads 0)
    monotonic_ns: int = 1_000_000_000_000

    def advance_ns(self, delta: int) -> None:
        if delta < 0:
            raise ValueError("time only moves forward")
        self.wall_ns += delta
        self.monotonic_ns += delta


@dataclass
class Metric:
    name: str
    type: MetricType
    value: int = 0
    samples: list[int] = field(default_factory=list)


class SharedState:
    """Shared data and queues, scoped by vm_id, shared by every VM of one Host."""

    def __init__(self) -> None:
        self.data: dict[str, dict[bytes, tuple[bytes, int]]] = {}
        self.next_cas = 1
        self.queues: dict[int, "SharedQueue"] = {}
        self.queue_tokens: dict[tuple[str, bytes], int] = {}
        self.next_queue_token = 1


@dataclass
class SharedQueue:
    vm_id: str
    name: bytes
    owner: Any  # (AbiHost, root context id) of the latest registrant
    items: list[bytes] = field(default_factory=list)


class AbiHost:
    """ABI state of one VM instance plus the implementation of every hostcall."""

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
        self.log_level = log_level
        self.foreign_functions = dict(foreign_functions or {})
        self.guest: Guest | None = None
        #: tracing / fault injection / strict mode; None keeps the hot path untouched
        self.observer: HostcallObserver | None = None
        self.logs: list[LogEntry] = []
        self.host_errors: list[str] = []
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
        self.random = random.Random(random_seed)
        #: cluster name -> optional URL of a real upstream; None accepts every name
        self.clusters: dict[str, str | None] | None = None
        self.http_callouts: dict[int, HttpCallout] = {}
        self._next_http_token = 4
        self.grpc_calls: dict[int, GrpcCall] = {}
        self._next_grpc_call = 5
        self._next_grpc_stream = 6
        self.on_http_callout: Callable[[HttpCallout], None] | None = None
        #: name -> [(address, ttl seconds)] for envoy_resolve_dns; unknown names fail (size 0)
        self.dns: dict[str, list[tuple[str, int]]] = {}
        self._next_dns_token = 2
        #: CallData (buffer type 8) exposed only during envoy_on_resolve_dns
        self.call_data: bytes | None = None
        #: every HTTP/gRPC callout ever dispatched in this VM, in order
        self.callout_history: list[HttpCallout | GrpcCall] = []

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
    def _mem(self) -> memoryview:
        assert self.guest is not None, "AbiHost used before the runtime attached a guest"
        return self.guest.memory()

    def use_memory_access(
        self,
        read: Callable[[int, int], bytes],
        give: Callable[[bytes | bytearray | memoryview], int],
        write_u32_pair: Callable[[int, int, int, int], None],
    ) -> None:
        """Let the runtime layer's C copies in and out of linear memory stand in for
        :meth:`read`, :meth:`give` and :meth:`write_u32_pair` on this host, once the guest's
        memory is known (same contracts)."""
        self.read = read  # type: ignore[method-assign,assignment]
        self.give = give  # type: ignore[method-assign,assignment]
        self.write_u32_pair = write_u32_pair  # type: ignore[method-assign,assignment]

    def read(self, ptr: int, size: int) -> bytes:
        if size == 0:
            return b""
        mem = self.guest.memory()  # type: ignore[union-attr]
        end = ptr + size
        if end > len(mem):
            raise GuestMemoryError
        return mem[ptr:end].tobytes()

    def read_view(self, ptr: int, size: int) -> memoryview:
        mem = self.guest.memory()  # type: ignore[union-attr]
        if ptr + size > len(mem):
            raise GuestMemoryError
        return mem[ptr : ptr + size]

    def write_u32(self, ptr: int, value: int) -> None:
        mem = self.guest.memory()  # type: ignore[union-attr]
        if ptr + 4 > len(mem):
            raise GuestMemoryError
        _pack_u32(mem, ptr, value & MASK32)

    def write_u64(self, ptr: int, value: int) -> None:
        mem = self.guest.memory()  # type: ignore[union-attr]
        if ptr + 8 > len(mem):
            raise GuestMemoryError
        _U64.pack_into(mem, ptr, value & MASK64)

    def write(self, ptr: int, data: bytes) -> None:
        mem = self.guest.memory()  # type: ignore[union-attr]
        if ptr + len(data) > len(mem):
            raise GuestMemoryError
        mem[ptr : ptr + len(data)] = data

    def give(self, data: bytes | bytearray | memoryview) -> int:
        """Copy non-empty ``data`` into a new guest allocation; its address.  A failed
        allocation (0, or a range outside memory) is GuestMemoryError."""
        guest = self.guest
        assert guest is not None, "AbiHost used before the runtime attached a guest"
        size = len(data)
        ptr = guest.allocate(size)
        mem = guest.memory()  # after the allocator ran: it may have grown memory
        if ptr == 0 or ptr + size > len(mem):
            raise GuestMemoryError
        mem[ptr : ptr + size] = data
        return ptr

    def write_u32_pair(self, ptr1: int, value1: int, ptr2: int, value2: int) -> None:
        """Two u32 out-params, in order: the first is written before the second is checked."""
        mem = self.guest.memory()  # type: ignore[union-attr]
        last = len(mem) - 4  # highest address a u32 fits at
        if ptr1 > last:
            raise GuestMemoryError
        _pack_u32(mem, ptr1, value1 & MASK32)
        if ptr2 > last:
            raise GuestMemoryError
        _pack_u32(mem, ptr2, value2 & MASK32)

    def return_bytes(self, ret_ptr_ptr: int, ret_size_ptr: int, data: bytes | bytearray | memoryview) -> int:
        """Hand ``data`` to the guest: allocate, copy, write (ptr, size) (ABI_FACTS §2.1).

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

    @hostcall("proxy_log", "uuu")
    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        if level > _CRITICAL:
            return _BAD_ARGUMENT
        if level < self.log_level:  # filtered out: a bad pointer still fails, nothing is copied
            if size and ptr + size > len(self.guest.memory()):  # type: ignore[union-attr]
                raise GuestMemoryError  # what read() checks
            return _OK
        self.emit_log(_LOG_LEVELS[level], self.read(ptr, size))
        return _OK

    @hostcall("proxy_get_log_level", "u", abis=ABI_0_2_1)
    def proxy_get_log_level(self, ret_ptr: int) -> int:
        self.write_u32(ret_ptr, int(self.log_level))
        return _OK

    # -- time -----------------------------------------------------------------------------
    @hostcall("proxy_get_current_time_nanoseconds", "u")
    def proxy_get_current_time_nanoseconds(self, ret_ptr: int) -> int:
        self.write_u64(ret_ptr, self.clock.wall_ns)
        return _OK

    @hostcall("proxy_set_tick_period_milliseconds", "u")
    def proxy_set_tick_period_milliseconds(self, period_ms: int) -> int:
        root = self.active.root
        if root is not None:
            root.tick_period_ms = period_ms
            root.next_tick_ns = self.clock.monotonic_ns + period_ms * 1_000_000 if period_ms else None
        return _OK

    # -- configuration / buffers ----------------------------------------------------------
    @hostcall("proxy_get_configuration", "uu", abis=ABI_0_1)
    def proxy_get_configuration(self, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        root = self.plugin_in_flight
        data = root.plugin.configuration if root is not None else self.vm_configuration
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, data)

    @hostcall("proxy_get_buffer_bytes", "uuuuu")
    def proxy_get_buffer_bytes(self, buffer_type: int, start: int, max_size: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        if buffer_type > _LAST_BUFFER_TYPE:
            return _BAD_ARGUMENT
        status, buf = self.active.get_buffer(buffer_type)
        if status != _OK or buf is None:
            return status
        size = len(buf)
        length = 0 if start > size else min(max_size, size - start)
        if length == size:  # the whole buffer (the usual read): no view to slice
            return self.return_bytes(ret_ptr_ptr, ret_size_ptr, buf)
        # an empty range is (0, 0) without an allocation, like an empty buffer
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, memoryview(buf)[start : start + length])

    @hostcall("proxy_get_buffer_status", "uuu")
    def proxy_get_buffer_status(self, buffer_type: int, ret_size_ptr: int, ret_flags_ptr: int) -> int:
        if buffer_type > _LAST_BUFFER_TYPE:
            return _BAD_ARGUMENT
        status, buf = self.active.get_buffer(buffer_type)
        if status != _OK or buf is None:
            return status
        self.write_u32_pair(ret_size_ptr, len(buf), ret_flags_ptr, 0)
        return _OK

    @hostcall("proxy_set_buffer_bytes", "uuuuu")
    def proxy_set_buffer_bytes(self, buffer_type: int, start: int, size: int, data_ptr: int, data_len: int) -> int:
        if buffer_type > _LAST_BUFFER_TYPE:
            return _BAD_ARGUMENT
        data = self.read(data_ptr, data_len)
        return self.active.set_buffer(buffer_type, start, size, data)

    # -- header maps ----------------------------------------------------------------------
    # The hot hostcalls of every filter.  They spell ``self.active`` out (a property call
    # per hostcall adds up) and compare against the plain-int constants above.
    @hostcall("proxy_get_header_map_pairs", "uuu")
    def proxy_get_header_map_pairs(self, map_type: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        ctx = self.effective if self.effective is not None else self.current
        status, hmap = ctx.get_map(map_type, for_write=False)
        pairs = hmap.frozen_pairs() if (status == _OK and hmap is not None) else ()
        return self.return_pairs(ret_ptr_ptr, ret_size_ptr, pairs)

    @hostcall("proxy_set_header_map_pairs", "uuu")
    def proxy_set_header_map_pairs(self, map_type: int, ptr: int, size: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        pairs = self.read_pairs(ptr, size)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.set_pairs(pairs)
        return _OK

    @hostcall("proxy_get_header_map_size", "uu")
    def proxy_get_header_map_size(self, map_type: int, ret_size_ptr: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        self.write_u32(ret_size_ptr, hmap.byte_size())
        return _OK

    @hostcall("proxy_get_header_map_value", "uuuuu")
    def proxy_get_header_map_value(self, map_type: int, key_ptr: int, key_len: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        ctx = self.effective if self.effective is not None else self.current
        status, hmap = ctx.get_map(map_type, for_write=False)
        if status != _OK or hmap is None:
            if status == _NOT_FOUND:  # map gone for good (e.g. on_log)
                return self.return_bytes(ret_ptr_ptr, ret_size_ptr, b"") if self._legacy_abi() else _NOT_FOUND
            return status
        value = hmap.get(key)
        if value is None:
            if self._legacy_abi():  # ABI 0.1.0: a missing key is an empty value
                return self.return_bytes(ret_ptr_ptr, ret_size_ptr, b"")
            return _NOT_FOUND
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, value)

    def _legacy_abi(self) -> bool:
        return self.abi_version == AbiVersion.V0_1_0

    def _writable_map(self, map_type: int) -> HeaderMap | None:
        """The header map a mutating hostcall works on, or None (Envoy: BAD_ARGUMENT)."""
        ctx = self.effective if self.effective is not None else self.current
        status, hmap = ctx.get_map(map_type, for_write=True)
        return hmap if status == _OK else None

    # add/replace/remove: same checks in the same order (value, map type, key, map)
    @hostcall("proxy_add_header_map_value", "uuuuu")
    def proxy_add_header_map_value(self, map_type: int, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
        value = self.read(val_ptr, val_len)
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.add(key, value)
        return _OK

    @hostcall("proxy_replace_header_map_value", "uuuuu")
    def proxy_replace_header_map_value(self, map_type: int, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
        value = self.read(val_ptr, val_len)
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.replace(key, value)
        return _OK

    @hostcall("proxy_remove_header_map_value", "uuu")
    def proxy_remove_header_map_value(self, map_type: int, key_ptr: int, key_len: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.remove(key)
        return _OK

    # -- stream control -------------------------------------------------------------------
    @hostcall("proxy_continue_stream", "u", abis=ABI_0_2)
    def proxy_continue_stream(self, stream_type: int) -> int:
        if stream_type > 3:
            return _BAD_ARGUMENT
        return self.active.continue_stream(stream_type)

    @hostcall("proxy_close_stream", "u", abis=ABI_0_2)
    def proxy_close_stream(self, stream_type: int) -> int:
        if stream_type > 3:
            return _BAD_ARGUMENT
        return self.active.close_stream(stream_type)

    @hostcall("proxy_continue_request", "", abis=ABI_0_1)
    def proxy_continue_request(self) -> int:
        return self.active.continue_stream(0)

    @hostcall("proxy_continue_response", "", abis=ABI_0_1)
    def proxy_continue_response(self) -> int:
        return self.active.continue_stream(1)

    @hostcall("proxy_clear_route_cache", "", abis=ABI_0_1)
    def proxy_clear_route_cache(self) -> int:
        return self.active.clear_route_cache()

    @hostcall("proxy_send_local_response", "uuuuuuuu")
    def proxy_send_local_response(
        self,
        status_code: int,
        details_ptr: int,
        details_len: int,
        body_ptr: int,
        body_len: int,
        headers_ptr: int,
        headers_len: int,
        grpc_status: int,
    ) -> int:
        details = self.read(details_ptr, details_len)
        body = self.read(body_ptr, body_len)
        headers = self.read_pairs(headers_ptr, headers_len)
        return self.active.send_local_response(status_code, details, body, headers, grpc_status)

    # -- context --------------------------------------------------------------------------
    @hostcall("proxy_set_effective_context", "u")
    def proxy_set_effective_context(self, context_id: int) -> int:
        ctx = self.contexts.get(context_id)
        if ctx is None:
            return _BAD_ARGUMENT
        self.effective = None if context_id == 0 else ctx
        return _OK

    @hostcall("proxy_done", "")
    def proxy_done(self) -> int:
        root = self.active.root
        if root is None or not root.pending_done:
            return _NOT_FOUND
        root.pending_done = False
        self.deferred.append(lambda: self.on_root_done(root))
        return _OK

    def on_root_done(self, root: RootContext) -> None:
        """Replaced by the Vm: deliver proxy_on_delete after proxy_done."""

    def deliver_http(self, callout: HttpCallout, *args: Any) -> None:
        """Replaced by the Vm: run proxy_on_http_call_response."""

    def deliver_grpc(self, call: GrpcCall, *args: Any) -> None:
        """Replaced by the Vm: run the proxy_on_grpc_* callbacks."""

    @hostcall("proxy_get_status", "uuu")
    def proxy_get_status(self, ret_code_ptr: int, ret_msg_ptr_ptr: int, ret_msg_size_ptr: int) -> int:
        root = self.active.root
        code, message = (root.status_code, root.status_message) if root is not None else (0, b"")
        self.write_u32(ret_code_ptr, code)
        return self.return_bytes(ret_msg_ptr_ptr, ret_msg_size_ptr, message)

    # -- properties -----------------------------------------------------------------------
    @hostcall("proxy_get_property", "uuuu")
    def proxy_get_property(self, path_ptr: int, path_len: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        raw = self.read(path_ptr, path_len)
        status, value = self.resolve_property(raw)
        if status != _OK:
            return status
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, value)

    def resolve_property(self, raw_path: bytes) -> tuple[Status, bytes]:
        return properties.lookup(self, self.active, raw_path)

    @hostcall("proxy_set_property", "uuuu")
    def proxy_set_property(self, path_ptr: int, path_len: int, val_ptr: int, val_len: int) -> int:
        path = self.read(path_ptr, path_len)
        value = self.read(val_ptr, val_len)
        return self.active.set_filter_state(b"wasm." + path, value)

    # -- shared data ----------------------------------------------------------------------
    @hostcall("proxy_get_shared_data", "uuuuu")
    def proxy_get_shared_data(self, key_ptr: int, key_len: int, ret_ptr_ptr: int, ret_size_ptr: int, ret_cas_ptr: int) -> int:
        key = self.read(key_ptr, key_len)
        entry = self.shared.data.get(self.vm_id, {}).get(key)
        if entry is None:
            return _NOT_FOUND
        value, cas = entry
        status = self.return_bytes(ret_ptr_ptr, ret_size_ptr, value)
        self.write_u32(ret_cas_ptr, cas)
        return status

    @hostcall("proxy_set_shared_data", "uuuuu")
    def proxy_set_shared_data(self, key_ptr: int, key_len: int, val_ptr: int, val_len: int, cas: int) -> int:
        key = self.read(key_ptr, key_len)
        value = self.read(val_ptr, val_len)
        space = self.shared.data.setdefault(self.vm_id, {})
        entry = space.get(key)
        if entry is not None and cas != 0 and cas != entry[1]:
            return Status.CAS_MISMATCH
        new_cas = self.shared.next_cas
        self.shared.next_cas = new_cas + 1 if new_cas + 1 <= MASK32 else 1
        space[key] = (value, new_cas)
        return _OK

    # -- shared queues --------------------------------------------------------------------
    @hostcall("proxy_register_shared_queue", "uuu")
    def proxy_register_shared_queue(self, name_ptr: int, name_len: int, ret_id_ptr: int) -> int:
        name = self.read(name_ptr, name_len)
        key = (self.vm_id, name)
        token = self.shared.queue_tokens.get(key)
        root = self.active.root
        owner = (self, root.id if root is not None else 0)
        if token is None:
            token = self.shared.next_queue_token
            self.shared.next_queue_token += 1
            self.shared.queue_tokens[key] = token
            self.shared.queues[token] = SharedQueue(self.vm_id, name, owner)
        else:
            self.shared.queues[token].owner = owner
        self.write_u32(ret_id_ptr, token)
        return _OK

    @hostcall("proxy_resolve_shared_queue", "uuuuu")
    def proxy_resolve_shared_queue(self, vm_id_ptr: int, vm_id_len: int, name_ptr: int, name_len: int, ret_id_ptr: int) -> int:
        vm_id = self.read(vm_id_ptr, vm_id_len).decode("utf-8", "surrogateescape") or self.vm_id
        name = self.read(name_ptr, name_len)
        token = self.shared.queue_tokens.get((vm_id, name))
        if token is None:
            return _NOT_FOUND
        self.write_u32(ret_id_ptr, token)
        return _OK

    @hostcall("proxy_enqueue_shared_queue", "uuu")
    def proxy_enqueue_shared_queue(self, token: int, val_ptr: int, val_len: int) -> int:
        value = self.read(val_ptr, val_len)
        queue = self.shared.queues.get(token)
        if queue is None:
            return _NOT_FOUND
        queue.items.append(value)
        owner_host, root_id = queue.owner
        owner_host.posted_queue_ready.append((root_id, token))
        return _OK

    @hostcall("proxy_dequeue_shared_queue", "uuu")
    def proxy_dequeue_shared_queue(self, token: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        queue = self.shared.queues.get(token)
        if queue is None:
            return _NOT_FOUND
        if not queue.items:
            return Status.EMPTY
        status = self.return_bytes(ret_ptr_ptr, ret_size_ptr, queue.items[0])
        queue.items.pop(0)
        return status

    # -- metrics --------------------------------------------------------------------------
    @hostcall("proxy_define_metric", "uuuu")
    def proxy_define_metric(self, metric_type: int, name_ptr: int, name_len: int, ret_id_ptr: int) -> int:
        if metric_type > MetricType.HISTOGRAM:
            return _BAD_ARGUMENT
        name = self.read(name_ptr, name_len).decode("utf-8", "surrogateescape")
        mtype = MetricType(metric_type)
        metric_id = self._metric_ids[mtype]
        self._metric_ids[mtype] = metric_id + 4
        existing = self.metrics_by_name.get((mtype, name))
        # Defining a name again gives a new id bound to the same stat (ABI_FACTS §4.8).
        self.metrics[metric_id] = self.metrics[existing] if existing is not None else Metric(name, mtype)
        self.metrics_by_name.setdefault((mtype, name), metric_id)
        self.write_u32(ret_id_ptr, metric_id)
        return _OK

    @hostcall("proxy_increment_metric", "uq")
    def proxy_increment_metric(self, metric_id: int, delta: int) -> int:
        metric = self.metrics.get(metric_id)
        if metric is None:
            return _NOT_FOUND
        if metric.type == MetricType.COUNTER:
            if delta <= 0:
                return _BAD_ARGUMENT
            metric.value += delta
        elif metric.type == MetricType.GAUGE:
            metric.value += delta
        else:
            return _BAD_ARGUMENT
        return _OK

    @hostcall("proxy_record_metric", "uQ")
    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        metric = self.metrics.get(metric_id)
        if metric is None:
            return _NOT_FOUND
        if metric.type == MetricType.COUNTER:
            metric.value += value  # Envoy adds (spec says "sets")
        elif metric.type == MetricType.GAUGE:
            metric.value = value
        else:
            metric.samples.append(value)
        return _OK

    @hostcall("proxy_get_metric", "uu")
    def proxy_get_metric(self, metric_id: int, ret_ptr: int) -> int:
        metric = self.metrics.get(metric_id)
        if metric is None:
            return _NOT_FOUND
        if metric.type == MetricType.HISTOGRAM:
            return _BAD_ARGUMENT
        self.write_u64(ret_ptr, metric.value)
        return _OK

    # -- callouts (ABI_FACTS §4.7) ----------------------------------------------------------
    def cluster_known(self, name: str) -> bool:
        return self.clusters is None or name in self.clusters

    @hostcall("proxy_http_call", "uuuuuuuuuu")
    def proxy_http_call(
        self,
        upstream_ptr: int,
        upstream_len: int,
        headers_ptr: int,
        headers_len: int,
        body_ptr: int,
        body_len: int,
        trailers_ptr: int,
        trailers_len: int,
        timeout_ms: int,
        ret_token_ptr: int,
    ) -> int:
        self.write_u32(ret_token_ptr, 0)
        cluster = self.read(upstream_ptr, upstream_len).decode("utf-8", "surrogateescape")
        headers = decode_pairs_text(self.read_pairs(headers_ptr, headers_len))
        body = self.read(body_ptr, body_len)
        trailers = decode_pairs_text(self.read_pairs(trailers_ptr, trailers_len))
        if timeout_ms & 0x80000000:  # Envoy reads it as a signed int: negative is refused
            return _BAD_ARGUMENT
        if not self.cluster_known(cluster):
            return _BAD_ARGUMENT
        names = {k.lower() for k, _ in headers}
        if not {":path", ":method", ":authority"} <= names:
            return _BAD_ARGUMENT
        root = self.active.root
        if root is None:
            return _BAD_ARGUMENT
        headers = [(k.lower(), v) for k, v in headers]
        if body:
            headers = [(k, v) for k, v in headers if k != "content-length"] + [("content-length", str(len(body)))]
        token = self._next_http_token
        self._next_http_token = (token + 4) & MASK32 or 4
        callout = HttpCallout(
            token, cluster, headers, body, trailers, timeout_ms, root.id, self.active.id, self.clock.monotonic_ns,
            _deliver=self.deliver_http,
        )
        self.http_callouts[token] = callout
        self.callout_history.append(callout)
        self.write_u32(ret_token_ptr, token)
        if self.on_http_callout is not None:
            self.deferred.append(lambda: self.on_http_callout(callout))  # type: ignore[misc]
        return _OK

    def _grpc_open(self, streaming: bool, up: tuple[int, int], svc: tuple[int, int], method: tuple[int, int],
                   md: tuple[int, int], message: bytes | None, timeout_ms: int, ret_token_ptr: int) -> int:
        cluster = self.read(*up).decode("utf-8", "surrogateescape")
        service = self.read(*svc).decode("utf-8", "surrogateescape")
        meth = self.read(*method).decode("utf-8", "surrogateescape")
        metadata = decode_pairs_text(self.read_pairs(*md))
        if not self.cluster_known(cluster):
            return Status.PARSE_FAILURE
        root = self.active.root
        if root is None:
            return _BAD_ARGUMENT
        if streaming:
            token, self._next_grpc_stream = self._next_grpc_stream, self._next_grpc_stream + 4
        else:
            token, self._next_grpc_call = self._next_grpc_call, self._next_grpc_call + 4
        call = GrpcCall(token, streaming, cluster, service, meth, metadata, [message] if message is not None else [],
                        timeout_ms, root.id, self.active.id, _deliver=self.deliver_grpc)
        self.grpc_calls[token] = call
        self.callout_history.append(call)
        self.write_u32(ret_token_ptr, token)  # written only on success (Envoy)
        return _OK

    @hostcall("proxy_grpc_call", "uuuuuuuuuuuu")
    def proxy_grpc_call(self, up_ptr: int, up_len: int, svc_ptr: int, svc_len: int, m_ptr: int, m_len: int, md_ptr: int, md_len: int, msg_ptr: int, msg_len: int, timeout_ms: int, ret_token_ptr: int) -> int:
        message = self.read(msg_ptr, msg_len)
        return self._grpc_open(False, (up_ptr, up_len), (svc_ptr, svc_len), (m_ptr, m_len), (md_ptr, md_len),
                               message, timeout_ms, ret_token_ptr)

    @hostcall("proxy_grpc_stream", "uuuuuuuuu")
    def proxy_grpc_stream(self, up_ptr: int, up_len: int, svc_ptr: int, svc_len: int, m_ptr: int, m_len: int, md_ptr: int, md_len: int, ret_token_ptr: int) -> int:
        return self._grpc_open(True, (up_ptr, up_len), (svc_ptr, svc_len), (m_ptr, m_len), (md_ptr, md_len),
                               None, 0, ret_token_ptr)

    @hostcall("proxy_grpc_send", "uuuu")
    def proxy_grpc_send(self, token: int, msg_ptr: int, msg_len: int, end_stream: int) -> int:
        message = self.read(msg_ptr, msg_len)
        if token % 4 != 2:
            return _BAD_ARGUMENT
        call = self.grpc_calls.get(token)
        if call is None or call.state in ("cancelled", "closed"):
            return _NOT_FOUND
        call.sent_messages.append(message)
        if end_stream:
            call.local_end_stream = True
        return _OK

    @hostcall("proxy_grpc_cancel", "u")
    def proxy_grpc_cancel(self, token: int) -> int:
        if token % 4 not in (1, 2):
            return _BAD_ARGUMENT
        call = self.grpc_calls.get(token)
        if call is None or call.state in ("cancelled", "closed"):
            return _NOT_FOUND
        call.state = "cancelled"
        return _OK

    @hostcall("proxy_grpc_close", "u")
    def proxy_grpc_close(self, token: int) -> int:
        if token % 4 not in (1, 2):
            return _BAD_ARGUMENT
        call = self.grpc_calls.get(token)
        if call is None or call.state in ("cancelled", "closed"):
            return _NOT_FOUND
        if call.streaming:
            call.local_end_stream = True  # half-close: messages may still arrive
        else:
            call.state = "cancelled"
        return _OK

    # -- foreign functions ----------------------------------------------------------------
    @hostcall("proxy_call_foreign_function", "uuuuuu")
    def proxy_call_foreign_function(self, name_ptr: int, name_len: int, args_ptr: int, args_len: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        name = self.read(name_ptr, name_len).decode("utf-8", "surrogateescape")
        args = self.read(args_ptr, args_len)
        fn = self.foreign_functions.get(name)
        if fn is None:
            builtin = ENVOY_FOREIGN_FUNCTIONS.get(name)
            if builtin is None:
                return _NOT_FOUND
            status, result = builtin(args)
            if ret_ptr_ptr:  # Envoy writes the results pointers even on error
                self.return_bytes(ret_ptr_ptr, ret_size_ptr, result)
            return status
        result = fn(args) or b""
        if ret_ptr_ptr:
            return self.return_bytes(ret_ptr_ptr, ret_size_ptr, result)
        return _OK

    # -- Envoy / emscripten extras ---------------------------------------------------------
    @hostcall("envoy_resolve_dns", "uuu")
    def envoy_resolve_dns(self, addr_ptr: int, addr_len: int, ret_token_ptr: int) -> int:
        """Envoy's DNS extension: answered after the guest call returns, from the test's
        ``dns`` table, with envoy_on_resolve_dns(root, token, size) (ABI_FACTS §4.8, §6.4)."""
        name = self.read(addr_ptr, addr_len).decode("utf-8", "surrogateescape")
        root = self.active.root
        if root is None:
            return _BAD_ARGUMENT
        token = self._next_dns_token
        self._next_dns_token = token + 1 if token + 1 <= MASK32 else 1
        self.write_u32(ret_token_ptr, token)
        answers = self.dns.get(name, [])
        self.deferred.append(lambda: self.deliver_dns(root, token, answers))
        return _OK

    def deliver_dns(self, root: RootContext, token: int, answers: list[tuple[str, int]]) -> None:
        """Replaced by the Vm: run envoy_on_resolve_dns."""

    @hostcall("pthread_equal", "uu")
    def pthread_equal(self, a: int, b: int) -> int:
        return 1 if a == b else 0

    @hostcall("emscripten_notify_memory_growth", "u", "")
    def emscripten_notify_memory_growth(self, index: int) -> None:
        return None

    # -- WASI preview1 (ABI_FACTS §8) -----------------------------------------------------
    def _iovecs(self, iovs: int, iovs_len: int) -> bytes:
        mem = self._mem()
        if iovs + 8 * iovs_len > len(mem):
            raise GuestMemoryError  # checked up front: a huge count must not loop for ages
        chunks = []
        for i in range(iovs_len):
            ptr, size = struct.unpack_from("<II", mem, iovs + 8 * i)
            chunks.append(self.read(ptr, size))
        return b"".join(chunks)

    def _write_fd(self, fd: int, data: bytes) -> None:
        text = data[:-1] if data.endswith(b"\n") else data
        if text:
            level = LogLevel.INFO if fd == 1 else LogLevel.ERROR
            self.emit_log(level, text, "stdout" if fd == 1 else "stderr")

    @hostcall("fd_write", "uuuu", module="wasi")
    def fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        data = self._iovecs(iovs, iovs_len)
        self._write_fd(fd, data)
        self.write_u32(nwritten_ptr, len(data))
        return ESUCCESS

    @hostcall("fd_pwrite", "uuuQu", module="wasi")
    def fd_pwrite(self, fd: int, iovs: int, iovs_len: int, offset: int, nwritten_ptr: int) -> int:
        return self.fd_write(fd, iovs, iovs_len, nwritten_ptr)

    @hostcall("fd_read", "uuuu", module="wasi")
    def fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        return ENOSYS

    @hostcall("fd_seek", "uquu", module="wasi")
    def fd_seek(self, fd: int, offset: int, whence: int, ret_ptr: int) -> int:
        self.host_notes("wasi_unstable fd_seek")
        return ESUCCESS

    @hostcall("fd_close", "u", module="wasi")
    def fd_close(self, fd: int) -> int:
        self.host_notes("wasi_unstable fd_close")
        return ESUCCESS

    def host_notes(self, text: str) -> None:
        """cpp-host logs these calls at error level on the host's own logger."""
        root = self.active.root
        self.logs.append(LogEntry(LogLevel.ERROR, text, self.active.id, "host", root.id if root else 0))

    @hostcall("fd_fdstat_get", "uu", module="wasi")
    def fd_fdstat_get(self, fd: int, buf: int) -> int:
        if fd not in (1, 2):
            return EBADF
        self.write(buf, struct.pack("<QQQ", 0, 64, 0))
        return ESUCCESS

    @hostcall("fd_fdstat_set_flags", "uu", module="wasi")
    def fd_fdstat_set_flags(self, fd: int, flags: int) -> int:
        return ENOSYS

    @hostcall("fd_fdstat_set_rights", "uQQ", module="wasi")
    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_prestat_get", "uu", module="wasi")
    def fd_prestat_get(self, fd: int, buf: int) -> int:
        return EBADF

    @hostcall("fd_prestat_dir_name", "uuu", module="wasi")
    def fd_prestat_dir_name(self, fd: int, path: int, path_len: int) -> int:
        return ENOSYS

    @hostcall("fd_filestat_get", "uu", module="wasi")
    def fd_filestat_get(self, fd: int, buf: int) -> int:
        return EBADF

    @hostcall("fd_advise", "uQQu", module="wasi")
    def fd_advise(self, fd: int, offset: int, length: int, advice: int) -> int:
        return ESUCCESS

    @hostcall("fd_allocate", "uQQ", module="wasi")
    def fd_allocate(self, fd: int, offset: int, length: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_datasync", "u", module="wasi")
    def fd_datasync(self, fd: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_sync", "u", module="wasi")
    def fd_sync(self, fd: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_filestat_set_size", "uQ", module="wasi")
    def fd_filestat_set_size(self, fd: int, size: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_filestat_set_times", "uQQu", module="wasi")
    def fd_filestat_set_times(self, fd: int, atim: int, mtim: int, flags: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_pread", "uuuQu", module="wasi")
    def fd_pread(self, fd: int, iovs: int, iovs_len: int, offset: int, nread_ptr: int) -> int:
        return ENOSYS

    @hostcall("fd_readdir", "uuuQu", module="wasi")
    def fd_readdir(self, fd: int, buf: int, buf_len: int, cookie: int, ret_ptr: int) -> int:
        self.write_u32(ret_ptr, 0)
        return ENOTDIR

    @hostcall("fd_renumber", "uu", module="wasi")
    def fd_renumber(self, fd: int, to: int) -> int:
        return ENOTSUP if fd in (1, 2) and to in (1, 2) else EBADF

    @hostcall("fd_tell", "uu", module="wasi")
    def fd_tell(self, fd: int, ret_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        self.write_u64(ret_ptr, 0)
        return ESUCCESS

    @hostcall("path_open", "uuuuuQQuu", module="wasi")
    def path_open(self, fd: int, dirflags: int, path: int, path_len: int, oflags: int, base: int, inheriting: int, fdflags: int, ret_fd: int) -> int:
        return ENOENT

    @hostcall("path_filestat_get", "uuuuu", module="wasi")
    def path_filestat_get(self, fd: int, flags: int, path: int, path_len: int, buf: int) -> int:
        return ENOTSUP

    @hostcall("path_create_directory", "uuu", module="wasi")
    def path_create_directory(self, fd: int, path: int, path_len: int) -> int:
        return ENOTSUP

    @hostcall("path_remove_directory", "uuu", module="wasi")
    def path_remove_directory(self, fd: int, path: int, path_len: int) -> int:
        return ENOTSUP

    @hostcall("path_unlink_file", "uuu", module="wasi")
    def path_unlink_file(self, fd: int, path: int, path_len: int) -> int:
        return ENOTSUP

    @hostcall("path_filestat_set_times", "uuuuQQu", module="wasi")
    def path_filestat_set_times(self, fd: int, flags: int, path: int, path_len: int, atim: int, mtim: int, fst: int) -> int:
        return ENOTSUP

    @hostcall("path_link", "uuuuuu", module="wasi")
    def path_link(self, a: int, b: int, c: int, d: int, e: int, f: int) -> int:
        return ENOTSUP

    @hostcall("path_readlink", "uuuuuu", module="wasi")
    def path_readlink(self, fd: int, path: int, path_len: int, buf: int, buf_len: int, ret_ptr: int) -> int:
        self.write_u32(ret_ptr, 0)
        return ENOTSUP

    @hostcall("path_rename", "uuuuuu", module="wasi")
    def path_rename(self, a: int, b: int, c: int, d: int, e: int, f: int) -> int:
        return ENOTSUP

    @hostcall("path_symlink", "uuuu", module="wasi")
    def path_symlink(self, a: int, b: int, c: int, d: int) -> int:
        return ENOTSUP

    @hostcall("sock_accept", "uuu", module="wasi")
    def sock_accept(self, fd: int, flags: int, ret_ptr: int) -> int:
        self.write_u64(ret_ptr, 0)
        return ENOTSUP

    @hostcall("sock_recv", "uuuuuu", module="wasi")
    def sock_recv(self, fd: int, iovs: int, iovs_len: int, flags: int, ret_size: int, ret_flags: int) -> int:
        self.write_u32(ret_size, 0)
        self.write(ret_flags, b"\0\0")
        return ENOTSUP

    @hostcall("sock_send", "uuuuu", module="wasi")
    def sock_send(self, fd: int, iovs: int, iovs_len: int, flags: int, ret_size: int) -> int:
        self.write_u32(ret_size, 0)
        return ENOTSUP

    @hostcall("sock_shutdown", "uu", module="wasi")
    def sock_shutdown(self, fd: int, how: int) -> int:
        return ENOTSUP

    def _environ(self) -> list[bytes]:
        return [f"{k}={v}".encode() + b"\0" for k, v in self.environment.items()]

    @hostcall("environ_sizes_get", "uu", module="wasi")
    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        env = self._environ()
        self.write_u32_pair(count_ptr, len(env), size_ptr, sum(len(e) for e in env))
        return ESUCCESS

    @hostcall("environ_get", "uu", module="wasi")
    def environ_get(self, ptrs: int, buf: int) -> int:
        for i, entry in enumerate(self._environ()):
            self.write_u32(ptrs + 4 * i, buf)
            self.write(buf, entry)
            buf += len(entry)
        return ESUCCESS

    @hostcall("args_sizes_get", "uu", module="wasi")
    def args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.write_u32_pair(argc_ptr, 0, size_ptr, 0)
        return ESUCCESS

    @hostcall("args_get", "uu", module="wasi")
    def args_get(self, argv: int, buf: int) -> int:
        return ESUCCESS

    @hostcall("clock_time_get", "uQu", module="wasi")
    def clock_time_get(self, clock_id: int, precision: int, ret_ptr: int) -> int:
        if clock_id == 0:
            self.write_u64(ret_ptr, self.clock.wall_ns)
        elif clock_id == 1:
            self.write_u64(ret_ptr, self.clock.monotonic_ns)
        else:
            return ENOTSUP
        return ESUCCESS

    @hostcall("clock_res_get", "uu", module="wasi")
    def clock_res_get(self, clock_id: int, ret_ptr: int) -> int:
        if clock_id not in (0, 1):
            return ENOTSUP
        self.write_u64(ret_ptr, 1)
        return ESUCCESS

    @hostcall("random_get", "uu", module="wasi")
    def random_get(self, buf: int, size: int) -> int:
        if size > RANDOM_GET_LIMIT:
            return EINVAL
        if size:
            self.write(buf, self.random.randbytes(size))
        return ESUCCESS

    @hostcall("proc_exit", "u", "", module="wasi")
    def proc_exit(self, code: int) -> None:
        self.host_notes("wasi_unstable proc_exit")

    @hostcall("sched_yield", "", module="wasi")
    def sched_yield(self) -> int:
        return ESUCCESS

    @hostcall("poll_oneoff", "uuuu", module="wasi")
    def poll_oneoff(self, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
        self.write_u32(nevents_ptr, 0)
        return ESUCCESS


def _zlib(op: Callable[[bytes], bytes]) -> Callable[[bytes], tuple[Status, bytes]]:
    def run(data: bytes) -> tuple[Status, bytes]:
        try:
            return Status.OK, op(data)
        except zlib.error:
            return Status.SERIALIZATION_FAILURE, b""

    return run


#: foreign functions every Envoy registers (ABI_FACTS §7.12); a test's own functions win
ENVOY_FOREIGN_FUNCTIONS: dict[str, Callable[[bytes], tuple[Status, bytes]]] = {
    "compress": _zlib(zlib.compress),
    "uncompress": _zlib(zlib.decompress),
    "clear_route_cache": lambda _args: (Status.OK, b""),
}


def imports_for(abi: AbiVersion) -> Iterable[tuple[str, HostcallSpec]]:
    """(module, spec) for every import linked for ``abi``; WASI appears under both modules."""
    for spec in HOSTCALLS.values():
        if abi not in spec.abis:
            continue
        if spec.wasi_errno:
            for module in WASI_MODULES:
                yield module, spec
        else:
            yield "env", spec

