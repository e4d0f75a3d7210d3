"""CLI conventions: --version, every default in --help, documented exit statuses."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import REPO, WAT, fixture_wasm

from proxywasm_host.cli.main import EXIT_STATUS, _parser


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_version() -> None:
    from proxywasm_host import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"proxywasm-host {__version__} (wasmtime 50.")


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        out.append((name, parser))
        for inner in parser._actions:
            if isinstance(inner, argparse._SubParsersAction):
                out += [(f"{name} {n}", p) for n, p in inner.choices.items()]
    return out


@pytest.mark.parametrize(("name", "parser"), _commands(), ids=[n for n, _ in _commands()])
def test_every_default_is_in_help(name: str, parser: argparse.ArgumentParser) -> None:
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, "", []) or action.default is argparse.SUPPRESS:
            continue
        assert "default" in text.split(action.option_strings[-1], 1)[1].split(" --")[0] or str(action.default) in text, (
            f"`proxywasm-host {name} --help` does not show the default of {action.option_strings[-1]}")


def test_exit_statuses_are_documented_and_kept() -> None:
    assert EXIT_STATUS in " ".join(run_cli("--help").stdout.split()) or "exit status:" in run_cli("--help").stdout
    assert "## Exit status" in (REPO / "README.md").read_text()
    assert run_cli("run").returncode == 2  # usage error: no module given
    assert run_cli("run", str(WAT / "unknown_import.wat")).returncode == 2  # load error
    assert run_cli("run", str(WAT / "trap_in_headers.wat")).returncode == 1  # the filter failed
    assert run_cli("run", str(fixture_wasm("hello_world-wasm32-unknown-unknown"))).returncode == 0
