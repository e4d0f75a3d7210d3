"""Property-based fuzzing of a filter: ``proxywasm-host fuzz FILTER.wasm`` and :func:`fuzz`.

Generated exchanges (:mod:`proxywasm_host.strategies`) go through the filter, each in a
fresh host, as Envoy would deliver them; an exchange *fails* when the filter

* traps (a panic, ``unreachable``, out-of-bounds: ``trap``), runs past the callback
  deadline (``deadline``) or out of memory (``memory``);
* emits an invalid header (a name that is no RFC 9110 token, a value with CR, LF or NUL)
  upstream, downstream or in a local reply (``invalid-header``);
* leaves the stream stuck: no response reached the client even after the virtual clock
  ran ``wait_ms`` on (``stuck``);
* breaks an invariant you give, a callable ``(exchange, result) -> None`` that raises
  ``AssertionError`` (``invariant``).

Property paths the filter asks for that the host has no value for (a plugin's own
properties, not Envoy's attributes) get generated values from the next round on, passed as
the plugin's ``properties``.

Hypothesis shrinks a failing exchange to the smallest one that still fails the same way.
The fuzzer watches the filter's hostcalls and *learns* what it asks for: header names it
reads (``proxy_get_header_map_value``), property paths and shared-data keys.  A learned
header name is generated often in the next round, so a bug behind a header no test named
is still found.  Runs are reproducible: the same ``seed`` gives the same exchanges.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import proxywasm_host.strategies as pst
from proxywasm_host.core.types import Status
from proxywasm_host.errors import FilterTrap
from proxywasm_host.harness.host import Host
from proxywasm_host.http.scenario import ExchangeResult, HeaderPair

__all__ = ["FuzzFailure", "FuzzReport", "Invariant", "fuzz", "invalid_headers"]

#: ``invariant(exchange, result)`` raises AssertionError when the filter misbehaved
Invariant = Callable[[pst.Exchange, ExchangeResult], None]

#: what one fuzz run may do by default: examples in all, virtual ms a held stream may wait
DEFAULT_MAX_EXAMPLES = 400
DEFAULT_WAIT_MS = 10_000.0
#: examples of the first round, which mostly learns what the filter asks for
FIRST_ROUND = 60

_KINDS: dict[str, type[FuzzFailure]] = {}
#: Envoy's attribute namespaces: a filter reading one the host lacks is not asking for config
_ATTRIBUTES = frozenset({"request", "response", "source", "destination", "connection", "upstream", "xds", "node",
                         "metadata", "filter_state", "plugin_name", "plugin_root_id", "plugin_vm_id", "listener_direction",
                         "listener_metadata", "route_name", "route_metadata", "cluster_name", "cluster_metadata"})
_TOKEN_RE = re.compile(r"^:?[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: map types of the request/response header and trailer maps (ABI MapType)
_HEADER_MAPS = {0: "request", 1: "request", 2: "response", 3: "response"}


class FuzzFailure(AssertionError):
    """One exchange made the filter fail (raised inside the Hypothesis test; one subclass
    per kind, so Hypothesis shrinks each kind of failure as a bug of its own)."""

    def __new__(cls, kind: str, *args: Any, **kwargs: Any) -> FuzzFailure:  # noqa: PYI034 - a subclass per kind
        sub = _KINDS.get(kind)
        if sub is None:
            sub = _KINDS[kind] = type(f"FuzzFailure[{kind}]", (FuzzFailure,), {})
        return super().__new__(sub)

    def __init__(self, kind: str, message: str, exchange: pst.Exchange, trap: FilterTrap | None = None,
                 properties: dict[str, str] | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.exchange = exchange
        self.trap = trap
        #: plugin properties the fuzzer gave (paths the filter asked for and the host lacked)
        self.properties = dict(properties or {})


@dataclass
class Learned:
    """What the filter asked the host for."""

    request_headers: set[str] = field(default_factory=set)
    response_headers: set[str] = field(default_factory=set)
    properties: set[str] = field(default_factory=set)
    #: the property paths among them the host had no value for (the fuzzer generates values)
    missing_properties: set[str] = field(default_factory=set)
    shared_data: set[str] = field(default_factory=set)

    def size(self) -> int:
        return len(self.request_headers) + len(self.response_headers) + len(self.properties) + len(self.shared_data)

    def to_json_dict(self) -> dict[str, list[str]]:
        return {
            "request_headers": sorted(self.request_headers),
            "response_headers": sorted(self.response_headers),
            "properties": sorted(self.properties),
            "missing_properties": sorted(self.missing_properties),
            "shared_data": sorted(self.shared_data),
        }


@dataclass
class FuzzReport:
    """The outcome of :func:`fuzz`: ``failure`` is None when nothing failed."""

    wasm: str
    seed: int
    examples: int
    rounds: int
    elapsed_s: float
    learned: Learned
    failure: FuzzFailure | None = None
    root_id: str = ""
    configuration: bytes = b""

    @property
    def ok(self) -> bool:
        return self.failure is None

    def reproducer(self) -> str:
        """The failing exchange as a ready-to-paste pytest test."""
        if self.failure is None:
            return ""
        ex = self.failure.exchange
        body = pst_indent(ex.to_python(), 8)
        lines = [
            "from proxywasm_host import Host, HttpRequest, HttpResponse",
            "",
            "",
            f"def test_fuzz_{self.failure.kind.replace('-', '_')}_seed_{self.seed}():",
            f"    # found by: proxywasm-host fuzz {self.wasm} --seed {self.seed}",
            (f"    plugin = Host().load_plugin({self.wasm!r}, root_id={self.root_id!r}, "
             f"configuration={self.configuration!r}"
             + (f", properties={self.failure.properties!r}" if self.failure.properties else "") + ")"),
            "    result = plugin.exchange(",
            body + f",\n        wait_ms={DEFAULT_WAIT_MS!r},",
            "    )",
        ]
        if self.failure.kind == "stuck":
            lines.append("    assert result.downstream_response is not None, 'the stream never got a response'")
        elif self.failure.kind == "invalid-header":
            lines += [
                "    from proxywasm_host.fuzz import invalid_headers",
                "",
                "    assert invalid_headers(result) == []",
            ]
        elif self.failure.kind == "invariant":
            lines.append("    # then check your invariant on (exchange, result)")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        head = (f"{self.examples} exchanges in {self.rounds} round(s), {self.elapsed_s:.1f} s, seed {self.seed}; "
                f"learned request headers {sorted(self.learned.request_headers) or '-'}")
        if self.failure is None:
            return f"no failure: {head}"
        text = [f"FAILED ({self.failure.kind}) after {head}", "", "smallest failing exchange:",
                pst_indent(self.failure.exchange.to_python(), 2)]
        if self.failure.properties:
            text.append(f"  with plugin properties {self.failure.properties!r}")
        text += ["", "what happened:", pst_indent(self.failure.message, 2)]
        return "\n".join(text)

    def to_json_dict(self) -> dict[str, Any]:
        failure = None
        if self.failure is not None:
            ex = self.failure.exchange
            failure = {
                "kind": self.failure.kind,
                "message": self.failure.message,
                "trap": None if self.failure.trap is None else self.failure.trap.to_json_dict(),
                "properties": self.failure.properties,
                "exchange": {
                    "protocol": ex.protocol,
                    "profile": ex.profile,
                    "request": {
                        "headers": [list(h) for h in ex.request.headers],
                        "body_chunks": [c.decode("latin-1") for c in ex.request.body_chunks],
                        "trailers": None if ex.request.trailers is None else [list(h) for h in ex.request.trailers],
                    },
                    "response": {
                        "status": ex.response.status,
                        "headers": [list(h) for h in ex.response.headers],
                        "body_chunks": [c.decode("latin-1") for c in ex.response.body_chunks],
                        "trailers": None if ex.response.trailers is None else [list(h) for h in ex.response.trailers],
                    },
                },
                "reproducer": self.reproducer(),
            }
        return {
            "wasm": self.wasm,
            "ok": self.ok,
            "seed": self.seed,
            "examples": self.examples,
            "rounds": self.rounds,
            "elapsed_s": round(self.elapsed_s, 3),
            "learned": self.learned.to_json_dict(),
            "failure": failure,
        }


def pst_indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())


def invalid_headers(result: ExchangeResult) -> list[str]:
    """Headers the filter left in a state Envoy would refuse (not an RFC 9110 token name,
    CR/LF/NUL in a value), as ``"<where>: <name>: <why>"``."""
    found: list[str] = []

    def check(where: str, pairs: Iterable[HeaderPair] | None) -> None:
        for name, value in pairs or ():
            if not _TOKEN_RE.match(name):
                found.append(f"{where}: {name!r}: not a valid header name")
            elif any(c in value for c in "\r\n\0"):
                found.append(f"{where}: {name}: value {value!r} holds CR, LF or NUL")

    up, down, local = result.upstream_request, result.downstream_response, result.local_reply
    if up is not None:
        check("upstream request", up.headers)
        check("upstream request trailers", up.trailers)
    if down is not None:
        check("downstream response", down.headers)
        check("downstream response trailers", down.trailers)
    if local is not None:
        check("local reply", local.headers)
    return found


def _classify(trap: FilterTrap) -> str:
    text = f"{trap.summary} {trap.panic_message or ''}".lower()
    if trap.summary.startswith("deadline exceeded"):
        return "deadline"
    if "memory allocation" in text or "out of memory" in text or "capacity overflow" in text:
        return "memory"
    return "trap"


class _Target:
    """Loads the filter once per example (a fresh host: no state leaks between examples,
    so Hypothesis can replay and shrink) and learns from its hostcalls."""

    def __init__(
        self,
        wasm: str | Path,
        *,
        root_id: str,
        configuration: bytes,
        vm_configuration: bytes,
        deadline_s: float,
        memory_limit_bytes: int,
        wait_ms: float,
        invariant: Invariant | None,
        learn: bool,
    ) -> None:
        self.wasm = wasm
        self.root_id = root_id
        self.configuration = configuration
        self.vm_configuration = vm_configuration
        self.deadline_s = deadline_s
        self.memory_limit_bytes = memory_limit_bytes
        self.wait_ms = wait_ms
        self.invariant = invariant
        self.learn = learn
        self.learned = Learned()
        self.examples = 0
        # load once up front: a module that does not load is a load error, not a finding
        self._host().load_plugin(**self._load_args())

    def _host(self) -> Host:
        return Host(trace=self.learn, callback_deadline_s=self.deadline_s, memory_limit_bytes=self.memory_limit_bytes)

    def _load_args(self) -> dict[str, Any]:
        return {"wasm": self.wasm, "root_id": self.root_id, "configuration": self.configuration,
                "vm_configuration": self.vm_configuration}

    def run(self, exchange: pst.Exchange, properties: dict[str, str] | None = None) -> ExchangeResult:
        self.examples += 1
        host = self._host()
        props = properties or {}
        try:
            plugin = host.load_plugin(**self._load_args(), properties=props)
            result = plugin.exchange(exchange.request, exchange.response, wait_ms=self.wait_ms,
                                     profile=exchange.profile)
        except FilterTrap as trap:
            raise FuzzFailure(_classify(trap), str(trap), exchange, trap, props) from None
        finally:
            if self.learn:
                self._learn(host)
        bad = invalid_headers(result)
        if bad:
            raise FuzzFailure("invalid-header", "\n".join(bad), exchange, properties=props)
        if result.downstream_response is None:
            held = "request" if result.upstream_request is None else "response"
            raise FuzzFailure("stuck", f"the {held} was held and the client got no response "
                                       f"within {self.wait_ms:g} virtual ms", exchange, properties=props)
        if self.invariant is not None:
            try:
                self.invariant(exchange, result)
            except AssertionError as exc:
                raise FuzzFailure("invariant", f"{type(exc).__name__}: {exc}", exchange, properties=props) from None
        return result

    def _learn(self, host: Host) -> None:
        learned = self.learned
        for record in host.hostcall_trace:
            name, args = record.name, record.args
            if name in ("proxy_get_header_map_value", "proxy_get_header_map_value_0_1"):
                key = args.get("key")
                if isinstance(key, bytes) and key and not key.startswith(b":"):
                    side = _HEADER_MAPS.get(int(args.get("map_type", 0)), "request")
                    target = learned.request_headers if side == "request" else learned.response_headers
                    target.add(key.decode("utf-8", "replace"))
            elif name == "proxy_get_property":
                path = args.get("path")
                if isinstance(path, bytes) and path:
                    dotted = ".".join(p.decode("utf-8", "replace") for p in path.split(b"\0") if p)
                    learned.properties.add(dotted)
                    if record.result == int(Status.NOT_FOUND) and dotted.split(".", 1)[0] not in _ATTRIBUTES:
                        learned.missing_properties.add(dotted)
            elif name == "proxy_get_shared_data":
                key = args.get("key")
                if isinstance(key, bytes):
                    learned.shared_data.add(key.decode("utf-8", "replace"))


def fuzz(
    wasm: str | Path,
    *,
    root_id: str = "",
    configuration: str | bytes = b"",
    vm_configuration: str | bytes = b"",
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
    invariant: Invariant | None = None,
    hostile: bool = False,
    protocol: str | None = None,
    header_names: Iterable[str] = (),
    learn: bool = True,
    deadline_s: float = 1.0,
    memory_limit_bytes: int = 256 << 20,
    wait_ms: float = DEFAULT_WAIT_MS,
    progress: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Drive up to ``max_examples`` generated exchanges through the filter; stop at the
    first failure and shrink it.  ``header_names`` are hints (generated often from the
    start); with ``learn`` the fuzzer adds the names the filter reads itself, round by
    round (a round ends early when something new was learned).  ``progress`` gets a line
    per round."""
    config = configuration.encode() if isinstance(configuration, str) else configuration
    vm_config = vm_configuration.encode() if isinstance(vm_configuration, str) else vm_configuration
    target = _Target(wasm, root_id=root_id, configuration=config, vm_configuration=vm_config,
                     deadline_s=deadline_s, memory_limit_bytes=memory_limit_bytes, wait_ms=wait_ms,
                     invariant=invariant, learn=learn)
    hints = set(header_names)
    start = time.monotonic()
    rounds = 0
    failure: FuzzFailure | None = None
    learned_more = learn  # a short first round learns what the filter reads
    while target.examples < max_examples and failure is None:
        rounds += 1
        before = target.learned.size()
        remaining = max_examples - target.examples
        budget = min(remaining, FIRST_ROUND) if learned_more else remaining
        exchanges = pst.exchanges(
            protocol=protocol,
            hostile=hostile,
            extra_header_names=sorted(hints | target.learned.request_headers),
            extra_response_header_names=sorted(target.learned.response_headers),
        )
        # values for the property paths the filter asked for and the host lacked (each one
        # optional, so a property that does not matter shrinks away)
        properties = st.fixed_dictionaries(
            {}, optional={path: pst.header_values(hostile=hostile) for path in sorted(target.learned.missing_properties)})
        strategy = st.tuples(exchanges, properties)
        failure = _run_round(target, strategy, budget, seed + rounds - 1)
        learned_more = target.learned.size() > before
        if progress is not None:
            news = sorted(target.learned.request_headers | target.learned.response_headers)
            progress(f"round {rounds}: {target.examples} exchanges, {time.monotonic() - start:.1f} s"
                     + (f", the filter reads headers {news}" if news else "")
                     + (f": {failure.kind}" if failure else ""))
        if failure is None and not learned_more and budget == remaining:
            break
    return FuzzReport(
        wasm=str(wasm), seed=seed, examples=target.examples, rounds=rounds,
        elapsed_s=time.monotonic() - start, learned=target.learned, failure=failure,
        root_id=root_id, configuration=config,
    )


def _run_round(target: _Target, strategy: st.SearchStrategy[tuple[pst.Exchange, dict[str, str]]], budget: int,
               round_seed: int) -> FuzzFailure | None:
    @hypothesis_seed(round_seed)
    @settings(
        max_examples=max(1, budget),
        database=None,
        deadline=None,
        derandomize=False,
        verbosity=Verbosity.quiet,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def run_one(case: tuple[pst.Exchange, dict[str, str]]) -> None:
        target.run(*case)

    try:
        run_one()
    except FuzzFailure as failure:
        return failure
    return None
