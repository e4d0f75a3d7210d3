"""Trap reports: the guest's panic message first, then the filter's frames by name and, where
the module has DWARF line tables, source file:line; in full in the exception, `run` (text
and --json), serve's log and a failing pytest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import WAT, fixture_wasm

from proxywasm_host import Host
from proxywasm_host.errors import FilterTrap, TrapFrame, filter_frames, parse_backtrace

pytest_plugins = ["pytester"]

PANIC = "panic-wasm32-unknown-unknown"
PANIC_DEBUG = "panic_debug-wasm32-unknown-unknown"
PANIC_REQUEST = {":authority": "a", ":path": "/", "x-panic": "1"}


def trap_of(fixture: str) -> FilterTrap:
    plugin = Host().load_plugin(fixture_wasm(fixture))
    with pytest.raises(FilterTrap) as info:
        plugin.http_stream().send_request_headers(PANIC_REQUEST, end_of_stream=True)
    return info.value


def test_release_build_names_the_filters_function_after_the_panic_message() -> None:
    trap = trap_of(PANIC)
    text = str(trap)
    lines = text.splitlines()
    assert lines[0] == "filter trapped in proxy_on_request_headers (context 2)"
    assert lines[1:3] == ["  panicked at panic/src/lib.rs:33:13:", "  boom: x-panic requested"]
    assert lines[3] == "  wasm trap: wasm `unreachable` instruction executed"
    # the filter's frames, innermost first, without the panic machinery above them
    shown = filter_frames(trap.frames)
    assert shown[0].function == "<panic::PanicFilter as proxy_wasm::traits::HttpContext>::on_http_request_headers"
    assert shown[-1].function == "proxy_on_request_headers"
    assert "    " + shown[0].function in lines
    assert not any("rust_panic" in line or "panic_fmt" in line for line in lines)
    # every frame stays available, in wasmtime's order, crate hashes removed
    assert trap.frames[0].function == "__rustc::rust_panic" and trap.frames[0].module == "panic.wasm"
    assert [f.index for f in trap.frames] == list(range(len(trap.frames)))
    assert all(f.file is None for f in trap.frames)  # stripped build: names only
    assert trap.headline == (
        "filter trapped in proxy_on_request_headers (context 2): "
        "panicked at panic/src/lib.rs:33:13: boom: x-panic requested"
    )


def test_debug_build_gives_source_file_and_line() -> None:
    trap = trap_of(PANIC_DEBUG)
    frame = filter_frames(trap.frames)[0]
    assert frame == TrapFrame(
        index=frame.index, offset=frame.offset, function="on_http_request_headers",
        file="/fixtures/rust/panic/src/lib.rs", line=33, column=13,
    )
    assert "    on_http_request_headers at /fixtures/rust/panic/src/lib.rs:33:13" in str(trap).splitlines()
    # functions the compiler inlined into a frame share its offset and say so
    inlined = [f for f in trap.frames if f.inlined]
    assert inlined and all(any(g.index == f.index and not g.inlined for g in trap.frames) for f in inlined)
    assert any(f.file and f.file.endswith("proxy-wasm-0.2.5/src/dispatcher.rs") for f in trap.frames)


def test_deadline_is_reported_not_cut() -> None:
    plugin = Host(callback_deadline_s=0.2).load_plugin(fixture_wasm("busy_loop-wasm32-unknown-unknown"))
    with pytest.raises(FilterTrap) as info:
        plugin.http_stream().send_request_headers({":path": "/", "x-spin": "1"}, end_of_stream=True)
    lines = str(info.value).splitlines()
    assert lines[1] == "  deadline exceeded: the callback ran longer than 0.2 s"
    assert any("on_http_request_headers" in line for line in lines[2:])


def test_parse_backtrace_ignores_text_outside_the_backtrace() -> None:
    assert parse_backtrace("wasm trap: out of bounds memory access") == ()
    frames = parse_backtrace(
        "error while executing at wasm backtrace:\n    0:   0x2a - m.wasm!f\n\nCaused by:\n    0: not a frame"
    )
    assert frames == (TrapFrame(0, 0x2A, "f", "m.wasm"),)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True, timeout=60, check=False)


def test_run_prints_the_whole_report() -> None:
    proc = run_cli("run", str(fixture_wasm(PANIC_DEBUG)), "-H", "x-panic: 1")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "proxywasm-host: filter trapped in proxy_on_request_headers (context 2)"
    assert "  boom: x-panic requested" in lines
    assert "    on_http_request_headers at /fixtures/rust/panic/src/lib.rs:33:13" in lines


def test_run_json_reports_the_trap_with_frames() -> None:
    proc = run_cli("run", str(fixture_wasm(PANIC_DEBUG)), "-H", "x-panic: 1", "--json")
    assert proc.returncode == 1
    trap = json.loads(proc.stdout)["trap"]
    assert trap["callback"] == "proxy_on_request_headers"
    assert trap["panic_message"] == "panicked at panic/src/lib.rs:33:13:\nboom: x-panic requested"
    assert trap["trap"] == "wasm trap: wasm `unreachable` instruction executed"
    first = trap["filter_frames"][0]
    assert (first["function"], first["file"], first["line"], first["column"]) == (
        "on_http_request_headers", "/fixtures/rust/panic/src/lib.rs", 33, 13)
    assert len(trap["frames"]) > len(trap["filter_frames"])


def test_wat_trap_without_a_name_section_still_reports() -> None:
    proc = run_cli("run", str(WAT / "trap_in_headers.wat"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:4] == [
        "proxywasm-host: filter trapped in proxy_on_request_headers (context 2)",
        "  panicked at src/lib.rs:7:9: boom",
        "  wasm trap: wasm `unreachable` instruction executed",
        "  backtrace (innermost first):",
    ]


@pytest.mark.parametrize("fixture", [PANIC, PANIC_DEBUG])
def test_failing_pytest_shows_panic_and_frames(pytester: pytest.Pytester, fixture: str) -> None:
    pytester.makepyfile(
        test_user="""
        def test_panics(proxywasm_plugin):
            stream = proxywasm_plugin.http_stream()
            stream.send_request_headers({":authority": "a", ":path": "/", "x-panic": "1"}, end_of_stream=True)
        """
    )
    result = pytester.runpytest_subprocess("--proxywasm-module", str(fixture_wasm(fixture)))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "boom: x-panic requested" in out
    assert "on_http_request_headers" in out
    if fixture == PANIC_DEBUG:
        assert "on_http_request_headers at /fixtures/rust/panic/src/lib.rs:33:13" in out
    else:
        assert "<panic::PanicFilter as proxy_wasm::traits::HttpContext>::on_http_request_headers" in out
