"""The only module that touches wasmtime: compile, cache, link, instantiate, call.

:class:`CompiledModule` validates a module the way cpp-host/Envoy do before running it
(ABI marker, imports, callback signatures, memory, allocator), keeps it in a per-process
cache by content hash and in an on-disk cache of compiled code (:mod:`.cache`), and
pre-links it once: one wasmtime ``Linker`` per module whose host functions dispatch to
whichever instance runs on the current thread, and an ``InstancePre`` from it, so a fresh
isolated instance is a new store plus an instantiation.

:class:`WasmInstance` gives the core its :class:`~proxywasm_host.core.hostcalls.Guest` view
(``memory()``, ``allocate()``) and its :class:`~proxywasm_host.core.vm.GuestRuntime` view
(``has_export()``, ``call()``).  Calls go through wasmtime's unchecked C API
(:mod:`._capi`): preallocated raw argument buffers, function handles looked up once,
the memory view re-derived only when the guest may have grown memory.  Nothing above
this module knows.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import wasmtime

from proxywasm_host.core.guest import (
    GuestMemoryError,
    GuestTrapped,
    MemoryAccess,
    WasmTrap,
)
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.network import NETWORK_CALLBACKS
from proxywasm_host.core.spec import HOSTCALLS, OTHER_HOSTS_ABIS, detect_abi, imports_for
from proxywasm_host.core.types import AbiVersion
from proxywasm_host.core.vm import guest_exports
from proxywasm_host.errors import ModuleLoadError
from proxywasm_host.runtime import _capi
from proxywasm_host.runtime.cache import (
    CacheDirArg,
    CacheResult,
    ModuleCache,
    resolve_cache_dir,
)
from proxywasm_host.runtime.coverage import CodeCoverage
from proxywasm_host.runtime.instrument import COUNTERS_EXPORT, CoverageMap

MAX_MEMORY_BYTES = 1 << 30

#: the engine's epoch advances every EPOCH_TICK_S; a callback may run DEFAULT_DEADLINE_S
EPOCH_TICK_S = 0.01
DEFAULT_DEADLINE_S = 10.0

#: Trap backtraces name source file:line from the module's DWARF (wasmtime reads this
#: variable when the engine's Config is made); WASMTIME_BACKTRACE_DETAILS=0 turns it off.
BACKTRACE_DETAILS = os.environ.get("WASMTIME_BACKTRACE_DETAILS", "1") != "0"

#: every engine setting that changes compiled code (part of the on-disk cache key)
ENGINE_SETTINGS: dict[str, object] = {"epoch_interruption": True, "backtrace_details": BACKTRACE_DETAILS}

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
_module_cache: dict[str, CompiledModule] = {}
_disk_caches: dict[Path, ModuleCache] = {}


def engine() -> wasmtime.Engine:
    """The process-wide engine, with epoch interruption so a looping guest can be stopped."""
    global _engine
    with _engine_lock:
        if _engine is None:
            os.environ["WASMTIME_BACKTRACE_DETAILS"] = "1" if ENGINE_SETTINGS["backtrace_details"] else "0"
            config = wasmtime.Config()
            config.epoch_interruption = bool(ENGINE_SETTINGS["epoch_interruption"])
            _engine = wasmtime.Engine(config)
            _capi.start_epoch_ticker(_engine, EPOCH_TICK_S)
        return _engine


@atexit.register
def _release_at_exit() -> None:
    """Free the pre-linked modules while wasmtime's bindings still exist (not during the
    interpreter's teardown, where wasmtime-py's finalizers find its module half gone)."""
    for module in list(_module_cache.values()):
        module._pre = None
    _module_cache.clear()


def disk_cache(cache_dir: CacheDirArg = None) -> ModuleCache | None:
    """The on-disk module cache for ``cache_dir`` (None: the default directory; False: off;
    a :class:`ModuleCache`: that one)."""
    if isinstance(cache_dir, ModuleCache):
        return cache_dir
    directory = resolve_cache_dir(cache_dir)
    if directory is None:
        return None
    found = _disk_caches.get(directory)
    if found is None:
        found = _disk_caches[directory] = ModuleCache(directory, engine(), ENGINE_SETTINGS)
    return found


def _valtype_name(t: wasmtime.ValType) -> str:
    return str(t)


_VALTYPES = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}


@dataclass(frozen=True)
class ImportInfo:
    module: str
    name: str
    kind: str
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    provided: bool = True
    problem: str | None = None


def _kind(ty: object) -> str:
    return type(ty).__name__.replace("Type", "").lower()


def describe(module: wasmtime.Module) -> dict[str, list[list[Any]]]:
    """The module's exports and imports as plain data (kept in the on-disk cache entry, so
    a cached load skips wasmtime's type introspection, the larger part of validation)."""
    exports: list[list[Any]] = []
    for e in module.exports:
        ty = e.type
        if isinstance(ty, wasmtime.FuncType):
            exports.append([e.name, "func", [_valtype_name(p) for p in ty.params], [_valtype_name(r) for r in ty.results]])
        else:
            exports.append([e.name, _kind(ty), [], []])
    imports: list[list[Any]] = []
    for i in module.imports:
        ty = i.type
        if isinstance(ty, wasmtime.FuncType):
            imports.append([i.module, i.name or "", "func", [_valtype_name(p) for p in ty.params],
                            [_valtype_name(r) for r in ty.results]])
        else:
            imports.append([i.module, i.name or "", _kind(ty), [], []])
    return {"exports": exports, "imports": imports}


def _compile(
    wasm: bytes,
    sha256: str,
    origin: str,
    cache_dir: CacheDirArg,
    *,
    raw_errors: bool = False,
    found: CacheResult | None = None,
) -> tuple[wasmtime.Module, dict[str, Any], str]:
    """Deserialize from the on-disk cache or compile (and store).

    ``found``: what the cache already answered for ``sha256`` (not asked again).
    Returns (module, its description, cache status)."""
    cache = disk_cache(cache_dir) if cache_dir is not False else None
    status = "disabled"
    if cache is not None:
        if found is None:
            found = cache.load(sha256)
        if found.module is not None and found.meta is not None:
            return found.module, found.meta, "hit"
        status = found.status
    try:
        module = wasmtime.Module(engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        if raw_errors:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
        raise ModuleLoadError(f"{origin}: not a valid WebAssembly module: {first}") from None
    meta = describe(module)
    if cache is not None:
        cache.store(sha256, module, meta)
    return module, meta, status


class CompiledModule:
    """A compiled, validated proxy-wasm module (cached per process by content hash).

    ``cache_status`` says where the compiled code came from: ``"hit"`` (the on-disk
    cache), ``"miss"`` (compiled now and stored), ``"rejected: ..."`` (a stale or
    corrupt entry was deleted and the module compiled again) or ``"disabled"``.
    """

    def __init__(
        self,
        wasm: bytes,
        origin: str = "<bytes>",
        *,
        cache_dir: CacheDirArg = False,
        _module: wasmtime.Module | None = None,
        _sha256: str | None = None,
        _found: CacheResult | None = None,
        _size: int | None = None,
    ) -> None:
        self.origin = origin
        self.sha256 = _sha256 or hashlib.sha256(wasm).hexdigest()  # (load has it already)
        self.size = len(wasm) if _size is None else _size
        #: the module's bytes (empty when load() found it in the disk cache without reading it)
        self._wasm = wasm
        self._cache_dir = cache_dir
        #: what the counters of an instrumented module count (None: not instrumented)
        self.coverage_map: CoverageMap | None = None
        #: the sha256 of the module as given (an instrumented module's own differs)
        self.source_sha256 = self.sha256
        if _found is not None and _found.module is not None and _found.meta is not None:
            # found on disk by load() without reading the module
            self.module, meta, self.cache_status = _found.module, _found.meta, "hit"
        elif _module is not None:
            self.module, meta, self.cache_status = _module, describe(_module), "disabled"
        else:
            self.module, meta, self.cache_status = _compile(wasm, self.sha256, origin, cache_dir, found=_found)
        #: export name -> (kind, params, results); kind is "func", "memory", "table" or "global"
        self.export_types: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
            name: (kind, tuple(params), tuple(results)) for name, kind, params, results in meta["exports"]
        }
        self._import_types = [(m, n, k, tuple(ps), tuple(rs)) for m, n, k, ps, rs in meta["imports"]]
        self.abi_version = self._detect_abi()
        self.imports = self._check_imports()
        self._check_exports()
        #: name -> (param count, result count) of every exported function
        self.func_sigs: dict[str, tuple[int, int]] = {
            name: (len(ps), len(rs)) for name, (kind, ps, rs) in self.export_types.items() if kind == "func"
        }
        self.func_exports = frozenset(self.func_sigs)
        self.max_slots = max([1] + [max(p, r) for p, r in self.func_sigs.values()])
        self._pre_lock = threading.Lock()
        self._pre: wasmtime.InstancePre | None = None
        self._bindings: list[tuple[int, str]] = []

    @property
    def exports(self) -> dict[str, Any]:
        """Export name -> wasmtime type (introspected on demand)."""
        return {e.name: e.type for e in self.module.exports}

    @classmethod
    def load(cls, source: str | Path | bytes, *, cache_dir: CacheDirArg = None) -> CompiledModule:
        """Read, compile (or take from the caches) and validate a ``.wasm``/``.wat`` module.

        ``cache_dir``: where compiled code is cached on disk (None: the default,
        ``$PROXYWASM_HOST_CACHE_DIR`` or ``~/.cache/proxywasm-host``; False: no disk cache;
        a :class:`~proxywasm_host.runtime.cache.ModuleCache`: that one).  With a disk cache, a
        ``.wasm`` file unchanged since it was last hashed is known by its stamp and not read
        again (:meth:`~proxywasm_host.runtime.cache.ModuleCache.known_source`).
        """
        remember: tuple[ModuleCache, Path, os.stat_result, int] | None = None
        found: CacheResult | None = None
        cache: ModuleCache | None = None
        if isinstance(source, (bytes, bytearray)):
            wasm, origin = bytes(source), "<bytes>"
        else:
            path = Path(source)
            origin = str(path)
            cache = disk_cache(cache_dir) if cache_dir is not False and path.suffix != ".wat" else None
            if cache is not None:
                known = cache.known_source(path)
                if known is not None:
                    cached = _module_cache.get(known[0])
                    if cached is not None:
                        return cached
                    found = cache.load(known[0])
                    if found.module is not None and found.meta is not None:
                        cached = cls(b"", origin, cache_dir=cache_dir, _sha256=known[0], _found=found, _size=known[1])
                        _module_cache[known[0]] = cached
                        return cached
            try:
                before_ns = time.time_ns()
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    wasm = f.read()
            except OSError as exc:
                raise ModuleLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
            if cache is not None:
                remember = (cache, path, st, before_ns)
            if path.suffix == ".wat":
                try:
                    wasm = bytes(wasmtime.wat2wasm(wasm.decode()))
                except wasmtime.WasmtimeError as exc:
                    raise ModuleLoadError(f"{origin}: invalid WAT: {str(exc).splitlines()[0]}") from None
        key = hashlib.sha256(wasm).hexdigest()
        if found is not None and cache is not None and found.path != cache.path_for(key):
            found = None  # (the file changed since it was known: that answer was for other bytes)
        cached = _module_cache.get(key)
        if cached is None:
            cached = _module_cache[key] = cls(wasm, origin, cache_dir=cache_dir, _sha256=key, _found=found)
        if remember is not None:  # (after a successful load: an invalid module is not remembered)
            remember[0].remember_source(remember[1], remember[2], remember[3], key)
        return cached

    def instrumented(self) -> CompiledModule:
        """This module with coverage counters (:mod:`.instrument`; line counters where it has
        DWARF line tables), compiled once per process; itself when it is instrumented."""
        if self.coverage_map is not None:
            return self
        key = self.sha256 + "+coverage"
        found = _module_cache.get(key)
        if found is None:
            found = _module_cache[key] = self.instrument(self._bytes(), self.origin, cache_dir=self._cache_dir)
        return found

    def _bytes(self) -> bytes:
        """The module's bytes: kept, or read again from its file when load() took the compiled
        code from the disk cache without reading it."""
        if self._wasm:
            return self._wasm
        try:
            wasm = Path(self.origin).read_bytes()
        except OSError as exc:
            raise ModuleLoadError(f"cannot read {self.origin}: {exc.strerror or exc}") from None
        if hashlib.sha256(wasm).hexdigest() != self.sha256:
            raise ModuleLoadError(f"{self.origin}: the file changed since it was loaded: load it again")
        return wasm

    @classmethod
    def instrument(cls, wasm: bytes, origin: str = "<bytes>", *, cache_dir: CacheDirArg = False) -> CompiledModule:
        """Instrument ``wasm`` and compile it (no per-process cache: see :meth:`instrumented`)."""
        from proxywasm_host.runtime.dwarf import line_rows
        from proxywasm_host.runtime.instrument import InstrumentError, custom_sections, instrument

        note = ""
        try:
            result = instrument(wasm, line_rows(custom_sections(wasm)))
        except InstrumentError as exc:  # an instruction the decoder does not know: functions only
            note = f"line coverage off: {exc}"
            try:
                result = instrument(wasm)
            except InstrumentError as again:
                raise ModuleLoadError(f"{origin}: cannot instrument for coverage: {again}") from None
        result.map.note = note
        found = cls(result.wasm, origin, cache_dir=cache_dir)
        found.coverage_map = result.map
        found.source_sha256 = hashlib.sha256(wasm).hexdigest()
        return found

    # -- validation as cpp-host/Envoy (V8) do it ------------------------------------------
    def _detect_abi(self) -> AbiVersion:
        version, markers = detect_abi(name for name, (kind, _ps, _rs) in self.export_types.items() if kind == "func")
        if version is not None:
            return version
        other = next((OTHER_HOSTS_ABIS[m] for m in markers if m in OTHER_HOSTS_ABIS), None)
        if other is not None:
            raise ModuleLoadError(f"{self.origin}: a module for {other[0]}: {other[1]}")
        if markers:
            raise ModuleLoadError(
                f"{self.origin}: unknown Proxy-Wasm ABI version {markers[0]!r} "
                f"(this host knows {', '.join(v.marker for v in AbiVersion)}; Envoy 1.40 the first three)"
            )
        raise ModuleLoadError(
            f"{self.origin}: missing Proxy-Wasm ABI version: the module exports no "
            "proxy_abi_version_* function, so it is not a proxy-wasm filter"
        )

    def _check_imports(self) -> list[ImportInfo]:
        table = {(module, spec.name): spec for module, spec in imports_for(self.abi_version)}
        infos: list[ImportInfo] = []
        problems: list[str] = []
        for module, name, kind, params, results in self._import_types:
            if kind == "func":
                spec = table.get((module, name))
                problem = None
                if spec is None:
                    other = HOSTCALLS.get(name)
                    if other is not None and module in ("env", "wasi_snapshot_preview1", "wasi_unstable"):
                        envoy = sorted(v.value for v in other.abis if v.envoy_loads)
                        if envoy:
                            versions = ", ".join(envoy)
                        else:  # a Higress function in a module of an Envoy ABI
                            versions = "0.2.100 (Higress's, not Envoy's)"
                        problem = f"{module}.{name} exists only in ABI {versions}, not in {self.abi_version.value}"
                    else:
                        problem = f"{module}.{name} is not provided by this host (nor by Envoy)"
                elif (spec.wasm_params, spec.wasm_results) != (params, results):
                    problem = (
                        f"{module}.{name} has type {params}->{results} but the host provides "
                        f"{spec.wasm_params}->{spec.wasm_results}"
                    )
                infos.append(ImportInfo(module, name, "func", params, results, problem is None, problem))
                if problem:
                    problems.append(problem)
            else:
                problem = f"{module}.{name}: imported {kind}s are not provided (Envoy provides functions only)"
                if kind == "memory":
                    problem = f"{module}.{name}: imported memory is not supported by this host; export the memory"
                infos.append(ImportInfo(module, name, kind, provided=False, problem=problem))
                problems.append(problem)
        if problems:
            raise ModuleLoadError(f"{self.origin}: cannot link: " + "; ".join(problems))
        return infos

    def _check_exports(self) -> None:
        memories = [n for n, (kind, _p, _r) in self.export_types.items() if kind == "memory" and n != COUNTERS_EXPORT]
        if len(memories) != 1:
            raise ModuleLoadError(f"{self.origin}: expected exactly one exported memory, found {len(memories)}")
        self.memory_export = memories[0]
        expected = guest_exports(self.abi_version)
        for name, (kind, params, results) in self.export_types.items():
            if name in expected and kind == "func":
                if (params, results) != expected[name]:
                    raise ModuleLoadError(
                        f"{self.origin}: bad function signature for {name}: {params}->{results}, "
                        f"expected {expected[name][0]}->{expected[name][1]} for ABI {self.abi_version.value} "
                        "(Envoy's V8 runtime refuses the module)"
                    )
        if "malloc" in self.export_types:
            self.allocator = "malloc"
        elif "proxy_on_memory_allocate" in self.export_types:
            self.allocator = "proxy_on_memory_allocate"
        else:
            raise ModuleLoadError(f"{self.origin}: Wasm module is missing malloc function (nor proxy_on_memory_allocate)")

    # -- pre-linking (once per module per process) ---------------------------------------
    def instance_pre(self) -> tuple[wasmtime.InstancePre, list[tuple[int, str]]]:
        """The pre-linked module and its host bindings: (callback index, AbiHost method)."""
        pre = self._pre
        if pre is not None:
            return pre, self._bindings
        with self._pre_lock:
            if self._pre is None:
                linker = wasmtime.Linker(engine())
                needed = {(i.module, i.name) for i in self.imports}
                bindings: dict[int, str] = {}
                for module, spec in imports_for(self.abi_version):
                    if (module, spec.name) not in needed:
                        continue
                    ftype = wasmtime.FuncType(
                        [_VALTYPES[t] for t in spec.wasm_params], [_VALTYPES[t] for t in spec.wasm_results]
                    )
                    _capi.define_unchecked(linker, module, spec, ftype)
                    bindings[_capi.callback_for(spec)[0]] = spec.method
                try:
                    pre = linker.instantiate_pre(self.module)
                except wasmtime.WasmtimeError as exc:
                    raise ModuleLoadError(f"{self.origin}: cannot link: {str(exc).splitlines()[0]}") from None
                del linker  # the InstancePre holds what it needs
                self._bindings = sorted(bindings.items())
                self._pre = pre
            return self._pre, self._bindings


_call = _capi.call


class WasmInstance:
    """One instantiated module bound to one AbiHost."""

    def __init__(
        self,
        compiled: CompiledModule,
        host: AbiHost,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        memory_limit: int = MAX_MEMORY_BYTES,
        coverage: CodeCoverage | None = None,
    ) -> None:
        """``coverage``: the collector the counters of an instrumented module
        (:meth:`CompiledModule.instrumented`) are read into."""
        self.compiled = compiled
        self.host = host
        self.deadline_s = deadline_s
        #: epochs a guest call may run (armed by every outermost call, see _capi.call)
        self._deadline_ticks = max(1, int(deadline_s / EPOCH_TICK_S))
        pre, bindings = compiled.instance_pre()
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=memory_limit)
        self._ctx = _capi.context_address(self.store)
        host_fns: list[Any] = [None] * _capi.callback_count()
        for index, method in bindings:
            host_fns[index] = getattr(host, method)
        #: what the crossings read of this instance: the store, the memory, the bound AbiHost
        #: methods by callback index, the memory view, an exception a host callback parked
        #: until the guest call returns, the log level dropped in C (see _capi.PyBoundary)
        self._boundary = boundary = _capi.Boundary(self._ctx, host_fns)
        #: Guest.memory: the view over guest memory as it is now (re-made once guest code ran)
        self.memory: Callable[[], memoryview] = boundary.memory
        #: GuestRuntime.has_export, as a bound builtin (called twice per callback by the core)
        self.has_export: Callable[[str], bool] = compiled.func_exports.__contains__
        #: export name -> its call with everything but the arguments bound (see _capi.call)
        self._bound: dict[str, Callable[..., int | None]] = {}
        self._keep: list[Any] = []
        host.attach_guest(self)  # Python copies until the memory export is known
        _capi.set_epoch_deadline(self._ctx, self._deadline_ticks)
        prev = _capi.set_active(boundary)
        try:
            self.instance = pre.instantiate(self.store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            pending, boundary.pending = boundary.pending, None
            if pending is not None and not isinstance(pending, GuestTrapped):
                raise pending from None
            raise ModuleLoadError(f"{compiled.origin}: failed to instantiate: {str(exc).splitlines()[0]}") from None
        finally:
            _capi.set_active(prev)
        found = _capi.export_get(self._ctx, self.instance, compiled.memory_export)
        if found is None or found[0] != _capi.EXTERN_MEMORY:
            raise ModuleLoadError(f"{compiled.origin}: memory export {compiled.memory_export!r} not found")
        self._keep.append(found[1])
        boundary.set_memory(found[2])
        addr, slots, _n, _r = self._resolve(compiled.allocator)
        #: the guest allocator, bound like an export; a trap becomes GuestTrapped
        self._allocate = partial(_call, self._allocator_trapped, compiled.allocator, boundary, addr, slots,
                                 1, True, self._deadline_ticks)
        fast = _capi.memory_access(self._allocate, self._ctx, found[2], GuestMemoryError)
        host.attach_guest(self, MemoryAccess(*fast) if fast is not None else None)
        # the host says which proxy_log calls the C trampoline may drop, now and whenever its
        # log level or observer changes
        host.watch_log_filter(boundary.set_log_filter)
        if coverage is not None and compiled.coverage_map is not None:
            counters = _capi.export_get(self._ctx, self.instance, COUNTERS_EXPORT)
            if counters is None or counters[0] != _capi.EXTERN_MEMORY:
                raise ModuleLoadError(f"{compiled.origin}: the instrumented module has no counters memory")
            coverage.attach(self, compiled.source_sha256, compiled.origin, compiled.coverage_map,
                            partial(_capi.linear_memory_view, self._ctx, counters[2]), (self.store, counters[1]))

    def _resolve(self, name: str) -> tuple[int, int, int, bool]:
        """(func address, raw slots, param count, has result) of an export (looked up once per
        export: the result is bound into ``_bound`` or ``_allocate``)."""
        sig = self.compiled.func_sigs.get(name)
        found = _capi.export_get(self._ctx, self.instance, name) if sig is not None else None
        if found is None or found[0] != _capi.EXTERN_FUNC or sig is None:
            raise KeyError(name)
        self._keep.append(found[1])
        return found[2], max(sig[0], sig[1], 1), sig[0], sig[1] > 0

    # -- Guest (for the hostcalls; memory() is the boundary's, set in __init__) ------------
    def allocate(self, size: int) -> int:
        # normally re-entrant: a hostcall handing data to the guest
        return self._allocate(size)  # type: ignore[no-any-return]

    def _allocator_trapped(self, trap: int, err: int) -> NoReturn:
        text = self._trap_text(trap, err)
        boundary = self._boundary
        pending, boundary.pending = boundary.pending, None
        if pending is not None:
            raise pending
        raise GuestTrapped(WasmTrap(text))

    # -- GuestRuntime (for the Vm) -------------------------------------------------------
    def export(self, name: str) -> Callable[..., int | None] | None:
        """Export ``name`` with everything but its arguments bound (see _capi.call), made
        once per export; None when the module has no such function."""
        bound = self._bound.get(name)
        if bound is None:
            if name not in self.compiled.func_exports:
                return None
            addr, slots, nparams, has_result = self._resolve(name)
            bound = self._bound[name] = partial(
                _call, self._raise_trap, name, self._boundary, addr, slots, nparams, has_result, self._deadline_ticks
            )
        return bound

    def call(self, name: str, *args: int) -> int | None:
        """Call export ``name`` (KeyError when there is none)."""
        bound = self.export(name)
        if bound is None:
            raise KeyError(name)
        return bound(*args)

    # -- traps (the slow path) ----------------------------------------------------------
    @staticmethod
    def _trap_text(trap: int, err: int) -> str:
        text = ""
        if err:
            text = _capi.error_message(err)
        if trap:
            message = _capi.trap_message(trap)
            text = text or message
        return text

    def _deadline_text(self, text: str) -> str:
        if "interrupt" in text:
            return f"deadline exceeded: the callback ran longer than {self.deadline_s:g} s ({text.strip()})"
        return text

    def _raise_trap(self, trap: int, err: int) -> NoReturn:
        text = self._trap_text(trap, err)
        boundary = self._boundary
        pending, boundary.pending = boundary.pending, None
        if pending is not None:
            if isinstance(pending, GuestTrapped):
                raise WasmTrap(f"trap in the guest allocator: {pending.original}") from None
            raise pending
        raise WasmTrap(self._deadline_text(text))


#: the callbacks that make a module an HTTP filter (its stream callbacks)
HTTP_CALLBACKS = (
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
)


def filter_kinds(export_names: set[str] | frozenset[str]) -> list[str]:
    """What Envoy can load the module as, from its exports: ``http``
    (envoy.filters.http.wasm), ``network`` (envoy.filters.network.wasm: it exports the
    network callbacks), or ``service`` only (a root context and nothing per stream:
    envoy.bootstrap.wasm). The Rust and Go SDKs export both stream kinds; which one a
    module really serves is decided by the stream contexts its root creates."""
    kinds = []
    if any(n in export_names for n in HTTP_CALLBACKS):
        kinds.append("http")
    if any(n in export_names for n in NETWORK_CALLBACKS):
        kinds.append("network")
    if not kinds and "proxy_on_context_create" in export_names:
        kinds.append("service")
    return kinds


def inspect_module(source: str | Path, *, cache_dir: CacheDirArg = None) -> dict[str, Any]:
    """Describe a module without running it: ABI, exports, imports and what the host lacks."""
    path = Path(source)
    wasm = path.read_bytes()
    if path.suffix == ".wat":
        wasm = bytes(wasmtime.wat2wasm(wasm.decode()))
    sha256 = hashlib.sha256(wasm).hexdigest()
    module, _meta, _status = _compile(wasm, sha256, str(path), cache_dir, raw_errors=True)
    report: dict[str, Any] = {
        "file": str(path),
        "size": len(wasm),
        "sha256": sha256,
        "abi_version": None,
        "exports": [],
        "imports": [],
        "allocator": None,
        "start": None,
        "problems": [],
    }
    for e in module.exports:
        kind = type(e.type).__name__.replace("Type", "").lower()
        entry: dict[str, Any] = {"name": e.name, "kind": kind}
        if isinstance(e.type, wasmtime.FuncType):
            entry["type"] = [[str(p) for p in e.type.params], [str(r) for r in e.type.results]]
            version = AbiVersion.from_marker(e.name)
            if version is not None and report["abi_version"] is None:
                report["abi_version"] = version.value
        report["exports"].append(entry)
    names = {e.name for e in module.exports}
    report["filter_kinds"] = filter_kinds(names)
    report["other_host"] = next((OTHER_HOSTS_ABIS[n][0] for n in names if n in OTHER_HOSTS_ABIS), None)
    report["allocator"] = next((n for n in ("malloc", "proxy_on_memory_allocate") if n in names), None)
    if "_initialize" in names:
        report["start"] = "_initialize" + (" + main" if "main" in names else " + __main_void" if "__main_void" in names else "")
    elif "_start" in names:
        report["start"] = "_start"
    abi = AbiVersion(report["abi_version"]) if report["abi_version"] else None
    table = {(m, s.name): s for m, s in imports_for(abi)} if abi else {}
    for imp in module.imports:
        entry = {"module": imp.module, "name": imp.name, "kind": type(imp.type).__name__.replace("Type", "").lower()}
        if isinstance(imp.type, wasmtime.FuncType):
            entry["type"] = [[str(p) for p in imp.type.params], [str(r) for r in imp.type.results]]
            entry["provided"] = (imp.module, imp.name) in table
        else:
            entry["provided"] = False
        report["imports"].append(entry)
    try:
        CompiledModule(wasm, str(path), _module=module)
    except ModuleLoadError as exc:
        report["problems"].append(str(exc))
    return report
