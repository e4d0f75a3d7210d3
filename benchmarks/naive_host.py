"""The baseline: a minimal proxy-wasm host written the straightforward wasmtime-py way.

Not our runtime with flags: a separate, self-contained host of about 200 lines, the way
one would write it from the wasmtime-py documentation.

* guest exports are called with ``Func.__call__`` (``instance.exports(store)["name"](store, …)``);
* host functions are plain Python callables given to ``Linker.define_func``;
* guest memory is read and written with the copying ``Memory.read`` / ``Memory.write``;
* header maps are lists of ``(bytes, bytes)``, serialized with ``struct``.

It implements only what the benchmark's exchange needs (logging, header maps, buffers,
time, the WASI calls the Go and AssemblyScript runtimes make at start-up and per request);
every other import is linked to a stub that answers 0 / Ok.  It is correct for the
filters the benchmark runs: the checks in ``exchange`` fail loudly otherwise.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import wasmtime

OK, NOT_FOUND, BAD_ARGUMENT = 0, 1, 2
MASK32 = 0xFFFFFFFF


def _pairs_bytes(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = [struct.pack("<I", len(pairs))]
    for k, v in pairs:
        out.append(struct.pack("<II", len(k), len(v)))
    for k, v in pairs:
        out.append(k + b"\0" + v + b"\0")
    return b"".join(out)


def _parse_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    if len(data) < 4:
        return []
    (n,) = struct.unpack_from("<I", data, 0)
    sizes = [struct.unpack_from("<II", data, 4 + 8 * i) for i in range(n)]
    pos = 4 + 8 * n
    out = []
    for klen, vlen in sizes:
        key = data[pos : pos + klen]
        pos += klen + 1
        value = data[pos : pos + vlen]
        pos += vlen + 1
        out.append((key, value))
    return out


class NaiveHost:
    """One module, one store, one root context; HTTP exchanges one after another."""

    def __init__(self, wasm: Path, *, root_id: str = "", configuration: bytes = b"") -> None:
        self.engine = wasmtime.Engine()
        self.module = wasmtime.Module.from_file(self.engine, str(wasm))
        self.store = wasmtime.Store(self.engine)
        self.configuration = configuration
        self.root_id = root_id.encode()
        self.maps: dict[int, list[tuple[bytes, bytes]]] = {0: [], 2: []}
        self.buffers: dict[int, bytes] = {}
        self.logs: list[tuple[int, bytes]] = []
        linker = wasmtime.Linker(self.engine)
        defined = set()
        for imp in self.module.imports:
            if (imp.module, imp.name) in defined:
                continue  # the same import listed twice (Go does that)
            defined.add((imp.module, imp.name))
            ty = imp.type
            assert isinstance(ty, wasmtime.FuncType), imp.name
            fn = getattr(self, imp.name, None)
            if fn is None:
                fn = self._stub(len(ty.results))
            linker.define_func(imp.module, imp.name or "", ty, fn)
        self.instance = linker.instantiate(self.store, self.module)
        self.exports = self.instance.exports(self.store)
        self.funcs = {name: f for name, f in self.exports.items() if isinstance(f, wasmtime.Func)}
        self.memory: wasmtime.Memory = self.exports["memory"]  # type: ignore[assignment]
        names = {e.name for e in self.module.exports}
        self.malloc = self.exports["malloc" if "malloc" in names else "proxy_on_memory_allocate"]
        self.abi_0_1 = "proxy_abi_version_0_1_0" in names
        if "_initialize" in names:
            self.exports["_initialize"](self.store)  # type: ignore[operator]
            if "main" in names:
                self.exports["main"](self.store, 0, 0)  # type: ignore[operator]
        elif "_start" in names:
            self.exports["_start"](self.store)  # type: ignore[operator]
        self.root = 1
        self.next_id = 2
        self.call("proxy_on_context_create", self.root, 0)
        self.call("proxy_on_vm_start", self.root, 0)
        self.buffers = {7: configuration}  # PLUGIN_CONFIGURATION, read during on_configure
        self.call("proxy_on_configure", self.root, len(configuration))

    @staticmethod
    def _stub(results: int):  # type: ignore[no-untyped-def]
        return (lambda *args: 0) if results else (lambda *args: None)

    def call(self, name: str, *args: int) -> int | None:
        func = self.funcs.get(name)
        if func is None:
            return None
        return func(self.store, *args)  # type: ignore[operator]

    # -- memory, copying -------------------------------------------------------------------
    def read(self, ptr: int, size: int) -> bytes:
        return self.memory.read(self.store, ptr & MASK32, (ptr & MASK32) + (size & MASK32))

    def write(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.store, data, ptr & MASK32)

    def give(self, ret_ptr: int, ret_size: int, data: bytes) -> int:
        ptr = self.malloc(self.store, len(data)) if data else 0  # type: ignore[operator]
        if data:
            self.write(ptr, data)
        self.write(ret_ptr, struct.pack("<I", ptr & MASK32))
        self.write(ret_size, struct.pack("<I", len(data)))
        return OK

    # -- the hostcalls the benchmark's filters make -----------------------------------------
    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        self.logs.append((level, self.read(ptr, size)))
        return OK

    def proxy_get_log_level(self, ret: int) -> int:
        self.write(ret, struct.pack("<I", 0))
        return OK

    def proxy_get_current_time_nanoseconds(self, ret: int) -> int:
        self.write(ret, struct.pack("<Q", time.time_ns()))
        return OK

    def proxy_get_configuration(self, ret_ptr: int, ret_size: int) -> int:
        return self.give(ret_ptr, ret_size, self.configuration)

    def proxy_get_header_map_pairs(self, map_type: int, ret_ptr: int, ret_size: int) -> int:
        return self.give(ret_ptr, ret_size, _pairs_bytes(self.maps.get(map_type, [])))

    def proxy_set_header_map_pairs(self, map_type: int, ptr: int, size: int) -> int:
        self.maps[map_type] = _parse_pairs(self.read(ptr, size))
        return OK

    def proxy_get_header_map_value(self, map_type: int, kp: int, kl: int, ret_ptr: int, ret_size: int) -> int:
        key = self.read(kp, kl).lower()
        for k, v in self.maps.get(map_type, []):
            if k == key:
                return self.give(ret_ptr, ret_size, v)
        if self.abi_0_1:
            return self.give(ret_ptr, ret_size, b"")
        return NOT_FOUND

    def proxy_add_header_map_value(self, map_type: int, kp: int, kl: int, vp: int, vl: int) -> int:
        self.maps.setdefault(map_type, []).append((self.read(kp, kl).lower(), self.read(vp, vl)))
        return OK

    def proxy_replace_header_map_value(self, map_type: int, kp: int, kl: int, vp: int, vl: int) -> int:
        key, value = self.read(kp, kl).lower(), self.read(vp, vl)
        pairs = [(k, v) for k, v in self.maps.get(map_type, []) if k != key]
        self.maps[map_type] = pairs + [(key, value)]
        return OK

    def proxy_remove_header_map_value(self, map_type: int, kp: int, kl: int) -> int:
        key = self.read(kp, kl).lower()
        self.maps[map_type] = [(k, v) for k, v in self.maps.get(map_type, []) if k != key]
        return OK

    def proxy_get_buffer_bytes(self, buffer_type: int, start: int, length: int, ret_ptr: int, ret_size: int) -> int:
        data = self.buffers.get(buffer_type, b"")
        return self.give(ret_ptr, ret_size, data[start : start + length])

    def proxy_get_buffer_status(self, buffer_type: int, ret_size: int, ret_flags: int) -> int:
        self.write(ret_size, struct.pack("<I", len(self.buffers.get(buffer_type, b""))))
        self.write(ret_flags, struct.pack("<I", 0))
        return OK

    def proxy_set_buffer_bytes(self, buffer_type: int, start: int, size: int, ptr: int, length: int) -> int:
        data = self.buffers.get(buffer_type, b"")
        self.buffers[buffer_type] = data[:start] + self.read(ptr, length) + data[start + size :]
        return OK

    def proxy_get_property(self, pp: int, pl: int, ret_ptr: int, ret_size: int) -> int:
        path = self.read(pp, pl)
        if path.rstrip(b"\0") == b"plugin_root_id":
            return self.give(ret_ptr, ret_size, self.root_id)
        return NOT_FOUND

    # WASI, as much as the Go and AssemblyScript runtimes use
    def fd_write(self, fd: int, iovs: int, n: int, ret: int) -> int:
        total = 0
        for i in range(n):
            ptr, size = struct.unpack("<II", self.read(iovs + 8 * i, 8))
            self.logs.append((fd, self.read(ptr, size)))
            total += size
        self.write(ret, struct.pack("<I", total))
        return 0

    def clock_time_get(self, clock: int, precision: int, ret: int) -> int:
        self.write(ret, struct.pack("<Q", time.time_ns() if clock == 0 else time.monotonic_ns()))
        return 0

    def random_get(self, ptr: int, size: int) -> int:
        self.write(ptr, bytes(size))
        return 0

    def environ_sizes_get(self, count: int, size: int) -> int:
        self.write(count, struct.pack("<I", 0))
        self.write(size, struct.pack("<I", 0))
        return 0

    args_sizes_get = environ_sizes_get

    def fd_fdstat_get(self, fd: int, buf: int) -> int:
        self.write(buf, bytes(24))
        return 0

    def fd_prestat_get(self, fd: int, buf: int) -> int:
        return 8  # EBADF: no preopened directories

    # -- one exchange ------------------------------------------------------------------------
    def exchange(self, request: list[tuple[bytes, bytes]], response: list[tuple[bytes, bytes]],
                 response_body: bytes = b"") -> None:
        ctx = self.next_id
        self.next_id += 1
        self.maps = {0: [(k.lower(), v) for k, v in request], 2: []}
        self.buffers = {}
        self.call("proxy_on_context_create", ctx, self.root)
        if self.abi_0_1:
            self.call("proxy_on_request_headers", ctx, len(request))
        else:
            self.call("proxy_on_request_headers", ctx, len(request), 1)
        self.maps[2] = [(k.lower(), v) for k, v in response]
        eos = 0 if response_body else 1
        if self.abi_0_1:
            self.call("proxy_on_response_headers", ctx, len(response))
        else:
            self.call("proxy_on_response_headers", ctx, len(response), eos)
        if response_body:
            self.buffers[1] = response_body
            self.call("proxy_on_response_body", ctx, len(response_body), 1)
        self.call("proxy_on_log", ctx)
        self.call("proxy_on_done", ctx)
        self.call("proxy_on_delete", ctx)
