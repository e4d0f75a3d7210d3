"""Which compiled parts run (proxywasm_host/speedups.py): the core compiled by mypyc from its
own source, the C codec and the C crossings; one switch, PROXYWASM_HOST_NO_SPEEDUPS=1, for
all three; the same behaviour on both paths; `inspect` and the pytest header say which."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxywasm_host import speedups

REPO = Path(__file__).resolve().parents[1]
ON_PURE = bool(os.environ.get(speedups.SWITCH))


def run_python(code: str, *, pure: bool) -> str:
    env = dict(os.environ)
    env.pop(speedups.SWITCH, None)
    if pure:
        env[speedups.SWITCH] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_compiled_core_is_built_and_in_use() -> None:
    """`pip install` has mypyc compile the hot core modules; a silent fallback to the
    interpreted source would cost a third of the per-request time, so the suite says so
    (unless asked for the pure path)."""
    files = {name: str(importlib.import_module(name).__file__) for name in speedups.COMPILED_MODULES}
    if ON_PURE:
        assert all(f.endswith(".py") for f in files.values()), files
        return
    interpreted = [name for name, f in files.items() if f.endswith(".py")]
    assert not interpreted, f"not compiled (run `pip install -e .` with a C compiler): {interpreted}"
    assert speedups.describe()["core"] == "compiled"


PROBE = """
import json, sys
import proxywasm_host.speedups as s
before = s.describe()
from proxywasm_host.core import codec, stream
from proxywasm_host.core.hostcalls import base
from proxywasm_host.runtime import _capi
print(json.dumps({"before": before, "after": s.describe(), "summary": s.summary(),
                  "files": [stream.__file__, base.__file__], "c_codec": codec.C_CODEC, "c_crossings": _capi.SPEEDUPS}))
"""


def test_one_switch_turns_every_compiled_part_off() -> None:
    """With PROXYWASM_HOST_NO_SPEEDUPS=1 the compiled core modules are imported from their
    .py source, the codec is the Python one and the crossings are ctypes; describe(), asked
    before anything is imported, foretells what the imports then do."""
    pure = json.loads(run_python(PROBE, pure=True))
    assert all(f.endswith(".py") for f in pure["files"])
    assert pure["c_codec"] is False and pure["c_crossings"] is False
    assert pure["before"] == pure["after"]
    assert pure["after"]["core"] == "pure" and pure["after"]["compiled_modules"] == []
    assert pure["summary"] == "core pure, codec Python, crossings ctypes (PROXYWASM_HOST_NO_SPEEDUPS=1)"
    built = json.loads(run_python(PROBE, pure=False))
    assert built["before"] == built["after"]
    assert not any(f.endswith(".py") for f in built["files"])
    assert built["c_codec"] is True and built["c_crossings"] is True
    assert built["summary"] == f"core compiled (mypyc, {len(speedups.COMPILED_MODULES)} of {len(speedups.COMPILED_MODULES)} modules), codec C, crossings C"


EXCHANGES = """
import json
from proxywasm_host import Host, LogLevel
from proxywasm_host.core.headers import HeaderMap

out = []
for name, options in (("hello_world-wasm32-unknown-unknown", {}), ("go_hello_world-wasip1", {}),
                      ("as_hello_world", {"root_id": "as_hello_world", "configuration": "{}"}),
                      ("body_rewrite-wasm32-unknown-unknown", {})):
    host = Host(log_level=LogLevel.TRACE, trace=True)
    plugin = host.load_plugin(f"fixtures/wasm/{name}.wasm", **options)
    for path in ("/", "/hello", "/caf\\u00e9?q=1"):
        s = plugin.http_stream()
        s.send_request_headers([(":authority", "a.example"), (":path", path), (":method", "POST"), ("X-Up", "A")])
        s.send_request_body(b"hello body", end_of_stream=True)
        s.send_response_headers([(":status", "200"), ("content-type", "text/plain")])
        s.send_response_body(b"response body", end_of_stream=True)
        out.append([name, path, s.request_headers.items(), s.response_headers.items() if s.response_headers else None,
                    repr(s.local_response), [repr(c) for c in s.callbacks]])
    out.append([name, plugin.log_messages(), [str(r) for r in host.hostcall_trace], repr(plugin.vm.host.host_errors)])
h = HeaderMap([("B", "1"), (":path", "/"), ("b", b"\\xff")])
h.add(b":method", b"GET")
h.replace(b"b", b"2")
out.append([h.items(), repr(h), h == [(":path", "/"), (":method", "GET"), ("b", "2")]])
print(json.dumps(out))
"""


def test_the_compiled_and_the_pure_path_behave_the_same() -> None:
    """Four filters (Rust, Go, AssemblyScript, a body rewrite) through the same streams on
    both paths: the same headers, local replies, callbacks, logs and hostcall trace."""
    compiled = json.loads(run_python(EXCHANGES, pure=False))
    pure = json.loads(run_python(EXCHANGES, pure=True))
    assert compiled == pure
    assert any("x-hello" in json.dumps(entry) for entry in compiled)  # the filters did run


def test_the_pytest_header_says_which_path_runs(pytester: pytest.Pytester, monkeypatch: Any) -> None:
    pytester.makepyfile("def test_one():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"proxywasm-host: core {'pure' if ON_PURE else 'compiled'}*"])
    monkeypatch.setenv(speedups.SWITCH, "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["proxywasm-host: core pure, codec Python, crossings ctypes (PROXYWASM_HOST_NO_SPEEDUPS=1)"])


def test_inspect_says_which_path_runs() -> None:
    wasm = "fixtures/wasm/hello_world-wasm32-unknown-unknown.wasm"
    for pure in (True, False):
        text = run_python(f"import sys; from proxywasm_host.cli import main; sys.argv = ['proxywasm-host', 'inspect', {wasm!r}]; main()", pure=pure)
        line = text.strip().splitlines()[-1]
        assert line.startswith("this host:   core "), text
        assert ("core pure" in line) == pure
        report = json.loads(run_python(f"import sys; from proxywasm_host.cli import main; sys.argv = ['proxywasm-host', 'inspect', '--json', {wasm!r}]; main()", pure=pure))
        assert report["host"]["crossings"] == ("ctypes" if pure else "C")


def test_a_source_edited_after_the_build_runs_the_whole_core_from_source(tmp_path: Path) -> None:
    """In a checkout (setup.py beside the package), a compiled module's .py newer than mypyc's
    library is stale: the compiled code would run the old source.  An installed package (no
    setup.py) or one without a build is never stale."""
    import importlib.machinery

    package = tmp_path / "proxywasm_host"
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in speedups.COMPILED_MODULES:
        base = package.joinpath(*name.split(".")[1:])
        if name == "proxywasm_host.core.hostcalls":
            base.mkdir(parents=True, exist_ok=True)
            (base / "__init__.py").write_text("")
        else:
            base.parent.mkdir(parents=True, exist_ok=True)
            base.with_name(base.name + ".py").write_text("")
    assert speedups.stale_sources(package) == []  # no setup.py: not a checkout
    (tmp_path / "setup.py").write_text("")
    assert speedups.stale_sources(package) == []  # no build
    library = package / "core" / ("_compiled__mypyc" + suffix)
    library.write_text("")
    os.utime(library, (1_000_000, 2_000_000))  # built before every source was written
    assert speedups.stale_sources(package) == list(speedups.COMPILED_MODULES)
    for source in package.rglob("*.py"):
        os.utime(source, (1_000_000, 1_000_000))
    assert speedups.stale_sources(package) == []
    os.utime(package / "core" / "stream.py", (1_000_000, 3_000_000))
    assert speedups.stale_sources(package) == ["proxywasm_host.core.stream"]
    assert speedups.stale_sources() == []  # this checkout: built after its last edit
