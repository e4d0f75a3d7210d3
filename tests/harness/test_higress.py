"""Higress's ABI (marker proxy_abi_version_0_2_100): its Redis calls answered by the test
and by a real redis-server, buffer type 9, and what Envoy 1.40 cannot do with it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from conftest import WAT

from proxywasm_host import Host, Status
from proxywasm_host.core.higress import parse_resp, resp_length
from proxywasm_host.errors import HarnessUsageError

HIGRESS = WAT / "higress_redis.wat"


def _request(plugin):  # type: ignore[no-untyped-def]
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/", ":method": "GET", ":authority": "x"}, end_of_stream=True)
    return stream


def test_redis_call_answered_by_the_test() -> None:
    plugin = Host().load_plugin(HIGRESS)
    assert plugin.abi_version == "0.2.100"
    assert plugin.vm.host.redis_clusters == {"redis_cluster": ("", "", 1000)}  # proxy_redis_init at VM start
    stream = _request(plugin)
    assert stream.request_paused
    call = plugin.redis_call()
    assert (call.cluster, call.command, call.token) == ("redis_cluster", [b"PING"], 7)
    assert call.context_id == stream.context_id and call.root_context_id == plugin.context_id
    call.respond(b"+PONG\r\n")
    assert not stream.request_paused
    assert stream.upstream_request is not None
    assert ("x-redis", "PONG") in stream.upstream_request.headers
    assert plugin.log_messages("info") == ["redis replied PONG"]
    with pytest.raises(HarnessUsageError, match="already answered"):
        call.respond(b"+PONG\r\n")
    second = _request(plugin)
    plugin.redis_call().fail()
    assert ("x-redis", "error") in second.upstream_request.headers  # type: ignore[union-attr]
    assert [c.token for c in plugin.redis_calls] == [7, 11]
    with pytest.raises(HarnessUsageError, match="one complete RESP reply"):
        _request(plugin)
        plugin.redis_call().respond(b"+PONG")


def test_redis_reply_buffer_exists_only_during_the_callback() -> None:
    plugin = Host().load_plugin(HIGRESS)
    stream = _request(plugin)
    assert plugin.vm.host.last_buffer_type == 9
    assert plugin.root.get_buffer(9)[0] == Status.NOT_FOUND
    plugin.redis_call().respond(b"+hello there\r\n")
    # the guest read the reply from buffer 9 inside proxy_on_redis_call_response
    assert ("x-redis", "hello there") in stream.upstream_request.headers  # type: ignore[union-attr]
    assert plugin.root.get_buffer(9)[0] == Status.NOT_FOUND


def test_redis_hostcalls_refuse_unknown_clusters() -> None:
    plugin = Host(clusters=["other"]).load_plugin(HIGRESS)
    assert plugin.vm.host.redis_clusters == {}  # proxy_redis_init: BAD_ARGUMENT for an unknown cluster
    stream = _request(plugin)
    assert not stream.request_paused  # proxy_redis_call refused (no init): the filter continues
    assert plugin.redis_calls == []


def test_non_higress_modules_keep_envoys_buffer_range() -> None:
    plugin = Host().load_plugin(WAT / "hostcall_probe.wat")
    assert plugin.vm.host.last_buffer_type == 8  # buffer 9 stays BAD_ARGUMENT for ABI 0.2.1


def test_resp_framing() -> None:
    assert resp_length(b"+OK\r\n") == 5
    assert resp_length(b"$3\r\nbar\r\n") == 9
    assert resp_length(b"$3\r\nba") is None
    assert resp_length(b"$-1\r\n") == 5
    assert resp_length(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") == 20
    assert resp_length(b"*2\r\n$3\r\nGET\r\n") is None
    assert parse_resp(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") == ([b"GET", b"k"], 20)


@pytest.fixture
def redis_server():  # type: ignore[no-untyped-def]
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs Debian's redis-server (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if c.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def test_redis_call_answered_by_a_real_redis_server(redis_server: str) -> None:
    plugin = Host(redis={"redis_cluster": redis_server}).load_plugin(HIGRESS)
    stream = _request(plugin)
    assert not stream.request_paused  # answered right after the callback returned
    assert ("x-redis", "PONG") in stream.upstream_request.headers  # type: ignore[union-attr]
    assert plugin.redis_calls[0].state == "answered"
    assert plugin.log_messages("info") == ["redis replied PONG"]


def test_unreachable_redis_fails_the_call() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    plugin = Host(redis={"redis_cluster": f"127.0.0.1:{port}"}).load_plugin(HIGRESS)
    stream = _request(plugin)
    assert ("x-redis", "error") in stream.upstream_request.headers  # type: ignore[union-attr]
    assert plugin.redis_calls[0].state == "failed"


def test_readme_higress_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Higress modules") : readme.index("## The CLI")]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    exec(block, namespace)
    assert ("x-redis", "PONG") in namespace["stream"].upstream_request.headers  # type: ignore[attr-defined]


def test_higress_functions_do_not_link_for_envoy_abis(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from proxywasm_host.errors import ModuleLoadError

    wat = tmp_path / "redis_in_021.wat"
    wat.write_text(
        '(module (import "env" "proxy_redis_call" (func (param i32 i32 i32 i32 i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))'
        ' (func (export "malloc") (param i32) (result i32) (i32.const 1024)))'
    )
    with pytest.raises(ModuleLoadError, match=r"proxy_redis_call exists only in ABI 0\.2\.100 \(Higress's, not Envoy's\), not in 0\.2\.1"):
        Host().load_plugin(wat)
