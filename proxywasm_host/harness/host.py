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
from proxywasm_host.core.context import PluginConfig
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
from proxywasm_host.core.text import body_bytes as _bytes
from proxywasm_host.core.types import LogLevel
from proxywasm_host.core.vm import CallObserver, Vm
from proxywasm_host.errors import HarnessUsageError
from proxywasm_host.harness.plugin import Plugin, _property_key
from proxywasm_host.harness.stream import HttpStream
from proxywasm_host.http.scenario import (
    PluginSpec,
)
from proxywasm_host.runtime.coverage import CodeCoverage
from proxywasm_host.runtime.coverage import active as active_code_coverage
from proxywasm_host.runtime.module import CompiledModule, WasmInstance

if TYPE_CHECKING:
    pass


WasmSource = Union[str, Path, bytes, CompiledModule]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


#: Plugin.streams keeps every open stream and at least this many of the most recent ones



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
        code_coverage: CodeCoverage | None = None,
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
        adds hostcall counts to.  ``code_coverage`` counts which of the filter's own
        functions and source lines run (:mod:`proxywasm_host.runtime.coverage`: every module
        this host loads is instrumented); without it, the collector
        :func:`proxywasm_host.runtime.coverage.activate` installed, if any
        (``--proxywasm-filter-coverage`` does).

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
        self.code_coverage = code_coverage if code_coverage is not None else active_code_coverage()
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
        if self.code_coverage is not None:
            compiled = compiled.instrumented()
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
                                      memory_limit=self.memory_limit_bytes, coverage=self.code_coverage),
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

    def unload_plugin(self, plugin: Plugin) -> None:
        """Forget ``plugin`` (shut it down first: :meth:`Plugin.shutdown`), and its VM when no
        other plugin of this host runs in it: its ticks stop and its memory can go
        (``serve --reload`` retires the previous build this way)."""
        if plugin in self.plugins:
            self.plugins.remove(plugin)
        if not any(other.vm is plugin.vm for other in self.plugins):
            for key, vm in list(self._vms.items()):
                if vm is plugin.vm:
                    del self._vms[key]

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


# re-exported: the harness's three classes are importable from here as before
__all__ = ["Host", "HttpStream", "Plugin", "WasmSource"]
