"""The on-disk cache of compiled modules: keyed, verified, rebuilt when stale or corrupt."""

from __future__ import annotations

import json
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
