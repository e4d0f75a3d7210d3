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
