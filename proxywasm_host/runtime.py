"""The only module that touches wasmtime: compile, link, instantiate, call.

:class:`CompiledModule` validates a module the way cpp-host/Envoy do before
running it (ABI marker, imports, callback signatures, memory, allocator);
:class:`WasmInstance` links the :mod:`~proxywasm_host.hostcalls` of one
:class:`~proxywasm_host.hostcalls.AbiHost` and gives the core its
:class:`~proxywasm_host.hostcalls.Guest` and
:class:`~proxywasm_host.vm.GuestRuntime` views.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import wasmtime

from .errors import ModuleLoadError
from .hostcalls import HOSTCALLS, MASK32, MASK64, AbiHost, GuestTrapped, HostcallSpec, imports_for
from .types import AbiVersion
from .vm import WasmTrap, guest_exports

#: cpp-host's memory cap for a wasm VM (PROXY_WASM_HOST_MAX_WASM_MEMORY_SIZE_BYTES)
MAX_MEMORY_BYTES = 1 << 30

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
_module_cache: dict[str, "CompiledModule"] = {}


#: the engine's epoch advances every EPOCH_TICK_S; a callback may run DEFAULT_DEADLINE_S
EPOCH_TICK_S = 0.01
DEFAULT_DEADLINE_S = 10.0


def _epoch_ticker(eng: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK_S)
        eng.increment_epoch()


def engine() -> wasmtime.Engine:
    """The process-wide engine, with epoch interruption so a looping guest can be stopped."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            _engine = wasmtime.Engine(config)
            threading.Thread(target=_epoch_ticker, args=(_engine,), name="proxywasm-epoch", daemon=True).start()
        return _engine


def _valtype_name(t: wasmtime.ValType) -> str:
    return str(t)


@dataclass(frozen=True)
class ImportInfo:
    module: str
    name: str
    kind: str
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    provided: bool = True
    problem: str | None = None


class CompiledModule:
    """A compiled, validated proxy-wasm module (cached per process by content hash)."""

    def __init__(self, wasm: bytes, origin: str = "<bytes>") -> None:
        self.origin = origin
        self.sha256 = hashlib.sha256(wasm).hexdigest()
        try:
            self.module = wasmtime.Module(engine(), wasm)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
            raise ModuleLoadError(f"{origin}: not a valid WebAssembly module: {first}") from None
        self.exports = {e.name: e.type for e in self.module.exports}
        self.abi_version = self._detect_abi()
        self.imports = self._check_imports()
        self._check_exports()

    @classmethod
    def load(cls, source: str | Path | bytes) -> "CompiledModule":
        if isinstance(source, (bytes, bytearray)):
            wasm, origin = bytes(source), "<bytes>"
        else:
            path = Path(source)
            try:
                wasm = path.read_bytes()
            except OSError as exc:
                raise ModuleLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
            origin = str(path)
            if path.suffix == ".wat":
                try:
                    wasm = wasmtime.wat2wasm(wasm.decode())
                except wasmtime.WasmtimeError as exc:
                    raise ModuleLoadError(f"{origin}: invalid WAT: {str(exc).splitlines()[0]}") from None
        key = hashlib.sha256(wasm).hexdigest()
        cached = _module_cache.get(key)
        if cached is None:
            cached = _module_cache[key] = cls(wasm, origin)
        return cached

    # -- validation as cpp-host/Envoy (V8) do it ------------------------------------------
    def _detect_abi(self) -> AbiVersion:
        for export in self.module.exports:
            if isinstance(export.type, wasmtime.FuncType):
                version = AbiVersion.from_marker(export.name)
                if version is not None:
                    return version
        markers = [e.name for e in self.module.exports if e.name.startswith("proxy_abi_version_")]
        if markers:
            raise ModuleLoadError(
                f"{self.origin}: unknown Proxy-Wasm ABI version {markers[0]!r} "
                f"(this host, like Envoy, knows {', '.join(v.marker for v in AbiVersion)})"
            )
        raise ModuleLoadError(
            f"{self.origin}: missing Proxy-Wasm ABI version: the module exports no "
            "proxy_abi_version_* function, so it is not a proxy-wasm filter"
        )

    def _check_imports(self) -> list[ImportInfo]:
        table = {(module, spec.name): spec for module, spec in imports_for(self.abi_version)}
        infos: list[ImportInfo] = []
        problems: list[str] = []
        for imp in self.module.imports:
            ty = imp.type
            name = imp.name or ""
            if isinstance(ty, wasmtime.FuncType):
                params = tuple(_valtype_name(p) for p in ty.params)
                results = tuple(_valtype_name(r) for r in ty.results)
                spec = table.get((imp.module, name))
                problem = None
                if spec is None:
                    other = HOSTCALLS.get(name)
                    if other is not None and imp.module in ("env", "wasi_snapshot_preview1", "wasi_unstable"):
                        versions = ", ".join(sorted(v.value for v in other.abis))
                        problem = f"{imp.module}.{name} exists only in ABI {versions}, not in {self.abi_version.value}"
                    else:
                        problem = f"{imp.module}.{name} is not provided by this host (nor by Envoy)"
                elif (spec.wasm_params, spec.wasm_results) != (params, results):
                    problem = (
                        f"{imp.module}.{name} has type {params}->{results} but the host provides "
                        f"{spec.wasm_params}->{spec.wasm_results}"
                    )
                infos.append(ImportInfo(imp.module, name, "func", params, results, problem is None, problem))
                if problem:
                    problems.append(problem)
            else:
                kind = type(ty).__name__.replace("Type", "").lower()
                problem = f"{imp.module}.{name}: imported {kind}s are not provided (Envoy provides functions only)"
                if isinstance(ty, wasmtime.MemoryType):
                    problem = f"{imp.module}.{name}: imported memory is not supported by this host; export the memory"
                infos.append(ImportInfo(imp.module, name, kind, provided=False, problem=problem))
                problems.append(problem)
        if problems:
            raise ModuleLoadError(f"{self.origin}: cannot link: " + "; ".join(problems))
        return infos

    def _check_exports(self) -> None:
        memories = [n for n, t in self.exports.items() if isinstance(t, wasmtime.MemoryType)]
        if len(memories) != 1:
            raise ModuleLoadError(f"{self.origin}: expected exactly one exported memory, found {len(memories)}")
        self.memory_export = memories[0]
        expected = guest_exports(self.abi_version)
        for name, ty in self.exports.items():
            if name in expected and isinstance(ty, wasmtime.FuncType):
                params = tuple(_valtype_name(p) for p in ty.params)
                results = tuple(_valtype_name(r) for r in ty.results)
                if (params, results) != expected[name]:
                    raise ModuleLoadError(
                        f"{self.origin}: bad function signature for {name}: {params}->{results}, "
                        f"expected {expected[name][0]}->{expected[name][1]} for ABI {self.abi_version.value} "
                        "(Envoy's V8 runtime refuses the module)"
                    )
        if "malloc" in self.exports:
            self.allocator = "malloc"
        elif "proxy_on_memory_allocate" in self.exports:
            self.allocator = "proxy_on_memory_allocate"
        else:
            raise ModuleLoadError(f"{self.origin}: Wasm module is missing malloc function (nor proxy_on_memory_allocate)")

    @property
    def export_names(self) -> list[str]:
        return list(self.exports)


def _bind(host: AbiHost, spec: HostcallSpec) -> Callable[..., Any]:
    fn = getattr(host, spec.method)
    kinds = spec.params
    if not kinds:
        return fn
    if all(k == "u" for k in kinds):
        if len(kinds) == 1:
            return lambda a: fn(a & MASK32)
        if len(kinds) == 2:
            return lambda a, b: fn(a & MASK32, b & MASK32)
        if len(kinds) == 3:
            return lambda a, b, c: fn(a & MASK32, b & MASK32, c & MASK32)
        return lambda *args: fn(*[x & MASK32 for x in args])
    masks = [MASK32 if k == "u" else MASK64 if k == "Q" else None for k in kinds]

    def wrapper(*args: int) -> Any:
        return fn(*[x if m is None else x & m for x, m in zip(args, masks)])

    return wrapper


_VALTYPES = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}


class WasmInstance:
    """One instantiated module bound to one AbiHost."""

    def __init__(
        self,
        compiled: CompiledModule,
        host: AbiHost,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        memory_limit: int = MAX_MEMORY_BYTES,
    ) -> None:
        self.compiled = compiled
        self.host = host
        self.deadline_s = deadline_s
        self._deadline_ticks = max(1, int(deadline_s / EPOCH_TICK_S))
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=memory_limit)
        self.store.set_epoch_deadline(self._deadline_ticks)
        linker = wasmtime.Linker(engine())
        needed = {(i.module, i.name) for i in compiled.imports}
        for module, spec in imports_for(compiled.abi_version):
            if (module, spec.name) not in needed:
                continue
            ftype = wasmtime.FuncType(
                [_VALTYPES[t] for t in spec.wasm_params], [_VALTYPES[t] for t in spec.wasm_results]
            )
            linker.define_func(module, spec.name, ftype, _bind(host, spec))
        try:
            self.instance = linker.instantiate(self.store, compiled.module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise ModuleLoadError(f"{compiled.origin}: failed to instantiate: {str(exc).splitlines()[0]}") from None
        exports = self.instance.exports(self.store)
        self._funcs: dict[str, wasmtime.Func] = {}
        for name in compiled.exports:
            item = exports[name]
            if isinstance(item, wasmtime.Func):
                self._funcs[name] = item
        self._memory: wasmtime.Memory = exports[compiled.memory_export]  # type: ignore[assignment]
        self._allocator = self._funcs[compiled.allocator]
        self._view_key: tuple[int, int] = (0, -1)
        self._view = memoryview(b"")
        host.guest = self

    # -- Guest (for the hostcalls) ---------------------------------------------------------
    def memory(self) -> memoryview:
        size = self._memory.data_len(self.store)
        addr = ctypes.addressof(self._memory.data_ptr(self.store).contents) if size else 0
        if (addr, size) != self._view_key:
            self._view_key = (addr, size)
            self._view = memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B") if size else memoryview(bytearray())
        return self._view

    def allocate(self, size: int) -> int:
        self.store.set_epoch_deadline(self._deadline_ticks)
        try:
            ptr = self._allocator(self.store, size)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise GuestTrapped(exc) from None
        return (ptr or 0) & MASK32

    # -- GuestRuntime (for the Vm) -------------------------------------------------------
    def has_export(self, name: str) -> bool:
        return name in self._funcs

    def call(self, name: str, *args: int) -> int | None:
        func = self._funcs[name]
        self.store.set_epoch_deadline(self._deadline_ticks)
        try:
            return func(self.store, *args)  # type: ignore[no-any-return]
        except GuestTrapped as exc:
            raise WasmTrap(f"trap in the guest allocator: {exc.original}") from None
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            text = str(exc)
            if "interrupt" in text:
                text = f"deadline exceeded: the callback ran longer than {self.deadline_s:g} s ({text.strip()})"
            raise WasmTrap(text) from None


def inspect_module(source: str | Path) -> dict[str, Any]:
    """Describe a module without running it: ABI, exports, imports and what the host lacks."""
    path = Path(source)
    wasm = path.read_bytes()
    if path.suffix == ".wat":
        wasm = wasmtime.wat2wasm(wasm.decode())
    module = wasmtime.Module(engine(), wasm)
    report: dict[str, Any] = {
        "file": str(path),
        "size": len(wasm),
        "sha256": hashlib.sha256(wasm).hexdigest(),
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
        CompiledModule(wasm, str(path))
    except ModuleLoadError as exc:
        report["problems"].append(str(exc))
    return report
