"""The on-disk cache of compiled modules: keyed, verified, rebuilt when stale or corrupt."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fixture_wasm

from proxywasm_host import Host
from proxywasm_host.runtime import cache as cache_mod
from proxywasm_host.runtime.cache import MAGIC, ModuleCache, default_cache_dir, resolve_cache_dir
from proxywasm_host.runtime.module import ENGINE_SETTINGS, CompiledModule, engine

HELLO = fixture_wasm("hello_world-wasm32-unknown-unknown")


def load(cache: Path) -> CompiledModule:
    return CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache)


def entry(cache: Path) -> Path:
    (path,) = [p for p in cache.iterdir() if p.suffix == ".cwasm"]
    return path


def split(path: Path) -> tuple[dict, bytes]:
    """The entry's header (its own file) and payload (exactly what wasmtime serialized)."""
    head = ModuleCache.header_path(path).read_bytes()
    assert head.startswith(MAGIC)
    return json.loads(head[len(MAGIC) :]), path.read_bytes()


def join(path: Path, header: dict, payload: bytes) -> None:
    ModuleCache.header_path(path).write_bytes(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
    path.write_bytes(payload)


def works(module: CompiledModule) -> None:
    stream = Host().load_plugin(module).http_stream()
    stream.send_request_headers({":authority": "cached", ":path": "/"}, end_of_stream=True)
    assert stream.request_headers["x-hello"] == "Hello world from cached"


def test_miss_then_hit(tmp_path: Path) -> None:
    first = load(tmp_path)
    assert first.cache_status == "miss"
    path = entry(tmp_path)
    assert path.name.startswith(first.sha256)
    header, payload = split(path)
    assert header["module_sha256"] == first.sha256
    assert header["engine"] == ENGINE_SETTINGS and header["wasmtime"] == cache_mod.wasmtime_version()
    assert header["payload_len"] == len(payload)
    assert payload == bytes(first.module.serialize())  # as wasmtime wrote it: it maps the file
    second = load(tmp_path)
    assert second.cache_status == "hit"
    assert second.abi_version == first.abi_version and second.allocator == first.allocator
    assert second.func_sigs == first.func_sigs and second.imports == first.imports
    works(second)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "payload checksum mismatch"),
        ("truncate", "payload is"),
        ("garbage", "bad magic"),
        ("no_payload", "payload missing"),
        ("wasmtime", "wasmtime differs"),
        ("engine", "engine differs"),
        ("module", "module hash differs"),
        ("not_native_code", ""),
    ],
)
def test_stale_or_corrupt_entries_are_rejected_and_rebuilt(tmp_path: Path, damage: str, reason: str) -> None:
    load(tmp_path)
    path = entry(tmp_path)
    header, payload = split(path)
    if damage == "flip":
        mid = len(payload) // 2
        join(path, header, payload[:mid] + bytes([payload[mid] ^ 0xFF]) + payload[mid + 1 :])
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "garbage":
        ModuleCache.header_path(path).write_bytes(b"\x7fELF not a cache entry")
    elif damage == "no_payload":
        path.unlink()
    elif damage in ("wasmtime", "engine", "module"):
        key = {"wasmtime": "wasmtime", "engine": "engine", "module": "module_sha256"}[damage]
        header[key] = "0.0.0" if damage != "engine" else {"epoch_interruption": False}
        join(path, header, payload)
    else:  # a checksummed payload wasmtime refuses to deserialize
        bogus = b"\x7fELF" + b"\0" * 4000
        import zlib

        header.update(payload_len=len(bogus), payload_crc32=zlib.crc32(bogus))
        join(path, header, bogus)
    again = load(tmp_path)
    assert again.cache_status.startswith("rejected: ")
    assert reason in again.cache_status
    works(again)
    assert load(tmp_path).cache_status == "hit"  # the rebuilt entry is good


def test_different_engine_settings_use_a_different_entry(tmp_path: Path) -> None:
    a = ModuleCache(tmp_path, engine(), ENGINE_SETTINGS)
    b = ModuleCache(tmp_path, engine(), {**ENGINE_SETTINGS, "something": 1})
    assert a.path_for("ab") != b.path_for("ab")


def test_cache_directory_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache_mod.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "proxywasm-host"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "proxywasm-host"
    monkeypatch.setenv(cache_mod.ENV_VAR, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(None) == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    assert resolve_cache_dir(False) is None
    for off in ("off", "0", "none", ""):
        monkeypatch.setenv(cache_mod.ENV_VAR, off)
        assert default_cache_dir() is None


def test_env_var_directory_is_used_by_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache_mod.ENV_VAR, str(tmp_path))
    module = CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=None)
    assert module.cache_status in ("miss", "hit")
    assert entry(tmp_path).name.startswith(module.sha256)


def test_disabled_cache_and_unwritable_directory(tmp_path: Path) -> None:
    assert CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=False).cache_status == "disabled"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    module = load(blocker / "sub")  # cannot be created: compiled anyway, nothing stored
    assert module.cache_status.startswith("miss")
    works(module)


def test_invalid_module_is_not_cached(tmp_path: Path) -> None:
    from proxywasm_host import ModuleLoadError

    with pytest.raises(ModuleLoadError, match="not a valid WebAssembly module"):
        CompiledModule(b"\0asm\x01\0\0\0garbage", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.cwasm"))


def test_process_cache_comes_first(tmp_path: Path) -> None:
    a = CompiledModule.load(HELLO, cache_dir=tmp_path)
    assert CompiledModule.load(HELLO, cache_dir=tmp_path) is a


# -- files known by their stamp: an unchanged module is not hashed again, an unchanged payload
# -- not checksummed again; any change is seen (runtime/cache.py docstring) -----------------

SETTLE_S = 0.05


def settled_cache(directory: Path) -> ModuleCache:
    """A cache whose stamps settle in 50 ms instead of 2 s (the test waits that long)."""
    return ModuleCache(directory, engine(), ENGINE_SETTINGS, settle_s=SETTLE_S)


def settle() -> None:
    time.sleep(SETTLE_S * 3)


def same_size_other_module(wasm: bytes, name: bytes = b"producerz") -> bytes:
    """Another valid module of the same size: the producers custom section renamed."""
    assert len(name) == len(b"producers")
    at = wasm.index(b"producers")
    return wasm[:at] + name + wasm[at + len(b"producers") :]


def test_unchanged_module_file_is_known_by_its_stamp(tmp_path: Path) -> None:
    wasm = tmp_path / "filter.wasm"
    wasm.write_bytes(HELLO.read_bytes())
    cache = settled_cache(tmp_path / "cache")
    settle()
    assert cache.known_source(wasm) is None
    module = CompiledModule.load(wasm, cache_dir=cache)
    assert cache.known_source(wasm) == (module.sha256, wasm.stat().st_size)
    assert cache.known_source(tmp_path / "other.wasm") is None  # keyed by path


def test_a_changed_module_file_is_read_again(tmp_path: Path) -> None:
    """Same path, size, inode and mtime, other bytes: the ctime tells, and the new module loads."""
    wasm = tmp_path / "filter.wasm"
    first, second = HELLO.read_bytes(), same_size_other_module(HELLO.read_bytes())
    wasm.write_bytes(first)
    cache = settled_cache(tmp_path / "cache")
    settle()
    assert CompiledModule.load(wasm, cache_dir=cache).sha256 == hashlib.sha256(first).hexdigest()
    before = wasm.stat()
    wasm.write_bytes(second)
    os.utime(wasm, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = wasm.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert cache.known_source(wasm) is None
    changed = CompiledModule.load(wasm, cache_dir=cache)
    assert changed.sha256 == hashlib.sha256(second).hexdigest()
    works(changed)


def test_a_file_changed_just_before_it_was_read_is_not_remembered(tmp_path: Path) -> None:
    """A write in the same clock tick as the stamp would leave the stamp as it was."""
    wasm = tmp_path / "filter.wasm"
    wasm.write_bytes(HELLO.read_bytes())
    cache = ModuleCache(tmp_path / "cache", engine(), ENGINE_SETTINGS, settle_s=3600)
    CompiledModule.load(wasm, cache_dir=cache)
    assert cache.known_source(wasm) is None
    assert not list((tmp_path / "cache").glob("*.source"))


def test_a_stamp_from_another_boot_is_not_trusted(tmp_path: Path) -> None:
    wasm = tmp_path / "filter.wasm"
    wasm.write_bytes(HELLO.read_bytes())
    cache = settled_cache(tmp_path / "cache")
    settle()
    CompiledModule.load(wasm, cache_dir=cache)
    index = cache.source_index(wasm)
    record = json.loads(index.read_bytes())
    assert record["boot"] == cache_mod.boot_id()
    index.write_text(json.dumps({**record, "boot": "another boot"}))
    assert cache.known_source(wasm) is None


def test_a_verified_payload_is_not_checksummed_again_in_this_boot_only(tmp_path: Path) -> None:
    cache = settled_cache(tmp_path)
    CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache)
    path = entry(tmp_path)
    header, _payload = split(path)
    assert "verified" not in header  # written just now: not settled
    settle()
    assert CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache).cache_status == "hit"
    header, payload = split(path)
    assert header["verified"] == [cache_mod.boot_id(), cache_mod.stamp(path.stat())]
    # the header's checksum is wrong now: only a payload verified in this boot, with this
    # very stamp, is taken without its CRC
    ModuleCache.header_path(path).write_bytes(
        MAGIC + json.dumps({**header, "payload_crc32": header["payload_crc32"] ^ 1}).encode()
    )
    assert CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache).cache_status == "hit"
    ModuleCache.header_path(path).write_bytes(
        MAGIC + json.dumps({**header, "payload_crc32": header["payload_crc32"] ^ 1,
                            "verified": ["another boot", header["verified"][1]]}).encode()
    )
    assert CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache).cache_status == (
        "rejected: payload checksum mismatch"
    )


def test_a_verified_payload_changed_afterwards_is_rejected(tmp_path: Path) -> None:
    cache = settled_cache(tmp_path)
    CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache)
    settle()
    CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache)
    path = entry(tmp_path)
    assert "verified" in split(path)[0]
    payload = path.read_bytes()
    mid = len(payload) // 2
    before = path.stat()
    path.write_bytes(payload[:mid] + bytes([payload[mid] ^ 0xFF]) + payload[mid + 1 :])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = CompiledModule(HELLO.read_bytes(), str(HELLO), cache_dir=cache)
    assert again.cache_status == "rejected: payload checksum mismatch"
    works(again)


def test_load_through_a_known_file_reports_a_rejected_entry(tmp_path: Path) -> None:
    wasm = tmp_path / "filter.wasm"
    wasm.write_bytes(same_size_other_module(HELLO.read_bytes(), b"producery"))  # (a module of its own)
    cache = settled_cache(tmp_path / "cache")
    settle()
    first = CompiledModule.load(wasm, cache_dir=cache)
    assert first.cache_status == "miss"
    assert cache.known_source(wasm) is not None
    ModuleCache.header_path(cache.path_for(first.sha256)).write_bytes(b"garbage")
    code = (
        "import sys\n"
        "from proxywasm_host.runtime.cache import ModuleCache\n"
        "from proxywasm_host.runtime.module import ENGINE_SETTINGS, CompiledModule, engine\n"
        f"cache = ModuleCache(sys.argv[2], engine(), ENGINE_SETTINGS, settle_s={SETTLE_S})\n"
        "print(CompiledModule.load(sys.argv[1], cache_dir=cache).cache_status)\n"
        "print(CompiledModule.load(sys.argv[1], cache_dir=cache).cache_status)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(wasm), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["rejected: bad magic", "rejected: bad magic"]  # (the same module, once per process)


def test_a_fresh_process_loads_a_known_file_from_the_cache(tmp_path: Path) -> None:
    wasm = tmp_path / "filter.wasm"
    wasm.write_bytes(HELLO.read_bytes())
    settle()
    code = (
        "import sys\n"
        "from proxywasm_host import Host\n"
        "from proxywasm_host.runtime.cache import ModuleCache\n"
        "from proxywasm_host.runtime.module import ENGINE_SETTINGS, CompiledModule, engine\n"
        f"cache = ModuleCache(sys.argv[2], engine(), ENGINE_SETTINGS, settle_s={SETTLE_S})\n"
        "module = CompiledModule.load(sys.argv[1], cache_dir=cache)\n"
        "stream = Host().load_plugin(module).http_stream()\n"
        "stream.send_request_headers({':authority': 'fresh', ':path': '/'}, end_of_stream=True)\n"
        "print(module.cache_status, module.size, module.sha256, cache.known_source(sys.argv[1]) is not None,\n"
        "      stream.request_headers['x-hello'])\n"
    )
    runs = []
    for _ in range(2):  # compiled and stored, then a hit through the known file
        runs.append(subprocess.run([sys.executable, "-c", code, str(wasm), str(tmp_path / "cache")],
                                   capture_output=True, text=True, check=True).stdout.split())
        settle()
    size, sha = str(wasm.stat().st_size), hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert runs[0][:4] == ["miss", size, sha, "True"]
    assert runs[1][:4] == ["hit", size, sha, "True"]
    assert " ".join(runs[1][4:]) == "Hello world from fresh"
