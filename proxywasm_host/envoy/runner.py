"""One Envoy and one upstream for one plugin, reused across exchanges; the scenario entry points."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from proxywasm_host.envoy.client import ClientResult, send_request
from proxywasm_host.envoy.config import Topology, render_envoy_config
from proxywasm_host.envoy.logs import (
    EnvoyLogLine,
    filter_logs,
    parse_envoy_log,
    trace_lines,
)
from proxywasm_host.envoy.process import EnvoyProcess
from proxywasm_host.errors import EnvoyError
from proxywasm_host.http.scenario import (
    DownstreamResponse,
    ExchangeResult,
    HttpRequest,
    HttpResponse,
    LogRecord,
    PluginSpec,
    Scenario,
)
from proxywasm_host.net.upstream import ReceivedRequest, UpstreamServer
from proxywasm_host.runtime.binary import abi_version_of, module_exports


@dataclass
class EnvoyExchange:
    """Everything one exchange through Envoy produced."""

    result: ExchangeResult
    trace: list[str]  # wasm-component records other than the module's logs (calls with arguments)
    access: dict[str, Any] | None  # our access-log record for the stream
    upstream_requests: list[ReceivedRequest]
    client: ClientResult
    log_lines: list[EnvoyLogLine]  # every record Envoy wrote during the exchange
    seconds: float


def _serialized_size(headers: Sequence[tuple[str, str]]) -> int:
    """Size of a header map in the ABI's serialized form (count, sizes, NUL-terminated strings)."""
    return 4 + sum(8 + len(k.encode("latin-1")) + 1 + len(v.encode("latin-1")) + 1 for k, v in headers)


def _local_reply_from(
    trace: list[str], access: dict[str, Any] | None, response: DownstreamResponse | None
) -> Any:
    """A LocalReply when the module's proxy_send_local_response made the response.

    Detection (reliable): the trace shows ``env.proxy_send_local_response(...)``
    returning 0, and the access log's ``%RESPONSE_CODE_DETAILS%`` is not
    ``via_upstream``.  The first such call is the reply (Envoy ignores a
    second one in the same stream: the client gets the first).  Status, gRPC status (``-1``/``u32::MAX`` -> None) and
    the sizes come from the call's arguments, details from the access log,
    body from the downstream response.  The headers the module passed cannot
    be read out of its memory from outside; Envoy puts them right after
    ``:status``, before its own ``content-length``/``content-type``, so they
    are taken as the leading downstream headers whose serialized size equals
    the call's ``headers_size`` argument (exact unless the module's own
    on_response_headers rewrote them).  When no prefix matches, the fallback
    is the downstream headers minus those Envoy adds to a local reply (date,
    server, content-length, content-type: text/plain, and on HTTP/1.1
    ``connection: close`` when the request body was not read; to a gRPC request
    content-type: application/grpc, grpc-status and grpc-message).  The body
    is what the client got: none for a gRPC request (the text is in
    grpc-message).

    A stream failed because the VM failed (``%RESPONSE_CODE_DETAILS%`` is
    ``wasm_fail_stream``) is Envoy's own local reply (``Context::failStream``:
    503, gRPC status 14, no headers from the module); it is reported as such.
    """
    from proxywasm_host.http.scenario import LocalReply

    if response is None or access is None:
        return None
    details = str(access.get("response_code_details", ""))
    if details == "via_upstream":
        return None
    if details == "wasm_fail_stream":
        # The VM failed (a trap now or earlier) and the filter is fail-closed:
        # Envoy's Context::failStream sends this local reply itself, 503 with
        # gRPC status UNAVAILABLE (14), no body, no module headers.
        # (To a gRPC request the client gets 200 + grpc-status 14: the call was still 503.)
        return LocalReply(status_code=503, body=response.body, headers=[], details=details, grpc_status=14)
    call = None
    for i, line in enumerate(trace):
        if "env.proxy_send_local_response(" in line and "[vm->host]" in line:
            ok = any("env.proxy_send_local_response return: 0" in later for later in trace[i + 1 : i + 3])
            if ok:
                call = line
                break  # Envoy sends the first; a second one in the same stream is ignored
    if call is None:
        return None
    args = [a.strip() for a in call.split("proxy_send_local_response(", 1)[1].rstrip(")").split(",")]
    try:
        status = int(args[0])
        headers_size = int(args[6]) if len(args) >= 8 else -1
        grpc = int(args[-1]) & 0xFFFFFFFF
    except (ValueError, IndexError):
        return None
    grpc_status = None if grpc == 0xFFFFFFFF or grpc > 0xFFFF else grpc
    headers: list[tuple[str, str]] | None = None
    if 0 <= headers_size <= 4:  # nothing, or a serialized map of 0 pairs (its count)
        headers = []
    elif headers_size > 0:
        for n in range(1, len(response.headers) + 1):
            size = _serialized_size(response.headers[:n])
            if size == headers_size:
                headers = list(response.headers[:n])
                break
            if size > headers_size:
                break
    if headers is None:
        headers = [
            (k, v)
            for k, v in response.headers
            if k.lower() not in ("date", "server", "content-length")
            and not (k.lower() == "content-type" and v in ("text/plain", "application/grpc"))
            and k.lower() not in ("grpc-status", "grpc-message")
            and not (k.lower() == "connection" and v == "close")
        ]
    return LocalReply(status_code=status, body=response.body, headers=headers, details=details, grpc_status=grpc_status)


ClusterTarget = Union[int, str, UpstreamServer, HttpResponse, Callable[[ReceivedRequest], HttpResponse]]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


class EnvoyRunner:
    """One upstream server and one Envoy for one plugin, reused across exchanges.

    Start-up (Envoy compiling the module with V8) is paid once; every
    :meth:`exchange` costs a few milliseconds.  Context ids keep counting up
    across exchanges (the first stream is context 2, the next 3, ...), so a
    filter that logs its context id logs different text than on a fresh
    Envoy: use a fresh runner per scenario when that matters.
    """

    def __init__(
        self,
        plugin: PluginSpec,
        *,
        upstream_http2: bool = True,
        envoy: str | None = None,
        startup_timeout: float = 20.0,
        clusters: Mapping[str, ClusterTarget] | None = None,
        upstream_chunk_gap: float = 0.02,
        topology: Topology | None = None,
    ):
        """``clusters``: more clusters for the module's HTTP callouts, by name.
        A value is a port (a server already listening on 127.0.0.1), a
        ``"grpc://host:port"`` URL (a gRPC server the test started: an HTTP/2
        cluster, for the module's gRPC calls), an
        :class:`UpstreamServer` (started by the caller), or what such a server
        answers (an :class:`HttpResponse` or a callable taking the
        :class:`ReceivedRequest`): the runner then starts the server itself
        and keeps it in :attr:`cluster_servers`.  ``upstream_chunk_gap``: the
        upstream waits this long between response body chunks, so the filter
        sees each one separately (as the client does for request chunks).
        ``topology``: route metadata and filters in front of the plugin (see
        :class:`~proxywasm_host.envoy.config.Topology`)."""
        self.plugin = plugin
        self.topology = topology
        self.clusters: dict[str, ClusterTarget] = dict(clusters or {})
        self.cluster_servers: dict[str, UpstreamServer] = {}
        self._own_servers: list[UpstreamServer] = []
        self.upstream_chunk_gap = upstream_chunk_gap
        self.upstream_http2 = upstream_http2
        self.envoy_binary = envoy
        self.startup_timeout = startup_timeout
        self.upstream: UpstreamServer | None = None
        self.envoy: EnvoyProcess | None = None
        self.abi_version = abi_version_of(plugin.wasm)
        self.startup_lines: list[EnvoyLogLine] = []
        self.main_thread = 0
        self.worker_thread: int | None = None
        self.startup_seconds: float | None = None

    def __enter__(self) -> EnvoyRunner:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.upstream = UpstreamServer(HttpResponse(), chunk_gap=self.upstream_chunk_gap)
        self.upstream.start()
        try:
            ports: dict[str, int | str] = {}
            for name, target in self.clusters.items():
                if isinstance(target, (int, str)):  # a port, or "grpc://host:port" (HTTP/2 cluster)
                    ports[name] = target
                    continue
                if isinstance(target, UpstreamServer):
                    server = target
                else:
                    server = UpstreamServer(target)
                    server.start()
                    self._own_servers.append(server)
                self.cluster_servers[name] = server
                ports[name] = server.port
            config = render_envoy_config(
                self.plugin,
                listener_port=0,
                admin_port=0,
                upstream_port=self.upstream.port,
                http2=self.upstream_http2,
                clusters=ports,
                topology=self.topology,
            )
            self.envoy = EnvoyProcess(config, envoy=self.envoy_binary, startup_timeout=self.startup_timeout)
            self.envoy.start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = self.envoy.startup_seconds
        self.startup_lines = parse_envoy_log(self.envoy.read_log())
        if self.startup_lines:
            self.main_thread = self.startup_lines[0].thread
        workers = [l.thread for l in self.startup_lines if l.logger == "wasm" and l.thread != self.main_thread]
        self.worker_thread = workers[0] if workers else None

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.cleanup()
            self.envoy = None
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        for server in self._own_servers:
            server.stop()
        self._own_servers = []
        self.cluster_servers = {}

    def _worker(self, line: EnvoyLogLine) -> bool:
        if line.logger != "wasm":
            return False
        if self.worker_thread is None:
            return line.thread != self.main_thread
        return line.thread == self.worker_thread

    def startup_logs(self) -> list[LogRecord]:
        """The module's logs from the worker thread's VM start (on_vm_start, on_configure)."""
        return filter_logs((l for l in self.startup_lines if self._worker(l)), self.plugin)

    def exchange(
        self,
        request: HttpRequest,
        response: HttpResponse = HttpResponse(),
        *,
        http2: bool = False,
        timeout: float = 5.0,
        chunk_gap: float | None = None,
        include_startup_logs: bool = True,
    ) -> EnvoyExchange:
        if self.envoy is None or self.upstream is None:
            raise EnvoyError("runner not started")
        started = time.monotonic()
        self.upstream.clear()
        self.upstream.response = response
        offset = self.envoy.log_size()
        # The stream is over for Envoy when our access-log line appears (and
        # the module's proxy_on_delete has run).  The HTTP/1.1 client keeps
        # its connection open until then (see send_request's before_close).
        ended: list[tuple[str, list[EnvoyLogLine], dict[str, Any] | None]] = []

        def hold() -> None:
            ended.append(self._wait_for_stream_end(offset, deadline=time.monotonic() + timeout))

        client = send_request(
            self.envoy.listener_port,
            request,
            http2=http2,
            timeout=timeout,
            chunk_gap=chunk_gap,
            before_close=None if http2 else hold,
            between_pieces=lambda n: self._wait_for_body_events(offset, n),
        )
        if ended:
            text, lines, access = ended[0]
        else:
            text, lines, access = self._wait_for_stream_end(offset, deadline=time.monotonic() + timeout)
        if self.envoy.proc is None or self.envoy.proc.poll() is not None:
            raise EnvoyError("envoy died during the exchange", self.envoy.log_tail())
        mine = [l for l in lines if self._worker(l)]
        logs = (self.startup_logs() if include_startup_logs else []) + filter_logs(mine, self.plugin)
        trace = trace_lines(mine, self.plugin)
        received = list(self.upstream.requests)
        down = client.response
        result = ExchangeResult(
            abi_version=self.abi_version,
            upstream_request=received[0].to_upstream_request() if received else None,
            downstream_response=down,
            local_reply=_local_reply_from(trace, access, down),
            logs=logs,
        )
        return EnvoyExchange(
            result=result,
            trace=trace,
            access=access,
            upstream_requests=received,
            client=client,
            log_lines=lines,
            seconds=time.monotonic() - started,
        )

    def _wait_for_stream_end(
        self, offset: int, deadline: float
    ) -> tuple[str, list[EnvoyLogLine], dict[str, Any] | None]:
        assert self.envoy is not None
        access_seen: float | None = None
        while True:
            text = self.envoy.read_log(offset)
            cut = text.rfind("\n")  # whole lines only
            text = text[: cut + 1] if cut >= 0 else ""
            lines = parse_envoy_log(text)
            access: dict[str, Any] | None = None
            for line in lines:
                if line.logger == "access":
                    try:
                        access = json.loads(line.message)
                    except ValueError:
                        access = {"raw": line.message}
                    break
            now = time.monotonic()
            if access is not None:
                if access_seen is None:
                    access_seen = now
                if not self._exports_on_delete():
                    break
                if access.get("response_code_details") == "wasm_fail_stream":
                    break  # the VM failed: no callbacks (proxy_on_delete included) will come
                if any("proxy_on_delete return" in l.message for l in lines):
                    break
                if now > access_seen + 0.5:
                    break
            if now > deadline or self.envoy.proc is None or self.envoy.proc.poll() is not None:
                break
            time.sleep(0.002)
        return text, lines, access

    def _wait_for_body_events(self, offset: int, count: int, limit: float = 1.0) -> None:
        """Wait (at most ``limit`` s) until Envoy delivered ``count`` request body events
        to the module -- or will not: the module has no ``proxy_on_request_body``, it
        stopped iteration at the headers (Envoy buffers the body meanwhile), or the
        stream is over."""
        assert self.envoy is not None
        if not any(n == "proxy_on_request_body" and k == 0 for n, k in module_exports(self.plugin.wasm)):
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            text = self.envoy.read_log(offset)
            if text.count("[host->vm] proxy_on_request_body(") >= count:
                return
            if "proxy_on_request_headers return: 1" in text or '"pwh_access":' in text:
                return
            time.sleep(0.002)

    def _exports_on_delete(self) -> bool:
        return any(name == "proxy_on_delete" and kind == 0 for name, kind in module_exports(self.plugin.wasm))

    def run(self, scenario: Scenario, *, http2: bool = False, **kwargs: Any) -> ExchangeResult:
        if scenario.plugin != self.plugin:
            raise ValueError("scenario is for another plugin than this runner's")
        return self.exchange(scenario.request, scenario.response, http2=http2, **kwargs).result


def _needs_h2_upstream(scenario: Scenario) -> bool:
    return bool(scenario.request.trailers) or bool(scenario.response.trailers)


def run_in_envoy(
    scenario: Scenario,
    *,
    http2: bool = False,
    upstream_http2: bool | None = True,
    envoy: str | None = None,
    timeout: float = 5.0,
    clusters: Mapping[str, ClusterTarget] | None = None,
) -> tuple[ExchangeResult, list[str]]:
    """Run one scenario through a fresh Envoy; return the result and the wasm trace.

    ``http2`` is the downstream protocol (h2c prior knowledge when true).
    ``upstream_http2`` is what Envoy speaks to the upstream: HTTP/2 by
    default (the upstream then sees Envoy's pseudo-headers as they are, and
    trailers pass both ways); False for HTTP/1.1 (trailers are then dropped
    by Envoy); None picks HTTP/2 only when the scenario has trailers.
    The trace is every ``wasm`` record Envoy wrote on the worker thread during
    the exchange other than the module's own logs: with ``wasm:trace`` the
    calls between Envoy and the module with their arguments, e.g.
    ``[host->vm] proxy_on_request_headers(2, 10, 1)``.
    ``clusters`` adds clusters for HTTP callouts (see :class:`EnvoyRunner`).
    """
    up_h2 = _needs_h2_upstream(scenario) if upstream_http2 is None else upstream_http2
    with EnvoyRunner(scenario.plugin, upstream_http2=up_h2, envoy=envoy, clusters=clusters) as runner:
        ex = runner.exchange(scenario.request, scenario.response, http2=http2, timeout=timeout)
    return ex.result, ex.trace


def run_scenario_in_envoy(scenario: Scenario, *, http2: bool = False, **kwargs: Any) -> ExchangeResult:
    """Run one scenario through a fresh Envoy (see :func:`run_in_envoy`)."""
    return run_in_envoy(scenario, http2=http2, **kwargs)[0]


def run_scenarios_in_envoy(
    scenarios: Sequence[Scenario], *, http2: bool = False, upstream_http2: bool = True, reuse: bool = True
) -> list[ExchangeResult]:
    """Run several scenarios, one Envoy per distinct plugin when ``reuse``.

    With ``reuse`` the context ids seen by the module keep counting up
    across the scenarios of one plugin (see :class:`EnvoyRunner`); the
    worker VM's start-up logs are prepended to every result either way.
    """
    if not reuse:
        return [run_scenario_in_envoy(s, http2=http2, upstream_http2=upstream_http2) for s in scenarios]
    results: list[ExchangeResult | None] = [None] * len(scenarios)
    groups: dict[PluginSpec, list[int]] = {}
    for i, s in enumerate(scenarios):
        groups.setdefault(s.plugin, []).append(i)
    for plugin, indexes in groups.items():
        with EnvoyRunner(plugin, upstream_http2=upstream_http2) as runner:
            for i in indexes:
                results[i] = runner.run(scenarios[i], http2=http2)
    return [r for r in results if r is not None]
