"""A plugin loaded in a :class:`~proxywasm_host.harness.host.Host`: streams, exchanges, callouts, logs and metrics of one root context."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.context import RootContext
from proxywasm_host.core.higress import RedisCall
from proxywasm_host.core.observer import (
    LogEntry,
)
from proxywasm_host.core.stream import HttpContext
from proxywasm_host.core.types import LogLevel, MetricType
from proxywasm_host.core.vm import Vm
from proxywasm_host.errors import FilterTrap, HarnessUsageError
from proxywasm_host.harness.stream import HttpStream, run_exchange
from proxywasm_host.http.profiles import StreamProfile, get_profile
from proxywasm_host.http.scenario import (
    ExchangeResult,
    HttpRequest,
    HttpResponse,
)
from proxywasm_host.runtime.module import CompiledModule

if TYPE_CHECKING:
    from proxywasm_host.harness.host import Host
    from proxywasm_host.harness.tcp import TcpConnection, TcpResult, TcpScenario


def _property_key(key: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(key, str):
        return tuple(key.split("."))
    return tuple(key)


STREAM_HISTORY = 200


class Plugin:
    """One configured plugin (root context) inside a VM."""

    def __init__(self, host: Host, vm: Vm, root: RootContext, module: CompiledModule) -> None:
        self.host = host
        self.vm = vm
        self.root = root
        self.module = module
        #: every open stream and the most recent completed ones (STREAM_HISTORY)
        self.streams: list[HttpStream] = []
        #: every TCP connection opened with tcp_connection()
        self.connections: list[TcpConnection] = []
        self._streams_scanned = 0  # streams before this index were open at the last trim
        self._last_exchange: Any = None  # Plugin.exchange's last plan (see _plan_exchange)
        self._streams_since_full_scan = 0  # streams scanned by trims since the last full scan
        self._old_traps: list[FilterTrap] = []
        self.reloads = 0
        #: True for a VM-level service (Host.load_service): root context only, no streams
        self.is_service = False
        self._load_args: tuple[CompiledModule, dict[str, str], dict[str, Any]] = (module, {}, {})

    @property
    def abi_version(self) -> str:
        return self.vm.abi_version.value

    @property
    def root_id(self) -> str:
        return self.root.plugin.root_id

    @property
    def context_id(self) -> int:
        return self.root.id

    def http_stream(self, *, attributes: Mapping[str | Sequence[str], Any] | None = None) -> HttpStream:
        """Open a new HTTP stream; its context is created when the request headers arrive."""
        if self.is_service or self.root.deleted or self.vm.failed is not None:  # (one test per request)
            self._before_stream()
        if attributes:
            ctx = HttpContext(self.vm, self.root, attributes={_property_key(k): v for k, v in attributes.items()})
        else:
            ctx = HttpContext(self.vm, self.root)
        stream = HttpStream(self, ctx)
        streams = self.streams
        if len(streams) - self._streams_scanned >= STREAM_HISTORY:
            self._trim_streams()
        streams.append(stream)
        return stream

    def _before_stream(self) -> None:
        """What http_stream checks first: raise for a plugin that takes no streams, reload a
        failed VM under ``fail_reload``."""
        if self.is_service:
            raise HarnessUsageError(
                "this plugin is a VM-level service (Host.load_service, Envoy's envoy.bootstrap.wasm): it has a "
                "root context only and gets no streams; load it with Host.load_plugin to use it as an HTTP filter"
            )
        if self.root.deleted:
            raise HarnessUsageError("this plugin was shut down; load it again to open new streams")
        if self.vm.failed is not None and self.root.plugin.failure_policy == "fail_reload":
            self.host._reload(self)

    def tcp_connection(
        self,
        *,
        source_address: str = "127.0.0.1:52400",
        destination_address: str = "127.0.0.1:10000",
        upstream_addresses: Mapping[str, str] | None = None,
        default_cluster: str = "upstream",
        attributes: Mapping[str | Sequence[str], Any] | None = None,
    ) -> TcpConnection:
        """Open a client connection through this plugin as a network filter (Envoy's
        ``envoy.filters.network.wasm`` in front of ``tcp_proxy``): creates the context and
        calls ``proxy_on_new_connection``. ``default_cluster`` is tcp_proxy's cluster (the
        filter may pick another with filter state ``envoy.tcp_proxy.cluster``);
        ``upstream_addresses`` gives each cluster's host (``upstream.address``). Raises
        :class:`~proxywasm_host.errors.HarnessUsageError` for a module without network callbacks."""
        from proxywasm_host.harness.tcp import new_connection

        if self.is_service:
            raise HarnessUsageError("this plugin is a VM-level service (Host.load_service): it gets no connections")
        if self.root.deleted:
            raise HarnessUsageError("this plugin was shut down; load it again to open new connections")
        if self.vm.failed is not None and self.root.plugin.failure_policy == "fail_reload":
            self.host._reload(self)
        conn = new_connection(
            self,
            source_address=source_address,
            destination_address=destination_address,
            upstream_addresses=upstream_addresses,
            default_cluster=default_cluster,
            attributes=attributes,
        )
        self.connections.append(conn)
        return conn

    def tcp_exchange(self, scenario: TcpScenario, **kwargs: Any) -> TcpResult:
        """Run one :class:`~proxywasm_host.harness.tcp.TcpScenario` through this network filter."""
        from proxywasm_host.harness.tcp import run_tcp_scenario

        return run_tcp_scenario(self, scenario, **kwargs)

    def _trim_streams(self) -> None:
        """Drop completed streams but the most recent: a long run (Hypothesis, a benchmark)
        must not keep every stream alive, or Python's cyclic GC walks them all again and again
        (45% of the time per request after 30,000 requests).  Only streams added since the
        last trim are scanned, all of them now and then: O(1) per stream even with thousands
        open."""
        streams = self.streams
        keep = STREAM_HISTORY // 2
        end = len(streams) - keep
        # The scanned range is replaced in place: the open streams before it are not copied (with
        # 10,000 open, copying the list and its references each trim was 1.7 µs per request).
        # All of it once as many streams went through the recent range as the list holds (so
        # held streams that completed since go too, in O(1) per stream).
        start = self._streams_scanned
        self._streams_since_full_scan += end - start
        if self._streams_since_full_scan >= len(streams):
            start = self._streams_since_full_scan = 0
        streams[start:end] = [s for s in streams[start:end] if not s.context.completed]
        self._streams_scanned = len(streams) - keep

    # -- what the filter did ----------------------------------------------------------------
    @property
    def logs(self) -> list[LogEntry]:
        """Every line this plugin's root and streams logged, in order."""
        return [e for e in self.vm.host.logs if e.root_id == self.root.id or e.root_id == 0]

    def log_messages(self, level: LogLevel | str | None = None) -> list[str]:
        """Messages logged at ``level`` (e.g. ``"info"`` or ``LogLevel.INFO``), or all of them."""
        if isinstance(level, str):
            try:
                level = LogLevel[level.upper()]
            except KeyError:
                raise HarnessUsageError(
                    f"unknown log level {level!r}; use one of {[lv.label for lv in LogLevel][:6]}"
                ) from None
        return [e.message for e in self.logs if level is None or e.level == level]

    @property
    def tick_period_ms(self) -> int:
        return self.root.tick_period_ms

    @property
    def traps(self) -> list[FilterTrap]:
        """Traps that failed this plugin's VM (one per VM, reloaded VMs included)."""
        return self._old_traps + ([self.vm.failed] if self.vm.failed is not None else [])

    @property
    def http_callouts(self) -> list[HttpCallout]:
        """The ``proxy_http_call`` callouts this plugin dispatched, in order: every pending one and the
        most recent finished ones (at least ``CALLOUT_HISTORY`` = 200 per VM; older finished
        ones are forgotten, as streams are)."""
        return [c for c in self.vm.host.callout_history if isinstance(c, HttpCallout) and c.root_context_id == self.root.id]

    @property
    def pending_http_callouts(self) -> list[HttpCallout]:
        return [c for c in self.http_callouts if c.pending]

    def http_callout(self, token: int | None = None) -> HttpCallout:
        """The pending callout with ``token`` (or the only pending one)."""
        pending = self.pending_http_callouts
        if token is not None:
            for c in pending:
                if c.token == token:
                    return c
            raise HarnessUsageError(f"no pending HTTP callout with token {token}; pending: {[c.token for c in pending]}")
        if len(pending) != 1:
            raise HarnessUsageError(
                f"{len(pending)} HTTP callouts are pending ({[c.token for c in pending]}); pass the token you mean"
            )
        return pending[0]

    @property
    def redis_calls(self) -> list[RedisCall]:
        """Every Redis call (Higress's ``proxy_redis_call``) this plugin made, in order."""
        return [c for c in self.vm.host.redis_history if c.root_context_id == self.root.id]

    def redis_call(self, token: int | None = None) -> RedisCall:
        """The pending Redis call with ``token`` (or the only pending one)."""
        pending = [c for c in self.redis_calls if c.pending]
        if token is not None:
            for c in pending:
                if c.token == token:
                    return c
            raise HarnessUsageError(f"no pending Redis call with token {token}; pending: {[c.token for c in pending]}")
        if len(pending) != 1:
            raise HarnessUsageError(f"{len(pending)} Redis calls are pending ({[c.token for c in pending]}); pass the token")
        return pending[0]

    @property
    def grpc_calls(self) -> list[GrpcCall]:
        """The gRPC calls and streams this plugin opened, in order: every open one and the most
        recent finished ones (bounded like :attr:`http_callouts`)."""
        return [c for c in self.vm.host.callout_history if isinstance(c, GrpcCall) and c.root_context_id == self.root.id]

    def tick(self) -> None:
        """Deliver one proxy_on_tick now, whatever the period (like Go proxytest's Tick)."""
        self.vm.call(self.root, "proxy_on_tick", self.root.id)
        self.vm.flush()

    def metric(self, name: str) -> int:
        """Current value of a counter or gauge the filter defined."""
        for mtype in (MetricType.COUNTER, MetricType.GAUGE):
            metric_id = self.vm.host.metrics_by_name.get((mtype, name))
            if metric_id is not None:
                return self.vm.host.metrics[metric_id].value
        known = sorted(n for _, n in self.vm.host.metrics_by_name)
        raise KeyError(f"no counter or gauge named {name!r}; defined: {known}")

    def histogram(self, name: str) -> list[int]:
        """Samples recorded into a histogram the filter defined."""
        metric_id = self.vm.host.metrics_by_name.get((MetricType.HISTOGRAM, name))
        if metric_id is None:
            known = sorted(n for t, n in self.vm.host.metrics_by_name if t == MetricType.HISTOGRAM)
            raise KeyError(f"no histogram named {name!r}; defined: {known}")
        return list(self.vm.host.metrics[metric_id].samples)

    @property
    def host_errors(self) -> list[str]:
        return list(self.vm.host.host_errors)

    @property
    def notices(self) -> list[str]:
        """What the host refused in this plugin's VM and how to change that, e.g. a call to a
        cluster the test did not declare (Envoy refuses it the same way)."""
        return list(self.vm.host.notices)

    def shutdown(self) -> bool:
        """Envoy's plugin teardown: on_done (and on_delete unless the plugin asks to wait)."""
        return self.vm.shutdown_plugin(self.root)

    # -- one whole exchange ---------------------------------------------------------------
    def exchange(
        self,
        request: HttpRequest,
        response: HttpResponse = HttpResponse(),
        *,
        wait_ms: float = 0,
        profile: StreamProfile | str | None = "envoy",
        attributes: Mapping[str | Sequence[str], Any] | None = None,
    ) -> ExchangeResult:
        """Run one request/response through the filter and report what each side saw.

        ``profile`` reproduces what Envoy does around the filter (``"envoy"``: HTTP/1.1, or
        HTTP/2 when the exchange has trailers; ``"envoy-http1"``, ``"envoy-http2"``; ``"raw"``
        or None: deliver exactly what is given).  ``wait_ms`` lets a paused stream resume
        on ticks or callout timeouts by advancing the virtual clock while it is held.
        ``attributes``: the stream's own attributes, as for :meth:`http_stream`."""
        # One exchange per call in a test loop: the profile's events go straight to the stream
        # (no intermediate HttpRequest/HttpResponse), what each side saw is read once, and
        # the rest runs compiled with the stream driver (harness/stream.run_exchange;
        # benchmarks/README.md: exchange vs stream).
        plan = self._last_exchange  # the same exchange again (a loop): its events as they were
        if plan is None or plan[0] is not request or plan[1] is not response or plan[2] is not profile:
            plan = self._plan_exchange(request, response, profile)
        log_mark = len(self.vm.host.logs)
        stream = self.http_stream(attributes=attributes)
        return run_exchange(self, stream, plan[3], plan[4], plan[5], wait_ms, self._wait, log_mark)

    def _plan_exchange(self, request: HttpRequest, response: HttpResponse, profile: StreamProfile | str | None) -> Any:
        """(request, response, profile, drops response trailers, request events, response
        events), kept for the next exchange when the profile remembers both objects' events."""
        prof, request_events, response_events, remembered = get_profile(profile).exchange_events(request, response)
        plan = (request, response, profile, prof.drops_response_trailers, request_events, response_events)
        if remembered:
            self._last_exchange = plan  # (holds the objects: their ids are not reused while here)
        return plan

    def _wait(self, stream: HttpStream, wait_ms: float, held: Callable[[], bool]) -> None:
        step = 10.0
        waited = 0.0
        while held() and waited < wait_ms and not stream.completed:
            self.host.advance_time(step)
            waited += step
