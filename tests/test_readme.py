"""Every example in README.md runs as written.

Python blocks run in a fresh interpreter from the repository root (the paths they name are
committed fixtures).  A block that starts with ``# test_<name>.py`` is a test file: it is
written out and run with the ``pytest`` commands of the ``sh`` block right after it.  Other
``sh`` blocks with ``proxywasm-host`` commands run too, except those that install packages,
start a server or run the whole suite (listed in SKIP_SH with the reason)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: sh command prefixes not run here, and why
SKIP_SH = {
    "python3 -m venv": "creates a virtual environment and installs the package (done by .ci/run)",
    "pip install": "installs packages",
    "python3 -m pytest": "the whole test suite",
    "proxywasm-host serve": "a long-running server (tests/serve runs it)",
    "proxywasm-host push": "needs a registry (tests/deploy)",
    "proxywasm-host pull": "needs a registry (tests/deploy)",
    "proxywasm-host build": "needs a Rust toolchain and a crate (tests/deploy)",
    "proxywasm-host istio": "emits YAML for a cluster (tests/deploy)",
    "proxywasm-host package": "writes an image (tests/deploy)",
    "envoy": "a real Envoy (tests/envoy)",
    "curl": "talks to a running server",
    "genhtml": "reads what the pytest command before it wrote (test_python_example_runs loads it with genhtml)",
}

#: options whose value is a file a README command writes: it goes to the test's tmp_path
OUTPUT_OPTIONS = ("--proxywasm-filter-coverage",)


def blocks() -> list[tuple[int, str, str]]:
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def _test_file_name(code: str) -> str | None:
    m = re.match(r"#\s*(test_\w+\.py)\s*\n", code)
    return m.group(1) if m else None


PYTHON = [(line, code) for line, lang, code in blocks() if lang == "python"]


@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"README.md:{line}" for line, _ in PYTHON])
def test_python_example_runs(line: int, code: str, tmp_path: Path) -> None:
    name = _test_file_name(code)
    if name is None:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stderr[-3000:]}"
        return
    (tmp_path / name).write_text(code)
    following = [c for ln, lang, c in blocks() if lang == "sh" and ln > line]
    commands = [cmd for cmd in following[0].splitlines() if cmd.startswith("pytest") and name in cmd] if following else []
    assert commands, f"README.md:{line}: no `pytest ... {name}` command in the sh block after it"
    for cmd in commands:
        args = shlex.split(cmd.split("  #")[0])[1:]
        args = [str(tmp_path / a) if a == name or (i and args[i - 1] in OUTPUT_OPTIONS) else a
                for i, a in enumerate(args)]
        outputs = [a for i, a in enumerate(args) if i and args[i - 1] in OUTPUT_OPTIONS]
        # run from the repository root, as a user of this README does (paths are relative to it)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                               *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        skipped_for_envoy = "--proxywasm-backend=envoy" in cmd and " skipped" in proc.stdout
        assert proc.returncode == 0 or skipped_for_envoy, f"README.md:{line}: `{cmd}` failed:\n{proc.stdout[-3000:]}"
        for output in outputs:  # e.g. the filter coverage lcov: written, and genhtml loads it
            assert Path(output).stat().st_size > 0, f"README.md:{line}: `{cmd}` wrote no {output}"
            genhtml = shutil.which("genhtml")
            if output.endswith(".info") and genhtml is not None:
                run = subprocess.run([genhtml, "--demangle-cpp", "-o", str(tmp_path / "html"), output],
                                     capture_output=True, text=True, check=False)
                assert run.returncode == 0, f"README.md:{line}: genhtml failed on {output}:\n{run.stderr}"


SH = [(line, cmd) for line, lang, code in blocks() if lang == "sh" for cmd in code.splitlines()
      if cmd.strip() and not cmd.startswith(("pytest", "#"))]


@pytest.mark.parametrize(("line", "cmd"), SH, ids=[f"README.md:{line}:{cmd.split()[1] if len(cmd.split()) > 1 else cmd}"
                                                   for line, cmd in SH])
def test_sh_example_runs(line: int, cmd: str) -> None:
    for prefix, why in SKIP_SH.items():
        if cmd.startswith(prefix):
            pytest.skip(why)
    command = cmd.split("  #")[0].strip()
    if "FILTER.wasm" in command or "[" in command:
        pytest.skip("a usage line, not a command")
    args = shlex.split(command)
    assert args[0] == "proxywasm-host", f"README.md:{line}: {cmd!r} is neither run nor listed in SKIP_SH"
    proc = subprocess.run([sys.executable, "-m", "proxywasm_host", *args[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    expected = 1 if args[1] == "fuzz" and "tenant-" in command else 0  # the fuzz example finds its bug
    assert proc.returncode == expected, f"README.md:{line}: `{cmd}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
