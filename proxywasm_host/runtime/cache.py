"""On-disk cache of compiled modules (wasmtime's serialized native code).

An entry is keyed by the module's sha256, the wasmtime version, the engine settings and
the machine, so a different wasmtime or engine configuration never picks up a stale entry.
An entry is two files: ``<key>.cwasm``, exactly what wasmtime serialized (so wasmtime can map
it instead of copying it), and ``<key>.json``, its header (the key fields, the payload's
length and CRC-32): a header that does not match, a short or corrupt payload, or a payload
wasmtime refuses is deleted and the module compiled again.  Files are written to a temporary
name and renamed into place (the payload first), so concurrent test workers never read a
half-written entry, and a header that does not describe its payload is rejected.

Directory: the ``cache_dir`` argument, else ``$PROXYWASM_HOST_CACHE_DIR``, else
``$XDG_CACHE_HOME/proxywasm-host``, else ``~/.cache/proxywasm-host``.
``PROXYWASM_HOST_CACHE_DIR=off`` (or ``0``, ``none``, ``false``) turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import platform
import tempfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Union

import wasmtime

ENV_VAR = "PROXYWASM_HOST_CACHE_DIR"
MAGIC = b"PWHCACHE1\n"
FORMAT = 3  # 2: the payload's checksum is a CRC-32 (was a sha256); 3: the header in its own file
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

    @staticmethod
    def header_path(path: Path) -> Path:
        """Where the header of the entry ``path`` (its ``.cwasm``) is kept."""
        return path.with_suffix(".json")

    def load(self, wasm_sha256: str) -> CacheResult:
        path = self.path_for(wasm_sha256)
        try:
            with open(self.header_path(path), "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return CacheResult(None, "miss", path)
        except OSError as exc:
            return CacheResult(None, f"miss (unreadable: {exc.strerror or exc})", path)
        why = None
        module = None
        meta = None
        try:
            if not text.startswith(MAGIC):
                raise ValueError("bad magic")
            header = json.loads(text[len(MAGIC) :])
            for key, value in self.fields.items():
                if header.get(key) != value:
                    raise ValueError(f"{key} differs ({header.get(key)!r} != {value!r})")
            if header.get("module_sha256") != wasm_sha256:
                raise ValueError("module hash differs")
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if header.get("payload_len") != size:
                        raise ValueError(f"payload is {size} bytes, header says {header.get('payload_len')}")
                    # against torn or damaged files (entries are renamed into place and
                    # length-checked above); not a defence against someone writing the cache
                    # directory.  Read through a mapping: the pages are the ones wasmtime maps next.
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        crc = zlib.crc32(mapped)
            except FileNotFoundError:
                raise ValueError("payload missing") from None
            if crc != header.get("payload_crc32"):
                raise ValueError("payload checksum mismatch")
            meta = header.get("meta")
            # wasmtime maps the file (no copy into fresh memory: ~40 ms of a 6 MB entry's load
            # on a busy machine, against well under 1 ms mapped)
            module = wasmtime.Module.deserialize_file(self.engine, str(path))
        except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError, wasmtime.WasmtimeError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if module is None:
            for stale in (path, self.header_path(path)):
                try:
                    stale.unlink()
                except OSError:
                    pass
            return CacheResult(None, f"rejected: {why}", path)
        return CacheResult(module, "hit", path, meta)

    def store(self, wasm_sha256: str, module: wasmtime.Module, meta: Any = None) -> Path | None:
        """Write an entry atomically (the payload, then its header; each renamed into place);
        a cache that cannot be written is silently skipped."""
        path = self.path_for(wasm_sha256)
        try:
            payload = bytes(module.serialize())
            header = json.dumps(self._header(wasm_sha256, payload, meta), sort_keys=True).encode()
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write(path, payload)
            self._write(self.header_path(path), MAGIC + header + b"\n")
        except (OSError, wasmtime.WasmtimeError):
            return None
        return path

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
