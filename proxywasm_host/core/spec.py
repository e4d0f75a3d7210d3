"""The ABI table as Python bindings: hostcall signatures, the ABI versions each is linked for, and the imports of a version."""

from __future__ import annotations

import functools
import inspect
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
ABI_0_1 = frozenset({AbiVersion.V0_1_0})
ABI_0_2 = frozenset({AbiVersion.V0_2_0, AbiVersion.V0_2_1})
ABI_0_2_1 = frozenset({AbiVersion.V0_2_1})

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")

# WASI errno values used here (ABI_FACTS §3.11)
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


#: every import this host can link, keyed by name (WASI names are linked under both modules)
HOSTCALLS: dict[str, HostcallSpec] = {}


def hostcall(
    name: str,
    params: str,
    results: str = "i",
    *,
    abis: frozenset[AbiVersion] = ALL_ABIS,
    module: str = "env",
) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Declare a method as the implementation of one import, with its wasm signature."""
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
        def guarded3(self: AbiHostBase, a: int, b: int, c: int) -> int | None:
            if self.observer is not None:
                return guarded(self, a, b, c)
            try:
                return fn(self, a, b, c)
            except Exception as exc:
                return failed(self, exc)

        @functools.wraps(fn)
        def guarded5(self: AbiHostBase, a: int, b: int, c: int, d: int, e: int) -> int | None:
            if self.observer is not None:
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
