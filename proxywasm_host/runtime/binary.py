"""Read a wasm module's export section without compiling it (no wasmtime): export names and kinds, the ABI marker."""

from __future__ import annotations

import os
from pathlib import Path

from proxywasm_host.core.spec import abi_markers, marker_version


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def scan_exports(data: bytes) -> list[tuple[str, int]]:
    """(name, kind) of every export, read straight from the binary's export section.

    kind: 0 function, 1 table, 2 memory, 3 global, 4 tag.  Much cheaper than
    compiling the module (wasmtime takes ~1.7 s for a 2.7 MB Go filter).
    """
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm binary")
    pos = 8
    while pos < len(data):
        section = data[pos]
        size, pos = _leb128(data, pos + 1)
        if section == 7:
            count, p = _leb128(data, pos)
            out = []
            for _ in range(count):
                length, p = _leb128(data, p)
                name = data[p : p + length].decode("utf-8")
                p += length
                kind = data[p]
                _, p = _leb128(data, p + 1)
                out.append((name, kind))
            return out
        pos += size
    return []


_exports_cache: dict[tuple[str, int, int], list[tuple[str, int]]] = {}


def module_exports(wasm: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(name, kind) of the module's exports; cached per file (path, mtime, size)."""
    path = str(Path(wasm).resolve())
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _exports_cache:
        data = Path(path).read_bytes()
        try:
            exports = scan_exports(data)
        except (ValueError, IndexError, UnicodeDecodeError):
            import wasmtime  # text format or an odd binary: let wasmtime read it

            module = wasmtime.Module(wasmtime.Engine(), data)
            exports = [
                (e.name, 0 if isinstance(e.type, wasmtime.FuncType) else 2 if isinstance(e.type, wasmtime.MemoryType) else 3)
                for e in module.exports
            ]
        _exports_cache[key] = exports
    return _exports_cache[key]


def abi_version_of(wasm: str | os.PathLike[str]) -> str:
    """ABI version from the module's marker export: the first function export
    named ``proxy_abi_version_X_Y_Z`` gives ``"X.Y.Z"`` (``"unknown"`` if none).

    Same answer as scanning ``wasmtime.Module.from_file(...).exports``, but
    read from the binary's export section without compiling the module.
    """
    markers = abi_markers(name for name, kind in module_exports(wasm) if kind == 0)
    return marker_version(markers[0]) if markers else "unknown"


# --------------------------------------------------------------------------
# configuration
