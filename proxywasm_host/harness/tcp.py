"""Network (TCP) filters: drive one connection through a wasm network filter, as Envoy's
``envoy.filters.network.wasm`` runs it in front of ``tcp_proxy``.

    plugin = Host().load_plugin("tcp_routing.wasm")
    conn = plugin.tcp_connection(source_address="10.0.0.7:50312")
    conn.send_downstream(b"b:hello")          # the client's bytes
    assert conn.upstream_received == b"hello" and conn.cluster == "backend_b"
    conn.send_upstream(b"hi")                 # the upstream's answer
    assert conn.downstream_received == b"HI"
    conn.close_downstream()                   # client half-close (FIN) ...
    conn.close_upstream()                     # ... and the upstream's: the connection closes
    assert conn.closed_by == "downstream"

:class:`TcpScenario` / :class:`TcpResult` describe a whole exchange backend-neutrally: the
Envoy backend (:mod:`proxywasm_host.envoy.tcp`) runs the same scenario through a real Envoy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxywasm_host.core.network import (
    NETWORK_CALLBACKS,
    NetworkCallbackRecord,
    NetworkContext,
)
from proxywasm_host.core.observer import LogEntry
from proxywasm_host.errors import HarnessUsageError
from proxywasm_host.http.scenario import LogRecord

if TYPE_CHECKING:
    from proxywasm_host.harness.host import Plugin


def require_network_filter(plugin: Plugin) -> None:
    """A clear error for a module that cannot be a network filter (no network callbacks)."""
    exported = [name for name in NETWORK_CALLBACKS if plugin.vm.runtime.has_export(name)]
    if not exported:
        raise HarnessUsageError(
            f"{plugin.module.origin} is not a network filter: it exports none of "
            f"{', '.join(NETWORK_CALLBACKS)} (Envoy would load it in envoy.filters.network.wasm "
            "and never call it). Drive it with plugin.http_stream() instead."
        )


class TcpConnection:
    """One client connection through the filter; read back what each side received."""

    def __init__(self, plugin: Plugin, ctx: NetworkContext) -> None:
        self.plugin = plugin
        self.context = ctx

    @property
    def context_id(self) -> int:
        return self.context.id

    # -- driving -----------------------------------------------------------------------------
    def send_downstream(self, data: bytes | str, *, end_of_stream: bool = False) -> int | None:
        """Bytes from the client (proxy_on_downstream_data); the filter's action, or None
        when the VM failed."""
        return self.context.receive_downstream(_bytes(data), end_of_stream)

    def send_upstream(self, data: bytes | str, *, end_of_stream: bool = False) -> int | None:
        """Bytes from the upstream towards the client (proxy_on_upstream_data)."""
        return self.context.receive_upstream(_bytes(data), end_of_stream)

    def close_downstream(self) -> None:
        """The client half-closes (FIN): proxy_on_downstream_data(size, end_of_stream=1)."""
        self.context.receive_downstream(b"", True)

    def close_upstream(self) -> None:
        """The upstream half-closes (FIN): proxy_on_upstream_data(size, end_of_stream=1), then
        proxy_on_upstream_connection_close(UNKNOWN)."""
        self.context.receive_upstream(b"", True)

    def reset_downstream(self) -> None:
        """The client goes away at once (RemoteClose): on_downstream_connection_close(REMOTE)."""
        self.context.close_abruptly()

    # -- what happened -----------------------------------------------------------------------
    @property
    def upstream_received(self) -> bytes:
        """Every byte that reached the upstream."""
        return bytes(self.context.to_upstream)

    @property
    def downstream_received(self) -> bytes:
        """Every byte the client got."""
        return bytes(self.context.to_downstream)

    @property
    def connected_upstream(self) -> bool:
        """True once tcp_proxy connected upstream (the filter let the connection through)."""
        return self.context.tcp_proxy_started

    @property
    def cluster(self) -> str | None:
        """The cluster tcp_proxy connected to (filter state envoy.tcp_proxy.cluster wins)."""
        return self.context.cluster

    @property
    def downstream_paused(self) -> bool:
        """True while the filter holds client bytes (on_downstream_data returned Pause)."""
        return self.context.read_stopped or (not self.context.tcp_proxy_started and not self.context.closed)

    @property
    def upstream_paused(self) -> bool:
        return self.context.write_stopped

    @property
    def closed(self) -> bool:
        return self.context.closed

    @property
    def closed_by(self) -> str | None:
        """"downstream", "upstream" (who ended first) or "filter" (proxy_close_stream)."""
        return self.context.closed_by

    @property
    def filter_state(self) -> dict[str, bytes]:
        """Filter state of the connection: set_envoy_filter_state objects and wasm.* properties."""
        return {k.decode("utf-8", "surrogateescape"): v for k, v in self.context.filter_state_data.items()}

    @property
    def callbacks(self) -> list[NetworkCallbackRecord]:
        return self.context.callbacks

    @property
    def logs(self) -> list[LogEntry]:
        return [e for e in self.plugin.vm.host.logs if e.context_id == self.context.id]


def _bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise HarnessUsageError(f"TCP data must be bytes or str, got {type(data).__name__}")


@dataclass(frozen=True)
class TcpScenario:
    """One TCP exchange, backend-neutral: the client sends ``chunks`` one by one (waiting for
    what each brings back), the upstream echoes every piece it receives when ``echo``; then
    ``close`` says who ends first: ``"client"`` (the client half-closes; the upstream closes
    when it sees that) or ``"upstream"`` (the upstream closes after the last chunk; the
    client closes when it sees that)."""

    chunks: tuple[bytes, ...] = ()
    echo: bool = True
    close: str = "client"
    #: plugin configuration and the clusters tcp_proxy may route to (besides "upstream")
    configuration: bytes = b""
    clusters: tuple[str, ...] = ()
    #: time (ms) the client waits after connecting before it sends (virtual time in-process:
    #: ticks fire; a real Envoy run waits at least this long)
    wait_ms: float = 0

    def __post_init__(self) -> None:
        if self.close not in ("client", "upstream"):
            raise ValueError("close must be 'client' or 'upstream'")


@dataclass
class TcpResult:
    """What each side of a :class:`TcpScenario` saw."""

    upstream_received: bytes
    downstream_received: bytes
    closed_by: str | None
    cluster: str | None
    logs: list[LogRecord] = field(default_factory=list)

    def comparable(self) -> dict[str, Any]:
        return {
            "upstream_received": self.upstream_received,
            "downstream_received": self.downstream_received,
            "closed_by": self.closed_by,
            "cluster": self.cluster,
            "logs": [(r.level, r.message) for r in self.logs],
        }


def run_tcp_scenario(
    plugin: Plugin,
    scenario: TcpScenario,
    *,
    source_address: str = "127.0.0.1:52400",
    destination_address: str = "127.0.0.1:10000",
    upstream_addresses: Mapping[str, str] | None = None,
) -> TcpResult:
    """Run ``scenario`` through ``plugin`` in-process (see :class:`TcpScenario`)."""
    log_mark = len(plugin.vm.host.logs)
    conn = plugin.tcp_connection(
        source_address=source_address,
        destination_address=destination_address,
        upstream_addresses=upstream_addresses,
    )
    ctx = conn.context
    if scenario.wait_ms:
        plugin.host.advance_time(scenario.wait_ms)

    def echo_new(before: int) -> None:
        new = bytes(ctx.to_upstream[before:])
        if scenario.echo and new and not ctx.closed and not ctx.upstream_ended:
            conn.send_upstream(new)

    for chunk in scenario.chunks:
        if ctx.closed or ctx.client_ended:
            break
        before = len(ctx.to_upstream)
        conn.send_downstream(chunk)
        echo_new(before)
    if not ctx.closed:
        if scenario.close == "client":
            before = len(ctx.to_upstream)
            conn.close_downstream()
            echo_new(before)
            if not ctx.closed and ctx.upstream_end_forwarded and not ctx.upstream_ended:
                conn.close_upstream()  # the upstream closes once it sees the client's FIN
        elif ctx.tcp_proxy_started:
            conn.close_upstream()
            if not ctx.closed and ctx.downstream_end_forwarded and not ctx.client_ended:
                conn.close_downstream()  # the client closes once it sees the upstream's FIN
        else:
            conn.close_downstream()
    logs = [
        LogRecord(e.level.label, e.message)
        for e in plugin.vm.host.logs[log_mark:]
        if e.root_id in (plugin.root.id, 0)
    ]
    return TcpResult(bytes(ctx.to_upstream), bytes(ctx.to_downstream), ctx.closed_by, ctx.cluster, logs)


def new_connection(
    plugin: Plugin,
    *,
    source_address: str,
    destination_address: str,
    upstream_addresses: Mapping[str, str] | None,
    default_cluster: str,
    attributes: Mapping[str | Sequence[str], Any] | None,
) -> TcpConnection:
    require_network_filter(plugin)
    attrs = {(tuple(k.split(".")) if isinstance(k, str) else tuple(k)): v for k, v in (attributes or {}).items()}
    ctx = NetworkContext(
        plugin.vm,
        plugin.root,
        source_address=source_address,
        destination_address=destination_address,
        upstream_addresses=dict(upstream_addresses or {}),
        default_cluster=default_cluster,
        attributes=attrs,
    )
    conn = TcpConnection(plugin, ctx)
    ctx.open()
    return conn
