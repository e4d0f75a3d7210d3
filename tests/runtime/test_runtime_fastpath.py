"""The runtime's fast call path (wasmtime's unchecked C API): arguments and results, traps,
exceptions raised by host functions, re-entrancy, threads, deadlines, pre-linking."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import pytest

from proxywasm_host import FilterTrap, Host
from proxywasm_host.core.guest import GuestTrapped, WasmTrap
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.types import AbiVersion
from proxywasm_host.runtime.module import CompiledModule, WasmInstance

PROBE = """
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_pwrite" (func $pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (global $trap_alloc (mut i32) (i32.const 0))
  (global $spin (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32)
    (if (global.get $trap_alloc) (then unreachable))
    (i32.const 4096))
  (func (export "set_trap_alloc") (param i32) (global.set $trap_alloc (local.get 0)))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; reads the request headers (the host allocates in the guest), then leaves a marker
    (drop (call $pairs (i32.const 0) (i32.const 200) (i32.const 204)))
    (i32.store (i32.const 100) (i32.const 1))
    (i32.const 0))
  (func (export "log_then_mark") (param i32 i32 i32) (result i32)
    (local $r i32)
    (local.set $r (call $log (local.get 0) (local.get 1) (local.get 2)))
    (i32.store (i32.const 100) (i32.const 1))
    (local.get $r))
  (func (export "seek_raw") (param i32 i64 i32 i32) (result i32)
    (call $seek (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "pwrite_raw") (param i32 i32 i32 i64 i32) (result i32)
    (call $pwrite (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "neg_one") (result i32) (i32.const -1))
  (func (export "echo") (param i32) (result i32) (local.get 0))
  (func (export "add3") (param i32 i32 i32) (result i32)
    (i32.add (i32.add (local.get 0) (local.get 1)) (local.get 2)))
  (func (export "boom") unreachable)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "spin") (param i32)
    (loop $l (br_if $l (i32.ne (local.get 0) (i32.const 0)))))
)
"""


class Abort(BaseException):
    """Not an Exception: the hostcall wrappers let it through, as they would KeyboardInterrupt."""


class Recorder(AbiHost):
    """Records what the hostcalls receive; its behaviour is switched per test."""

    def __init__(self) -> None:
        super().__init__(AbiVersion.V0_2_1)
        self.seen: list[tuple[Any, ...]] = []
        self.on_log: Any = None

    def proxy_log(self, level: int, ptr: int, size: int) -> int:  # type: ignore[override]
        self.seen.append(("log", level, ptr, size, threading.get_ident()))
        if self.on_log is not None:
            return self.on_log(self, level, ptr, size)  # type: ignore[no-any-return]
        return 0

    def fd_seek(self, fd: int, offset: int, whence: int, ret_ptr: int) -> int:  # type: ignore[override]
        self.seen.append(("seek", fd, offset, whence, ret_ptr))
        return 0

    def fd_pwrite(self, fd: int, iovs: int, iovs_len: int, offset: int, nwritten_ptr: int) -> int:  # type: ignore[override]
        self.seen.append(("pwrite", fd, iovs, iovs_len, offset, nwritten_ptr))
        return 0


@pytest.fixture(scope="module")
def compiled() -> CompiledModule:
    import wasmtime

    return CompiledModule.load(wasmtime.wat2wasm(PROBE), cache_dir=False)


def instance(compiled: CompiledModule, **kw: Any) -> tuple[WasmInstance, Recorder]:
    host = Recorder()
    return WasmInstance(compiled, host, **kw), host


def marker(inst: WasmInstance) -> int:
    return struct.unpack_from("<I", inst.memory(), 100)[0]


def test_arguments_arrive_masked_as_the_hostcall_table_says(compiled: CompiledModule) -> None:
    inst, host = instance(compiled)
    assert inst.call("log_then_mark", 2, -16, -1) == 0
    # i32 'u' parameters are unsigned: the Rust SDK passes u32::MAX sizes
    assert host.seen[-1][:4] == ("log", 2, 0xFFFFFFF0, 0xFFFFFFFF)
    inst.call("seek_raw", -1, -5, 2**32 - 1, 8)
    assert host.seen[-1] == ("seek", 0xFFFFFFFF, -5, 0xFFFFFFFF, 8)  # 'q': signed i64
    inst.call("pwrite_raw", 1, 2, 3, -1, 4)
    assert host.seen[-1] == ("pwrite", 1, 2, 3, 2**64 - 1, 4)  # 'Q': unsigned i64
    inst.call("seek_raw", 0, -(2**63), 0, 0)
    assert host.seen[-1][2] == -(2**63)
    inst.call("seek_raw", 0, 2**63 - 1, 0, 0)
    assert host.seen[-1][2] == 2**63 - 1


def test_results_and_arguments_of_guest_calls(compiled: CompiledModule) -> None:
    inst, _ = instance(compiled)
    assert inst.call("neg_one") == 0xFFFFFFFF  # i32 results come back unsigned
    assert inst.call("echo", 0xFFFFFFFF) == 0xFFFFFFFF
    assert inst.call("echo", -2) == 0xFFFFFFFE
    assert inst.call("add3", 1, 2, 3) == 6
    assert inst.call("set_trap_alloc", 0) is None
    with pytest.raises(TypeError, match="takes 3 arguments, 1 given"):
        inst.call("add3", 1)
    with pytest.raises(KeyError):
        inst.call("no_such_export")
    assert inst.has_export("add3") and not inst.has_export("no_such_export")


def test_a_trap_in_the_guest_is_a_wasm_trap_with_the_message(compiled: CompiledModule) -> None:
    inst, _ = instance(compiled)
    with pytest.raises(WasmTrap, match="unreachable"):
        inst.call("boom")
    assert inst.call("echo", 5) == 5  # the instance is still callable afterwards


def test_host_exception_unwinds_the_guest_and_is_reraised(compiled: CompiledModule, capfd: Any) -> None:
    inst, host = instance(compiled)

    def abort(self: Recorder, *args: int) -> int:
        raise Abort("stop right there")

    host.on_log = abort
    with pytest.raises(Abort, match="stop right there"):
        inst.call("log_then_mark", 2, 0, 0)
    assert marker(inst) == 0  # the guest did not run on after the hostcall
    host.on_log = None
    assert inst.call("log_then_mark", 2, 0, 0) == 0 and marker(inst) == 1
    assert "Exception ignored" not in capfd.readouterr().err  # nothing escaped into C


def test_an_exception_inside_the_callback_machinery_becomes_a_trap(compiled: CompiledModule, capfd: Any) -> None:
    inst, _ = instance(compiled)
    fns = inst._boundary.host_fns
    fns[:] = [None] * len(fns)  # every hostcall now fails inside the callback
    with pytest.raises(TypeError):
        inst.call("log_then_mark", 2, 0, 0)
    assert marker(inst) == 0
    assert "Exception ignored" not in capfd.readouterr().err


def test_allocator_trap_inside_a_hostcall_unwinds_the_guest(compiled: CompiledModule) -> None:
    inst, host = instance(compiled)
    inst.call("set_trap_alloc", 1)

    def hand_back(self: Recorder, level: int, ptr: int, size: int) -> int:
        return self.return_bytes(300, 304, b"data")  # allocates in the guest, which traps

    host.on_log = hand_back
    with pytest.raises(WasmTrap, match="(?s)trap in the guest allocator: .*unreachable"):
        inst.call("log_then_mark", 2, 0, 0)
    assert marker(inst) == 0


def test_allocator_trap_through_a_real_hostcall_fails_the_stream() -> None:
    import wasmtime

    plugin = Host().load_plugin(wasmtime.wat2wasm(PROBE))
    plugin.vm.call(plugin.root, "set_trap_alloc", 1)
    stream = plugin.http_stream()
    with pytest.raises(FilterTrap) as info:
        stream.send_request_headers({":path": "/", "x-a": "1"})
    assert info.value.callback == "proxy_on_request_headers"
    assert "trap in the guest allocator" in info.value.trap_message
    assert struct.unpack_from("<I", plugin.vm.runtime.memory(), 100)[0] == 0  # type: ignore[attr-defined]
    assert stream.local_response is not None and stream.local_response.status_code == 503


def test_allocate_reports_a_trap_as_guest_trapped(compiled: CompiledModule) -> None:
    inst, _ = instance(compiled)
    assert inst.allocate(10) == 4096
    inst.call("set_trap_alloc", 1)
    with pytest.raises(GuestTrapped) as info:
        inst.allocate(10)
    assert "unreachable" in str(info.value.original)


def test_reentrant_calls_from_a_hostcall(compiled: CompiledModule) -> None:
    inst, host = instance(compiled)
    results: list[Any] = []

    def reenter(self: Recorder, level: int, ptr: int, size: int) -> int:
        results.append(inst.call("add3", 10, 20, 30))  # back into the guest, one frame deeper
        results.append(inst.allocate(8))
        if level < 3:
            results.append(inst.call("log_then_mark", level + 1, 0, 0))  # and deeper still
        return 7

    host.on_log = reenter
    assert inst.call("log_then_mark", 1, 0, 0) == 7
    assert results == [60, 4096, 60, 4096, 60, 4096, 7, 7]
    assert inst.call("add3", 1, 1, 1) == 3  # the outermost frame is intact


def test_memory_growth_during_a_call_is_seen(compiled: CompiledModule) -> None:
    inst, _ = instance(compiled)
    assert len(inst.memory()) == 65536
    assert inst.call("grow", 3) == 1
    assert len(inst.memory()) == 4 * 65536
    inst.memory()[4 * 65536 - 1] = 9  # the new view reaches the new pages


def test_a_memory_view_is_over_the_memory_its_address_names_now() -> None:
    """linear_memory_view(ctx, mem) (the ctypes path's views, and the coverage counters on both
    paths) takes addresses that are reused: once a store and its memory export are freed,
    the next instance's store and extern struct may sit at the same addresses with another
    memory of the same size behind them.  The view must be over the memory named now (a
    view of the freed one read stale bytes, and writing through it crashed the process)."""
    import ctypes

    import wasmtime

    from proxywasm_host.runtime import _capi
    from proxywasm_host.runtime.module import engine

    store = wasmtime.Store(engine())
    module = wasmtime.Module(engine(), '(module (memory (export "memory") 1))')
    ctx = _capi.context_address(store)
    memories = []
    for marker in (b"A", b"B"):
        inst = wasmtime.Instance(store, module, [])
        found = _capi.export_get(ctx, inst, "memory")
        assert found is not None
        memory = inst.exports(store)["memory"]
        assert isinstance(memory, wasmtime.Memory)
        memory.write(store, marker, 0)
        memories.append((inst, found))
    # one wasmtime_memory_t address that names memory A, then (reused) memory B
    size = ctypes.sizeof(_capi._b.wasmtime_memory_t)
    slot = ctypes.create_string_buffer(size)
    for (_inst, (_kind, _keep, address)), marker in zip(memories, (b"A", b"B"), strict=True):
        ctypes.memmove(slot, address, size)
        view = _capi.linear_memory_view(ctx, ctypes.addressof(slot))
        assert bytes(view[:1]) == marker
        assert len(view) == 65536


def test_the_hosts_reader_copies_exactly_what_the_view_holds(compiled: CompiledModule) -> None:
    """host.read (the C copy when built) against the Python reader over the view, at the edges of
    memory, before and after it grows."""
    from proxywasm_host.core.guest import GuestMemoryError
    from proxywasm_host.runtime import _capi
    inst, host = instance(compiled)
    if _capi.SPEEDUPS:  # the C ones were handed over
        for name in ("read", "give", "write_u32_pair"):
            assert getattr(host, name).func is getattr(_capi._speedups, name)
    mem = inst.memory()
    mem[:] = bytes(range(256)) * (len(mem) // 256)

    def outcome(read: Any, ptr: int, size: int) -> Any:
        try:
            return read(ptr, size)
        except GuestMemoryError:
            return GuestMemoryError

    for grown in (False, True):
        end = len(inst.memory())
        cases = [(0, 0), (0, 5), (end - 5, 5), (end - 4, 5), (end, 0), (end, 1), (0xFFFFFFFF, 0),
                 (0xFFFFFFFF, 1), (1, 0xFFFFFFFF), (end // 2, end // 2), (end // 2, end // 2 + 1)]
        for ptr, size in cases:
            got = outcome(host.read, ptr, size)
            assert got == outcome(lambda p, n: host._read_py(p, n), ptr, size), (grown, ptr, size)
            assert got is GuestMemoryError or len(got) == size
        if not grown:
            assert inst.call("grow", 1) == 1  # the reader sees the new page without being re-made


def test_the_hosts_give_and_u32_writes_match_the_python_ones(compiled: CompiledModule) -> None:
    """host.give / host.write_u32_pair (C when built) against AbiHost's: same address, same
    bytes written, same error at the same point; an allocator trap passes through."""
    from proxywasm_host.core.guest import GuestMemoryError
    def run(fn: Any) -> tuple[Any, bytes]:
        inst, host = instance(compiled)
        try:
            out = fn(inst, host)
        except (GuestMemoryError, GuestTrapped) as exc:
            out = type(exc)
        return out, bytes(inst.memory())

    end = 65536  # the probe's one page; its malloc always answers 4096
    gives = [b"x", b"abc" * 100, bytearray(b"\x00\xff"), memoryview(b"view"), b"y" * (end - 4096),
             b"z" * (end - 4096 + 1)]
    for data in gives:
        fast = run(lambda inst, host, data=data: host.give(data))
        assert fast == run(lambda inst, host, data=data: host._give_py(data)), len(data)
    trapped = run(lambda inst, host: (inst.call("set_trap_alloc", 1), host.give(b"abc")))
    assert trapped[0] is GuestTrapped
    pairs = [(0, 1, 4, 2), (end - 4, 0xDEADBEEF, end - 8, 7), (end - 3, 1, 0, 2), (8, 5, end - 3, 6),
             (8, -1, 12, 2**32 + 3), (2**32 - 1, 1, 8, 1)]
    for p1, v1, p2, v2 in pairs:
        args = (p1, v1, p2, v2)
        fast = run(lambda inst, host, args=args: host.write_u32_pair(*args))
        assert fast == run(lambda inst, host, args=args: host._write_u32_pair_py(*args)), (p1, p2)


def test_memory_cap_refuses_growth(compiled: CompiledModule) -> None:
    inst, _ = instance(compiled, memory_limit=2 * 65536)
    assert inst.call("grow", 1) == 1
    assert inst.call("grow", 1) == 0xFFFFFFFF  # memory.grow answers -1


def test_deadline_stops_a_loop_and_is_rearmed_between_calls(compiled: CompiledModule) -> None:
    inst, _ = instance(compiled, deadline_s=0.05)
    start = time.monotonic()
    with pytest.raises(WasmTrap, match=r"deadline exceeded: the callback ran longer than 0.05 s"):
        inst.call("spin", 1)
    assert time.monotonic() - start < 5
    # many short calls spread over several deadlines: each call gets its own budget
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        assert inst.call("echo", 1) == 1


def test_instances_share_the_prelinked_module_but_not_their_hosts(compiled: CompiledModule) -> None:
    a, host_a = instance(compiled)
    b, host_b = instance(compiled)
    assert compiled.instance_pre()[0] is compiled.instance_pre()[0]
    a.call("log_then_mark", 1, 0, 0)
    b.call("log_then_mark", 2, 0, 0)
    a.call("log_then_mark", 3, 0, 0)
    assert [s[1] for s in host_a.seen] == [1, 3]
    assert [s[1] for s in host_b.seen] == [2]
    assert marker(a) == marker(b) == 1
    a.memory()[100:104] = b"\0\0\0\0"
    assert marker(b) == 1  # separate stores, separate memories


def test_threads_dispatch_hostcalls_to_their_own_instance(compiled: CompiledModule) -> None:
    pairs = [instance(compiled) for _ in range(3)]
    errors: list[BaseException] = []

    def work(inst: WasmInstance, level: int) -> None:
        try:
            for _ in range(2000):
                inst.call("log_then_mark", level, 0, 0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(inst, i)) for i, (inst, _) in enumerate(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, ((_inst, host), t) in enumerate(zip(pairs, threads)):
        assert len(host.seen) == 2000
        assert {s[1] for s in host.seen} == {i}
        assert {s[4] for s in host.seen} == {t.ident}


def test_real_filters_in_threads_keep_their_streams_apart() -> None:
    from conftest import fixture_wasm

    compiled = CompiledModule.load(fixture_wasm("hello_world-wasm32-unknown-unknown"))
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            plugin = Host().load_plugin(compiled)
            for i in range(200):
                s = plugin.http_stream()
                s.send_request_headers({":authority": f"{name}-{i}", ":path": "/"}, end_of_stream=True)
                assert s.request_headers["x-hello"] == f"Hello world from {name}-{i}"
                s.send_response_headers({":status": "200"}, end_of_stream=True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_the_boundary_follows_the_hosts_log_level_and_observer(compiled: CompiledModule) -> None:
    """The level below which the C trampoline answers proxy_log itself is the host's log level
    while no observer is attached, 0 (none) with one, updated the moment either changes:
    below it a log never reaches the host's proxy_log (in C), at or above it, or with an
    observer (which sees every hostcall), it does."""
    from proxywasm_host.core.observer import HostcallObserver
    from proxywasm_host.core.types import LogLevel
    from proxywasm_host.runtime import _capi

    inst, host = instance(compiled)
    boundary = inst._boundary
    assert boundary.drop_logs_below == 0  # Recorder: log level TRACE, nothing is below it
    host.log_level = LogLevel.WARN
    assert boundary.drop_logs_below == int(LogLevel.WARN)

    def reaches_python(level: LogLevel) -> bool:
        before = len(host.seen)
        assert inst.call("log_then_mark", int(level), 0, 0) == 0
        return len(host.seen) > before

    assert reaches_python(LogLevel.WARN)
    assert reaches_python(LogLevel.INFO) is not _capi.SPEEDUPS  # dropped in C when built
    host.observer = HostcallObserver()
    assert boundary.drop_logs_below == 0
    assert reaches_python(LogLevel.INFO)
    host.observer = None
    assert boundary.drop_logs_below == int(LogLevel.WARN)
    assert reaches_python(LogLevel.INFO) is not _capi.SPEEDUPS
    host.log_level = LogLevel.TRACE
    assert reaches_python(LogLevel.DEBUG)


def test_the_boundary_is_the_declared_struct() -> None:
    """The crossings take the Boundary (C: its struct, ctypes: PyBoundary) and nothing else;
    its fields are set through its constructor and setters."""
    from proxywasm_host.runtime import _capi

    kinds = [_capi.PyBoundary] + ([_capi._speedups.Boundary] if _capi.SPEEDUPS else [])
    for kind in kinds:
        with pytest.raises(ValueError):
            kind(0, [])
        b = kind(4096, [None])
        assert b.host_fns == [None] and b.pending is None and b.drop_logs_below == 0
        b.set_log_filter(3)
        assert b.drop_logs_below == 3
        b.set_log_filter(-1)
        assert b.drop_logs_below == 0
        err = RuntimeError("parked")
        b.pending = err
        assert b.pending is err
        b.pending = None
        assert b.pending is None
        assert bytes(b.memory()) == b""  # no memory export known yet: an empty view
    if _capi.SPEEDUPS:
        with pytest.raises(TypeError):
            _capi._speedups.Boundary(4096, (None,))  # host_fns is a list (read as one in C)
        with pytest.raises(TypeError):
            _capi._speedups.Boundary(4096, []).pending = "not an exception"
        with pytest.raises(TypeError, match="Boundary"):
            _capi._speedups.call(None, "f", object(), 0, 1, 0, False, 1)
        with pytest.raises(TypeError, match="Boundary"):
            _capi._speedups.set_active(object())


def test_the_c_crossings_are_built_and_in_use() -> None:
    """`pip install` builds proxywasm_host/runtime/_speedups.c; a silent fallback to ctypes would
    cost a third of the per-request time, so the suite says so (unless asked for ctypes)."""
    import os

    from proxywasm_host.runtime import _capi

    if os.environ.get("PROXYWASM_HOST_NO_SPEEDUPS"):
        assert not _capi.SPEEDUPS
        return
    assert _capi.SPEEDUPS, "proxywasm_host.runtime._speedups is not built: run `pip install -e .` with a C compiler"
    assert _capi.call is _capi._speedups.call


def test_the_ctypes_crossings_behave_the_same(tmp_path: Any) -> None:
    """This file, the hostile-guest suite and the raw hostcall probes, again, on the ctypes
    fallback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if os.environ.get("PROXYWASM_HOST_NO_SPEEDUPS"):
        pytest.skip("already running on the ctypes crossings")
    tests = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PROXYWASM_HOST_NO_SPEEDUPS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(tests / "runtime" / "test_runtime_fastpath.py"), str(tests / "harness" / "test_hostile_guests.py"),
         str(tests / "core" / "test_hostcalls_wat.py")],
        env=env, cwd=tests.parent, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" in proc.stdout  # the skip above, in the child
