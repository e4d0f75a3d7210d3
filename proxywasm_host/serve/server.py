"""``proxywasm-host serve``: the filter server (one loaded filter, its logs, clock and callouts) and the entry point.

    proxywasm-host serve FILTER.wasm [--port 8080] [--upstream URL] [--cluster NAME=URL]...

:mod:`proxywasm_host.net.httpserver` speaks HTTP/1.1 and cleartext HTTP/2 (prior knowledge or
``Upgrade: h2c``) on the listening sockets, with Envoy's connection limits; each request becomes
one :class:`~proxywasm_host.serve.exchange.Exchange`: one
:class:`~proxywasm_host.harness.HttpStream` of the same in-process host the harness uses, fed
event by event as the bytes arrive:

    request headers → request body chunks → request trailers   (client → filter → upstream)
    response headers → response body chunks → response trailers (upstream → filter → client)

What the filter forwards goes on at once (bodies are streamed, not collected, unless the filter
buffers them; :class:`~proxywasm_host.harness.forwarded.ForwardedReader` says what it forwarded);
a paused stream waits until the filter resumes it from a tick (ticks run on the real clock),
from an HTTP callout's answer (callouts go to the real URLs of ``--cluster``) or from another
stream; local replies, ``proxy_close_stream`` and traps (``--failure-policy``) are honoured.
The upstream is ``--upstream URL`` (through aiohttp) or, by default, the built-in echo upstream
(:mod:`proxywasm_host.serve.echo`).

Everything that touches the filter runs on the asyncio loop's thread: the harness is
synchronous and not thread-safe, and no filter call awaits anything.  See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.observer import LogEntry
from proxywasm_host.errors import FilterFailed, FilterTrap, HarnessUsageError
from proxywasm_host.harness.host import Host, HttpStream, Plugin
from proxywasm_host.net.asgi import run_lifespan
from proxywasm_host.net.httpserver import HttpServer, Limits
from proxywasm_host.net.hypercorn_server import serve_hypercorn
from proxywasm_host.serve.config import (
    FAILURE_POLICIES,
    HOP_BY_HOP,
    HTTP_SERVERS,
    SERVER_NAME,
    ServeConfig,
    canonical_header_name,
    level_of,
    log_level,
    parse_cluster,
    text,
)
from proxywasm_host.serve.echo import bind, echo_app, run_echo
from proxywasm_host.serve.exchange import Exchange
from proxywasm_host.serve.legs import UpstreamLeg, upstream_url
from proxywasm_host.serve.reload import Reloader

__all__ = ["FilterServer", "ServeConfig", "canonical_header_name", "echo_app", "parse_cluster", "run_echo", "serve"]


class FilterServer:
    """One loaded filter behind the HTTP server; :meth:`app` is the ASGI application.

    Create it, then ``await server.serve(shutdown_event)`` (or use :func:`serve`, which binds
    the sockets and installs the signal handlers)."""

    def __init__(self, config: ServeConfig, *, out: Any = None) -> None:
        self.config = config
        self.out = out if out is not None else sys.stderr
        self.level = log_level(config.log_level)
        # callouts are sent asynchronously on the server's loop (the router runs from vm.flush())
        host = Host(
            start_time_ns=time.time_ns(),
            callout_router=self._dispatch_callout,
            log_level=self.level,
            clusters=dict(config.clusters),
            raise_on_trap=False,
            callback_deadline_s=config.callback_deadline_s,
        )
        self.host = host
        self._mono0 = time.monotonic_ns()
        self._clock0 = host.clock.monotonic_ns
        self.name = config.root_id or (Path(config.wasm).stem if isinstance(config.wasm, (str, Path)) else "filter")
        #: the previous builds (serve --reload) still running streams that started on them
        self.retiring: list[Plugin] = []
        self._traps_seen: dict[int, int] = {}  # per plugin (id): traps reported
        self._traps_total = 0
        try:
            self.plugin: Plugin = self.load(config.wasm)
        except (FilterFailed, FilterTrap):
            # the filter refused to start (on_vm_start / on_configure false, or a trap): what it
            # logged says why, so show it before the caller reports the failure
            for entry in host.logs:
                where = f"{self.name} ctx={entry.context_id}" if entry.context_id else self.name
                self.log(entry.level.label, f"[{where}] {entry.message.rstrip()}", source="wasm")
            raise
        self.active: set[Exchange] = set()
        self.waiting: set[Exchange] = set()
        self.stats = {"requests": 0, "local_replies": 0, "fail_closed": 0, "upstream_errors": 0, "bad_requests": 0}
        self._client: Any = None  # aiohttp.ClientSession, created on the loop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[Any] | None = None
        self.reloader = Reloader(self) if config.reload else None
        self.drain_logs()

    def load(self, wasm: Any) -> Plugin:
        """Load ``wasm`` (a path, bytes or a compiled module) into the server's host with the
        configured root id, configuration and policy (the first build, and each ``--reload``)."""
        config = self.config
        return self.host.load_plugin(
            wasm,
            root_id=config.root_id,
            vm_id=config.vm_id,
            configuration=config.configuration,
            vm_configuration=config.vm_configuration,
            failure_policy=config.failure_policy,
            environment=config.environment,
        )

    def live_plugins(self) -> tuple[Plugin, ...]:
        """The current build, then the previous ones still finishing their streams."""
        return (self.plugin, *self.retiring) if self.retiring else (self.plugin,)

    # -- logging ------------------------------------------------------------------------------
    def log(self, level: str, message: str, *, source: str = SERVER_NAME) -> None:
        if level_of(level) < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        try:
            self.out.write(f"[{stamp}][{level}][{source}] {message}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def drain_logs(self) -> None:
        """Print what the filter logged since last time, and forget it (the server runs for
        long: the VM's log list must not grow)."""
        for plugin in self.live_plugins():  # (each build has its own VM: a reload changes the module)
            vm = plugin.vm
            logs: list[LogEntry] = vm.host.logs
            if logs:
                entries = logs[:]
                del logs[:]
                for e in entries:
                    where = f"{self.name} ctx={e.context_id}" if e.context_id else self.name
                    tag = "" if e.source == "proxy_log" else f" ({e.source})"
                    self.log(e.level.label, f"[{where}]{tag} {e.message.rstrip()}", source="wasm")
            if vm.host.host_errors:
                errors = vm.host.host_errors[:]
                del vm.host.host_errors[:]
                for message in errors:
                    self.log("error", f"[{self.name}] host: {message}", source="wasm")
        for plugin in self.live_plugins():
            self._report_traps(plugin)

    def _report_traps(self, plugin: Plugin) -> None:
        traps = plugin.traps
        seen = self._traps_seen.get(id(plugin), 0)
        while seen < len(traps):
            trap = traps[seen]
            seen = self._traps_seen[id(plugin)] = seen + 1
            self._traps_total += 1
            first = self._traps_total == 1
            summary = trap.headline
            # the whole report (panic message, trap, backtrace), indented under the headline
            report = "    " + trap.describe().replace("\n", "\n    ")
            policy = self.config.failure_policy
            if first:
                # the first failure, loudly: from here on every request is affected
                bar = "!" * 78
                self.log("critical", bar, source="wasm")
                self.log("critical", f"[{self.name}] THE FILTER FAILED: {summary}\n{report}", source="wasm")
                self.log("critical", f"failure policy {policy}: {FAILURE_POLICIES[policy]}"
                                     + ("" if policy != "fail_closed" else
                                        " (--failure-policy fail_open or fail_reload to keep serving)"),
                         source="wasm")
                self.log("critical", bar, source="wasm")
            else:
                self.log("critical", f"[{self.name}] filter trapped: {summary} (failure policy {policy})\n{report}",
                         source="wasm")

    # -- running filter code -------------------------------------------------------------------
    def sync_clock(self) -> bool:
        """Move the host's clock to real time; fires the ticks and callout timeouts now due.
        True when any fired (or one trapped): filter code ran, any stream may have moved."""
        host = self.host
        behind = (time.monotonic_ns() - self._mono0) - (host.clock.monotonic_ns - self._clock0)
        if behind > 0:
            try:
                return host.advance_time(behind / 1e6) > 0
            except FilterTrap:
                return True  # a tick trapped: the VM is failed, reported by drain_logs
        return False

    def filter_call(self, fn: Callable[[], Any], exchange: UpstreamLeg | None = None) -> Any:
        """Run ``fn`` (a call into the filter) with the clock synced; then print its logs and
        move on every stream it may have resumed."""
        ticked = self.sync_clock()
        result = None
        try:
            result = fn()
        except FilterTrap:
            pass  # root callback trapped (stream traps follow the failure policy instead)
        except HarnessUsageError as exc:
            self.log("error", f"[{self.name}] {exc}")
        self.after_filter_work(None if ticked else exchange)
        return result

    def after_filter_work(self, exchange: UpstreamLeg | None = None, *, everyone: bool = True) -> None:
        """Print the filter's logs; move on ``exchange`` and the paused streams (a stream's
        callback may resume another), or, without one, every stream (a tick, a callout's
        answer: root context code may act on any stream, as may a trap, which fails the VM);
        ``everyone=False``: only the paused."""
        traps = self._traps_total
        self.drain_logs()
        if self._traps_total != traps:
            exchange, everyone = None, True
        if exchange is not None or not everyone:
            if exchange is not None:
                exchange.pump()
            for other in list(self.waiting):
                if other is not exchange:
                    other.pump()
        else:
            for other in list(self.active):
                other.pump()

    async def _tick_loop(self) -> None:
        """Real-time ticks: keep the virtual clock on the wall clock."""
        while True:
            # every stream is moved on only when a tick (or a timeout) ran filter code
            self.after_filter_work(everyone=self.sync_clock())
            self._close_grpc_calls()
            self._trim_history()
            delay = 0.05
            for vm in {plugin.vm for plugin in self.live_plugins()}:
                if vm.failed is None:
                    tick = vm.next_tick()
                    if tick is not None:
                        delay = min(delay, max(0.001, (tick[0] - self.host.clock.monotonic_ns) / 1e9))
            await asyncio.sleep(delay)

    def _trim_history(self) -> None:
        for plugin in self.live_plugins():
            history = plugin.vm.host.callout_history
            if len(history) > 64:
                history[:] = [c for c in history if (c.pending if isinstance(c, HttpCallout) else c.state not in ("closed", "cancelled"))]

    def _close_grpc_calls(self) -> None:
        """gRPC callouts have no real transport here: answer UNAVAILABLE, as Envoy does for a
        cluster it cannot reach."""
        for call in [c for plugin in self.live_plugins() for c in plugin.vm.host.grpc_calls.values()]:
            if isinstance(call, GrpcCall) and call.state not in ("closed", "cancelled"):
                self.log("warn", f"[{self.name}] gRPC callout {call.service}/{call.method} to {call.cluster!r}: "
                                 "serve has no gRPC transport; closing it with 14 UNAVAILABLE")
                self.filter_call(functools.partial(call.close, 14, "serve does not forward gRPC callouts"))

    # -- callouts ------------------------------------------------------------------------------
    def _dispatch_callout(self, callout: HttpCallout) -> None:
        url = self.config.clusters.get(callout.cluster)
        if url is None:
            return
        self.spawn(self._forward_callout(callout, url))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward_callout(self, callout: HttpCallout, base: str) -> None:
        import aiohttp

        method, path, headers = callout.http_request()
        timeout = aiohttp.ClientTimeout(total=callout.timeout_ms / 1000 if callout.timeout_ms else None, connect=5.0)
        url = upstream_url(base, path)
        try:
            async with self.client.request(method, url, headers=headers, data=callout.body or None,
                                           timeout=timeout) as response:
                body = await response.read()
                status = response.status
                raw_headers = response.raw_headers
        except asyncio.TimeoutError:
            if callout.pending:
                self.filter_call(callout.time_out)
            return
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.log("warn", f"[{self.name}] callout to {callout.cluster} ({url}) failed: {exc!r}")
            if callout.pending:
                self.filter_call(callout.fail)
            return
        if not callout.pending:
            return  # timed out meanwhile (the clock is real time)
        pairs = [(text(k).lower(), text(v)) for k, v in raw_headers if text(k).lower() not in HOP_BY_HOP]
        self.filter_call(lambda: callout.respond(status, pairs, body))

    @property
    def client(self) -> Any:
        """The aiohttp session for upstream requests and callouts (httpx was 50x slower at 50
        concurrent requests: its connection pool degrades with concurrency)."""
        if self._client is None:
            import aiohttp

            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, force_close=False),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self.config.upstream_timeout),
                trust_env=False,
                # a proxy keeps no cookies: aiohttp's default jar would store an upstream's
                # set-cookie and add it to later requests (and costs a look-up per request)
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._client

    def forget_stream(self, stream: HttpStream, plugin: Plugin) -> None:
        """A finished stream: Envoy cancels the HTTP callouts of a destroyed stream context
        (``Context::onDestroy``), their answers never reach the filter; the plugin stops
        tracking it (the server runs for long).  A previous build whose last stream this was
        is shut down (``--reload``)."""
        callouts = plugin.vm.host.http_callouts
        for token, callout in list(callouts.items()):
            if callout.context_id == stream.context_id and callout.pending:
                callouts.pop(token, None)
                callout.state = "cancelled"
        try:
            plugin.streams.remove(stream)
        except ValueError:
            pass
        if plugin in self.retiring and not plugin.streams:
            self.retire(plugin)

    def retire(self, plugin: Plugin) -> None:
        """Shut a previous build down (on_done, on_delete) and forget it and its VM."""
        if plugin in self.retiring:
            self.retiring.remove(plugin)
        if plugin.vm.failed is None and not plugin.root.deleted:
            self.filter_call(plugin.shutdown)
        self.host.unload_plugin(plugin)
        self._traps_seen.pop(id(plugin), None)
        self.log("info", f"[{self.name}] the previous build has no streams left: shut down")

    # -- ASGI ------------------------------------------------------------------------------------
    async def app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self._ticker is None:
            self._ticker = self.spawn(self._tick_loop())
        exchange = Exchange(self, scope, receive, send)
        await exchange.run()

    async def start(self) -> None:
        """Start the real-time ticker (also started by the first request) and, with
        ``--reload``, the watcher of the .wasm file."""
        if self._ticker is None:
            self._ticker = self.spawn(self._tick_loop())
        if self.reloader is not None:
            self.spawn(self.reloader.watch())

    def abort_all(self, reason: str) -> None:
        """End every request in flight (a response under way is cut short)."""
        for ex in list(self.active):
            ex.abort(reason)

    async def close(self) -> None:
        """Stop the ticker, close the upstream client, shut the plugin down (on_done)."""
        if self._ticker is not None:
            self._ticker.cancel()
        self.abort_all("server shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
        for old in list(self.retiring):
            self.retire(old)
        if self.plugin.vm.failed is None and not self.plugin.root.deleted:
            done = self.filter_call(self.plugin.shutdown)
            deadline = time.monotonic() + 1.0
            while done is False and not self.plugin.root.deleted and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the root asked to finish later (proxy_done from a tick)
                self.sync_clock()
                self.drain_logs()
        self.drain_logs()


# ---------------------------------------------------------------------------------------------
# process entry point
# ---------------------------------------------------------------------------------------------


def limits_of(config: ServeConfig) -> Limits:
    """The HTTP server's connection limits from the serve configuration."""
    return Limits(
        request_headers_timeout=config.request_headers_timeout or None,
        idle_timeout=config.connection_idle_timeout or None,
        max_connections=config.max_connections,
        max_concurrent_streams=config.max_concurrent_streams,
        graceful_timeout=config.graceful_timeout,
    )


#: a serving process collects its youngest generation of objects after this many allocations
#: (Python's default is 700: dozens of collections a second under load, each walking every
#: request in flight; benchmarks/README.md, "serve vs Envoy")
GC_YOUNG_THRESHOLD = 10_000


def tune_gc_for_serving(config: ServeConfig) -> None:
    """Set the cyclic garbage collector up for a process that only serves from now on (the
    CLI's, and each ``--workers`` process; not a process that calls :func:`serve` among other
    work, such as a test run): the modules and the filter loaded so far are frozen out of it
    (``gc.freeze``: they live as long as the process, and a full collection no longer walks
    them), and the youngest generation is collected every :data:`GC_YOUNG_THRESHOLD`
    allocations.  Python's documented tuning (``gc.freeze``, ``gc.set_threshold``).  The
    modules the first request would load are loaded first (aiohttp only when there is an
    upstream or a cluster to call: it is ~10 MiB)."""
    needed = ["hypercorn.asyncio", "h2.connection", "h11"] + (["aiohttp"] if config.upstream or config.clusters else [])
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve(config: ServeConfig, *, ready: Callable[[int, FilterServer], None] | None = None,
                shutdown: asyncio.Event | None = None, out: Any = None, own_process: bool = False) -> FilterServer:
    """Load the filter, listen, serve until SIGINT/SIGTERM (or ``shutdown`` is set), shut down.

    ``ready(port, server)`` is called once listening; ``out`` replaces stderr for the log;
    ``own_process``: the process does nothing else (:func:`tune_gc_for_serving`)."""
    server = FilterServer(config, out=out)
    sockets = bind(config.host, config.port)
    port = sockets[0].getsockname()[1]
    limits = limits_of(config)

    def report(message: str, level: str) -> None:
        server.log(level, message, source="http")

    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            server.log("info", f"{signal.Signals(signum).name}: shutting down (again to force)")
            stop.set()
        else:
            os._exit(130)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    upstream = config.upstream or "the built-in echo upstream"
    server.log("info", f"serving {config.wasm if not isinstance(config.wasm, bytes) else 'filter'} "
                       f"(ABI {server.plugin.abi_version}) on http://{shown_host}:{port} (HTTP/1.1 and h2c) "
                       f"-> {upstream}")
    loop_kind = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    server.log("info", f"HTTP server: {HTTP_SERVERS[config.http_server]}; event loop: {loop_kind}")
    policy = config.failure_policy
    server.log("info", f"failure policy {policy}{' (the default)' if policy == 'fail_closed' else ''}: "
                       f"if the filter fails (a panic or trap), {FAILURE_POLICIES[policy]}")
    await server.start()
    if own_process:
        tune_gc_for_serving(config)
    if ready is not None:
        ready(port, server)
    try:
        if config.http_server == "hypercorn":
            await serve_hypercorn(server.app, sockets, stop, limits=limits, report=report,
                                  end_in_flight=functools.partial(server.abort_all, "server shutting down"))
        else:
            await HttpServer(server.app, limits=limits, report=report).serve(sockets, stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.close()
        s = server.stats
        server.log("info", f"stopped after {s['requests']} requests ({s['local_replies']} local replies, "
                           f"{s['fail_closed']} failed closed, {s['upstream_errors']} upstream errors, "
                           f"{s['bad_requests']} refused)")
    return server


def event_loop_kind(requested: str = "auto") -> str:
    """``uvloop`` or ``asyncio``: ``auto`` is uvloop when it is installed (hypercorn's
    ``uvloop`` extra), asyncio otherwise."""
    if requested == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if requested not in ("uvloop", "asyncio"):
        raise ValueError(f"event loop must be auto, uvloop or asyncio, not {requested!r}")
    return requested


def run(config: ServeConfig, *, loop: str = "auto") -> FilterServer:
    """:func:`serve` on a new event loop of the ``loop`` kind (:func:`event_loop_kind`)."""
    if event_loop_kind(loop) == "uvloop":
        import uvloop

        return uvloop.run(serve(config, own_process=True))
    return asyncio.run(serve(config, own_process=True))


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(prog="python -m proxywasm_host.serve.server")
    parser.add_argument("what", choices=["echo"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    run_echo(ns.host, ns.port)
