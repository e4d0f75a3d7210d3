"""On-disk cache of compiled modules (wasmtime's serialized native code).

An entry is keyed by the module's sha256, the wasmtime version, the engine settings and
the machine, so a different wasmtime or engine configuration never picks up a stale entry.
An entry is two files: ``<key>.cwasm``, exactly what wasmtime serialized (so wasmtime can map
it instead of copying it), and ``<key>.json``, its header (the key fields, the payload's
length and CRC-32): a header that does not match, a short or corrupt payload, or a payload
wasmtime refuses is deleted and the module compiled again.  Files are written to a temporary
name and renamed into place (the payload first), so concurrent test workers never read a
half-written entry, and a header that does not describe its payload is rejected.

Two shortcuts keep a cached load from reading whole files (benchmarks/README.md "cold"), both
resting on a file's *stamp*: device, inode, size, mtime and ctime, in nanoseconds.  Any write to
a file, or a rename over it, changes its ctime (which no program can set back, short of turning the clock back), so a file whose
stamp is unchanged has the bytes it had, with one exception the rules below exclude: a write in
the same clock tick as the one that gave the stamp.  A stamp is therefore only remembered when its
ctime was already ``settle_s`` (2 s) in the past before the file was read, and only for the current
boot (``/proc/sys/kernel/random/boot_id``: after a crash, data that never reached the disk can
leave a file with its old stamp and other bytes):

* ``<hash of the module's path>.source`` maps a module file's stamp to its sha256, so an
  unchanged module is not read and hashed again to find its entry (:meth:`ModuleCache.known_source`);
* an entry's header records the payload's stamp once its CRC-32 has been checked in this boot
  (``verified``), so an unchanged payload is not read again for its CRC.  Without a boot id
  (not Linux) neither shortcut is taken.

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
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import wasmtime

ENV_VAR = "PROXYWASM_HOST_CACHE_DIR"
MAGIC = b"PWHCACHE1\n"
FORMAT = 3  # 2: the payload's checksum is a CRC-32 (was a sha256); 3: the header in its own file
_OFF = {"off", "0", "none", "false", "no", "disabled"}

#: a directory, None (the default one), True (the default one), False (off) or a ModuleCache
CacheDirArg = Union[str, "os.PathLike[str]", None, bool, "ModuleCache"]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


def wasmtime_version() -> str:
    # The installed distribution's version, from its dist-info folder next to the package when
    # there is exactly one: importlib.metadata scans every path entry and parses METADATA
    # (~4 ms of a cold cached load, benchmarks/README.md "cold").
    try:  # (not resolved: a realpath is ~0.1 ms; pip puts the dist-info beside the package)
        site = os.path.dirname(os.path.dirname(wasmtime.__file__))
        found = [n for n in os.listdir(site) if n.startswith("wasmtime-") and n.endswith(".dist-info")]
    except (OSError, TypeError):
        found = []
    if len(found) == 1:
        return found[0][len("wasmtime-") : -len(".dist-info")]
    from importlib import metadata  # (~11 ms to import: email, socket, ...; only this fallback needs it)

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
    """``None``/``True``: the default; ``False``: off; a path: that directory; a
    :class:`ModuleCache`: its directory."""
    if isinstance(cache_dir, ModuleCache):
        return cache_dir.directory
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    if cache_dir is False:
        return None
    return Path(cache_dir).expanduser()


_BOOT_ID: list[str | None] = []


def boot_id() -> str | None:
    """This boot's id (Linux), None where there is none: file stamps are trusted within one boot."""
    if not _BOOT_ID:
        try:  # (bytes: a text-mode open imports its codec, ~0.3 ms of a fresh process)
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                _BOOT_ID.append(f.read().decode("latin-1").strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def stamp(st: os.stat_result) -> list[int]:
    """What identifies a file's bytes without reading them (see the module docstring)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


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

    def __init__(
        self, directory: Path, engine: wasmtime.Engine, engine_settings: dict[str, object], *, settle_s: float = 2.0
    ) -> None:
        self.directory = Path(directory)
        self.engine = engine
        #: a file stamp is remembered only if its ctime was this far in the past when the file was
        #: read (longer than any file system's timestamp tick; see the module docstring)
        self.settle_ns = int(settle_s * 1e9)
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

    def settled(self, st: os.stat_result, before_ns: int) -> bool:
        """Whether a file stamped ``st`` and read after ``before_ns`` (``time.time_ns()``) may be
        known by its stamp: a later write cannot leave its ctime unchanged."""
        return boot_id() is not None and st.st_ctime_ns < before_ns - self.settle_ns

    # -- module files known by their stamp ------------------------------------------------
    def source_index(self, source: Path) -> Path:
        """Where the stamp and sha256 of the module file ``source`` are kept."""
        key = hashlib.sha256(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.directory / f"{key}.source"

    def known_source(self, source: Path) -> tuple[str, int] | None:
        """(sha256, size) of the module file ``source`` if it is unchanged since it was hashed
        (same stamp, same boot); None otherwise: the caller reads and hashes it."""
        boot = boot_id()
        if boot is None:
            return None
        try:
            st = os.stat(source)
            with open(self.source_index(source), "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(record, dict)
            or record.get("boot") != boot
            or record.get("path") != os.path.abspath(source)
            or record.get("stamp") != stamp(st)
            or not isinstance(record.get("sha256"), str)
        ):
            return None
        return record["sha256"], st.st_size

    def remember_source(self, source: Path, st: os.stat_result, before_ns: int, wasm_sha256: str) -> None:
        """Record that ``source``, stamped ``st`` before it was read (at ``before_ns``), hashes
        to ``wasm_sha256``; skipped for a file changed too recently to be known by its stamp."""
        if not self.settled(st, before_ns):
            return
        record = {"boot": boot_id(), "path": os.path.abspath(source), "stamp": stamp(st), "sha256": wasm_sha256}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write(self.source_index(source), json.dumps(record).encode())
        except OSError:
            pass

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
            verify = None
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if header.get("payload_len") != st.st_size:
                        raise ValueError(f"payload is {st.st_size} bytes, header says {header.get('payload_len')}")
                    checked = [boot_id(), stamp(st)]
                    if checked[0] is None or header.get("verified") != checked:
                        # against torn or damaged files (entries are renamed into place and
                        # length-checked above); not a defence against someone writing the cache
                        # directory.  Read through a mapping: the pages are the ones wasmtime maps
                        # next.  Once per payload and boot (module docstring).
                        before_ns = time.time_ns()
                        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                            crc = zlib.crc32(mapped)
                        if crc != header.get("payload_crc32"):
                            raise ValueError("payload checksum mismatch")
                        if self.settled(st, before_ns):
                            verify = checked
            except FileNotFoundError:
                raise ValueError("payload missing") from None
            meta = header.get("meta")
            # wasmtime maps the file (no copy into fresh memory: ~40 ms of a 6 MB entry's load
            # on a busy machine, against well under 1 ms mapped)
            module = wasmtime.Module.deserialize_file(self.engine, str(path))
            if verify is not None:
                try:
                    header["verified"] = verify
                    self._write(self.header_path(path), MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
                except OSError:
                    pass
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
        import tempfile  # (only a store needs it)

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
