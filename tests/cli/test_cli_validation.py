"""Input validation at the CLI's edges (issue 14.6): one line and the documented exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import RUST_TARGETS, fixture_wasm


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def hello() -> str:
    return str(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"))


@pytest.mark.parametrize("flag, value, expected", [
    ("-H", "  : v", "is not a header name"),
    ("-H", "bad name: v", "is not a header name"),
    ("--response-header", ": v", "expected 'name: value'"),
    ("--response-status", "1000", "outside 100-599"),
    ("--response-status", "99", "outside 100-599"),
    ("--response-status", "abc", "is not a status code"),
])
def test_bad_headers_and_statuses_are_usage_errors(hello, flag, value, expected):
    out = cli("run", hello, flag, value)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("command", ["run", "serve", "fuzz"])
def test_a_missing_config_file_exits_2(hello, tmp_path, command):
    # fuzz read @FILE through its own copy of the reader and exited 1: one reader now (cli/args.py)
    out = cli(command, hello, "--config", f"@{tmp_path / 'missing.json'}", "--port", "0") if command == "serve" \
        else cli(command, hello, "--config", f"@{tmp_path / 'missing.json'}")
    assert out.returncode == 2, out.stderr
    assert "cannot read" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_rejected_configuration_shows_the_filters_own_log(command):
    config = str(fixture_wasm(f"config-{RUST_TARGETS[0]}"))
    args = (command, config, "--config", "{not json") + (("--port", "0") if command == "serve" else ())
    out = cli(*args)
    assert out.returncode == 1, out.stderr
    assert "bad configuration: key must be a string" in out.stderr, out.stderr  # the filter's error!
    assert "proxy_on_configure returned false" in out.stderr
