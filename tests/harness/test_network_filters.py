"""Network (TCP) filters in-process: plugin.tcp_connection() runs a module the way Envoy's
envoy.filters.network.wasm runs it in front of tcp_proxy (tests/envoy/test_network_conformance.py
holds the same scenarios against a real Envoy)."""

from __future__ import annotations

import pytest
from conftest import RUST_TARGETS, WAT, fixture_wasm, u32

from proxywasm_host import Host, Status
from proxywasm_host.core.filter_state import parse_filter_state_args
from proxywasm_host.core.network import NetworkContext
from proxywasm_host.errors import HarnessUsageError
from proxywasm_host.harness import TcpScenario

CLUSTERS = "backend_a,backend_b"


def _names(conn) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.callback for c in conn.callbacks]


@pytest.mark.parametrize("target", RUST_TARGETS)
def test_rust_filter_routes_by_source_address_through_filter_state(target: str) -> None:
    plugin = Host().load_plugin(fixture_wasm(f"tcp_routing-{target}"), configuration=CLUSTERS)
    even = plugin.tcp_connection(source_address="10.0.0.2:4000", upstream_addresses={"backend_a": "10.9.9.9:80"})
    assert even.cluster == "backend_a" and even.connected_upstream
    assert even.filter_state == {"envoy.tcp_proxy.cluster": b"backend_a"}
    odd = plugin.tcp_connection(source_address="10.0.0.3:4000")
    assert odd.cluster == "backend_b"
    assert plugin.log_messages("info")[:2] == [
        "routed 10.0.0.2 to backend_a (filter state backend_a)",
        "routed 10.0.0.3 to backend_b (filter state backend_b)",
    ]
    even.send_downstream(b"hello")
    assert even.upstream_received == b"hello"
    even.send_upstream(b"hi there")
    assert even.downstream_received == b"HI THERE"  # rewritten with proxy_set_buffer_bytes
    assert "upstream 10.9.9.9:80" in plugin.log_messages("info")


@pytest.mark.parametrize("target", RUST_TARGETS)
def test_tcp_close_order_and_peer_types(target: str) -> None:
    """Client ends first: our FIN is flushed last, LocalClose; then on_done, on_log, on_delete."""
    plugin = Host().load_plugin(fixture_wasm(f"tcp_routing-{target}"), configuration=CLUSTERS)
    conn = plugin.tcp_connection()
    conn.send_downstream(b"abc")
    conn.close_downstream()
    assert not conn.closed
    conn.close_upstream()
    assert conn.closed and conn.closed_by == "downstream"
    assert _names(conn)[-7:] == [
        "proxy_on_downstream_data",
        "proxy_on_upstream_data",
        "proxy_on_upstream_connection_close",
        "proxy_on_downstream_connection_close",
        "proxy_on_done",
        "proxy_on_log",
        "proxy_on_delete",
    ]
    assert conn.callbacks[-4].args[1] == 1  # LOCAL
    assert plugin.log_messages("info")[-3:] == [
        "upstream closed (Unknown)",
        "downstream closed (Local)",
        "connection done: 3 bytes from downstream, 0 bytes from upstream",
    ]
    # upstream ends first: the client's FIN is read last, RemoteClose
    other = plugin.tcp_connection()
    other.close_upstream()
    other.close_downstream()
    assert other.closed_by == "upstream" and other.callbacks[-4].args == (other.context_id, 2)
    with pytest.raises(HarnessUsageError, match="connection is closed"):
        other.send_downstream(b"late")


def test_paused_data_is_reported_again_with_the_next_bytes() -> None:
    plugin = Host().load_plugin(fixture_wasm("tcp_routing-wasm32-wasip1"), configuration=CLUSTERS)
    conn = plugin.tcp_connection()
    assert conn.send_downstream(b"hold-") == 1
    assert conn.send_downstream(b"more-") == 1
    assert conn.upstream_received == b"" and conn.downstream_paused
    assert conn.send_downstream(b"go") == 0
    assert conn.upstream_received == b"hold-more-go"
    sizes = [c.args[1] for c in conn.callbacks if c.callback == "proxy_on_downstream_data"]
    assert sizes == [5, 10, 12]


def test_filter_closes_the_connection_after_the_callback() -> None:
    plugin = Host().load_plugin(fixture_wasm("tcp_routing-wasm32-wasip1"), configuration=CLUSTERS)
    conn = plugin.tcp_connection()
    conn.send_downstream(b"hi")
    conn.send_downstream(b"quit")
    assert conn.closed and conn.closed_by == "filter"
    assert conn.upstream_received == b"hi"  # the paused "quit" never reached the upstream
    assert _names(conn)[-4:] == ["proxy_on_downstream_connection_close", "proxy_on_done", "proxy_on_log", "proxy_on_delete"]
    assert conn.callbacks[-4].args[1] == 1  # LOCAL (Envoy closes with FlushWrite)


def test_go_network_filter_rewrites_and_counts() -> None:
    plugin = Host().load_plugin(fixture_wasm("go_network-wasip1"))
    result = plugin.tcp_exchange(TcpScenario(chunks=(b"ping", b"world"), close="upstream"))
    assert result.upstream_received == b"pongworld"
    assert result.downstream_received == b"pongworld"
    assert result.closed_by == "upstream"
    assert [r.message for r in result.logs][-3:] == [
        "upstream connection close!",
        "downstream connection close!",
        "connection complete!",
    ]
    assert plugin.metric("proxy_wasm_go.connection_counter") == 1


def test_http_only_module_is_refused_as_network_filter() -> None:
    plugin = Host().load_plugin(WAT / "callback_recorder.wat")
    with pytest.raises(HarnessUsageError, match="is not a network filter"):
        plugin.tcp_connection()


def test_held_connection_reads_nothing_until_the_filter_resumes() -> None:
    """tcp_proxy keeps reading disabled until it connected (Envoy 1.40): while the filter
    holds the new connection, the client's bytes are not read at all."""
    plugin = Host().load_plugin(WAT / "tcp_pauser.wat")
    conn = plugin.tcp_connection()
    assert not conn.connected_upstream
    assert conn.send_downstream(b"early") is None
    conn.send_downstream(b"-bytes")
    assert _names(conn) == ["proxy_on_new_connection"]
    vm = plugin.vm
    assert vm.call(conn.context, "resume", 3) == Status.UNIMPLEMENTED  # UPSTREAM
    assert vm.call(conn.context, "resume", 2) == Status.OK
    assert not conn.connected_upstream  # deferred until the guest call returns
    vm.flush()
    assert conn.connected_upstream and conn.upstream_received == b"early-bytes"
    assert conn.callbacks[-1].args == (conn.context_id, 11, 0)


def test_upstream_pause_holds_bytes_until_the_next_upstream_data() -> None:
    plugin = Host().load_plugin(WAT / "tcp_pauser.wat")
    conn = plugin.tcp_connection()
    plugin.vm.call(conn.context, "resume", 2)
    plugin.vm.flush()
    plugin.vm.call(conn.context, "set_data_action", 1)
    conn.send_upstream(b"ab")
    assert conn.downstream_received == b"" and conn.upstream_paused
    plugin.vm.call(conn.context, "set_data_action", 0)
    conn.send_upstream(b"cd")
    assert conn.downstream_received == b"abcd"
    assert [c.args[1] for c in conn.callbacks if c.callback == "proxy_on_upstream_data"] == [2, 4]


def test_network_buffers_properties_and_foreign_call_through_hostcalls() -> None:
    """DOWNSTREAM_DATA, connection properties and set_envoy_filter_state, driven with raw
    guest arguments through the probe module on a network context."""
    plugin = Host().load_plugin(WAT / "hostcall_probe.wat")
    ctx = NetworkContext(plugin.vm, plugin.root, source_address="10.1.1.1:555", upstream_addresses={"upstream": "10.2.2.2:80"})
    mem = plugin.vm.runtime.memory()  # type: ignore[attr-defined]
    scratch, ret = 0x8000, 0x7000

    def call(name: str, *args: int) -> int:
        return plugin.vm.call(ctx, f"call_{name}", *args)

    def put(data: bytes, addr: int = scratch) -> tuple[int, int]:
        mem[addr : addr + len(data)] = data
        return addr, len(data)

    def returned() -> bytes:
        ptr, size = u32(mem, ret), u32(mem, ret + 4)
        return bytes(mem[ptr : ptr + size])

    assert call("proxy_get_buffer_bytes", 2, 0, 100, ret, ret + 4) == Status.OK and returned() == b""
    assert call("proxy_set_buffer_bytes", 2, 0, 0, *put(b"x")) == Status.NOT_FOUND  # no data attached
    ctx.read_buffer += b"hello world"
    ctx._downstream_exposed = True
    assert call("proxy_get_buffer_bytes", 2, 6, 100, ret, ret + 4) == Status.OK and returned() == b"world"
    assert call("proxy_set_buffer_bytes", 2, 0, 5, *put(b"HOWDY")) == Status.OK
    assert call("proxy_set_buffer_bytes", 2, 3, 1, *put(b"?")) == Status.BAD_ARGUMENT  # Envoy: no middle edits
    assert call("proxy_set_buffer_bytes", 2, 99, 0, *put(b"!")) == Status.OK
    assert bytes(ctx.read_buffer) == b"HOWDY world!"
    assert call("proxy_get_property", *put(b"source\0address"), ret, ret + 4) == Status.OK
    assert returned() == b"10.1.1.1:555"
    assert call("proxy_get_property", *put(b"source\0port"), ret, ret + 4) == Status.OK
    assert returned() == (555).to_bytes(8, "little")
    assert call("proxy_get_property", *put(b"upstream\0address"), ret, ret + 4) == Status.NOT_FOUND  # not connected
    args_addr, args_len = put(b"\x0a\x17envoy.tcp_proxy.cluster\x12\x03far", 0x9000)
    name_addr, name_len = put(b"set_envoy_filter_state")
    assert call("proxy_call_foreign_function", name_addr, name_len, args_addr, args_len, ret, ret + 4) == Status.OK
    assert call("proxy_get_property", *put(b"filter_state\0envoy.tcp_proxy.cluster"), ret, ret + 4) == Status.OK
    assert returned() == b"far"
    bad_addr, bad_len = put(b"\x0a\x30short", 0x9000)
    name_addr, name_len = put(b"set_envoy_filter_state")
    assert call("proxy_call_foreign_function", name_addr, name_len, bad_addr, bad_len, ret, ret + 4) == Status.BAD_ARGUMENT
    ctx._start_tcp_proxy()
    assert ctx.cluster == "far"
    assert call("proxy_get_property", *put(b"upstream\0address"), ret, ret + 4) == Status.OK  # no such cluster address
    assert call("proxy_continue_stream", 3) == Status.UNIMPLEMENTED
    assert call("proxy_close_stream", 4) == Status.BAD_ARGUMENT


def test_set_envoy_filter_state_arguments() -> None:
    # path "envoy.tcp_proxy.cluster", value "b", span 2
    data = b"\x0a\x17envoy.tcp_proxy.cluster\x12\x01b\x18\x02"
    assert parse_filter_state_args(data) == ("envoy.tcp_proxy.cluster", b"b", 2)
    assert parse_filter_state_args(b"") == ("", b"", 0)
    assert parse_filter_state_args(b"\x0a\x05ab") is None  # truncated
    assert parse_filter_state_args(b"\x08\x01") is None  # path with the wrong wire type
    assert parse_filter_state_args(b"\x0a\x01\xff") is None  # not UTF-8


def test_set_envoy_filter_state_statuses_per_context() -> None:
    host = Host()
    plugin = host.load_plugin(WAT / "tcp_pauser.wat")
    conn = plugin.tcp_connection()
    ctx: NetworkContext = conn.context
    assert ctx.set_envoy_filter_state("envoy.tcp_proxy.cluster", b"x", 0) == Status.OK
    assert ctx.set_envoy_filter_state("no.such.factory", b"x", 0) == Status.NOT_FOUND
    assert ctx.set_envoy_filter_state("envoy.tcp_proxy.per_connection_idle_timeout_ms", b"soon", 0) == Status.BAD_ARGUMENT
    assert plugin.root.set_envoy_filter_state("envoy.tcp_proxy.cluster", b"x", 0) == Status.NOT_FOUND
    plugin.vm.call(ctx, "resume", 2)
    plugin.vm.flush()
    assert conn.cluster == "x"


def test_service_drains_a_queue_filled_by_http_filters_and_ticks() -> None:
    """Host.load_service: a VM-level service (Envoy's envoy.bootstrap.wasm singleton) in
    its own VM; the queue it registered gets the HTTP plugin's items, delivered after the
    enqueuing callback returns; its tick and shared data work across the VMs."""
    from proxywasm_host.http.scenario import HttpRequest

    host = Host()
    service = host.load_service(fixture_wasm("queue_drain-wasm32-wasip1"), vm_id="shared")
    web = host.load_plugin(fixture_wasm("queue_feeder-wasm32-unknown-unknown"), vm_id="shared", configuration="shared")
    assert service.vm is not web.vm
    drained = []
    for path in ("/a", "/b"):
        result = web.exchange(HttpRequest(headers=((":method", "GET"), (":path", path), (":authority", "x"))))
        assert result.upstream_request is not None
        headers = dict(result.upstream_request.headers)
        assert headers["x-queued"] == "yes"
        drained.append(headers["x-drained"])
    assert drained == ["0", "1"]  # the service drained /a after /a's callback returned
    assert service.log_messages("info") == ["singleton started", "drained /a", "drained /b"]
    host.advance_time(seconds=2)
    assert host.shared.data["shared"][b"singleton_ticks"][0] == b"2"
    with pytest.raises(HarnessUsageError, match="VM-level service"):
        service.http_stream()
    with pytest.raises(HarnessUsageError, match="VM-level service"):
        service.tcp_connection()
    # without the service nobody registered the queue
    alone = Host().load_plugin(fixture_wasm("queue_feeder-wasm32-unknown-unknown"), vm_id="shared", configuration="shared")
    result = alone.exchange(HttpRequest(headers=((":method", "GET"), (":path", "/z"), (":authority", "x"))))
    assert dict(result.upstream_request.headers)["x-queued"] == "no"  # type: ignore[union-attr]


def test_readme_network_and_service_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    section = readme[readme.index("### Network (TCP) filters") : readme.index("### Higress modules")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(repo)
    namespace: dict[str, object] = {}
    exec("from proxywasm_host.http.scenario import HttpRequest\n" + "\n".join(blocks), namespace)
    assert namespace["conn"].closed_by == "downstream"  # type: ignore[attr-defined]
    assert namespace["service"].log_messages("info") == ["singleton started", "drained /a"]  # type: ignore[attr-defined]


def test_service_opens_grpc_streams_from_its_root() -> None:
    """A VM-level service makes callouts from its root context like any plugin root: the
    grpc_callout fixture opens its server stream at VM start and answers each message."""
    host = Host()
    service = host.load_service(fixture_wasm("grpc_callout-wasm32-wasip1"), vm_id="svc")
    (stream,) = service.grpc_calls
    assert stream.streaming and (stream.service, stream.method) == ("pkg.Events", "Watch")
    stream.send_message(b"hello")
    assert "stream message hello" in service.log_messages("info")
    assert stream.sent_messages[-1] == b"ack"


def test_filter_state_factories_check_their_values() -> None:
    from proxywasm_host.core.filter_state import set_envoy_filter_state

    store: dict[bytes, bytes] = {}
    assert set_envoy_filter_state(store, "envoy.network.transport_socket.original_dst_address", b"10.0.0.1:80") == Status.OK
    assert set_envoy_filter_state(store, "envoy.network.transport_socket.original_dst_address", b"nowhere") == Status.BAD_ARGUMENT
    assert set_envoy_filter_state(store, "envoy.udp_proxy.cluster", b"dns") == Status.OK
    assert store == {b"envoy.network.transport_socket.original_dst_address": b"10.0.0.1:80", b"envoy.udp_proxy.cluster": b"dns"}


def test_tick_resumes_a_held_connection_through_the_effective_context() -> None:
    plugin = Host().load_plugin(WAT / "tcp_resume_on_tick.wat")
    conn = plugin.tcp_connection()
    conn.send_downstream(b"early")  # not read: tcp_proxy is not connected yet
    assert not conn.connected_upstream and plugin.tick_period_ms == 100
    plugin.host.advance_time(100)
    assert conn.connected_upstream and conn.upstream_received == b"early"
    assert plugin.log_messages("info") == ["held", "resumed", "downstream data"]
    assert plugin.tick_period_ms == 0
