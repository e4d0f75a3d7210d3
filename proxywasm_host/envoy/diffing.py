"""How two exchange results are compared: ignored and masked headers, the field-by-field diff, :class:`DiffReport`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxywasm_host.core.headers import compare_header_lists, one_or_all
from proxywasm_host.envoy.traces import CallbackTrace, _significant
from proxywasm_host.http.scenario import (
    ExchangeResult,
    LocalReply,
)
from proxywasm_host.net.upstream import ReceivedRequest


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


# --------------------------------------------------------------------------
# call sequences


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


# --------------------------------------------------------------------------
# concurrent callout answers: Envoy runs proxy_on_http_call_response in the order the answers
# come back (several upstream connections: it varies from run to run); the host answers in
# token order.  Such a run of answers is compared order-free.

_ANSWER = "proxy_on_http_call_response"
_TOKEN = 1  # proxy_on_http_call_response(context_id, token, headers, body_size, trailers)


@dataclass(frozen=True)
class AnswerRun:
    """Callbacks ``start:end`` of both significant traces: consecutive answers to the same
    callouts (the same tokens), in another order on each side."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def _runs(trace: Sequence[CallbackTrace]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(trace):
        j = i
        while j < len(trace) and trace[j].name == _ANSWER and len(trace[j].args) > _TOKEN:
            j += 1
        if j - i >= 2:
            out.append((i, j))
        i = max(j, i + 1)
    return out


def reordered_answers(ours: list[CallbackTrace], envoy: list[CallbackTrace]) -> list[AnswerRun]:
    """The runs of callout answers that both traces (their compared callbacks) have at the same
    place, for the same tokens, in a different order."""
    ours, envoy = _significant(ours), _significant(envoy)
    found = []
    envoy_runs = set(_runs(envoy))
    for start, end in _runs(ours):
        if (start, end) not in envoy_runs:
            continue
        a = [c.args[_TOKEN] for c in ours[start:end]]
        b = [c.args[_TOKEN] for c in envoy[start:end]]
        if a != b and sorted(a) == sorted(b):
            found.append(AnswerRun(start, end))
    return found


def _in_answer_order(trace: Sequence[CallbackTrace], runs: Sequence[AnswerRun]) -> list[str]:
    """The trace as text, each reordered answer without its token: the k-th answer's arguments
    and calls are compared with the other side's k-th (the tokens are the same set)."""
    out = [str(c) for c in trace]
    for run in runs:
        for i in range(run.start, run.end):
            c = trace[i]
            args = ["<token>" if n == _TOKEN else str(a) for n, a in enumerate(c.args)]
            out[i] = f"{c.name}({', '.join(args)}) -> [{', '.join(c.hostcalls)}]"
    return out


def logs_order_free(
    logs: list[tuple[str, str]], trace: list[CallbackTrace], runs: Sequence[AnswerRun]
) -> list[tuple[str, str]]:
    """``logs`` with the lines the reordered answers wrote sorted (a multiset), the others in
    place.  Which lines those are is counted from the ``proxy_log`` calls of each callback; when
    the count does not match the logs (some came from elsewhere), the logs stay as they are."""
    if not runs:
        return logs
    counts = [c.hostcalls.count("proxy_log") for c in _significant(trace)]
    if sum(counts) != len(logs):
        return logs
    out = list(logs)
    for run in runs:
        first = sum(counts[: run.start])
        last = first + sum(counts[run.start : run.end])
        out[first:last] = sorted(out[first:last])
    return out


def _diff_traces(
    what: str, ours: list[CallbackTrace], envoy: list[CallbackTrace], runs: Sequence[AnswerRun] = ()
) -> list[str]:
    a = _in_answer_order(_significant(ours), runs)
    b = _in_answer_order(_significant(envoy), runs)
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
    if len(ours) > 1:
        # Callouts in flight together reach the upstream over several connections: the
        # arrival order is not the order of dispatch.  The same requests in another order agree.
        if sorted(map(repr, map(_callout_view, ours))) == sorted(map(repr, map(_callout_view, envoy))):
            return []
    out = []
    for i, (a, b) in enumerate(zip(ours, envoy)):
        va, vb = _callout_view(a), _callout_view(b)
        if va[:2] != vb[:2]:
            out.append(f"callout {i + 1} to {name}: in-process {va[0]} {va[1]}, Envoy {vb[0]} {vb[1]}")
        out += _diff_headers(f"callout {i + 1} to {name} headers", va[2], vb[2])
        out += _diff_value(f"callout {i + 1} to {name} body", va[3], vb[3])
    return out
