"""Network (TCP) filters through a real Envoy: a listener whose filter chain is
``envoy.filters.network.wasm`` in front of ``envoy.filters.network.tcp_proxy``, to real TCP
upstreams (:class:`~proxywasm_host.net.tcp_upstream.TcpUpstream`) on 127.0.0.1, one per
cluster.  :func:`run_tcp_scenario_in_envoy` runs a
:class:`~proxywasm_host.harness.tcp.TcpScenario` there and reports a
:class:`~proxywasm_host.harness.tcp.TcpResult` comparable with the in-process one.

Timing: TCP has no message boundaries, so the client waits after each chunk until nothing
moves for ``settle`` seconds (the upstream got it and its echo came back), which keeps
every chunk a read of its own, as the in-process scenario delivers them.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from proxywasm_host.envoy.config import _socket_address, _static_cluster, plugin_config
from proxywasm_host.envoy.logs import filter_logs, parse_envoy_log
from proxywasm_host.envoy.process import EnvoyProcess
from proxywasm_host.harness.tcp import TcpResult, TcpScenario
from proxywasm_host.http.scenario import PluginSpec
from proxywasm_host.net.tcp_upstream import TcpUpstream

NETWORK_WASM_FILTER = "envoy.filters.network.wasm"
DEFAULT_CLUSTER = "upstream"


def network_wasm_filter_config(plugin: PluginSpec) -> dict[str, Any]:
    """The ``envoy.filters.network.wasm`` entry of a filter chain for a plugin."""
    config = plugin_config(plugin)
    return {
        "name": NETWORK_WASM_FILTER,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm", "config": config},
    }


def render_tcp_config(plugin: PluginSpec, *, clusters: dict[str, int], admin_port: int = 0) -> dict[str, Any]:
    """A bootstrap: one TCP listener (port chosen by the kernel), the wasm network filter,
    tcp_proxy to cluster ``upstream``; every cluster a 127.0.0.1 port."""
    return {
        "admin": {"address": _socket_address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "tcp",
                    "address": _socket_address(0),
                    "filter_chains": [
                        {
                            "filters": [
                                network_wasm_filter_config(plugin),
                                {
                                    "name": "envoy.filters.network.tcp_proxy",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                        "stat_prefix": "tcp",
                                        "cluster": DEFAULT_CLUSTER,
                                    },
                                },
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {**_static_cluster("x", port), "name": name, "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(port)}}]}],
                }}
                for name, port in clusters.items()
            ],
        },
    }


@dataclass
class EnvoyTcpRun:
    """A scenario's result in Envoy plus the addresses it ran with (to replay them in-process)."""

    result: TcpResult
    source_address: str
    destination_address: str
    upstream_addresses: dict[str, str]
    log: str = field(repr=False, default="")


class _Client:
    def __init__(self, port: int, source_ip: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source_ip, 0))
        self.received = bytearray()
        self.eof = False

    def pump(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; True if anything (data or EOF) arrived."""
        if self.eof or self.sock.fileno() < 0:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.eof = True
        else:
            self.received += data
        return True


def _settle(client: _Client, servers: dict[str, TcpUpstream], settle: float, limit: float = 3.0) -> None:
    """Wait until neither the client nor any upstream saw anything new for ``settle`` seconds."""
    deadline = time.monotonic() + limit
    last = (-1, -1, False)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        client.pump(0.02)
        state = (len(client.received), sum(len(s.received) for s in servers.values()), client.eof)
        if state != last:
            last = state
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return


def run_tcp_scenario_in_envoy(
    plugin: PluginSpec,
    scenario: TcpScenario,
    *,
    settle: float = 0.25,
    source_ip: str = "127.0.0.1",
    envoy: str | None = None,
    startup_timeout: float = 30.0,
) -> EnvoyTcpRun:
    """Run ``scenario`` through a fresh Envoy (one connection) and report what each side saw.
    ``source_ip``: the loopback address the client connects from (any of 127.0.0.0/8)."""
    names = (DEFAULT_CLUSTER, *[c for c in scenario.clusters if c != DEFAULT_CLUSTER])
    servers = {name: TcpUpstream(echo=scenario.echo).start() for name in names}
    if scenario.configuration and not plugin.configuration:
        plugin = dataclasses.replace(plugin, configuration=scenario.configuration)
    config = render_tcp_config(plugin, clusters={n: s.port for n, s in servers.items()})
    proc = EnvoyProcess(config, envoy=envoy, startup_timeout=startup_timeout)
    try:
        proc.start()
        offset = proc.log_size()
        client = _Client(proc.listener_port, source_ip)
        host_ip, host_port = client.sock.getsockname()[:2]
        source = f"{host_ip}:{host_port}"
        _settle(client, servers, max(settle, scenario.wait_ms / 1000))
        closed_by: str | None = None
        for chunk in scenario.chunks:
            if client.eof:
                break
            try:
                client.sock.sendall(chunk)
            except OSError:
                break
            _settle(client, servers, settle)
        if client.eof:
            closed_by = "upstream" if any(s.closed_first for s in servers.values()) else "filter"
        elif scenario.close == "client":
            closed_by = "downstream"
            client.sock.shutdown(socket.SHUT_WR)
            _settle(client, servers, settle)
        else:
            for server in servers.values():
                server.half_close()
            _settle(client, servers, settle)
            closed_by = "upstream" if client.eof and any(s.closed_first for s in servers.values()) else None
            if closed_by is None and client.eof:
                closed_by = "filter"
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            _settle(client, servers, settle)
        client.sock.close()
        _settle(client, servers, settle)
        time.sleep(settle)  # on_done / on_log / on_delete after the close event
        log = proc.read_log(offset)
        cluster = next((name for name, s in servers.items() if s.connections), None)
        upstream_received = b"".join(bytes(s.received) for s in servers.values())
        logs = filter_logs(parse_envoy_log(log), plugin)
        result = TcpResult(upstream_received, bytes(client.received), closed_by, cluster, logs)
        return EnvoyTcpRun(
            result,
            source_address=source,
            destination_address=f"127.0.0.1:{proc.listener_port}",
            upstream_addresses={n: s.address for n, s in servers.items()},
            log=log,
        )
    finally:
        proc.cleanup()
        for server in servers.values():
            server.stop()
