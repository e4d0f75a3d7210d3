"""The test harness: load a filter, drive HTTP streams through it, inspect what it did.

    host = Host()
    plugin = host.load_plugin("hello_world.wasm")
    stream = plugin.http_stream()
    stream.send_request_headers({":authority": "localhost:8080", ":path": "/"}, end_of_stream=True)
    assert stream.request_headers["x-hello"] == "Hello world from localhost:8080"

Everything runs in-process and synchronously; time is virtual and moves only
when the test calls :meth:`Host.advance_time`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.context import PluginConfig, RootContext
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.higress import RedisCall
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.observer import (
    Fault,
    HostcallObserver,
    HostcallRecord,
    LogEntry,
)
from proxywasm_host.core.spec import HOSTCALLS
from proxywasm_host.core.state import Clock, SharedState
from proxywasm_host.core.stream import CallbackRecord, HttpContext, LocalResponse
from proxywasm_host.core.text import Headers
from proxywasm_host.core.text import body_bytes as _bytes
from proxywasm_host.core.text import header_pairs as _pairs
from proxywasm_host.core.text import header_pairs_for_map as _pairs_for_map
from proxywasm_host.core.types import Action, LogLevel, MetricType
from proxywasm_host.core.vm import CallObserver, Vm
from proxywasm_host.errors import FilterTrap, HarnessUsageError
from proxywasm_host.http.scenario import (
    DownstreamResponse,
    ExchangeResult,
    HttpRequest,
    HttpResponse,
    LocalReply,
    LogRecord,
    PluginSpec,
    UpstreamRequest,
)
from proxywasm_host.runtime.module import CompiledModule, WasmInstance

if TYPE_CHECKING:
    from proxywasm_host.harness.tcp import TcpConnection, TcpResult, TcpScenario
    from proxywasm_host.http.profiles import StreamProfile

WasmSource = Union[str, Path, bytes, CompiledModule]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


#: Plugin.streams keeps every open stream and at least this many of the most recent ones
STREAM_HISTORY = 200


def _has_status(pairs: list[tuple[str, str]]) -> bool:
    for item in pairs:  # a loop, not any(<generator>): this runs for every response
        if isinstance(item, (str, bytes)) or len(item) != 2:
            return True  # malformed: add nothing, the HeaderMap reports it
        k = item[0]
        if (k if type(k) is str else str(k)) == ":status":
            return True
    return False


def _property_key(key: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(key, str):
        return tuple(key.split("."))
    return tuple(key)


_ACTIONS = {0: Action(0), 1: Action(1)}


def _action(result: int | None) -> int | None:
    if result is None:
        return None
    return _ACTIONS.get(result, result)


class Host:
    """An in-process stand-in for one Envoy: VMs, plugins, shared data and a virtual clock."""

    def __init__(
        self,
        *,
        start_time_ns: int | None = None,
        log_level: LogLevel = LogLevel.TRACE,
        random_seed: int = 0,
        clusters: Mapping[str, str | None] | Iterable[str] | None = None,
        dns: Mapping[str, Sequence[str | tuple[str, int]]] | None = None,
        callout_router: Callable[[HttpCallout], None] | None = None,
        grpc_router: Callable[[GrpcCall], None] | None = None,
        trace: bool = False,
        allowed_hostcalls: Iterable[str] | None = None,
        coverage: dict[str, int] | None = None,
        callback_deadline_s: float = 10.0,
        memory_limit_bytes: int = 1 << 30,
        raise_on_trap: bool = True,
        call_observer: CallObserver | None = None,
        redis: Mapping[str, str | None] | None = None,
    ) -> None:
        """``clusters``: upstream names ``proxy_http_call``/``proxy_grpc_*`` may target. ``None``
        (default) accepts any name (the permissive mode); otherwise an undeclared name gets
        Envoy's status (BAD_ARGUMENT for an HTTP call, PARSE_FAILURE for gRPC) and
        :attr:`Plugin.notices` says how to declare it. A mapping may give a real
        ``http://host:port`` URL: callouts to it are sent there and answered with the real
        response; or ``grpc://host:port``: gRPC calls to it go to that gRPC server
        (grpcio; see :mod:`proxywasm_host.net.grpc_forward`). ``callout_router`` replaces the
        HTTP forwarding: it gets every dispatched
        :class:`~proxywasm_host.core.callouts.HttpCallout` right after the dispatching guest call
        returns and answers it (now or later) with ``respond``/``fail``/``time_out``;
        ``grpc_router`` does the same for every :class:`~proxywasm_host.core.callouts.GrpcCall`
        (``respond``/``close``/``send_message``/...; a unary call left open times out on the
        virtual clock).

        ``trace`` records every hostcall (see :attr:`hostcall_trace`); ``allowed_hostcalls``
        turns on strict mode (any other hostcall fails the callback with
        :class:`~proxywasm_host.errors.UnexpectedHostcall`); ``coverage`` is a dict this host
        adds hostcall counts to.

        ``callback_deadline_s`` stops a guest callback that runs longer (a trap, reported as
        ``FilterTrap``); ``memory_limit_bytes`` caps each VM's linear memory (Envoy: 1 GiB).
        With ``raise_on_trap=False`` a trap is not raised to the test; the plugin's failure
        policy (fail_closed / fail_open / fail_reload) decides what its streams get, and the
        traps are listed in :attr:`Plugin.traps`.  ``call_observer`` is told of every
        callback every VM of this host runs (:class:`~proxywasm_host.core.vm.CallObserver`)."""
        self.call_observer = call_observer
        self.dns = {
            name: [(a, 60) if isinstance(a, str) else (a[0], int(a[1])) for a in answers]
            for name, answers in (dns or {}).items()
        }
        self.callout_router = callout_router
        #: Higress's Redis calls: cluster -> "host:port" of a real Redis server (its reply
        #: answers the call) or None (the test answers with plugin.redis_call().respond())
        self.redis = dict(redis or {})
        self.grpc_router = grpc_router
        self.callback_deadline_s = callback_deadline_s
        self.memory_limit_bytes = memory_limit_bytes
        self.raise_on_trap = raise_on_trap
        self.clock = Clock() if start_time_ns is None else Clock(wall_ns=start_time_ns)
        if clusters is None or isinstance(clusters, Mapping):
            self.clusters = None if clusters is None else dict(clusters)
        else:
            self.clusters = {name: None for name in clusters}
        self.shared = SharedState()
        self.log_level = log_level
        self.random_seed = random_seed
        self._vms: dict[tuple[Any, ...], Vm] = {}
        self.plugins: list[Plugin] = []
        self._observer: HostcallObserver | None = None
        if trace or allowed_hostcalls is not None or coverage is not None:
            observer = self._ensure_observer()
            observer.trace = [] if trace else None
            observer.coverage = coverage
            if allowed_hostcalls is not None:
                allowed = frozenset(allowed_hostcalls)
                unknown = allowed - set(HOSTCALLS)
                if unknown:
                    raise HarnessUsageError(f"allowed_hostcalls names unknown host functions: {sorted(unknown)}")
                observer.allowed = allowed

    def _ensure_observer(self) -> HostcallObserver:
        if self._observer is None:
            self._observer = HostcallObserver()
            for vm in self._vms.values():
                vm.host.observer = self._observer
        return self._observer

    def inject_fault(self, hostcall: str, status: int, *, times: int | None = 1) -> None:
        """Make the next ``times`` calls (None = all) of ``hostcall`` return ``status`` without
        running, e.g. ``inject_fault("proxy_set_shared_data", Status.CAS_MISMATCH)``."""
        if hostcall not in HOSTCALLS:
            close = [n for n in HOSTCALLS if hostcall.replace("proxy_", "") in n]
            raise HarnessUsageError(f"no host function named {hostcall!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        if times is not None and times < 1:
            raise HarnessUsageError("times must be at least 1 (or None for every call)")
        self._ensure_observer().faults[hostcall] = Fault(int(status), times)

    @property
    def hostcall_count(self) -> int:
        """How many hostcalls :attr:`hostcall_trace` holds (0 when tracing is off); cheap."""
        if self._observer is None or self._observer.trace is None:
            return 0
        return len(self._observer.trace)

    @property
    def hostcall_trace(self) -> list[HostcallRecord]:
        """Every hostcall so far (with ``Host(trace=True)``), arguments decoded."""
        if self._observer is None or self._observer.trace is None:
            raise HarnessUsageError("hostcall tracing is off: create the host with Host(trace=True)")
        return list(self._observer.trace)

    def load_plugin(
        self,
        wasm: WasmSource | PluginSpec,
        *,
        root_id: str = "",
        configuration: str | bytes = b"",
        vm_configuration: str | bytes = b"",
        vm_id: str = "",
        name: str = "",
        properties: Mapping[str, Any] | Mapping[tuple[str, ...], Any] | Mapping[str | Sequence[str], Any] | None = None,
        environment: Mapping[str, str] | None = None,
        foreign_functions: Mapping[str, Callable[[bytes], bytes | None]] | None = None,
        failure_policy: str = "fail_closed",
        _service: bool = False,
    ) -> Plugin:
        """Start a plugin like Envoy does: reuse or start its VM, then create and configure its root.

        Plugins with the same module, ``vm_id`` and VM configuration share one VM (and its
        context id space), as in Envoy.  Raises :class:`~proxywasm_host.errors.ModuleLoadError`
        when the module cannot run, :class:`~proxywasm_host.errors.FilterFailed` when
        ``on_vm_start``/``on_configure`` returns false.  ``failure_policy`` is Envoy's
        (``fail_closed``: 503 after a trap, ``fail_open``: skip the filter, ``fail_reload``:
        start a fresh VM for the next stream).  ``wasm`` may be a
        :class:`~proxywasm_host.http.scenario.PluginSpec` carrying all of these instead.
        """
        if isinstance(wasm, PluginSpec):
            given = (root_id, configuration, vm_configuration, vm_id, name, properties, environment, failure_policy)
            if given != ("", b"", b"", "", "", None, None, "fail_closed"):
                raise HarnessUsageError("load_plugin(PluginSpec(...)) takes its options from the spec: pass them there, not also as arguments")
            spec = wasm
            wasm, root_id, configuration, vm_configuration = spec.wasm, spec.root_id, spec.configuration, spec.vm_configuration
            vm_id, name, failure_policy = spec.vm_id, spec.name, spec.failure_policy
            properties, environment = spec.properties, spec.environment
        if failure_policy not in ("fail_closed", "fail_open", "fail_reload"):
            raise HarnessUsageError(
                f"failure_policy must be 'fail_closed', 'fail_open' or 'fail_reload', not {failure_policy!r}"
            )
        compiled = wasm if isinstance(wasm, CompiledModule) else CompiledModule.load(wasm)
        vm_config = _bytes(vm_configuration)
        key: tuple[Any, ...] = (compiled.sha256, vm_id, vm_config)
        if _service:  # the singleton's own VM (Envoy: on the main thread, apart from the workers')
            key += ("service", len(self._vms))
        vm = self._vms.get(key)
        if vm is None or vm.failed is not None:
            abi = AbiHost(
                compiled.abi_version,
                vm_id=vm_id,
                vm_configuration=vm_config,
                clock=self.clock,
                shared=self.shared,
                environment=dict(environment or {}),
                log_level=self.log_level,
                random_seed=self.random_seed,
                foreign_functions=dict(foreign_functions or {}),
            )
            abi.clusters = self.clusters
            abi.dns = self.dns
            abi.observer = self._observer
            abi.on_http_callout = self._route_callout
            abi.on_redis_call = self._route_redis
            abi.on_grpc_call = self._route_grpc
            vm = Vm(abi, WasmInstance(compiled, abi, deadline_s=self.callback_deadline_s,
                                      memory_limit=self.memory_limit_bytes),
                    call_observer=self.call_observer)
            vm.raise_on_trap = self.raise_on_trap
            vm.start_vm()
            self._vms[key] = vm
        elif foreign_functions:
            vm.host.foreign_functions.update(foreign_functions)
        config = PluginConfig(
            root_id=root_id,
            configuration=_bytes(configuration),
            vm_configuration=vm_config,
            vm_id=vm_id,
            name=name,
            properties={_property_key(k): v for k, v in (properties or {}).items()},
            failure_policy=failure_policy,
        )
        root = vm.start_plugin(config)
        plugin = Plugin(self, vm, root, compiled)
        plugin._load_args = (compiled, dict(environment or {}), dict(foreign_functions or {}))
        self.plugins.append(plugin)
        return plugin

    def load_service(
        self,
        wasm: WasmSource,
        *,
        root_id: str = "",
        configuration: str | bytes = b"",
        vm_configuration: str | bytes = b"",
        vm_id: str = "",
        name: str = "",
        properties: Mapping[str | Sequence[str], Any] | None = None,
        environment: Mapping[str, str] | None = None,
        foreign_functions: Mapping[str, Callable[[bytes], bytes | None]] | None = None,
    ) -> Plugin:
        """Start a VM-level service, as Envoy's ``envoy.bootstrap.wasm`` with
        ``singleton: true`` does: the module in a VM of its own, a root context (VM start,
        configure) and nothing per stream. Its ticks fire with :meth:`advance_time`; its
        shared data and queues are those of this host's plugins with the same ``vm_id``
        namespace rules (e.g. a service draining a queue HTTP filters fill, delivered after
        the enqueuing callback returns). The returned plugin opens no streams."""
        plugin = self.load_plugin(
            wasm, root_id=root_id, configuration=configuration, vm_configuration=vm_configuration, vm_id=vm_id,
            name=name, properties=properties, environment=environment, foreign_functions=foreign_functions,
            _service=True,
        )
        plugin.is_service = True
        return plugin

    def _reload(self, plugin: Plugin) -> None:
        """FAIL_RELOAD: a fresh VM and root context for a plugin whose VM failed."""
        compiled, environment, foreign = plugin._load_args
        cfg = plugin.root.plugin
        self._vms.pop((compiled.sha256, cfg.vm_id, cfg.vm_configuration), None)
        fresh = self.load_plugin(
            compiled, root_id=cfg.root_id, configuration=cfg.configuration, vm_configuration=cfg.vm_configuration,
            vm_id=cfg.vm_id, name=cfg.name, properties=cfg.properties, environment=environment,
            foreign_functions=foreign, failure_policy=cfg.failure_policy,
        )
        self.plugins.remove(fresh)
        plugin._old_traps.append(plugin.vm.failed)  # type: ignore[arg-type]
        plugin.vm, plugin.root = fresh.vm, fresh.root
        plugin.reloads += 1

    @property
    def logs(self) -> list[LogEntry]:
        """Every line logged in every VM of this host, also by plugins that failed to start."""
        return [entry for vm in self._vms.values() for entry in vm.host.logs]

    def _route_callout(self, callout: HttpCallout) -> None:
        """Send a callout to the real upstream its cluster names, if any, and answer it."""
        if self.callout_router is not None:
            self.callout_router(callout)
            return
        url = (self.clusters or {}).get(callout.cluster)
        if url is None:
            return  # the test answers it
        from proxywasm_host.net.forward import forward_callout

        forward_callout(callout, url)

    def _route_redis(self, call: RedisCall) -> None:
        """Send a Higress Redis call to the real server its cluster names, if any."""
        address = self.redis.get(call.cluster)
        if address is None:
            return  # the test answers it
        from proxywasm_host.net.redis_forward import forward_redis_call

        username, password = "", ""
        for vm in self._vms.values():
            if vm.host.redis_calls.get(call.token) is call:
                username, password, _timeout = vm.host.redis_clusters.get(call.cluster, ("", "", 0))
        forward_redis_call(call, address, username=username, password=password)

    def _route_grpc(self, call: GrpcCall) -> None:
        """A gRPC call opened (or a stream half-closed): hand it to the grpc_router once, or
        send it to the real gRPC server its cluster names (a unary call at once, a stream
        once the filter half-closed it)."""
        if call.routed:
            return  # (a stream's half-close after it was routed)
        if self.grpc_router is not None:
            call.routed = True
            self.grpc_router(call)
            return
        url = (self.clusters or {}).get(call.cluster)
        if url is None or not call.pending:
            return  # the test answers it
        if not url.startswith("grpc://"):
            raise HarnessUsageError(
                f"gRPC {'stream' if call.streaming else 'call'} to cluster {call.cluster!r}, which maps to {url!r}: "
                f"a gRPC cluster needs a grpc://host:port URL"
            )
        if call.streaming and not call.local_end_stream:
            return  # sent with all its messages once the filter half-closes it
        call.routed = True
        from proxywasm_host.net.grpc_forward import forward_grpc

        forward_grpc(call, url)

    @property
    def notices(self) -> list[str]:
        """What the host refused and how to change that (e.g. a call to an undeclared cluster)."""
        return [n for vm in self._vms.values() for n in vm.host.notices]

    # -- time ------------------------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        """Virtual wall-clock time (what proxy_get_current_time_nanoseconds returns)."""
        return self.clock.wall_ns

    def advance_time(self, milliseconds: float = 0, *, seconds: float = 0) -> int:
        """Move the virtual clock forward, firing every tick, HTTP callout timeout and gRPC call
        timeout that falls due; return how many fired."""
        delta = int(round((milliseconds + seconds * 1000) * 1_000_000))
        if delta < 0:
            raise HarnessUsageError("advance_time() takes a non-negative duration; time cannot go back")
        target = self.clock.monotonic_ns + delta
        fired = 0
        while True:
            events: list[tuple[int, int, Callable[[], None]]] = []
            for vm in self._vms.values():
                if vm.failed is not None:
                    continue
                tick = vm.next_tick()
                if tick is not None:
                    events.append((tick[0], tick[1].id, partial(vm.fire_tick, tick[1])))
                for callout in list(vm.host.http_callouts.values()):
                    if callout.pending and callout.timeout_ms:
                        deadline = callout.dispatched_at_ns + callout.timeout_ms * 1_000_000
                        events.append((deadline, -callout.token, callout.time_out))
                for call in list(vm.host.grpc_calls.values()):
                    if not call.streaming and call.state == "open" and call.timeout_ms:
                        deadline = call.dispatched_at_ns + (call.timeout_ms & 0xFFFFFFFF) * 1_000_000
                        events.append((deadline, -call.token, call.time_out))
            due = [e for e in events if e[0] <= target]
            if not due:
                break
            when, _, fire = min(due, key=lambda e: (e[0], e[1]))
            self.clock.advance_ns(max(0, when - self.clock.monotonic_ns))
            fire()
            fired += 1
        self.clock.advance_ns(target - self.clock.monotonic_ns)
        return fired


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
        self._streams_full_scan_at = 2 * STREAM_HISTORY
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
        if self.is_service:
            raise HarnessUsageError(
                "this plugin is a VM-level service (Host.load_service, Envoy's envoy.bootstrap.wasm): it has a "
                "root context only and gets no streams; load it with Host.load_plugin to use it as an HTTP filter"
            )
        if self.root.deleted:
            raise HarnessUsageError("this plugin was shut down; load it again to open new streams")
        if self.vm.failed is not None and self.root.plugin.failure_policy == "fail_reload":
            self.host._reload(self)
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
        last trim are scanned, all of them when the list has doubled: O(1) per stream even
        with thousands open."""
        streams = self.streams
        keep = STREAM_HISTORY // 2
        if len(streams) >= self._streams_full_scan_at:
            head = [s for s in streams[:-keep] if not s.context.completed]
            self._streams_full_scan_at = max(2 * STREAM_HISTORY, 2 * (len(head) + keep))
        else:
            start = self._streams_scanned
            head = streams[:start] + [s for s in streams[start:-keep] if not s.context.completed]
        streams[:] = head + streams[-keep:]
        self._streams_scanned = len(head)

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
    ) -> ExchangeResult:
        """Run one request/response through the filter and report what each side saw.

        ``profile`` reproduces what Envoy does around the filter (``"envoy"``: HTTP/1.1, or
        HTTP/2 when the exchange has trailers; ``"envoy-http1"``, ``"envoy-http2"``; ``"raw"``
        or None: deliver exactly what is given).  ``wait_ms`` lets a paused stream resume
        on ticks or callout timeouts by advancing the virtual clock while it is held."""
        from proxywasm_host.http.profiles import get_profile

        # One exchange per call in a test loop: the profile's events go straight to the stream
        # (no intermediate HttpRequest/HttpResponse), and what each side saw is read once
        # (benchmarks/README.md: exchange vs stream).
        prof = get_profile(profile).resolve(request, response)
        headers, chunks, trailers = prof.request_events(request)
        host_logs = self.vm.host.logs
        log_mark = len(host_logs)
        stream = self.http_stream()
        # what HttpStream.send_* do, without their return values (not used here)
        context = stream.context
        d = context.request
        context.receive_headers(d, _pairs_for_map(headers), not chunks and trailers is None)
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            if context.completed:
                break  # the filter answered locally: Envoy reads no more of the request
            context.receive_data(d, _bytes(chunk), i == last and trailers is None)
        if trailers is not None and not context.completed:
            context.receive_trailers(d, _pairs(trailers))
        if wait_ms > 0:
            self._wait(stream, wait_ms, lambda: stream.request_paused)
        if d.forwarded_headers is not None and not context.completed:
            headers, chunks, trailers = prof.response_events(response)
            d = context.response
            # :status first (send_response_headers would add a 200 in front when absent)
            context.receive_headers(d, [(":status", str(response.status)), *headers], not chunks and trailers is None)
            last = len(chunks) - 1
            for i, chunk in enumerate(chunks):
                if context.completed:
                    break
                context.receive_data(d, _bytes(chunk), i == last and trailers is None)
            if trailers is not None and not context.completed:
                context.receive_trailers(d, _pairs(trailers))
            if wait_ms > 0:
                self._wait(stream, wait_ms, lambda: not stream.completed)
        root_id = self.root.id
        logs = [
            LogRecord(e.level.label, e.message)
            for e in host_logs[log_mark:]
            if e.root_id == root_id or e.root_id == 0
        ] if len(host_logs) > log_mark else []
        local = context.local_response
        down = stream.downstream_response
        # A local reply's body is what the client got (a gRPC request gets none: the text
        # travels in grpc-message), as the Envoy backend reports it.
        local_body = b"" if local is None else (local.body if down is None else down.body)
        return prof.apply_result(
            ExchangeResult(
                self.abi_version,
                stream.upstream_request,
                down,
                None
                if local is None
                else LocalReply(local.status_code, local_body, list(local.headers), local.details, local.grpc_status),
                logs,
            )
        )

    def _wait(self, stream: HttpStream, wait_ms: float, held: Callable[[], bool]) -> None:
        step = 10.0
        waited = 0.0
        while held() and waited < wait_ms and not stream.completed:
            self.host.advance_time(step)
            waited += step


class HttpStream:
    """Drive one HTTP stream and read back what the filter did with it."""

    __slots__ = ("plugin", "context")  # one per request, kept for a while (Plugin.streams)

    def __init__(self, plugin: Plugin, ctx: HttpContext) -> None:
        self.plugin = plugin
        self.context = ctx

    @property
    def context_id(self) -> int:
        return self.context.id

    # -- driving ---------------------------------------------------------------------------
    def send_request_headers(self, headers: Headers, *, end_of_stream: bool = False) -> int | None:
        """Deliver request headers (pseudo-headers like ``:authority`` included); return the action."""
        return _action(self.context.receive_headers(self.context.request, _pairs_for_map(headers), end_of_stream))

    def send_request_body(self, data: str | bytes, *, end_of_stream: bool = False) -> int | None:
        """Deliver one request body chunk; returns the action, or None when Envoy would hold it."""
        return _action(self.context.receive_data(self.context.request, _bytes(data), end_of_stream))

    def send_request_trailers(self, trailers: Headers) -> int | None:
        return _action(self.context.receive_trailers(self.context.request, _pairs(trailers)))

    def send_response_headers(self, headers: Headers, *, end_of_stream: bool = False) -> int | None:
        """Deliver the upstream's response headers; include ``:status`` (default 200 if absent)."""
        pairs = _pairs_for_map(headers)
        if not _has_status(pairs):
            pairs = [(":status", "200"), *pairs]  # (may be the caller's list: not changed in place)
        return _action(self.context.receive_headers(self.context.response, pairs, end_of_stream))

    def send_response_body(self, data: str | bytes, *, end_of_stream: bool = False) -> int | None:
        return _action(self.context.receive_data(self.context.response, _bytes(data), end_of_stream))

    def send_response_trailers(self, trailers: Headers) -> int | None:
        return _action(self.context.receive_trailers(self.context.response, _pairs(trailers)))

    def complete(self) -> None:
        """End the stream now (Envoy: access log, then filter destruction)."""
        self.context.complete()

    def take_request_body(self) -> bytes:
        """The request body bytes forwarded upstream since the last take, forgotten here: a
        proxy streaming large bodies drains them instead of keeping them until the stream
        ends (``upstream_request.body`` then holds only what was not taken)."""
        return self._take(self.context.request)

    def take_response_body(self) -> bytes:
        """Like :meth:`take_request_body`, for the body forwarded downstream."""
        return self._take(self.context.response)

    @staticmethod
    def _take(d: Any) -> bytes:
        data = bytes(d.forwarded_body)
        d.forwarded_body.clear()
        return data

    # -- the stream as the filter left it -----------------------------------------------------
    @property
    def request_headers(self) -> HeaderMap:
        return self.context.request.headers or HeaderMap()

    @property
    def request_body(self) -> bytes:
        d = self.context.request
        return bytes(d.forwarded_body + d.buffer)

    @property
    def request_trailers(self) -> HeaderMap | None:
        return self.context.request.trailers

    @property
    def response_headers(self) -> HeaderMap:
        return self.context.response.headers or HeaderMap()

    @property
    def response_body(self) -> bytes:
        d = self.context.response
        return bytes(d.forwarded_body + d.buffer)

    @property
    def response_trailers(self) -> HeaderMap | None:
        return self.context.response.trailers

    @property
    def request_paused(self) -> bool:
        """True while the filter holds the request (returned Pause and has not continued)."""
        return self.context.request.stopped is not None

    @property
    def response_paused(self) -> bool:
        return self.context.response.stopped is not None

    @property
    def local_response(self) -> LocalResponse | None:
        return self.context.local_response

    @property
    def callbacks(self) -> list[CallbackRecord]:
        return self.context.callbacks  # a fresh list each time

    @property
    def completed(self) -> bool:
        return self.context.completed

    @property
    def was_reset(self) -> bool:
        return self.context.reset

    @property
    def logs(self) -> list[LogEntry]:
        return [e for e in self.plugin.vm.host.logs if e.context_id == self.context.id]

    @property
    def http_callouts(self) -> list[HttpCallout]:
        """The HTTP callouts dispatched while this stream was the current context."""
        return [c for c in self.plugin.http_callouts if c.context_id == self.context.id]

    @property
    def upstream_request(self) -> UpstreamRequest | None:
        """What reached the upstream: None while (or because) the filter held or answered it."""
        d = self.context.request
        forwarded = d.forwarded_headers
        if forwarded is None:
            return None
        trailers = d.forwarded_trailers.items() if d.forwarded_trailers is not None else None
        return UpstreamRequest(forwarded.items(), bytes(d.forwarded_body), trailers)

    @property
    def downstream_response(self) -> DownstreamResponse | None:
        """What the client received: None until the response headers got through the filter."""
        d = self.context.response
        forwarded = d.forwarded_headers
        if forwarded is None:
            return None
        status = None
        headers = []
        for k, v in forwarded.items():  # one pass: the first :status, every other entry
            if k != ":status":
                headers.append((k, v))
            elif status is None:
                status = v
        trailers = d.forwarded_trailers.items() if d.forwarded_trailers is not None else None
        return DownstreamResponse(int(status or 0), headers, bytes(d.forwarded_body), trailers)
