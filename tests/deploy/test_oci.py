"""``package`` / ``push`` / ``pull``: filters as OCI images, round-tripped through a real registry.

The registry is Debian's ``docker-registry`` (distribution 2.8), started on 127.0.0.1 with its
storage in a temporary directory; without the binary the registry tests are skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from proxywasm_host import Host
from proxywasm_host.deploy import oci

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "fixtures" / "wasm" / "hello_world-wasm32-unknown-unknown.wasm"
REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real OCI registry on 127.0.0.1:PORT (distribution's `registry serve`)."""
    if REGISTRY_BIN is None:
        pytest.skip("no docker-registry binary (apt-get install docker-registry)")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("requests")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if httpx.get(url + "/v2/", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("registry did not start: " + (root / "registry.log").read_text())
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------


def _blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def test_compat_layout_is_what_istio_extracts(tmp_path):
    result = oci.package(HELLO, tmp_path / "img", tag="hello:v1", root_ids=["my_root"])
    root = result.path
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    manifest = json.loads(_blob(root, entry["digest"]))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    (layer,) = manifest["layers"]  # the filter is the single layer
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    data = _blob(root, layer["digest"])
    assert layer["size"] == len(data)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = tar.getnames()
        assert names == ["plugin.wasm", "runtime-config.json"]
        assert tar.extractfile("plugin.wasm").read() == HELLO.read_bytes()  # type: ignore[union-attr]
        config = json.loads(tar.extractfile("runtime-config.json").read())  # type: ignore[union-attr]
    assert config == {"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"], "config": {"rootIds": ["my_root"]}}
    image_config = json.loads(_blob(root, manifest["config"]["digest"]))
    assert image_config["rootfs"]["diff_ids"] == ["sha256:" + __import__("hashlib").sha256(gzip.decompress(data)).hexdigest()]
    # Istio's rules take the module back out
    with oci.read_layout(root) as lay:
        digest, doc = lay.manifest()
        assert digest == result.manifest_digest
        module, cfg, variant = oci.extract(doc, lay.blob)
    assert (module, cfg, variant) == (HELLO.read_bytes(), config, "compat")


def test_packaging_is_reproducible_and_tar_output_works(tmp_path):
    a = oci.package(HELLO, tmp_path / "a", tag="v1")
    b = oci.package(HELLO, tmp_path / "b.tar", tag="x:v1")
    assert a.manifest_digest == b.manifest_digest
    assert tarfile.is_tarfile(b.path)
    with oci.read_layout(b.path) as lay:
        assert lay.tags() == ["v1"]
        module, _, _ = oci.extract(lay.manifest("v1")[1], lay.blob)
    assert module == HELLO.read_bytes()
    with pytest.raises(oci.OciError, match="no image tagged"):
        with oci.read_layout(a.path) as lay:
            lay.manifest("v2")


def test_oci_variant_has_the_two_wasme_layers(tmp_path):
    result = oci.package(HELLO, tmp_path / "img", tag="v1", root_ids=["a", "b"], variant="oci",
                         abi_versions=["v0-541b2c1155fffb15ccde92b8324f3e38f7339ba6"])
    manifest = result.manifest
    assert manifest["config"]["mediaType"] == "application/vnd.module.wasm.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.module.wasm.config.v1+json", "application/vnd.module.wasm.content.layer.v1+wasm"]
    assert _blob(result.path, manifest["layers"][1]["digest"]) == HELLO.read_bytes()
    config = json.loads(_blob(result.path, manifest["config"]["digest"]))
    assert config["abiVersions"] == ["v0-541b2c1155fffb15ccde92b8324f3e38f7339ba6"]
    assert config["config"]["rootIds"] == ["a", "b"]
    with oci.read_layout(result.path) as lay:
        assert oci.extract(lay.manifest()[1], lay.blob)[2] == "oci"


def test_extract_follows_istio_for_docker_images_and_rejects_others():
    layer = gzip.compress(oci._tar([("plugin.wasm", b"\0asm-docker")]))
    blobs = {"sha256:l": layer}
    docker = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
              "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:l"}]}
    assert oci.extract(docker, blobs.__getitem__) == (b"\0asm-docker", None, "docker")
    with pytest.raises(oci.OciError, match="layers"):
        oci.extract({"layers": [{"mediaType": "application/octet-stream", "digest": "sha256:l"}]}, blobs.__getitem__)
    with pytest.raises(oci.OciError, match="plugin.wasm not found"):
        empty = gzip.compress(oci._tar([("other.wasm", b"x")]))
        oci.extract({"layers": [{"mediaType": oci.COMPAT_LAYER_MEDIA_TYPE, "digest": "sha256:e"}]}, {"sha256:e": empty}.__getitem__)


def test_parse_ref():
    ref = oci.parse_ref("oci://127.0.0.1:5000/filters/hello:v1")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "filters/hello", "v1")
    assert ref.url == "oci://127.0.0.1:5000/filters/hello:v1" and ref.loopback
    assert oci.parse_ref("localhost:5000/x").target == "localhost:5000/x:latest"
    assert not oci.parse_ref("ghcr.io/org/filter:1").loopback
    digest = "sha256:" + "a" * 64
    assert oci.parse_ref(f"reg.example/x@{digest}").digest == digest
    for bad in ("hello:v1", "reg.example/", "reg.example/Upper:v1", "reg.example/x@sha256:12"):
        with pytest.raises(oci.OciError):
            oci.parse_ref(bad)


def test_package_cli_refuses_non_filters(tmp_path):
    bad = tmp_path / "x.wasm"
    bad.write_bytes(b"nope")
    out = cli("package", str(bad), "--tag", "x:v1", "-o", str(tmp_path / "o"))
    assert out.returncode == 2 and "not a valid WebAssembly module" in out.stderr


# ---------------------------------------------------------------------------------------------
# through a real registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["compat", "oci"])
def test_package_push_pull_run_round_trip(registry, tmp_path, variant):
    import httpx

    layout = tmp_path / "layout"
    out = cli("package", str(HELLO), "--tag", f"hello:{variant}", "--root-id", "", "--variant", variant,
              "-o", str(layout))
    assert out.returncode == 0, out.stderr
    digest = out.stdout.split()[1]
    ref = f"{registry}/filters/hello-world:{variant}"
    out = cli("push", str(layout), ref)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"oci://{ref}", digest]
    # what the registry serves, read straight from its API
    r = httpx.get(f"http://{registry}/v2/filters/hello-world/manifests/{variant}", trust_env=False,
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    manifest = r.json()
    expected_layers = (["application/vnd.oci.image.layer.v1.tar+gzip"] if variant == "compat" else
                       ["application/vnd.module.wasm.config.v1+json", "application/vnd.module.wasm.content.layer.v1+wasm"])
    assert [layer["mediaType"] for layer in manifest["layers"]] == expected_layers
    # pull it back and run it
    pulled = tmp_path / "pulled"
    out = cli("pull", f"oci://{ref}", "-o", str(pulled))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == [str(pulled / "plugin.wasm"), digest]
    assert (pulled / "plugin.wasm").read_bytes() == HELLO.read_bytes()
    assert json.loads((pulled / "runtime-config.json").read_text())["config"]["rootIds"] == [""]
    stream = Host().load_plugin(pulled / "plugin.wasm").http_stream()
    stream.send_request_headers({":authority": "localhost:8080", ":path": "/"}, end_of_stream=True)
    assert stream.request_headers["x-hello"] == "Hello world from localhost:8080"
    out = cli("run", str(pulled / "plugin.wasm"), "--json")
    assert out.returncode == 0
    assert ["x-hello", "Hello world from localhost:8080"] in json.loads(out.stdout)["upstream_request"]["headers"]
    # by digest too
    by_digest = oci.pull(f"{registry}/filters/hello-world@{digest}", tmp_path / "by-digest")
    assert by_digest.manifest_digest == digest and by_digest.variant == variant


def test_serve_an_image_straight_from_the_registry(registry, tmp_path):
    import httpx

    result = oci.package(HELLO, tmp_path / "layout", tag="v9")
    oci.push(result.path, f"{registry}/filters/served:v9")
    proc = subprocess.Popen([sys.executable, "-m", "proxywasm_host", "serve", f"oci://{registry}/filters/served:v9",
                             "--host", "127.0.0.1", "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        port = 0
        lines = []
        assert proc.stderr is not None
        for _ in range(20):
            line = proc.stderr.readline()
            lines.append(line)
            m = re.search(r"on http://[^ ]*:(\d+) ", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "".join(lines)
        assert any(result.manifest_digest in line for line in lines)
        r = httpx.get(f"http://127.0.0.1:{port}/headers", trust_env=False, timeout=10)
        assert r.json()["headers"]["X-Hello"] == f"Hello world from 127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def test_registry_errors_are_reported(registry, tmp_path):
    out = cli("pull", f"{registry}/filters/missing:v1", "-o", str(tmp_path / "x"))
    assert out.returncode == 1 and "no such image" in out.stderr
    layout = oci.package(HELLO, tmp_path / "layout", tag="v1").path
    out = cli("push", str(layout), f"127.0.0.1:{_free_port()}/filters/x:v1")
    assert out.returncode == 1 and "cannot reach the registry" in out.stderr
    out = cli("push", str(tmp_path / "nowhere"), f"{registry}/filters/x:v1")
    assert out.returncode == 2 and "no such layout" in out.stderr


def test_package_push_pull_json(registry, tmp_path):
    layout = tmp_path / "layout"
    out = cli("package", str(HELLO), "--tag", "hello:json", "-o", str(layout), "--json")
    assert out.returncode == 0, out.stderr
    packaged = json.loads(out.stdout)
    assert packaged["path"] == str(layout) and packaged["tag"] == "json" and packaged["variant"] == "compat"
    assert packaged["manifest_digest"].startswith("sha256:") and packaged["manifest"]["layers"]
    ref = f"{registry}/filters/hello-json:v1"
    out = cli("push", str(layout), ref, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ref": f"oci://{ref}", "manifest_digest": packaged["manifest_digest"]}
    out = cli("pull", f"oci://{ref}", "-o", str(tmp_path / "pulled"), "--json")
    assert out.returncode == 0, out.stderr
    pulled = json.loads(out.stdout)
    assert pulled["wasm"] == str(tmp_path / "pulled" / "plugin.wasm")
    assert pulled["manifest_digest"] == packaged["manifest_digest"] and pulled["variant"] == "compat"
