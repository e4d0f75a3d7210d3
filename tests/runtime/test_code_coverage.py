"""Coverage of the filter's own code: the module is instrumented at load (runtime/instrument.py),
keyed by its DWARF line tables (runtime/dwarf.py), counted per VM and summed
(runtime/coverage.py)."""

from __future__ import annotations

import gc
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import wasmtime
from conftest import REPO, fixture_wasm

from proxywasm_host import Host
from proxywasm_host.runtime.coverage import CodeCoverage, CoverageData, SourceFilter, build_report, cobertura, lcov
from proxywasm_host.runtime.dwarf import line_rows
from proxywasm_host.runtime.instrument import COUNTERS_EXPORT, custom_sections, instruction_offsets, instrument, layout
from proxywasm_host.runtime.module import CompiledModule

PANIC_DEBUG = fixture_wasm("panic_debug-wasm32-unknown-unknown")
PANIC_SRC = "/fixtures/rust/panic/src/lib.rs"
#: fixtures/rust/panic/src/lib.rs: 32 reads x-panic, 33 panics, 37 ends the callback without a panic
LINE_IF, LINE_PANIC, LINE_END = 32, 33, 37
SOURCES = SourceFilter(root=REPO, path_map=[("/fixtures/rust", "fixtures/rust")])


#: what some fixtures need to start (their root id)
LOAD_OPTIONS = {"as_hello_world": {"root_id": "as_hello_world", "configuration": "{}"}}


def _exchange(host: Host, wasm: Path, headers: dict[str, str]) -> tuple[list[tuple[str, str]], list[str], object]:
    plugin = host.load_plugin(wasm, **LOAD_OPTIONS.get(wasm.stem, {}))  # type: ignore[arg-type]
    stream = plugin.http_stream()
    stream.send_request_headers({":authority": "a", ":path": "/p", **headers}, end_of_stream=True)
    return stream.request_headers.items(), [f"{e.level.label} {e.message}" for e in plugin.logs], stream.local_response


@pytest.mark.parametrize("name", ["panic_debug-wasm32-unknown-unknown", "hello_world-wasm32-wasip1",
                                  "auth-wasm32-unknown-unknown", "go_hello_world-wasip1", "as_hello_world",
                                  "go_ex_http_headers-wasip1"])
def test_instrumented_module_behaves_like_the_original(name: str) -> None:
    wasm = fixture_wasm(name)
    collector = CodeCoverage()
    for headers in ({}, {"authorization": "Bearer letmein", "x-other": "1"}):
        plain = _exchange(Host(), wasm, headers)
        covered = _exchange(Host(code_coverage=collector), wasm, headers)
        assert covered == plain
    module = CompiledModule.load(wasm).instrumented()
    assert module.coverage_map is not None and COUNTERS_EXPORT in module.export_types
    wasmtime.Module.validate(wasmtime.Engine(), module._wasm)
    data = collector.data().modules[CompiledModule.load(wasm).sha256]
    assert sum(1 for _f, _l, count in data.functions.values() if count) > 3  # the counters ran


def test_a_line_counts_only_when_its_branch_runs() -> None:
    collector = CodeCoverage()
    host = Host(code_coverage=collector, raise_on_trap=False)
    for _ in range(3):
        _exchange(host, PANIC_DEBUG, {})
    lines = next(iter(collector.data().modules.values())).lines
    assert lines[(PANIC_SRC, LINE_IF)] == 3
    assert lines[(PANIC_SRC, LINE_END)] == 3
    assert lines[(PANIC_SRC, LINE_PANIC)] == 0
    _exchange(host, PANIC_DEBUG, {"x-panic": "1"})
    lines = next(iter(collector.data().modules.values())).lines
    assert lines[(PANIC_SRC, LINE_PANIC)] == 1
    assert lines[(PANIC_SRC, LINE_IF)] == 4
    assert lines[(PANIC_SRC, LINE_END)] == 3


def test_counts_are_read_once_and_survive_the_vm() -> None:
    collector = CodeCoverage()
    _exchange(Host(code_coverage=collector), PANIC_DEBUG, {})
    first = collector.data()
    again = collector.data()  # the live VM's counters were zeroed when read: not counted twice
    assert first.modules[next(iter(first.modules))].lines[(PANIC_SRC, LINE_IF)] == 1
    assert again.modules[next(iter(again.modules))].lines[(PANIC_SRC, LINE_IF)] == 1
    _exchange(Host(code_coverage=collector), PANIC_DEBUG, {})
    gc.collect()  # that host and its VM are gone: their counters were read when the VM went
    assert collector.data().modules[next(iter(first.modules))].lines[(PANIC_SRC, LINE_IF)] == 2


def test_merged_data_sums_counts() -> None:
    collector = CodeCoverage()
    _exchange(Host(code_coverage=collector), PANIC_DEBUG, {})
    worker = collector.data().to_plain()
    merged = CoverageData.from_plain(worker)
    merged.add(CoverageData.from_plain(worker))
    module = next(iter(merged.modules.values()))
    assert module.lines[(PANIC_SRC, LINE_IF)] == 2
    fn = next(entry for name, entry in module.functions.items() if "on_http_request_headers" in name and "PanicFilter" in name)
    assert fn == [PANIC_SRC, 31, 2]


def test_reports_keep_the_sources_on_disk() -> None:
    collector = CodeCoverage()
    _exchange(Host(code_coverage=collector), PANIC_DEBUG, {})
    report = build_report(collector.data(), SOURCES)
    source = str(REPO / "fixtures/rust/panic/src/lib.rs")
    assert list(report.files) == [source]
    assert any(f.startswith("/cargo/registry/") for f in report.left_out)  # SDK sources: not here
    text = lcov(report)
    assert f"SF:{source}\n" in text and f"DA:{LINE_PANIC},0\n" in text and f"DA:{LINE_IF},1\n" in text
    assert text.count("end_of_record") == 1
    xml = ET.fromstring(cobertura(report, REPO))
    hits = {int(line.get("number", 0)): int(line.get("hits", 0)) for line in xml.iter("line")}
    assert hits[LINE_PANIC] == 0 and hits[LINE_IF] == 1
    # without the path map the remapped paths exist nowhere: nothing is kept, everything is said
    unmapped = build_report(collector.data(), SourceFilter(root=REPO))
    assert unmapped.files == {} and PANIC_SRC in unmapped.left_out
    excluded = build_report(collector.data(), SourceFilter(root=REPO, path_map=SOURCES.path_map, exclude=["*/panic/*"]))
    assert excluded.files == {}


def test_module_without_dwarf_gets_function_coverage_only() -> None:
    collector = CodeCoverage()
    _exchange(Host(code_coverage=collector), fixture_wasm("go_hello_world-wasip1"), {})
    report = build_report(collector.data(), SOURCES)
    assert report.files == {}
    [(origin, ran, total, _note)] = report.function_only
    assert origin.endswith("go_hello_world-wasip1.wasm") and 0 < ran < total


WAT = """
(module
  (memory (export "memory") 1)
  (table 2 funcref)
  (elem (i32.const 0) $double $inc)
  (type $t (func (param i32) (result i32)))
  (func $double (param i32) (result i32) local.get 0 i32.const 2 i32.mul)
  (func $inc (param i32) (result i32) local.get 0 i32.const 1 i32.add)
  (func (export "run") (param $x i32) (result i32) (local $acc i64) (local $f f64)
    f64.const 1.5 local.set $f
    i64.const -1234567890123 local.set $acc
    block $out (result i32)
      block $a
        block $b
          local.get $x
          br_table $a $b $a
        end
        local.get $x i32.const 1 call_indirect (type $t)
        br $out
      end
      local.get $x i32.const 0 call_indirect (type $t)
    end
    i32.const 0 i32.const 7 i32.const 16 memory.fill
    i32.const 4 i32.load8_u offset=3
    i32.add
    v128.const i32x4 1 2 3 4 i32x4.extract_lane 2 i32.add
    local.get $x local.get $x i32.const 1 select (result i32) i32.add
    i32.extend8_s
    local.get $f i32.trunc_sat_f64_s i32.add
    local.get $acc i64.const 1 i64.add drop)
)
"""


def test_a_counter_before_every_instruction_keeps_the_module_valid_and_its_results() -> None:
    data = bytes(wasmtime.wat2wasm(WAT))
    info = layout(data)
    code = data[info.code_section.start : info.code_section.end]  # type: ignore[union-attr]
    rows = [(offset, "run.wat", n + 1) for body in info.bodies
            for n, offset in enumerate(instruction_offsets(code, body.code, body.end))]
    assert len(rows) > 40
    result = instrument(data, rows)
    assert result.map.sites == len(rows) and result.map.dropped_rows == 0
    engine = wasmtime.Engine()

    def run(wasm: bytes, x: int) -> tuple[int, bytes]:
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, wasmtime.Module(engine, wasm), [])
        value = instance.exports(store)["run"](store, x)
        counters = instance.exports(store).get(COUNTERS_EXPORT)
        raw = counters.read(store, 0, 4 * result.map.sites) if isinstance(counters, wasmtime.Memory) else b""
        return value, bytes(raw)

    for x in (0, 1, 2, 5):
        value, counters = run(result.wasm, x)
        assert value == run(data, x)[0]
        assert any(counters)


def test_dwarf_rows_of_the_debug_fixture() -> None:
    data = PANIC_DEBUG.read_bytes()
    rows = line_rows(custom_sections(data))
    assert {line for _a, file, line in rows if file == PANIC_SRC} >= {LINE_IF, LINE_PANIC, LINE_END}
    assert line_rows(custom_sections(fixture_wasm("panic-wasm32-unknown-unknown").read_bytes())) == []
    instrumented = instrument(data, rows).wasm
    assert not any(name.startswith(".debug_") for name in custom_sections(instrumented))


def test_a_module_taken_from_the_disk_cache_unread_is_instrumented_from_its_file(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    wasm = tmp_path / "panic.wasm"
    shutil.copyfile(PANIC_DEBUG, wasm)
    child = f"""
from pathlib import Path
from proxywasm_host import Host
from proxywasm_host.runtime.coverage import CodeCoverage
from proxywasm_host.runtime.cache import ModuleCache
from proxywasm_host.runtime.module import ENGINE_SETTINGS, CompiledModule, engine
cache = ModuleCache(Path({str(tmp_path / "cache")!r}), engine(), ENGINE_SETTINGS, settle_s=0)
module = CompiledModule.load({str(wasm)!r}, cache_dir=cache)
print(module.cache_status, len(module._wasm))
collector = CodeCoverage()
plugin = Host(code_coverage=collector).load_plugin(module)
stream = plugin.http_stream()
stream.send_request_headers({{":authority": "a", ":path": "/"}}, end_of_stream=True)
print(next(iter(collector.data().modules.values())).lines[({PANIC_SRC!r}, {LINE_IF})])
"""
    runs = [subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, timeout=300)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert runs[0].stdout.split() == ["miss", str(len(PANIC_DEBUG.read_bytes())), "1"]
    assert runs[1].stdout.split() == ["hit", "0", "1"]  # known by its stamp: not read, then read to instrument
