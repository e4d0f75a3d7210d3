"""pytest conventions: an ini option for every command-line option, module facts / logs /
trace in JUnit XML, a teardown check for unanswered calls and host errors (opt-out per
test), host-function coverage summed over pytest-xdist workers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from conftest import fixture_wasm

pytest_plugins = ["pytester"]

HELLO = str(fixture_wasm("hello_world-wasm32-unknown-unknown"))
CALLOUT = str(fixture_wasm("http_callout-wasm32-unknown-unknown"))

PASSING = '''
def test_adds_x_hello(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "h", ":path": "/"}, end_of_stream=True)
    assert stream.request_headers["x-hello"] == "Hello world from h"
'''


def test_every_option_has_an_ini_twin(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"""
[pytest]
proxywasm_module = {HELLO}
proxywasm_show_logs = true
proxywasm_trace = true
proxywasm_coverage = true
proxywasm_backend = inprocess
proxywasm_teardown_check = true
""")
    pytester.makepyfile(test_user=PASSING)
    result = pytester.runpytest_subprocess("-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*proxy-wasm filter logs*",
        "*#2 -> :authority: h*",
        "*proxy-wasm hostcall trace*",
        "*proxy-wasm hostcall coverage*",
    ])
    options = {line.split()[0] for line in pytester.runpytest_subprocess("--help").stdout.lines
               if line.strip().startswith("--proxywasm")}
    inis = {line.split()[0] for line in pytester.runpytest_subprocess("--help").stdout.lines
            if line.strip().startswith("proxywasm_")}
    for opt in options:
        name = opt.split("=")[0].strip(",").removeprefix("--").replace("-", "_").replace("no_teardown", "teardown")
        assert name in inis, f"{opt} has no ini option"


def test_bad_backend_in_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nproxywasm_backend = docker\n")
    pytester.makepyfile(test_user=PASSING)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*proxywasm_backend = 'docker': expected one of inprocess, envoy*"])


LOADED_AT_START = '''
import sys

def test_what_the_plugin_loaded():
    assert "proxywasm_host.pytest_plugin" in sys.modules
    ours = sorted(m for m in sys.modules if m.startswith("proxywasm_host") or m.split(".")[0] == "wasmtime")
    print("LOADED", ours)
'''


def test_a_pytest_start_loads_only_the_plugin(pytester: pytest.Pytester) -> None:
    """Every pytest run pays for what the plugin imports when it registers: the package root,
    ``speedups`` (for the header line) and the plugin itself; the core (mypyc's library), the
    errors, the harness and wasmtime load when a fixture or a hook first needs them."""
    pytester.makepyfile(test_user=LOADED_AT_START)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["proxywasm-host: core *"])  # the header line is still there
    loaded = next(line.partition("LOADED ")[2] for line in result.stdout.lines if "LOADED " in line)
    assert loaded == "['proxywasm_host', 'proxywasm_host.pytest_plugin', 'proxywasm_host.speedups']"


def test_junit_xml_has_module_facts_logs_and_trace(pytester: pytest.Pytester) -> None:
    import hashlib
    from pathlib import Path

    pytester.makepyfile(test_user=PASSING)
    result = pytester.runpytest_subprocess("--proxywasm-module", HELLO, "--proxywasm-trace", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "out.xml").iter("property")}
    assert props["proxywasm_abi_version"] == "0.2.1"
    assert props["proxywasm_module_sha256"] == hashlib.sha256(Path(HELLO).read_bytes()).hexdigest()
    assert props["proxywasm_module"] == HELLO
    assert "#2 -> :authority: h" in props["proxywasm_logs"]
    assert "proxy_add_header_map_value" in props["proxywasm_trace"]


CALLOUT_TESTS = '''
import pytest

def test_forgets_the_callout(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "h", ":path": "/"}, end_of_stream=True)

@pytest.mark.proxywasm_unchecked
def test_forgets_it_on_purpose(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "h", ":path": "/"}, end_of_stream=True)

def test_answers_it(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "h", ":path": "/"}, end_of_stream=True)
    proxywasm_plugin.http_callout().respond(200, {}, b"ok")
'''


def test_teardown_check_fails_a_test_that_left_a_callout_unanswered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=CALLOUT_TESTS)
    result = pytester.runpytest_subprocess("--proxywasm-module", CALLOUT)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*proxy-wasm teardown check*",
        "*HTTP callout to 'auth_cluster' (token *) was never answered*",
        "FAILED *test_user.py::test_forgets_the_callout*",
    ])
    assert "pytest_plugin" not in result.stdout.str()  # __tracebackhide__ / no internal traceback
    pytester.runpytest_subprocess("--proxywasm-module", CALLOUT, "--proxywasm-no-teardown-check").assert_outcomes(
        passed=3)


def test_coverage_is_summed_over_xdist_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=PASSING, test_b=PASSING.replace("test_adds", "test_also_adds"))
    result = pytester.runpytest_subprocess("--proxywasm-module", HELLO, "--proxywasm-coverage", "-n", "2")
    result.assert_outcomes(passed=2)
    env = next(line for line in result.stdout.lines if line.startswith("env: "))
    assert not env.startswith("env: 0/"), env
    result.stdout.fnmatch_lines(["*2  proxy_add_header_map_value"])


PANIC_DEBUG = str(fixture_wasm("panic_debug-wasm32-unknown-unknown"))
SURVIVES = '''
def test_survives{n}(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({{":authority": "h", ":path": "/"}}, end_of_stream=True)
    assert stream.request_headers["x-survived"] == "yes"
'''


def _lcov_records(text: str) -> dict[str, dict[str, list[str]]]:
    records: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "SF":
            current = records.setdefault(value, {})
        elif line != "end_of_record":
            current.setdefault(key, []).append(value)
    return records


def test_filter_coverage_under_xdist_is_lcov_that_genhtml_loads(pytester: pytest.Pytester) -> None:
    import shutil
    import subprocess

    from conftest import REPO

    pytester.makepyfile(test_a=SURVIVES.format(n=1), test_b=SURVIVES.format(n=2))
    result = pytester.runpytest_subprocess(
        "-v", "-n", "2", "--proxywasm-module", PANIC_DEBUG, "--proxywasm-coverage",
        "--proxywasm-filter-coverage", "out/filter.info",
        "--proxywasm-filter-coverage-map", f"/fixtures/rust={REPO / 'fixtures/rust'}",
        "--proxywasm-filter-coverage-include", "*/fixtures/rust/*")
    result.assert_outcomes(passed=2)
    workers = {line.split("]")[0] for line in result.stdout.lines if line.startswith("[gw") and "PASSED" in line}
    assert workers == {"[gw0", "[gw1"}, result.stdout.str()  # one test on each worker
    result.stdout.fnmatch_lines(["*proxy-wasm filter coverage*", "*wrote *filter.info: 1 source files, lines 6/7, functions 3/3*",
                                 "*source files left out*"])
    # both workers' counts, summed: hostcalls and the filter's lines alike
    result.stdout.fnmatch_lines(["*2  proxy_add_header_map_value"])
    text = (pytester.path / "out" / "filter.info").read_text()
    source = str(REPO / "fixtures/rust/panic/src/lib.rs")
    record = _lcov_records(text)[source]
    da = dict(entry.split(",") for entry in record["DA"])
    assert da["32"] == "2" and da["37"] == "2" and da["33"] == "0"  # 33 panics: no test sent x-panic
    assert record["LF"] == ["7"] and record["LH"] == ["6"] and record["FNH"] == ["3"]
    genhtml = shutil.which("genhtml")
    if genhtml is None:
        pytest.skip("genhtml (Debian's lcov package) is not installed: the lcov was checked, not loaded")
    run = subprocess.run([genhtml, "-o", str(pytester.path / "html"), str(pytester.path / "out" / "filter.info")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "lines......: 85.7% (6 of 7 lines)" in run.stdout
    assert not run.stderr.strip(), run.stderr  # no warnings either
    assert (pytester.path / "html" / "index.html").exists()


def test_filter_coverage_as_cobertura_and_from_the_ini(pytester: pytest.Pytester) -> None:
    from conftest import REPO

    pytester.makeini(f"""
[pytest]
proxywasm_module = {PANIC_DEBUG}
proxywasm_filter_coverage = cov.xml
proxywasm_filter_coverage_map = /fixtures/rust={REPO / 'fixtures/rust'}
proxywasm_filter_coverage_include = */panic/src/*
""")
    pytester.makepyfile(test_a=SURVIVES.format(n=1))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    xml = ET.parse(pytester.path / "cov.xml").getroot()
    [cls] = list(xml.iter("class"))
    assert cls.get("filename", "").endswith("panic/src/lib.rs")
    hits = {line.get("number"): line.get("hits") for line in cls.find("lines").iter("line")}  # type: ignore[union-attr]
    assert hits["32"] == "1" and hits["33"] == "0"
