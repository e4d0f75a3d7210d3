"""serve under bad input (issue 14): request smuggling shapes, slow clients, connection limits, shutdown.

Every server here listens on 127.0.0.1; every client loop is bounded in time.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("h2")
httpx = pytest.importorskip("httpx")

from test_server import HELLO, REPO, SERVERS, _start_cli, get, serving  # noqa: E402


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _read_all(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything until the server closes (or ``limit`` seconds)."""
    sock.settimeout(limit)
    out = b""
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _closed_within(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``limit``)."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - start
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - start


@pytest.mark.parametrize("http_server", SERVERS)
def test_content_length_with_transfer_encoding_is_refused_like_envoy(http_server):
    """Issue 14.1: both length headers → 400 and the connection closed (Envoy's codec); the body
    is never forwarded with the stale length."""
    with serving(HELLO, access_log=True, http_server=http_server) as srv:
        sock = _connect(srv.port)
        body = b"x" * 50
        sock.sendall(b"POST /anything HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        answer = _read_all(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"connection: close" in answer.lower()
        # never reached the filter or the upstream (hypercorn lets it through to serve's ASGI
        # layer, which refuses it: counted as a refused request)
        assert srv.server.stats["requests"] == srv.server.stats["bad_requests"]
        assert srv.server.plugin.streams == [] and "/anything" not in srv.out.text.split("[access]")[0]
        assert get(srv.url + "/get").status_code == 200  # and the server goes on


def test_trickled_headers_are_closed_at_the_request_headers_timeout():
    """Issue 14.3: clients sending their headers one byte at a time are answered 408 and closed
    at --request-headers-timeout (Envoy's request_headers_timeout), each of them.  Builtin server
    only: hypercorn has no request headers timeout (its read_timeout is per read)."""
    with serving(HELLO, request_headers_timeout=1.0, http_server="builtin") as srv:
        socks = [_connect(srv.port) for _ in range(20)]
        request = b"GET /get HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
        start = time.monotonic()
        closed: dict[int, float] = {}
        i = 0
        while len(closed) < len(socks) and time.monotonic() - start < 6 and i < len(request):
            for n, sock in enumerate(socks):
                if n in closed:
                    continue
                try:
                    sock.sendall(request[i:i + 1])
                except OSError:
                    closed[n] = time.monotonic() - start
            i += 1
            time.sleep(0.1)
        for n, sock in enumerate(socks):
            if n not in closed:
                took = _closed_within(sock, 5.0 - (time.monotonic() - start))
                if took is not None:
                    closed[n] = time.monotonic() - start
            sock.close()
        assert len(closed) == len(socks), f"only {len(closed)} of {len(socks)} slow clients closed"
        assert max(closed.values()) < 3.5, closed
        assert get(srv.url + "/get").status_code == 200


def test_a_request_headers_timeout_answers_408():
    """Builtin server only (hypercorn has no request headers timeout)."""
    with serving(HELLO, request_headers_timeout=0.5, http_server="builtin") as srv:
        sock = _connect(srv.port)
        sock.sendall(b"GET /get HTTP/1.1\r\nHost: local")
        answer = _read_all(sock, 5)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer


@pytest.mark.parametrize("http_server", SERVERS)
def test_a_connection_without_requests_is_closed_at_the_idle_timeout(http_server):
    with serving(HELLO, connection_idle_timeout=0.5, http_server=http_server) as srv:
        fresh = _connect(srv.port)
        used = _connect(srv.port)
        used.sendall(b"GET /get HTTP/1.1\r\nHost: localhost\r\n\r\n")
        used.settimeout(5)
        assert used.recv(65536).startswith(b"HTTP/1.1 200")
        for sock in (fresh, used):
            took = _closed_within(sock, 5)
            assert took is not None and took < 3, took
            sock.close()


@pytest.mark.parametrize("http_server", SERVERS)
def test_a_body_trickled_past_the_request_timeout_gets_408(http_server):
    """Envoy's request_timeout: the whole request must arrive in time (the stream idle timeout
    alone never fires for a client sending a byte now and then)."""
    with serving(HELLO, request_timeout=1.0, idle_timeout=30, http_server=http_server) as srv:
        sock = _connect(srv.port)
        sock.sendall(b"POST /post HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        start = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        while time.monotonic() - start < 5 and not answer:
            try:
                sock.sendall(b"x")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - start < 3


def test_max_connections_closes_the_ones_over_the_limit():
    """Builtin server only: hypercorn has no connection limit (serve refuses the flag with it)."""
    with serving(HELLO, max_connections=2, http_server="builtin") as srv:
        first, second = _connect(srv.port), _connect(srv.port)
        time.sleep(0.2)
        third = _connect(srv.port)
        assert _closed_within(third, 3) is not None  # closed at accept
        third.close()
        for sock in (first, second):
            sock.sendall(b"GET /get HTTP/1.1\r\nHost: localhost\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(0.2)
        assert get(srv.url + "/get").status_code == 200  # room again
        second.close()


@pytest.mark.parametrize("http_server", SERVERS)
def test_h2_max_concurrent_streams_is_advertised_and_held(http_server):
    import h2.connection
    import h2.events

    with serving(HELLO, max_concurrent_streams=3, http_server=http_server) as srv:
        sock = _connect(srv.port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        sock.settimeout(5)
        settings = None
        deadline = time.monotonic() + 5
        while settings is None and time.monotonic() < deadline:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings = {k: v.new_value for k, v in event.changed_settings.items()}
            sock.sendall(conn.data_to_send())
        sock.close()
        assert settings is not None and settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 3


@pytest.mark.parametrize("http_server", SERVERS)
@pytest.mark.parametrize("path", ["/get", "/delay/8"])
def test_shutdown_with_an_open_http2_connection_is_quick_and_clean(path, http_server):
    """Issue 14.6: Ctrl-C with an HTTP/2 connection open (idle after a request, or with a
    request in flight): GOAWAY, in-flight requests get --graceful 1 s, no traceback.  (Before,
    with a request in flight, serve did not exit at all within a minute.)"""
    import h2.connection
    import h2.events

    proc, port, lines = _start_cli(str(HELLO), "--host", "127.0.0.1", "--port", "0", "--http-server", http_server)
    try:
        sock = _connect(port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        sock.settimeout(0.5)
        ended = False
        deadline = time.monotonic() + (1.0 if path != "/get" else 10)
        while not ended and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            for event in conn.receive_data(data):
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
        assert ended == (path == "/get")
        start = time.monotonic()
        proc.send_signal(2)
        code = proc.wait(15)
        took = time.monotonic() - start
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    log = "".join(lines)
    assert code in (0, 130), log
    assert took < 3.5, (took, log)
    assert "Traceback" not in log, log


def test_serve_runs_on_hypercorn_through_its_public_api_only():
    """Issue 16: serve is on hypercorn (the default) without patching it: after serving requests
    over both protocols, every function and class attribute of every hypercorn module is the
    one hypercorn defined (the old serve replaced H2Protocol.stream_send and hooked request
    handling); the package imports only hypercorn.asyncio, hypercorn.config and hypercorn.run (--workers); importing serve
    loads no hypercorn (only serving does)."""
    code = ("import sys, proxywasm_host.serve.server, proxywasm_host.net.upstream;"
            "print('hypercorn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    imported = set()
    for path in (REPO / "proxywasm_host").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].split(".")[0] == "hypercorn":
                imported.add(words[1])
    assert imported == {"hypercorn.asyncio", "hypercorn.config", "hypercorn.run"}, imported

    def snapshot() -> dict[str, object]:
        found = {}
        for name, module in list(sys.modules.items()):
            if name == "hypercorn" or name.startswith("hypercorn."):
                for attr, value in vars(module).items():
                    found[f"{name}.{attr}"] = value
                    if isinstance(value, type) and value.__module__ == name:
                        for cattr, cvalue in vars(value).items():
                            found[f"{name}.{attr}.{cattr}"] = cvalue
        return found

    import hypercorn.asyncio  # noqa: F401  # what serve loads, before it runs
    import hypercorn.protocol.h2  # noqa: F401
    import hypercorn.protocol.h11  # noqa: F401
    before = snapshot()
    with serving(HELLO) as srv:
        assert get(srv.url + "/get").status_code == 200
        assert "HTTP server: hypercorn" in srv.out.text
    from proxywasm_host.envoy import send_request
    from proxywasm_host.http.scenario import HttpRequest

    with serving(HELLO) as srv:
        result = send_request(srv.port, HttpRequest(headers=((":path", "/get"), (":authority", "x"), ("te", "trailers"))),
                              http2=True)
        assert result.response is not None and result.response.status == 200
    after = snapshot()
    changed = sorted(k for k in before if k in after and after[k] is not before[k] and not k.endswith("__dict__"))
    assert not changed, changed


def test_max_connections_needs_the_builtin_server():
    out = subprocess.run([sys.executable, "-m", "proxywasm_host", "serve", str(HELLO), "--port", "0",
                          "--max-connections", "2"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "--max-connections needs --http-server builtin" in out.stderr


# ---------------------------------------------------------------------------------------------
# memory: bodies stream through at flat memory
# ---------------------------------------------------------------------------------------------


def _rss_mib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in MiB."""
    status = open(f"/proc/{pid}/status").read()
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) // 1024
    return values["VmRSS"], values["VmHWM"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("http_server", SERVERS)
def test_a_large_post_streams_through_at_flat_memory(http_server):
    """Issue 14.2: a 48 MB POST through serve to the built-in echo (the whole body counted and
    hashed by the echo, never held) leaves the process's peak RSS within a few MiB of where it
    started (it grew by ~300 MiB per 100 MB before)."""
    import hashlib

    size, chunk = 48 * 1024 * 1024, b"0123456789abcdef" * 4096
    proc, port, lines = _start_cli(str(HELLO), "--host", "127.0.0.1", "--port", "0", "--http-server", http_server)
    try:
        assert get(f"http://127.0.0.1:{port}/get").status_code == 200  # warm
        start, _ = _rss_mib(proc.pid)
        with httpx.Client(trust_env=False, timeout=60) as client:
            r = client.post(f"http://127.0.0.1:{port}/post", content=(chunk for _ in range(size // len(chunk))))
        after, peak = _rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)
    info = r.json()
    assert r.status_code == 200 and info["body_length"] == size and info["data"] is None
    assert info["body_sha256"] == hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    assert peak - start < 24, (start, peak, after)
    assert after - start < 16, (start, peak, after)


# ---------------------------------------------------------------------------------------------
# the failure policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, failed, after", [(None, 503, 503), ("fail_open", 200, 200), ("fail_reload", 503, 200)])
def test_a_panicking_filter_is_loud_and_the_failure_policy_is_offered(policy, failed, after):
    """Issue 14.4: the tutorial filter panics on a non-UTF-8 header value.  The start-up log says
    which policy is in force and what it means; the first failure is logged loudly; fail_closed
    (the default) then answers 503 to everyone, fail_open and fail_reload keep serving."""
    args = [str(HELLO), "--host", "127.0.0.1", "--port", "0"] + (["--failure-policy", policy] if policy else [])
    proc, port, lines = _start_cli(*args)
    try:
        sock = _connect(port)
        sock.sendall(b"GET /get HTTP/1.1\r\nHost: localhost\r\nX-Bad: \xff\xfe\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        sock.close()
        assert first.startswith(b"HTTP/1.1 %d" % failed), first
        statuses = [get(f"http://127.0.0.1:{port}/get").status_code for _ in range(3)]
        time.sleep(0.3)
    finally:
        proc.send_signal(2)
        proc.wait(15)
    time.sleep(0.2)
    log = "".join(lines)
    shown = policy or "fail_closed"
    assert f"failure policy {shown}" in log.split("THE FILTER FAILED")[0]  # said at start-up
    assert log.count("THE FILTER FAILED") == 1, log
    assert statuses == [after] * 3, (statuses, log)


# ---------------------------------------------------------------------------------------------
# one request-header normaliser (http/profiles.py) for serve and the profiles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("te, seen", [("trailers", "trailers"), ("trailers, deflate", "trailers"),
                                      ("deflate;q=0.5, trailers", "trailers"), ("deflate", None)])
@pytest.mark.parametrize("http_server", SERVERS)
def test_serve_normalises_te_like_the_profiles(te, seen, http_server):
    """Envoy keeps ``te`` only as ``trailers`` when that is one of its tokens; serve used to keep
    it only when the whole value was ``trailers``.  Both now use envoy_request_headers."""
    from proxywasm_host.http.profiles import envoy_request_headers

    profile = dict(envoy_request_headers([(":authority", "localhost"), ("te", te)], protocol="HTTP/1.1"))
    assert profile.get("te") == seen
    with serving(HELLO, http_server=http_server) as srv:
        headers = get(srv.url + "/headers", headers={"te": te}).json()["headers"]
    assert headers.get("Te") == seen
