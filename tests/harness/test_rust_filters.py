"""Real filters built with the Rust proxy-wasm SDK (fixtures/rust), on both wasm targets."""

from __future__ import annotations

import pytest
from conftest import RUST_TARGETS, fixture_wasm

from proxywasm_host import Action, FilterFailed, FilterTrap, Host, HttpRequest, HttpResponse, LogLevel

GET = {":authority": "localhost:8080", ":path": "/headers", ":method": "GET", ":scheme": "http"}


@pytest.fixture(params=RUST_TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return request.param


def load(fixture: str, target: str, **options):  # type: ignore[no-untyped-def]
    return Host().load_plugin(fixture_wasm(f"{fixture}-{target}"), **options)


@pytest.mark.parametrize("name", ["hello_world", "hello_world_0_1"])
def test_tutorial_filter(name: str, target: str) -> None:
    plugin = load(name, target)
    assert plugin.abi_version == ("0.1.0" if name.endswith("0_1") else "0.2.1")
    stream = plugin.http_stream()
    assert stream.send_request_headers(GET, end_of_stream=True) == Action.CONTINUE
    assert stream.request_headers.get_all("x-hello") == ["Hello world from localhost:8080"]
    assert stream.upstream_request is not None
    assert stream.upstream_request.headers[-1] == ("x-hello", "Hello world from localhost:8080")
    trace = plugin.log_messages("trace")
    assert trace[:4] == [f"#2 -> {k}: {v}" for k, v in GET.items()]


def test_noop_filter_changes_nothing(target: str) -> None:
    plugin = load("noop", target)
    result = plugin.exchange(
        HttpRequest(headers=tuple(GET.items())), HttpResponse(headers=(("x-up", "1"),)), profile="raw"
    )
    assert result.upstream_request is not None and result.upstream_request.headers == list(GET.items())
    assert result.downstream_response is not None and result.downstream_response.headers == [("x-up", "1")]


def test_body_rewrite_buffers_and_replaces(target: str) -> None:
    plugin = load("body_rewrite", target)
    s = plugin.http_stream()
    s.send_request_headers({**GET, ":method": "POST"})
    assert s.send_request_body(b"hello ") == Action.PAUSE
    assert s.send_request_body(b"world", end_of_stream=True) == Action.CONTINUE
    assert s.upstream_request is not None and s.upstream_request.body == b"HELLO WORLD"
    s.send_response_headers({":status": "200", "content-length": "11"})
    s.send_response_body(b"hello ")
    s.send_response_body(b"world", end_of_stream=True)
    down = s.downstream_response
    assert down is not None and down.body == b"hello wasm"
    assert "content-length" not in dict(down.headers)
    assert plugin.log_messages("info") == [
        "request body size=6 eos=false",
        "request body size=11 eos=true",
        "response body size=6 eos=false",
        "response body size=11 eos=true",
    ]


def test_trailers_are_seen_and_edited(target: str) -> None:
    plugin = load("trailers", target)
    result = plugin.exchange(
        HttpRequest(headers=tuple({**GET, ":method": "POST"}.items()), body_chunks=(b"a", b"b"),
                    trailers=(("grpc-status", "0"), ("x-t", "1"))),
        HttpResponse(body_chunks=(b"ok",), trailers=(("x-rt", "2"),)),
    )
    up = result.upstream_request
    assert up is not None and up.body == b"ab"
    assert up.trailers == [("grpc-status", "0"), ("x-t", "1"), ("x-wasm-trailer", "seen 2")]
    down = result.downstream_response
    assert down is not None and down.trailers == [("x-rt", "2"), ("x-wasm-response-trailer", "ok")]
    messages = [r.message for r in result.logs if r.level == "info"]
    assert messages[:2] == ["request body size=1 eos=false", "request body size=1 eos=false"]
    assert "request trailer grpc-status: 0" in messages and "request trailer x-t: 1" in messages


def test_auth_local_reply(target: str) -> None:
    plugin = load("auth", target)
    denied = plugin.http_stream()
    assert denied.send_request_headers(GET, end_of_stream=True) == Action.PAUSE
    assert denied.upstream_request is None
    reply = denied.local_response
    assert reply is not None and reply.status_code == 403 and reply.body == b"access denied\n"
    assert reply.grpc_status is None
    down = denied.downstream_response
    assert down is not None and down.status == 403 and down.body == b"access denied\n"
    assert ("x-denied-by", "proxywasm-auth") in down.headers
    assert denied.completed
    assert plugin.log_messages("warn") == ["denied request to /headers"]

    allowed = plugin.http_stream()
    allowed.send_request_headers({**GET, "authorization": "Bearer letmein"}, end_of_stream=True)
    up = allowed.upstream_request
    assert up is not None and "authorization" not in dict(up.headers) and ("x-auth", "ok") in up.headers


@pytest.mark.parametrize(
    ("configuration", "header"),
    [(b"", ("x-config", "default")), (b'{"header": "x-team", "value": "blue"}', ("x-team", "blue"))],
)
def test_plugin_configuration(target: str, configuration: bytes, header: tuple[str, str]) -> None:
    plugin = load("config", target, configuration=configuration, vm_configuration="vm-settings")
    assert plugin.log_messages("info") == ["vm config: vm-settings"]
    s = plugin.http_stream()
    s.send_request_headers(GET, end_of_stream=True)
    s.send_response_headers({":status": "200"}, end_of_stream=True)
    assert header in s.upstream_request.headers  # type: ignore[union-attr]
    assert ("x-config-response", header[1]) in s.downstream_response.headers  # type: ignore[union-attr]


def test_bad_configuration_is_rejected(target: str) -> None:
    host = Host()
    with pytest.raises(FilterFailed, match="proxy_on_configure returned false"):
        host.load_plugin(fixture_wasm(f"config-{target}"), configuration="{not json")
    assert not host.plugins
    assert [e.message for e in host.logs if e.level == LogLevel.ERROR][0].startswith("bad configuration:")


def test_properties(target: str) -> None:
    plugin = load(
        "properties", target, root_id="props", vm_id="vm-1", name="my-plugin",
        properties={"my_custom_property": "custom!"},
    )
    s = plugin.http_stream()
    s.send_request_headers({**GET, "user-agent": "curl/8.5"}, end_of_stream=True)
    got = dict(s.upstream_request.headers)  # type: ignore[union-attr]
    assert got["x-plugin-name"] == "my-plugin"
    assert got["x-root-id"] == "props"
    assert got["x-vm-id"] == "vm-1"
    assert got["x-path"] == "/headers"
    assert got["x-method"] == "GET"
    assert got["x-source-address"] == "127.0.0.1:52400"
    assert got["x-source-port"] == "52400"
    assert got["x-user-agent"] == "curl/8.5"
    assert got["x-custom"] == "custom!"
    assert got["x-wasm-set"] == "from-filter"
    s.send_response_headers({":status": "201"}, end_of_stream=True)
    assert ("x-response-code", "201") in s.downstream_response.headers  # type: ignore[union-attr]


def test_ticks_on_the_virtual_clock(target: str) -> None:
    plugin = load("ticks", target)
    host = plugin.host
    assert plugin.tick_period_ms == 1000
    assert host.advance_time(999) == 0
    assert host.advance_time(1) == 1
    assert host.advance_time(seconds=5) == 2  # disabled itself after the 3rd tick
    assert plugin.log_messages("info") == ["tick 1", "tick 2", "tick 3"]
    nows = [int(m.split()[1]) for m in plugin.log_messages("debug") if m.startswith("now ")]
    assert nows[1] - nows[0] == 1_000_000_000
    s = plugin.http_stream()
    s.send_request_headers(GET, end_of_stream=True)
    assert s.request_headers["x-ticks"] == "3"


def test_pause_until_tick_resumes_from_the_root(target: str) -> None:
    plugin = load("pause_until_tick", target)
    s = plugin.http_stream()
    assert s.send_request_headers(GET) == Action.PAUSE
    assert s.send_request_body(b"held", end_of_stream=True) is None
    assert s.request_paused and s.upstream_request is None
    plugin.host.advance_time(100)
    assert not s.request_paused
    up = s.upstream_request
    assert up is not None and ("x-paused", "yes") in up.headers and up.body == b"held"
    assert plugin.log_messages("info") == [f"resumed {s.context_id}"]


def test_panic_is_reported_with_its_message(target: str) -> None:
    plugin = load("panic", target)
    ok = plugin.http_stream()
    ok.send_request_headers(GET, end_of_stream=True)
    assert ("x-survived", "yes") in ok.upstream_request.headers  # type: ignore[union-attr]
    boom = plugin.http_stream()
    with pytest.raises(FilterTrap) as info:
        boom.send_request_headers({**GET, "x-panic": "1"})
    assert info.value.callback == "proxy_on_request_headers"
    assert info.value.context_id == boom.context_id
    assert info.value.panic_message is not None and "boom: x-panic requested" in info.value.panic_message


def test_logging_levels_time_and_stdio(target: str) -> None:
    host = Host(start_time_ns=1_234_567_890_000_000_000)
    plugin = host.load_plugin(fixture_wasm(f"logging-{target}"))
    s = plugin.http_stream()
    s.send_request_headers(GET, end_of_stream=True)
    by_level = {lv: plugin.log_messages(lv) for lv in ("trace", "debug", "info", "warn", "error", "critical")}
    assert by_level["trace"] == ["trace message"]
    assert by_level["debug"] == ["debug message"]
    assert by_level["warn"] == ["warn message"]
    assert by_level["critical"] == ["critical message"]
    assert s.request_headers["x-now-nanos"] == "1234567890000000000"
    assert s.request_headers["x-log-level"] == "0"
    if target == "wasm32-wasip1":
        assert "stdout line" in by_level["info"] and "stderr line" in by_level["error"]
        assert [e.source for e in plugin.logs if e.message == "stdout line"] == ["stdout"]
    else:
        assert by_level["info"] == ["info message"]


def test_log_level_filtering() -> None:
    host = Host(log_level=LogLevel.WARN)
    plugin = host.load_plugin(fixture_wasm(f"logging-{RUST_TARGETS[0]}"))
    plugin.http_stream().send_request_headers(GET, end_of_stream=True)
    assert [e.level.label for e in plugin.logs] == ["warn", "error", "critical"]
    assert plugin.http_stream() is not None


@pytest.mark.parametrize("name", ["hello_world", "hello_world_0_1"])
def test_tutorial_filter_without_authority_panics_as_in_envoy(name: str) -> None:
    """Both tutorial filters unwrap the :authority lookup: 0.2.x gets NOT_FOUND, 0.1.x gets
    OK with a null pointer (ABI 0.1.0's empty value), and both SDKs turn that into None."""
    stream = Host().load_plugin(fixture_wasm(f"{name}-{RUST_TARGETS[0]}")).http_stream()
    with pytest.raises(FilterTrap, match="called `Option::unwrap\\(\\)` on a `None` value"):
        stream.send_request_headers({":path": "/"}, end_of_stream=True)


def test_plugins_with_the_same_vm_id_share_a_vm_and_shared_data() -> None:
    host = Host()
    a = host.load_plugin(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"), root_id="a", vm_id="shared")
    b = host.load_plugin(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"), root_id="b", vm_id="shared")
    assert a.vm is b.vm and (a.context_id, b.context_id) == (1, 2)
    c = host.load_plugin(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"), root_id="c", vm_id="other")
    assert c.vm is not a.vm and c.context_id == 1
