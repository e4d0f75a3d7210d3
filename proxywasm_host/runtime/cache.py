"""On-disk cache of compiled modules (wasmtime's serialized native code).

An entry is keyed by the module's sha256, the wasmtime version, the engine settings and
the machine, so a different wasmtime or engine configuration never picks up a stale entry.
Each file carries a header (the key fields, the payload's length and sha256): a header that
does not match, a short or corrupt payload, or a payload wasmtime refuses is deleted and
the module compiled again.  Files are written to a temporary name and renamed into place,
so concurrent test workers never read a half-written entry.

Directory: the ``cache_dir`` argument, else ``$PROXYWASM_HOST_CACHE_DIR``, else
``$XDG_CACHE_HOME/proxywasm-host``, else ``~/.cache/proxywasm-host``.
``PROXYWASM_HOST_CACHE_DIR=off`` (or ``0``, ``none``, ``false``) turns the cache off.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import tempfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Union

import wasmtime
from wasmtime import _bindings as _b

ENV_VAR = "PROXYWASM_HOST_CACHE_DIR"
MAGIC = b"PWHCACHE1\n"
FORMAT = 2  # 2: the payload's checksum is a CRC-32 (was a sha256: 3x the time of a cached load's hashing)
_OFF = {"off", "0", "none", "false", "no", "disabled"}

CacheDirArg = Union[str, "os.PathLike[str]", None, bool]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


def wasmtime_version() -> str:
    # The installed distribution's version, from its dist-info folder next to the package when
    # there is exactly one: importlib.metadata scans every path entry and parses METADATA
    # (~4 ms of a cold cached load, benchmarks/README.md "cold").
    try:
        site = Path(wasmtime.__file__).resolve().parent.parent
        found = [n for n in os.listdir(site) if n.startswith("wasmtime-") and n.endswith(".dist-info")]
    except (OSError, TypeError):
        found = []
    if len(found) == 1:
        return found[0][len("wasmtime-") : -len(".dist-info")]
    try:
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:  # pragma: no cover - vendored wasmtime
        return getattr(wasmtime, "__version__", "unknown")


def default_cache_dir() -> Path | None:
    """Where entries go when no directory is given; None when the cache is turned off."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        if env.strip().lower() in _OFF or not env.strip():
            return None
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "proxywasm-host"


def resolve_cache_dir(cache_dir: CacheDirArg) -> Path | None:
    """``None``/``True``: the default; ``False``: off; a path: that directory."""
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    if cache_dir is False:
        return None
    return Path(cache_dir).expanduser()


@dataclass
class CacheResult:
    module: wasmtime.Module | None
    #: "hit", "miss", "disabled", or "rejected: <why>" (the entry was deleted)
    status: str
    path: Path | None = None
    #: what the caller stored beside the module (the runtime keeps its exports/imports here)
    meta: Any = None


def _deserialize(engine: wasmtime.Engine, data: bytearray, offset: int) -> wasmtime.Module:
    """``Module.deserialize`` without its two copies: wasmtime reads straight from ``data``."""
    size = len(data) - offset
    buf = (ctypes.c_uint8 * size).from_buffer(data, offset)
    ptr = ctypes.POINTER(_b.wasmtime_module_t)()
    error = _b.wasmtime_module_deserialize(engine.ptr(), buf, size, ctypes.byref(ptr))
    del buf
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    return wasmtime.Module._from_ptr(ptr)


class ModuleCache:
    """Serialized modules for one engine configuration in one directory."""

    def __init__(self, directory: Path, engine: wasmtime.Engine, engine_settings: dict[str, object]) -> None:
        self.directory = Path(directory)
        self.engine = engine
        self.fields = {
            "format": FORMAT,
            "wasmtime": wasmtime_version(),
            "engine": engine_settings,
            "machine": platform.machine(),
            "system": platform.system(),
        }
        fingerprint = json.dumps(self.fields, sort_keys=True).encode()
        self.config_tag = hashlib.sha256(fingerprint).hexdigest()[:16]

    def path_for(self, wasm_sha256: str) -> Path:
        return self.directory / f"{wasm_sha256}-{self.config_tag}.cwasm"

    def _header(self, wasm_sha256: str, payload: bytes, meta: Any) -> dict[str, object]:
        return {
            **self.fields,
            "module_sha256": wasm_sha256,
            "payload_crc32": zlib.crc32(payload),
            "payload_len": len(payload),
            "meta": meta,
        }

    def load(self, wasm_sha256: str) -> CacheResult:
        path = self.path_for(wasm_sha256)
        try:
            with open(path, "rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                got = f.readinto(data)
            del data[got:]
        except FileNotFoundError:
            return CacheResult(None, "miss", path)
        except OSError as exc:
            return CacheResult(None, f"miss (unreadable: {exc.strerror or exc})", path)
        why = None
        module = None
        meta = None
        try:
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            end = data.index(b"\n", len(MAGIC))
            header = json.loads(bytes(data[len(MAGIC) : end]))
            payload = memoryview(data)[end + 1 :]
            for key, value in self.fields.items():
                if header.get(key) != value:
                    raise ValueError(f"{key} differs ({header.get(key)!r} != {value!r})")
            if header.get("module_sha256") != wasm_sha256:
                raise ValueError("module hash differs")
            if header.get("payload_len") != len(payload):
                raise ValueError(f"payload is {len(payload)} bytes, header says {header.get('payload_len')}")
            # against torn or damaged files (entries are written atomically and length-checked
            # above); not a defence against someone writing the cache directory
            if zlib.crc32(payload) != header.get("payload_crc32"):
                raise ValueError("payload checksum mismatch")
            payload.release()
            meta = header.get("meta")
            module = _deserialize(self.engine, data, end + 1)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError, wasmtime.WasmtimeError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if module is None:
            try:
                path.unlink()
            except OSError:
                pass
            return CacheResult(None, f"rejected: {why}", path)
        return CacheResult(module, "hit", path, meta)

    def store(self, wasm_sha256: str, module: wasmtime.Module, meta: Any = None) -> Path | None:
        """Write an entry atomically; a cache that cannot be written is silently skipped."""
        path = self.path_for(wasm_sha256)
        try:
            payload = bytes(module.serialize())
            header = json.dumps(self._header(wasm_sha256, payload, meta), sort_keys=True).encode()
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".cwasm", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(MAGIC + header + b"\n" + payload)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except (OSError, wasmtime.WasmtimeError):
            return None
        return path
