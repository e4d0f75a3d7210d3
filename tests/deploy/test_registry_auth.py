"""push / pull against real password-protected registries (issue 14.5).

Two real ``docker-registry`` (distribution 2.8) processes on 127.0.0.1: one with htpasswd (Basic)
auth, the file made by ``htpasswd`` (apache2-utils); one with the registry token flow (Bearer),
its tokens ES256 JWTs signed with ``openssl`` by a small token server of this test that checks
the same user's password.  Every failure must come back as one line within 5 s.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from proxywasm_host.deploy import oci

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "fixtures" / "wasm" / "hello_world-wasm32-unknown-unknown.wasm"
REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
USER, PASSWORD = "alice", "s3cret-pw"

pytestmark = pytest.mark.skipif(REGISTRY_BIN is None, reason="no docker-registry (apt-get install docker-registry)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROXYWASM_HOST_REGISTRY")}
    full_env["DOCKER_CONFIG"] = full_env.get("TEST_DOCKER_CONFIG", "/nonexistent-docker-config")
    full_env.update(env or {})
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "proxywasm_host", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, check=False)
    return out, time.monotonic() - start


def _start_registry(root: Path, auth: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log, start_new_session=True)  # type: ignore[list-item]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("registry did not start: " + (root / "registry.log").read_text())


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    if shutil.which("htpasswd") is None:
        pytest.skip("no htpasswd (apt-get install apache2-utils)")
    root = tmp_path_factory.mktemp("basic-registry")
    made = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True)
    (root / "htpasswd").write_text(made.stdout)
    proc, address = _start_registry(root, f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n")
    yield address
    _stop(proc)


# -- the token flow: a token server signing ES256 JWTs with openssl ---------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _der_to_raw(sig: bytes) -> bytes:
    """An ECDSA DER signature (SEQUENCE of two INTEGERs) → JOSE's r || s, 32 bytes each."""
    assert sig[0] == 0x30
    i = 2 if sig[1] < 0x80 else 2 + (sig[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert sig[i] == 0x02
        n = sig[i + 1]
        value = sig[i + 2:i + 2 + n].lstrip(b"\0")
        out += value.rjust(32, b"\0")
        i += 2 + n
    return out


class _TokenServer:
    def __init__(self, root: Path, issuer: str, service: str) -> None:
        self.key, self.cert = root / "key.pem", root / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=token-signer"], capture_output=True, check=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], capture_output=True,
                             check=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.issuer, self.service = issuer, service
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests += 1
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if auth != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                body = json.dumps({"token": server.sign(access)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def sign(self, access: list[dict[str, object]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": USER, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                             capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64(_der_to_raw(der))}"


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    root = tmp_path_factory.mktemp("token-registry")
    tokens = _TokenServer(root, "test-issuer", "test-registry")
    proc, address = _start_registry(
        root, f"auth:\n  token:\n    realm: {tokens.url}\n    service: test-registry\n    issuer: test-issuer\n"
              f"    rootcertbundle: {tokens.cert}\n")
    yield address, tokens
    _stop(proc)
    tokens.httpd.shutdown()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return oci.package(HELLO, tmp_path_factory.mktemp("layout") / "hello.oci", tag="v1").path


# -- tests --------------------------------------------------------------------------------------------


def _round_trip(registry: str, layout: Path, tmp_path: Path, repo: str, *, args: tuple[str, ...] = (),
                env: dict[str, str] | None = None) -> None:
    pushed, _ = cli("push", str(layout), f"{registry}/{repo}:v1", *args, env=env)
    assert pushed.returncode == 0, pushed.stderr
    pulled, _ = cli("pull", f"{registry}/{repo}:v1", "-o", str(tmp_path / repo), *args, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / repo / "plugin.wasm").read_bytes() == HELLO.read_bytes()
    digest = pushed.stdout.split()[1]
    assert digest in pulled.stdout and digest == "sha256:" + hashlib.sha256(
        (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()).hexdigest()


def test_basic_auth_round_trip_with_flags(basic_registry, layout, tmp_path):
    _round_trip(basic_registry, layout, tmp_path, "flags/hello", args=("--username", USER, "--password", PASSWORD))


def test_basic_auth_credentials_from_the_environment(basic_registry, layout, tmp_path):
    env = {"PROXYWASM_HOST_REGISTRY_USERNAME": USER, "PROXYWASM_HOST_REGISTRY_PASSWORD": PASSWORD}
    _round_trip(basic_registry, layout, tmp_path, "env/hello", env=env)


def test_basic_auth_credentials_from_the_docker_config(basic_registry, layout, tmp_path):
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {basic_registry: {"auth": auth}}}))
    _round_trip(basic_registry, layout, tmp_path, "docker/hello", env={"DOCKER_CONFIG": str(config)})


def test_bearer_token_flow_round_trip(token_registry, layout, tmp_path):
    address, tokens = token_registry
    before = tokens.requests
    _round_trip(address, layout, tmp_path, "token/hello", args=("--username", USER, "--password", PASSWORD))
    assert tokens.requests > before  # the token server was asked


@pytest.mark.parametrize("creds, expected", [
    ((), "requires credentials"),
    (("--username", USER, "--password", "wrong"), f"refused the credentials of '{USER}'"),
])
def test_refused_credentials_fail_fast_with_one_line(basic_registry, token_registry, layout, tmp_path, creds, expected):
    for registry in (basic_registry, token_registry[0]):
        for command in (("push", str(layout), f"{registry}/x/hello:v1"),
                        ("pull", f"{registry}/x/hello:v1", "-o", str(tmp_path / "out"))):
            out, took = cli(*command, *creds)
            assert out.returncode == 1, out.stderr
            assert expected in out.stderr, out.stderr
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
            assert took < 5, took


def test_a_username_without_a_password_and_no_terminal_is_a_usage_error(basic_registry, tmp_path):
    out, took = cli("pull", f"{basic_registry}/x/hello:v1", "--username", USER, "-o", str(tmp_path))
    assert out.returncode == 2 and "no password" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert took < 5


def test_a_registry_that_is_down_fails_within_seconds(layout, tmp_path):
    dead = f"127.0.0.1:{_free_port()}"
    for command in (("push", str(layout), f"{dead}/x/hello:v1"), ("pull", f"{dead}/x/hello:v1", "-o", str(tmp_path))):
        out, took = cli(*command)
        assert out.returncode == 1 and "cannot reach the registry" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert took < 5, took


@pytest.mark.parametrize("ref, expected", [
    ("http://127.0.0.1:5000/x/hello:v1", "has no http://"),
    ("127.0.0.1:5000/X/hello:v1", "lower case"),
    ("127.0.0.1:5000/x/hello:-v1", "tag '-v1' is not valid"),
    ("127.0.0.1:5000/x//hello:v1", "is not valid"),
    ("127.0.0.1:5000/x/hello@sha256:abc", "a digest must be"),
    ("hello:v1", "expected REGISTRY"),
])
def test_malformed_references_are_usage_errors(ref, expected, tmp_path):
    out, took = cli("pull", ref, "-o", str(tmp_path))
    assert out.returncode == 2 and expected in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and took < 5
