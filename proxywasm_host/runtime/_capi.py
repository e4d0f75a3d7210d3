"""wasmtime's C API, called through the ``wasmtime`` package's own shared library.

The runtime layer's fast path (:mod:`proxywasm_host.runtime.module` is the only user):

* guest exports are called with ``wasmtime_func_call_unchecked`` on a raw
  ``wasmtime_val_raw_t`` buffer; every argument is a plain int so nothing is converted
  but ints, and no type is looked up per call (:func:`call`);
* host functions are ``wasmtime_linker_define_func_unchecked`` callbacks: they read the raw
  argument slots, mask them as the hostcall's
  :class:`~proxywasm_host.core.hostcalls.HostcallSpec` says, call the bound
  :class:`~proxywasm_host.core.hostcalls.AbiHost` method of the instance that is running on
  this thread, and write the result back into slot 0;
* nothing a callback raises may cross into C: every exception becomes a wasm trap (which
  unwinds the guest) and is handed back to the caller of the guest through the instance.

Both crossings exist twice: in C (``_speedups.c``, built at install when a C compiler is
there; a guest call costs ~0.2 µs and a host callback ~0.3 µs) and in ctypes (the fallback:
~0.6 µs and ~2 µs).  Same behaviour; ``PROXYWASM_HOST_NO_SPEEDUPS=1`` forces the ctypes one
(with the rest of the pure path: proxywasm_host/speedups.py; CI runs the whole suite
that way too).  :data:`SPEEDUPS` says which is in use.  Both read one declared object per
instance, :data:`Boundary` (C: a struct; ctypes: :class:`PyBoundary`), never the instance's
attributes by name.

Prototypes are declared here (``CFUNCTYPE`` on the package's ``dll``, plain ints for
pointers) rather than through the package's ``argtypes``-typed wrappers: same library,
same functions, about half the per-call ctypes overhead (measured: 0.6 µs against 1.1 µs
per ``wasmtime_func_call_unchecked``).  ``CFUNCTYPE`` foreign calls release the GIL, so
the epoch ticker thread (a Python thread on this path) keeps running while a guest loops;
the C ``call()`` keeps the GIL while the guest runs (its ticker is a C thread, see
``_speedups.c``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from ctypes import POINTER, c_char_p, c_size_t, c_uint64, c_void_p
from functools import partial
from typing import Any

import wasmtime
from wasmtime import _bindings as _b
from wasmtime import _ffi as _ffi

from proxywasm_host.core.spec import HostcallSpec
from proxywasm_host.speedups import disabled as speedups_disabled

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
#: wasmtime_val_raw_t is 16 bytes (it has a v128 member): argument i sits at u64 slot 2*i
RAW_STRIDE = ctypes.sizeof(_b.wasmtime_val_raw_t) // 8
assert RAW_STRIDE * 8 == ctypes.sizeof(_b.wasmtime_val_raw_t)

_dll = _ffi.dll


def _proto(restype: Any, name: str, *argtypes: Any) -> Any:
    """A foreign function that releases the GIL: for calls that may run guest code."""
    return ctypes.CFUNCTYPE(restype, *argtypes)((name, _dll))


def _proto_gil(restype: Any, name: str, *argtypes: Any) -> Any:
    """A foreign function that keeps the GIL: for short calls that never run guest code
    (no GIL hand-off, which is a good part of such a call's cost)."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, _dll))


#: wasmtime_error_t* wasmtime_func_call_unchecked(context*, const func*, val_raw*, size_t, wasm_trap_t**)
func_call_unchecked = _proto(c_void_p, "wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)
#: void wasmtime_context_set_epoch_deadline(context*, uint64_t ticks_beyond_current)
set_epoch_deadline = _proto_gil(None, "wasmtime_context_set_epoch_deadline", c_void_p, c_uint64)
#: uint8_t* wasmtime_memory_data(const context*, const memory*)
memory_data = _proto_gil(c_void_p, "wasmtime_memory_data", c_void_p, c_void_p)
#: size_t wasmtime_memory_data_size(const context*, const memory*)
memory_data_size = _proto_gil(c_size_t, "wasmtime_memory_data_size", c_void_p, c_void_p)
#: bool wasmtime_instance_export_get(context*, const instance*, const char*, size_t, extern*)
instance_export_get = _proto_gil(ctypes.c_bool, "wasmtime_instance_export_get", c_void_p, c_void_p, c_char_p, c_size_t, c_void_p)
#: wasm_trap_t* wasmtime_trap_new(const char*, size_t)
trap_new = _proto_gil(c_void_p, "wasmtime_trap_new", c_char_p, c_size_t)

#: size_t callback(void* env, wasmtime_caller_t*, wasmtime_val_raw_t* args_and_results, size_t)
#: (the raw slots are read as u64: i32 arguments arrive with undefined upper bits, so mask)
CALLBACK = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(c_uint64), c_size_t)
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, c_void_p))

EXTERN_FUNC = _ffi.WASMTIME_EXTERN_FUNC.value
EXTERN_MEMORY = _ffi.WASMTIME_EXTERN_MEMORY.value
_OF_OFFSET = _b.wasmtime_extern_t.of.offset


def context_address(store: wasmtime.Store) -> int:
    return ctypes.cast(store._context(), c_void_p).value or 0


class _Active(threading.local):
    #: the Boundary whose guest code runs on this thread (innermost), or None
    inst: Any = None


_active = _Active()


def export_get(ctx: int, instance: wasmtime.Instance, name: str) -> tuple[int, Any, int] | None:
    """(kind, keep-alive extern, address of its func/memory struct) for an export, or None."""
    ext = _b.wasmtime_extern_t()
    raw = name.encode()
    if not instance_export_get(ctx, ctypes.addressof(instance._instance), raw, len(raw), ctypes.addressof(ext)):
        return None
    return int(ext.kind), ext, ctypes.addressof(ext) + _OF_OFFSET


def trap_message(address: int) -> str:
    """Take ownership of a wasm_trap_t* and return its message."""
    trap = wasmtime.Trap._from_ptr(ctypes.cast(address, POINTER(_b.wasm_trap_t)))
    return str(trap)


def error_message(address: int) -> str:
    """Take ownership of a wasmtime_error_t* and return its message."""
    return str(wasmtime.WasmtimeError._from_ptr(ctypes.cast(address, POINTER(_b.wasmtime_error_t))))


def park_exception(boundary: Any, exc: BaseException | None) -> int:
    """Turn an exception raised inside a host callback into a trap the guest unwinds with.

    The exception is parked on the running instance's :data:`Boundary`, which the instance
    re-raises (or reports) once the guest call returns.  Must never raise: it runs inside a
    C callback.
    """
    try:
        if boundary is not None and exc is not None and boundary.pending is None:
            boundary.pending = exc
        msg = f"host function raised {type(exc).__name__}: {exc}".encode("utf-8", "replace")
    except BaseException:  # noqa: BLE001 - nothing may escape into C
        msg = b"host function raised an exception"
    return trap_new(msg, len(msg)) or 0


# -- the boundary: what the crossings read of one instance ---------------------------------

_EMPTY_VIEW = memoryview(bytearray())


class PyBoundary:
    """``Boundary`` of ``_speedups.c`` in Python, for the ctypes crossings: the same fields
    and setters.  One per instance (``WasmInstance`` makes it); the crossings read it as
    declared fields, never the instance's attributes by name.

    ``ctx``/``mem``: the store context and memory export addresses; ``host_fns``: the bound
    AbiHost method per callback index; ``view``: the memory view handed out since guest code
    last ran; ``pending``: the exception a host callback parked; ``drop_logs_below``: the
    level below which the C trampoline answers proxy_log itself (the ctypes callbacks leave
    every log to AbiHost.proxy_log, which applies the same rule).
    """

    __slots__ = ("ctx", "mem", "host_fns", "view", "pending", "drop_logs_below")

    def __init__(self, ctx: int, host_fns: list[Any]) -> None:
        if not ctx:
            raise ValueError("Boundary(): no store context (address 0)")
        self.ctx = ctx
        self.mem = 0
        self.host_fns = host_fns
        self.view: memoryview | None = None
        self.pending: BaseException | None = None
        self.drop_logs_below = 0

    def set_memory(self, mem: int) -> None:
        self.mem = mem
        self.view = None

    def set_log_filter(self, level: int) -> None:
        self.drop_logs_below = max(level, 0)

    def memory(self) -> memoryview:
        view = self.view
        if view is None:
            view = self.view = linear_memory_view(self.ctx, self.mem) if self.mem else _EMPTY_VIEW
        return view


# -- the ctypes crossings (the fallback) -----------------------------------------------

#: the raw buffer type per slot count; a buffer is made per call (a nested call must not
#: share its caller's)
_raw_buffer_types: dict[int, Any] = {}


def _py_call(
    on_trap: Callable[[int, int], Any], name: str, boundary: PyBoundary, func: int, nslots: int,
    nparams: int, has_result: bool, deadline_ticks: int, *args: int,
) -> int | None:
    """:func:`call` in ctypes (see ``sp_call`` in ``_speedups.c`` for the contract)."""
    if len(args) != nparams:
        raise TypeError(f"{name} takes {nparams} arguments, {len(args)} given")
    kind = _raw_buffer_types.get(nslots)
    if kind is None:
        kind = _raw_buffer_types[nslots] = ctypes.c_uint64 * (nslots * RAW_STRIDE)
    buf = kind()
    i = 0
    for a in args:
        buf[i] = a & MASK64
        i += RAW_STRIDE
    trap = ctypes.c_void_p()
    ctx = boundary.ctx
    prev = _active.inst
    if prev is not boundary:
        set_epoch_deadline(ctx, deadline_ticks)
    _active.inst = boundary
    try:
        err = func_call_unchecked(ctx, func, ctypes.addressof(buf), nslots, ctypes.addressof(trap))
    finally:
        _active.inst = prev
        boundary.view = None
    if err or trap.value:
        on_trap(trap.value or 0, err or 0)
        raise RuntimeError("call(): on_trap returned instead of raising")
    return buf[0] & MASK32 if has_result else None


def _py_set_active(boundary: Any) -> Any:
    prev, _active.inst = _active.inst, boundary
    return prev


#: (data address, size) -> a view over exactly that range: keyed by the memory itself, not by
#: the (ctx, memory) addresses asked with; those name another memory once their store is
#: freed and the next store or extern reuses the address (the view would then be over the
#: freed memory: stale reads, writes to unmapped pages)
_py_views: dict[tuple[int, int], memoryview] = {}


def linear_memory_view(ctx: int, mem: int) -> memoryview:
    """A view of one linear memory as it is now, through ctypes (made once per data address
    and size: again only when the memory has grown or moved): the ctypes path's views, and
    reads off the hot path, e.g. the coverage counters' memory."""
    size = memory_data_size(ctx, mem)
    if not size:
        return memoryview(bytearray())
    key = (memory_data(ctx, mem), size)
    view = _py_views.get(key)
    if view is None:
        view = memoryview((ctypes.c_ubyte * size).from_address(key[0])).cast("B")
        if len(_py_views) > 256:  # stores come and go; keep this a cache, not a leak
            _py_views.clear()
        _py_views[key] = view
    return view


_ARG = {
    "u": "p[{slot}] & 0xFFFFFFFF",
    "Q": "p[{slot}]",
    "q": "((p[{slot}] ^ 0x8000000000000000) - 0x8000000000000000)",
}

_TEMPLATE = """
def {fname}(env, caller, p, n):
    b = None
    try:
        b = active.inst
        b.view = None
        {body}
        return 0
    except BaseException as exc:
        return park_exception(b, exc)
"""


def _py_callback(index: int, spec: HostcallSpec) -> Any:
    """A ctypes callback for ``spec``, generated from the spec table."""
    args = ", ".join(_ARG[k].format(slot=i * RAW_STRIDE) for i, k in enumerate(spec.params))
    call = f"b.host_fns[{index}]({args})"
    body = f"p[0] = {call} & 0xFFFFFFFF" if spec.results else call
    fname = f"cb_{spec.name}"
    namespace: dict[str, Any] = {"active": _active, "park_exception": park_exception}
    exec(_TEMPLATE.format(fname=fname, body=body), namespace)  # noqa: S102 - generated from the spec table
    fn: Callable[..., int] = namespace[fname]
    callback = CALLBACK(fn)
    return ctypes.cast(callback, c_void_p).value, callback


# -- which crossings are used ---------------------------------------------------------

_speedups: Any = None
if not speedups_disabled():
    try:
        from proxywasm_host.runtime import _speedups  # type: ignore[attr-defined,no-redef]
    except ImportError:  # built without a C compiler: the ctypes crossings
        _speedups = None

#: True when the C crossings (``_speedups``) are in use
SPEEDUPS = _speedups is not None

if _speedups is not None:
    _speedups.init(
        *(ctypes.cast(getattr(_dll, name), c_void_p).value for name in (
            "wasmtime_func_call_unchecked", "wasmtime_trap_new", "wasmtime_memory_data",
            "wasmtime_memory_data_size", "wasmtime_context_set_epoch_deadline")),
        park_exception,
    )
    #: call(on_trap, name, boundary, func, nslots, nparams, has_result, deadline_ticks, *args)
    #: -> the i32 result (unsigned) or None; on a trap, on_trap(trap, error) raises
    call = _speedups.call
    set_active = _speedups.set_active
    #: Boundary(ctx, host_fns): what the crossings read of one instance (see PyBoundary)
    Boundary: Any = _speedups.Boundary
else:
    call = _py_call
    set_active = _py_set_active
    Boundary = PyBoundary


def memory_access(
    allocate: Callable[[int], int], ctx: int, memory: int, error: type[Exception]
) -> tuple[Callable[[int, int], bytes], Callable[[Any], int], Callable[[int, int, int, int], None]] | None:
    """One instance's ``read(ptr, size)``, ``give(data)`` and ``write_u32_pair(p1, v1, p2,
    v2)`` in C (see _speedups.c; ``error`` for a range outside its linear memory), or None
    without the C crossings."""
    if _speedups is None:
        return None
    return (partial(_speedups.read, ctx, memory, error), partial(_speedups.give, allocate, ctx, memory, error),
            partial(_speedups.write_u32_pair, ctx, memory, error))


def start_epoch_ticker(engine: wasmtime.Engine, interval_s: float) -> None:
    """Advance ``engine``'s epoch every ``interval_s`` for the rest of the process: from a C
    thread that never takes the GIL when the C crossings are built, else a Python thread."""
    if _speedups is not None:
        engine_address = ctypes.cast(engine.ptr(), c_void_p).value
        increment = ctypes.cast(_dll.wasmtime_engine_increment_epoch, c_void_p).value
        _speedups.start_ticker(increment, engine_address, int(interval_s * 1e9), engine)
        return

    def tick() -> None:
        while True:
            time.sleep(interval_s)
            engine.increment_epoch()

    threading.Thread(target=tick, name="proxywasm-epoch", daemon=True).start()


# -- one host callback per hostcall ------------------------------------------------------

#: hostcall name -> (index into Boundary.host_fns, callback address, its env pointer,
#: the ctypes callback object to keep alive or None); process-wide
_callbacks: dict[str, tuple[int, int, int, Any]] = {}
_callbacks_lock = threading.Lock()


def callback_for(spec: HostcallSpec) -> tuple[int, int]:
    """The (index, C callback address) for ``spec``, made once per process."""
    found = _callbacks.get(spec.name)
    if found is None:
        with _callbacks_lock:
            found = _callbacks.get(spec.name)
            if found is None:
                index = len(_callbacks)
                if _speedups is not None:
                    # the one C trampoline; env is the spec it reads the arguments by
                    # proxy_log below the host's level is dropped in C (see _speedups.c)
                    env = _speedups.hostcall_spec(index, spec.params, bool(spec.results), spec.name == "proxy_log")
                    found = (index, _speedups.trampoline_address(), env, None)
                else:
                    address, keep = _py_callback(index, spec)
                    found = (index, address, 0, keep)
                _callbacks[spec.name] = found
    return found[0], found[1]


def callback_count() -> int:
    return len(_callbacks)


def define_unchecked(linker: wasmtime.Linker, module: str, spec: HostcallSpec, functype: wasmtime.FuncType) -> None:
    """Define ``module.name`` in ``linker`` as the unchecked callback of ``spec``."""
    callback_for(spec)
    _index, address, env, _keep = _callbacks[spec.name]
    mod, name = module.encode(), spec.name.encode()
    err = _b.wasmtime_linker_define_func_unchecked(
        linker.ptr(), mod, len(mod), name, len(name), functype.ptr(),
        ctypes.cast(address, _b.wasmtime_func_unchecked_callback_t), ctypes.c_void_p(env), _NO_FINALIZER,
    )
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
