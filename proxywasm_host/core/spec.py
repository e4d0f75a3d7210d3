"""The ABI table as Python bindings: hostcall signatures, the ABI versions each is linked for, and the imports of a version."""

from __future__ import annotations

import functools
import inspect
import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from proxywasm_host.core.guest import GuestMemoryError, GuestTrapped
from proxywasm_host.core.types import (
    AbiVersion,
    Status,
)

if TYPE_CHECKING:
    from proxywasm_host.core.hostcalls.base import AbiHostBase


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

ALL_ABIS = frozenset(AbiVersion)

#: every ABI marker export starts so: ``proxy_abi_version_0_2_1`` is ABI 0.2.1
ABI_MARKER_PREFIX = "proxy_abi_version_"


def abi_markers(function_exports: Iterable[str]) -> list[str]:
    """The ABI marker exports among a module's function exports, in order."""
    return [name for name in function_exports if name.startswith(ABI_MARKER_PREFIX)]


def marker_version(marker: str) -> str:
    """``proxy_abi_version_0_2_1`` -> ``"0.2.1"`` (any marker, known to this host or not)."""
    return ".".join(marker[len(ABI_MARKER_PREFIX) :].split("_"))


#: ABI markers of other proxy-wasm hosts, known by name so a refusal says what the module is
#: for: marker -> (host, what that host adds; docs/abi-notes.md §2.1)
OTHER_HOSTS_ABIS: dict[str, tuple[str, str]] = {
    "proxy_abi_version_0_2_100": (
        "Higress",
        "the ABI of Higress's Envoy and its Go SDK (github.com/higress-group/proxy-wasm-go-sdk): "
        "ABI 0.2.x plus the host functions proxy_redis_init, proxy_redis_call, "
        "proxy_inject_encoded_data_to_filter_chain, proxy_get_upstream_hosts, "
        "proxy_set_upstream_override_host, the callback proxy_on_redis_call_response and buffer "
        "type 9 (the Redis reply). This host runs it; Envoy 1.40 cannot load it (it knows only "
        "0.1.0, 0.2.0, 0.2.1)",
    ),
}


def detect_abi(function_exports: Iterable[str]) -> tuple[AbiVersion | None, list[str]]:
    """The ABI version a module speaks, as Envoy decides it: the first marker export this
    host knows; with all the markers found (for messages when none is known)."""
    markers = abi_markers(function_exports)
    for marker in markers:
        version = AbiVersion.from_marker(marker)
        if version is not None:
            return version, markers
    return None, markers

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")

# WASI errno values used here (docs/abi-notes.md §4.6)
ESUCCESS, EBADF, EFAULT, EINVAL, ENOENT, ENOSYS, ENOTDIR, ENOTSUP = 0, 8, 21, 28, 44, 52, 20, 58

RANDOM_GET_LIMIT = 65536


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


@dataclass(frozen=True)
class AbiTable:
    """The ABI as the data files in ``abi/`` state it (the one copy of every signature)."""

    #: env import name -> (params, results, the ABI versions that link it)
    env: dict[str, tuple[tuple[str, ...], tuple[str, ...], frozenset[AbiVersion]]]
    #: WASI function name -> (params, results); linked for every version under WASI_MODULES
    wasi: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    #: version -> export name -> (params, results): what the host may call
    exports: dict[AbiVersion, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]


def _read_json(name: str) -> Any:
    return json.loads(resources.files("proxywasm_host.abi").joinpath(name).read_text(encoding="utf-8"))


def _load_table() -> AbiTable:
    env: dict[str, tuple[tuple[str, ...], tuple[str, ...], set[AbiVersion]]] = {}
    exports: dict[AbiVersion, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    for version in AbiVersion:
        data = _read_json(f"abi-{version.value}.json")
        for item in data["imports"]:
            params, results = tuple(item["params"]), tuple(item["results"])
            known = env.setdefault(item["name"], (params, results, set()))
            if known[:2] != (params, results):
                raise RuntimeError(f"abi/*.json: {item['name']} has different signatures across versions")
            known[2].add(version)
        exports[version] = {e["name"]: (tuple(e["params"]), tuple(e["results"])) for e in data["exports"]}
    wasi = {f["name"]: (tuple(f["params"]), tuple(f["results"])) for f in _read_json("wasi.json")["functions"]}
    return AbiTable({n: (p, r, frozenset(v)) for n, (p, r, v) in env.items()}, wasi, exports)


#: the ABI data files, read once
ABI_TABLE = _load_table()

#: every import this host can link, keyed by name (WASI names are linked under both modules)
HOSTCALLS: dict[str, HostcallSpec] = {}


def hostcall(name: str, *, signed: tuple[int, ...] = ()) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Declare a method as the implementation of import ``name``.

    The signature and the ABI versions that link it come from the ABI table (``abi/*.json``);
    ``signed`` lists the indexes of i64 parameters the method takes as signed (the others are
    read unsigned, i32 always masked unsigned)."""
    if name in ABI_TABLE.env:
        wasm_params, wasm_results, abis = ABI_TABLE.env[name]
        module = "env"
    elif name in ABI_TABLE.wasi:
        wasm_params, wasm_results = ABI_TABLE.wasi[name]
        abis, module = ALL_ABIS, "wasi"
    else:
        raise RuntimeError(f"hostcall {name!r} is in no ABI data file (abi/*.json): add it there first")
    params = "".join(("q" if i in signed else "Q") if t == "i64" else "u" for i, t in enumerate(wasm_params))
    results = "i" if wasm_results else ""
    wasi = module == "wasi"

    def decorate(fn: Callable[..., int | None]) -> Callable[..., int | None]:
        failure = EFAULT if wasi else Status.INVALID_MEMORY_ACCESS
        param_names = tuple(inspect.signature(fn).parameters)[1:]

        def failed(self: AbiHostBase, exc: Exception) -> int | None:
            """What the guest gets when ``fn`` raised ``exc``."""
            if isinstance(exc, GuestMemoryError):
                return int(failure) if results else None
            if isinstance(exc, GuestTrapped):
                raise exc  # let wasmtime unwind the guest: the allocator itself trapped
            # a bug of ours must not crash the guest's host
            self.host_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return int(Status.INTERNAL_FAILURE) if results else None

        def run(self: AbiHostBase, args: tuple[int, ...]) -> int | None:
            try:
                return fn(self, *args)
            except Exception as exc:
                return failed(self, exc)

        @functools.wraps(fn)
        def guarded(self: AbiHostBase, *args: int) -> int | None:
            observer = self._observer  # (the field: the hot path reads no property)
            if observer is not None:
                return observer.around(self, name, param_names, args, lambda: run(self, args))
            try:  # run()'s body inlined: this is the hot path of every hostcall
                return fn(self, *args)
            except Exception as exc:
                return failed(self, exc)

        # The same guard with the arguments spelled out, for the arities of proxy_log and the
        # header-map and buffer hostcalls (the ones every request makes): passing *args
        # through costs ~0.1 µs per call.
        @functools.wraps(fn)
        def guarded3(self: AbiHostBase, a: int, b: int, c: int) -> int | None:
            if self._observer is not None:
                return guarded(self, a, b, c)
            try:
                return fn(self, a, b, c)
            except Exception as exc:
                return failed(self, exc)

        @functools.wraps(fn)
        def guarded5(self: AbiHostBase, a: int, b: int, c: int, d: int, e: int) -> int | None:
            if self._observer is not None:
                return guarded(self, a, b, c, d, e)
            try:
                return fn(self, a, b, c, d, e)
            except Exception as exc:
                return failed(self, exc)

        HOSTCALLS[name] = HostcallSpec(module, name, params, results, abis, fn.__name__, wasi)
        if len(params) == 3:
            return guarded3
        if len(params) == 5:
            return guarded5
        return guarded

    return decorate


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
