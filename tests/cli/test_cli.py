"""The command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import RUST_TARGETS, WAT, fixture_wasm


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", ["hello_world", "hello_world_0_1"])
@pytest.mark.parametrize("target", RUST_TARGETS)
def test_run_tutorial_filter_json(name: str, target: str) -> None:
    wasm = fixture_wasm(f"{name}-{target}")
    proc = run_cli("run", str(wasm), "-H", ":authority: localhost:8080", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["abi_version"] == ("0.1.0" if name.endswith("0_1") else "0.2.1")
    assert ["x-hello", "Hello world from localhost:8080"] in out["upstream_request"]["headers"]
    assert out["downstream_response"]["status"] == 200
    assert {"level": "trace", "message": "#2 -> :authority: localhost:8080"} in out["logs"]
    assert set(out) >= {"abi_version", "upstream_request", "downstream_response", "logs"}


def test_run_with_body_trailers_and_response() -> None:
    wasm = fixture_wasm(f"body_rewrite-{RUST_TARGETS[0]}")
    proc = run_cli(
        "run", str(wasm), "-H", ":method: POST", "--body", "hello ", "--body", "world",
        "--response-header", "content-length: 11", "--response-body", "hello world", "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["upstream_request"]["body"] == "HELLO WORLD"
    assert out["downstream_response"]["body"] == "hello wasm"


def test_local_reply_has_no_upstream_request() -> None:
    wasm = fixture_wasm(f"auth-{RUST_TARGETS[0]}")
    proc = run_cli("run", str(wasm), "--json")
    out = json.loads(proc.stdout)
    assert out["upstream_request"] is None
    assert out["downstream_response"]["status"] == 403
    assert out["downstream_response"]["body"] == "access denied\n"
    assert out["local_reply"]["status"] == 403


def test_trap_exits_non_zero_with_the_whole_report() -> None:
    proc = run_cli("run", str(WAT / "trap_in_headers.wat"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "proxywasm-host: filter trapped in proxy_on_request_headers (context 2)"
    assert lines[1:3] == ["  panicked at src/lib.rs:7:9: boom", "  wasm trap: wasm `unreachable` instruction executed"]


def test_load_error_exits_non_zero_naming_the_import() -> None:
    proc = run_cli("run", str(WAT / "unknown_import.wat"))
    assert proc.returncode == 2
    assert "env.proxy_make_coffee is not provided" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"header": "x-from-file", "value": "yes"}')
    proc = run_cli("run", str(fixture_wasm(f"config-{RUST_TARGETS[0]}")), "--config", f"@{cfg}", "--json")
    assert proc.returncode == 0, proc.stderr
    assert ["x-from-file", "yes"] in json.loads(proc.stdout)["upstream_request"]["headers"]


def test_inspect() -> None:
    proc = run_cli("inspect", str(fixture_wasm(f"hello_world-{RUST_TARGETS[1]}")), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["abi_version"] == "0.2.1"
    assert report["allocator"] == "proxy_on_memory_allocate"
    assert all(i["provided"] for i in report["imports"])
    assert any(i["module"] == "wasi_snapshot_preview1" for i in report["imports"])
    bad = run_cli("inspect", str(WAT / "unknown_import.wat"))
    assert bad.returncode == 1
    assert "MISSING env.proxy_make_coffee" in bad.stdout


def test_inspect_names_the_filter_kinds() -> None:
    """A module exporting the network callbacks can be a network filter; one without them
    is HTTP only; a root-only module is a VM-level service."""
    go = json.loads(run_cli("inspect", str(fixture_wasm("go_network-wasip1")), "--json").stdout)
    assert go["filter_kinds"] == ["http", "network"]  # the Go SDK exports both kinds
    http_only = run_cli("inspect", str(WAT / "callback_recorder.wat"))
    assert "filter kind: http: envoy.filters.http.wasm" in http_only.stdout
    assert "network" not in http_only.stdout.split("filter kind:")[1].splitlines()[0]
    tcp = json.loads(run_cli("inspect", str(WAT / "tcp_pauser.wat"), "--json").stdout)
    assert tcp["filter_kinds"] == ["network"]


def test_run_tcp_mode() -> None:
    proc = run_cli(
        "run", str(fixture_wasm("tcp_routing-wasm32-wasip1")), "--config", "backend_a,backend_b",
        "--tcp", "hello", "--tcp", "quit", "--source", "10.0.0.7:1234", "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cluster"] == "backend_b"
    assert out["upstream_received"] == "hello" and out["downstream_received"] == "HELLO"
    assert out["closed_by"] == "filter"
    assert "closing on quit" in [r["message"] for r in out["logs"]]
    refused = run_cli("run", str(WAT / "callback_recorder.wat"), "--tcp", "x")
    assert refused.returncode == 1 and "is not a network filter" in refused.stderr


def test_a_higress_module_is_named_as_such() -> None:
    """Higress's ABI marker (proxy_abi_version_0_2_100, its Go SDK's): this host runs it,
    inspect says it is Higress's and that Envoy 1.40 cannot load it."""
    inspected = run_cli("inspect", str(WAT / "higress_redis.wat"))
    assert inspected.returncode == 0, inspected.stdout
    assert "ABI version: 0.2.100, Higress's (Envoy 1.40 cannot load it)" in inspected.stdout
    assert "ok  env.proxy_redis_call" in inspected.stdout
    report = json.loads(run_cli("inspect", str(WAT / "higress_redis.wat"), "--json").stdout)
    assert report["other_host"] == "Higress" and report["abi_version"] == "0.2.100"
    ran = run_cli("run", str(WAT / "higress_redis.wat"))
    assert ran.returncode == 0, ran.stderr
    assert "upstream request: none" in ran.stdout  # held for its Redis call, which nobody answers


def test_run_writes_the_filter_coverage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import REPO

    wasm = fixture_wasm("panic_debug-wasm32-unknown-unknown")
    out = tmp_path / "run.info"
    for panic, code in ((False, 0), (True, 1)):
        proc = subprocess.run(
            [sys.executable, "-m", "proxywasm_host", "run", str(wasm), "--coverage", str(out),
             "--coverage-map", "/fixtures/rust=fixtures/rust", *(["-H", "x-panic: 1"] if panic else [])],
            capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == code, proc.stderr
        assert f"proxywasm-host: coverage: wrote {out}: 1 source files, lines 6/7, functions 3/3" in proc.stderr
        text = out.read_text()
        assert f"SF:{REPO / 'fixtures/rust/panic/src/lib.rs'}\n" in text
        # line 33 panics, line 37 ends the callback without a panic
        assert ("DA:33,1\n" in text and "DA:37,0\n" in text) if panic else ("DA:33,0\n" in text and "DA:37,1\n" in text)
