"""``proxywasm-host``: inspect a filter, run one HTTP exchange through it, or serve it.

    proxywasm-host inspect FILTER.wasm [--json]
    proxywasm-host run FILTER.wasm -H ':authority: localhost:8080' [--json]
    proxywasm-host serve FILTER.wasm [--port 8080] [--upstream URL] [--cluster NAME=URL]
    proxywasm-host fuzz FILTER.wasm [--seed N] [--max-examples N] [--json] [--envoy]
    proxywasm-host build | package | push | pull | istio ...   (see docs/serve.md)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import proxywasm_host.speedups as speedups
from proxywasm_host.cli.args import read_text_arg
from proxywasm_host.errors import (
    FilterFailed,
    FilterTrap,
    HarnessUsageError,
    ModuleLoadError,
    ProxyWasmError,
)
from proxywasm_host.harness.host import Host
from proxywasm_host.http.scenario import HttpRequest, HttpResponse, PluginSpec
from proxywasm_host.runtime.module import inspect_module

#: pseudo-headers Envoy always gives a filter for an HTTP/1.1 request, filled in when absent
DEFAULT_PSEUDO = ((":authority", "localhost:8080"), (":path", "/"), (":method", "GET"), (":scheme", "http"))


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def parse_header(text: str) -> tuple[str, str]:
    """``'name: value'`` → (name, value); pseudo-headers keep their leading colon.  The name
    must be an HTTP token (RFC 9110 §5.1: no spaces, not empty), the value without CR/LF/NUL."""
    start = 1 if text.startswith(":") else 0
    sep = text.find(":", start)
    if sep <= start:
        raise argparse.ArgumentTypeError(f"expected 'name: value', got {text!r}")
    name, value = text[:sep].strip().lower(), text[sep + 1 :].strip()
    bare = name[1:] if name.startswith(":") else name
    if not bare or not set(bare) <= _TOKEN:
        raise argparse.ArgumentTypeError(f"{text!r}: {name!r} is not a header name (letters, digits, "
                                         "!#$%&'*+-.^_`|~; no spaces)")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"{text!r}: a header value cannot hold CR, LF or NUL")
    return name, value


def parse_status(text: str) -> int:
    """An HTTP status code, 100..599 (what Envoy's codecs accept)."""
    try:
        status = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a status code") from None
    if not 100 <= status <= 599:
        raise argparse.ArgumentTypeError(f"status {status} is outside 100-599")
    return status


def request_headers(given: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    names = {k for k, _ in given}
    pseudo = [(k, v) for k, v in given if k.startswith(":")]
    pseudo += [(k, v) for k, v in DEFAULT_PSEUDO if k not in names]
    return tuple(pseudo + [(k, v) for k, v in given if not k.startswith(":")])


#: documented in README.md ("Exit status") and in ``proxywasm-host --help``
EXIT_STATUS = (
    "exit status: 0 success; 1 the filter failed (it trapped, refused to start, or fuzz found a failing "
    "exchange); 2 usage error, or the module or a file could not be loaded"
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
            return "?"

    return f"proxywasm-host {of('proxywasm-host')} (wasmtime {of('wasmtime')}, Python {sys.version.split()[0]})"


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)", left out where there is no default to speak of."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (action.default in (None, False, "", []) or action.default is argparse.SUPPRESS
                or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's default in ``--help`` (an option without a help text gets just that)."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if (action.help is None and action.option_strings and action.default not in (None, False, "", [])
                and action.default is not argparse.SUPPRESS):
            action.help = "(default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxywasm-host", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    ins = sub.add_parser("inspect", help="show ABI version, exports, imports and what the host cannot provide")
    ins.add_argument("wasm", type=Path)
    ins.add_argument("--json", action="store_true")

    run = sub.add_parser("run", help="run one HTTP exchange through the filter and print what it did")
    run.add_argument("wasm", type=Path)
    run.add_argument("--root-id", default="")
    run.add_argument("--vm-id", default="")
    run.add_argument("--config", help="plugin configuration: TEXT or @FILE")
    run.add_argument("--vm-config", help="VM configuration: TEXT or @FILE")
    run.add_argument("-H", "--header", action="append", type=parse_header, default=[], metavar="'NAME: VALUE'")
    run.add_argument("--body", action="append", default=[], help="request body chunk (repeat for several chunks)")
    run.add_argument("--trailer", action="append", type=parse_header, default=[], metavar="'NAME: VALUE'")
    run.add_argument("--response-status", type=parse_status, default=200, help="100-599")
    run.add_argument("--response-header", action="append", type=parse_header, default=[], metavar="'NAME: VALUE'")
    run.add_argument("--response-body", action="append", default=[])
    run.add_argument("--response-trailer", action="append", type=parse_header, default=[], metavar="'NAME: VALUE'")
    run.add_argument("--wait-ms", type=float, default=0, help="virtual time to let a paused stream resume on ticks")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--coverage", type=Path, metavar="PATH",
                     help="write which of the filter's own functions and source lines ran to PATH (lcov; Cobertura "
                     "for a .xml name; lines need DWARF); the summary goes to stderr")
    run.add_argument("--coverage-map", action="append", type=_label_arg, default=[], metavar="FROM=TO",
                     help="for --coverage: source path prefix FROM (as the module's DWARF names it) is TO here")
    tcp = run.add_argument_group("TCP mode (a network filter in front of tcp_proxy)")
    tcp.add_argument("--tcp", action="append", metavar="DATA", default=None,
                     help="run a TCP connection instead of an HTTP exchange: the client sends DATA "
                     "(repeat for more reads); the upstream echoes what reaches it")
    tcp.add_argument("--tcp-close", choices=("client", "upstream"), default="client",
                     help="who ends the connection first (default: the client)")
    tcp.add_argument("--source", default="127.0.0.1:52400", help="the client's address (source.address)")
    tcp.add_argument("--no-echo", action="store_true", help="the upstream answers nothing")

    _add_local_loop_commands(sub)
    # every default in every --help (a help text that already names its default is left alone)
    for command in sub.choices.values():
        _show_defaults(command)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for inner in action.choices.values():
                    _show_defaults(inner)
    return parser


def _inspect(args: argparse.Namespace) -> int:
    try:
        report = inspect_module(args.wasm)
    except OSError as exc:
        print(f"proxywasm-host: cannot read {args.wasm}: {exc.strerror}", file=sys.stderr)
        return 2
    except Exception as exc:  # wasmtime's parse errors
        print(f"proxywasm-host: {args.wasm}: not a valid WebAssembly module: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    report["host"] = speedups.describe()  # which path this host runs: compiled or pure
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['file']}  ({report['size']} bytes, sha256 {report['sha256'][:16]}…)")
        if report.get("other_host"):
            version = report["abi_version"] or "unknown"
            print(f"ABI version: {version}, {report['other_host']}'s (Envoy 1.40 cannot load it)")
        else:
            print(f"ABI version: {report['abi_version'] or 'none (not a proxy-wasm module)'}")
        print(f"allocator:   {report['allocator'] or 'missing'}")
        print(f"start:       {report['start'] or 'none'}")
        kinds = report.get("filter_kinds") or []
        where = {"http": "envoy.filters.http.wasm", "network": "envoy.filters.network.wasm (network filter)",
                 "service": "envoy.bootstrap.wasm (VM-level service)"}
        print(f"filter kind: {', '.join(f'{k}: {where[k]}' for k in kinds) or 'none (no stream or root callbacks)'}")
        callbacks = [e["name"] for e in report["exports"] if e["name"].startswith(("proxy_on_", "envoy_on_"))]
        print(f"callbacks ({len(callbacks)}): {', '.join(callbacks)}")
        print(f"imports ({len(report['imports'])}):")
        for imp in report["imports"]:
            mark = "ok " if imp["provided"] else "MISSING"
            print(f"  {mark} {imp['module']}.{imp['name']}")
        for problem in report["problems"]:
            print(f"problem: {problem}")
        print(f"this host:   {speedups.summary()}")
    return 1 if report["problems"] else 0


def _print_message(title: str, headers: Sequence[tuple[str, str]], body: bytes,
                   trailers: Sequence[tuple[str, str]] | None) -> None:
    print(title)
    for k, v in headers:
        print(f"  {k}: {v}")
    if body:
        print(f"  body: {body!r}")
    for k, v in trailers or []:
        print(f"  trailer {k}: {v}")


def _run_tcp(args: argparse.Namespace, plugin: Any) -> int:
    from proxywasm_host.harness.tcp import TcpScenario

    scenario = TcpScenario(chunks=tuple(c.encode() for c in args.tcp), echo=not args.no_echo, close=args.tcp_close)
    result = plugin.tcp_exchange(scenario, source_address=args.source)
    if args.json:
        print(json.dumps({
            "upstream_received": result.upstream_received.decode("utf-8", "replace"),
            "downstream_received": result.downstream_received.decode("utf-8", "replace"),
            "closed_by": result.closed_by,
            "cluster": result.cluster,
            "logs": [{"level": r.level, "message": r.message} for r in result.logs],
        }, indent=2))
        return 0
    print(f"cluster: {result.cluster or 'none (the filter held the connection)'}")
    print(f"upstream received: {result.upstream_received!r}")
    print(f"client received:   {result.downstream_received!r}")
    print(f"closed by: {result.closed_by or 'nobody (the connection is still open)'}")
    for record in result.logs:
        print(f"[{record.level}] {record.message}")
    return 0


def _run(args: argparse.Namespace) -> int:
    request = HttpRequest(
        headers=request_headers(args.header),
        body_chunks=tuple(b.encode() for b in args.body),
        trailers=tuple(args.trailer) or None,
    )
    response = HttpResponse(
        status=args.response_status,
        headers=tuple(args.response_header),
        body_chunks=tuple(b.encode() for b in args.response_body),
        trailers=tuple(args.response_trailer) or None,
    )
    collector = None
    if args.coverage is not None:
        from proxywasm_host.runtime.coverage import CodeCoverage

        collector = CodeCoverage()
    host = Host(code_coverage=collector)
    try:
        return _run_exchange(args, host, request, response)
    finally:
        if collector is not None:
            from proxywasm_host.runtime.coverage import SourceFilter, summary, write_report

            report = write_report(collector.data(), args.coverage,
                                  SourceFilter(root=Path.cwd(), path_map=list(args.coverage_map)))
            for line in summary(report, args.coverage):
                print(f"proxywasm-host: coverage: {line}", file=sys.stderr)


def _run_exchange(args: argparse.Namespace, host: Host, request: HttpRequest, response: HttpResponse) -> int:
    try:
        plugin = host.load_plugin(
            PluginSpec.of(
                args.wasm,
                root_id=args.root_id,
                vm_id=args.vm_id,
                configuration=read_text_arg(args.config),
                vm_configuration=read_text_arg(args.vm_config),
            )
        )
        if args.tcp is not None:
            return _run_tcp(args, plugin)
        result = plugin.exchange(request, response, wait_ms=args.wait_ms)
    except ModuleLoadError as exc:
        print(f"proxywasm-host: load error: {exc}", file=sys.stderr)
        return 2
    except FilterTrap as exc:
        if args.json:
            print(json.dumps({"trap": exc.to_json_dict()}, indent=2, ensure_ascii=False))
        print(f"proxywasm-host: {exc}", file=sys.stderr)
        return 1
    except FilterFailed as exc:
        # the filter refused its configuration: what it logged says why
        for entry in host.logs:
            print(f"[{entry.level.label}] {entry.message.rstrip()}", file=sys.stderr)
        print(f"proxywasm-host: {exc}", file=sys.stderr)
        return 1
    except (HarnessUsageError, ProxyWasmError) as exc:
        print(f"proxywasm-host: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(result.to_json(indent=2))
        return 0
    print(f"ABI {result.abi_version}")
    up = result.upstream_request
    if up is None:
        print("upstream request: none (the filter answered or held the request)")
    else:
        _print_message("upstream request:", up.headers, up.body, up.trailers)
    down = result.downstream_response
    if down is not None:
        _print_message(f"downstream response: {down.status}", down.headers, down.body, down.trailers)
    if result.local_reply is not None:
        print(f"local reply: {result.local_reply.status} details={result.local_reply.details!r}")
    for record in result.logs:
        print(f"[{record.level}] {record.message}")
    return 0


# -- the local loop: serve, build, package, push, pull, istio ------------------------------------


def _cluster_arg(text: str) -> tuple[str, str]:
    from proxywasm_host.serve.server import parse_cluster

    try:
        return parse_cluster(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _label_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_local_loop_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from proxywasm_host.cli.fuzz import add_fuzz_command

    add_fuzz_command(sub)

    srv = sub.add_parser("serve", help="a real local HTTP/1.1 + h2c proxy running every request through the filter")
    srv.add_argument("wasm", help="the filter (.wasm), or an oci://REGISTRY/REPO:TAG image to pull first")
    srv.add_argument("--host", default="localhost", help="address to listen on (localhost: 127.0.0.1 and ::1)")
    srv.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port; it is logged)")
    srv.add_argument("--upstream", metavar="URL", help="forward to this http:// upstream (default: built-in echo)")
    srv.add_argument("--cluster", action="append", type=_cluster_arg, default=[], metavar="NAME=URL",
                     help="where HTTP callouts to cluster NAME go (repeat); other cluster names are refused")
    srv.add_argument("--root-id", default="")
    srv.add_argument("--vm-id", default="")
    srv.add_argument("--config", help="plugin configuration: TEXT or @FILE")
    srv.add_argument("--vm-config", help="VM configuration: TEXT or @FILE")
    srv.add_argument("--env", action="append", type=_label_arg, default=[], metavar="NAME=VALUE",
                     help="environment variable for the VM (repeat)")
    srv.add_argument("--failure-policy", choices=["fail_closed", "fail_open", "fail_reload"], default="fail_closed",
                     help="after a trap: 503 (Envoy's default), skip the filter, or a fresh VM")
    srv.add_argument("--log-level", default="info", choices=["trace", "debug", "info", "warn", "error", "critical"])
    srv.add_argument("--access-log", action="store_true", help="one line per request on stderr")
    srv.add_argument("--upstream-timeout", type=float, default=15.0, metavar="S", help="route timeout (Envoy: 15 s)")
    srv.add_argument("--idle-timeout", type=float, default=300.0, metavar="S",
                     help="stream idle timeout (Envoy's stream_idle_timeout: 300 s; 0: off)")
    srv.add_argument("--request-timeout", type=float, default=0.0, metavar="S",
                     help="the whole request must arrive within S (Envoy's request_timeout; 0: off, as Envoy)")
    srv.add_argument("--request-headers-timeout", type=float, default=10.0, metavar="S",
                     help="a request's headers must arrive within S of its first byte (Envoy's "
                          "request_headers_timeout; 408 and close; 0: off; --http-server builtin only: hypercorn has none)")
    srv.add_argument("--connection-idle-timeout", type=float, default=3600.0, metavar="S",
                     help="close a connection with no request for S (Envoy's idle_timeout: 1 h; 0: off)")
    srv.add_argument("--buffer-limit", type=int, default=1 << 20, metavar="BYTES",
                     help="what the filter may buffer of a body: 413 (request) / 500 (response) past it "
                          "(Envoy's per_connection_buffer_limit_bytes: 1 MiB)")
    srv.add_argument("--max-connections", type=int, metavar="N",
                     help="more are closed at accept (default: no limit; needs --http-server builtin)")
    srv.add_argument("--max-concurrent-streams", type=int, default=100, metavar="N",
                     help="per HTTP/2 connection (default 100)")
    srv.add_argument("--http-server", choices=["hypercorn", "builtin"], default="hypercorn",
                     help="hypercorn (default), or our own h11/h2 server, which also holds the request headers "
                          "timeout and --max-connections, passes HTTP/2 request trailers to the filter and resets "
                          "an HTTP/2 stream cut short (docs/serve.md)")
    srv.add_argument("--reload", action="store_true",
                     help="load the filter again when the .wasm file changes (a rebuild): new requests get the new "
                          "build, requests in flight finish on the old one; a build that fails to compile, start or "
                          "configure keeps the old one (one log line). Polls the file twice a second")
    srv.add_argument("--workers", type=int, default=1, metavar="N",
                     help="N processes on the same port, each with its own VM of the filter (hypercorn's workers; "
                          "shared data is per worker, unlike Envoy's worker threads)")
    srv.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                     help="event loop: uvloop when installed (auto), or asyncio's own")
    srv.add_argument("--plain-http", action="store_true", default=None, help="pull an oci:// filter over plain HTTP")
    srv.set_defaults(handler=_serve)

    bld = sub.add_parser("build", help="cargo build the Rust filter crate for wasm and print the module's path")
    bld.add_argument("crate", nargs="?", default=".", help="crate directory (default: .)")
    bld.add_argument("--target", default="wasm32-unknown-unknown")
    bld.add_argument("--debug", action="store_true", help="a debug build (default: --release)")
    bld.add_argument("--package", "-p", help="the workspace member to build")
    bld.add_argument("--json", action="store_true", help="print {\"artifacts\": [paths]} as JSON")
    bld.set_defaults(handler=_build, cargo_args=[])  # `build ... -- ARGS`: more cargo arguments

    pkg = sub.add_parser("package", help="write the filter as an OCI image (layout directory or .tar)")
    pkg.add_argument("wasm", type=Path)
    pkg.add_argument("--tag", required=True, metavar="NAME:TAG")
    pkg.add_argument("--root-id", action="append", default=[], help="root id(s) for runtime-config.json (repeat)")
    pkg.add_argument("--abi-version", action="append", default=[], help="default: the module's proxy_abi_version_* export")
    pkg.add_argument("--variant", choices=["compat", "oci"], default="compat")
    pkg.add_argument("-o", "--output", type=Path, help="layout directory, or FILE.tar (default: ./NAME-TAG.oci)")
    pkg.add_argument("--json", action="store_true", help="print what was written as JSON")
    pkg.set_defaults(handler=_package)

    psh = sub.add_parser("push", help="push a packaged filter to an OCI registry")
    psh.add_argument("layout", type=Path, help="a layout directory or .tar written by `package`")
    psh.add_argument("ref", help="[oci://]REGISTRY[:PORT]/REPOSITORY[:TAG]")
    psh.add_argument("--tag", help="which image of the layout (default: its only one)")
    _registry_args(psh)
    psh.add_argument("--json", action="store_true", help="print the pushed reference and digest as JSON")
    psh.set_defaults(handler=_push)

    pll = sub.add_parser("pull", help="pull a filter image and take the module out of it")
    pll.add_argument("ref", help="[oci://]REGISTRY[:PORT]/REPOSITORY[:TAG|@sha256:...]")
    pll.add_argument("-o", "--output", type=Path, default=Path("."), help="directory for plugin.wasm (default: .)")
    _registry_args(pll)
    pll.add_argument("--json", action="store_true", help="print what was pulled as JSON")
    pll.set_defaults(handler=_pull)

    ist = sub.add_parser("istio", help="emit an Istio WasmPlugin, or an Envoy bootstrap, for the filter")
    isub = ist.add_subparsers(dest="istio_command", required=True)
    wp = isub.add_parser("wasmplugin", help="the extensions.istio.io/v1alpha1 WasmPlugin YAML (validated)")
    wp.add_argument("--name", required=True)
    wp.add_argument("--url", required=True, help="oci://REGISTRY/REPO:TAG, file:///path/filter.wasm or https://...")
    wp.add_argument("--namespace")
    wp.add_argument("--selector", action="append", type=_label_arg, default=[], metavar="LABEL=VALUE")
    wp.add_argument("--config", help="pluginConfig: a JSON object, TEXT or @FILE (YAML works too)")
    wp.add_argument("--plugin-name", "--root-id", dest="plugin_name")
    wp.add_argument("--phase", choices=["AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"])
    wp.add_argument("--priority", type=int)
    wp.add_argument("--pull-policy", choices=["IfNotPresent", "Always"])
    wp.add_argument("--pull-secret")
    wp.add_argument("--sha256", help="hex digest; 'auto' computes it from --wasm (file://) or --layout (oci://)")
    wp.add_argument("--wasm", type=Path, help="the module, for --sha256 auto with a file:// url")
    wp.add_argument("--layout", type=Path, help="the packaged image, for --sha256 auto with an oci:// url")
    wp.add_argument("--fail-strategy", choices=["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"])
    wp.add_argument("--env", action="append", type=_label_arg, default=[], metavar="NAME=VALUE")
    wp.add_argument("--host-env", action="append", default=[], metavar="NAME")
    wp.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    wp.set_defaults(handler=_istio_wasmplugin)
    eb = isub.add_parser("envoy", help="an Envoy bootstrap YAML running the filter (envoy -c FILE)")
    eb.add_argument("wasm", type=Path)
    eb.add_argument("--upstream", default="http://127.0.0.1:8000", metavar="URL")
    eb.add_argument("--port", type=int, default=8080)
    eb.add_argument("--admin-port", type=int, default=9901)
    eb.add_argument("--root-id", default="")
    eb.add_argument("--vm-id", default="")
    eb.add_argument("--config", help="plugin configuration: TEXT or @FILE")
    eb.add_argument("--vm-config", help="VM configuration: TEXT or @FILE")
    eb.add_argument("--cluster", action="append", type=_cluster_arg, default=[], metavar="NAME=URL")
    eb.add_argument("--http2-upstream", action="store_true")
    eb.add_argument("-o", "--output", type=Path)
    eb.set_defaults(handler=_istio_envoy)


def _registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain-http", action="store_true", default=None,
                        help="talk HTTP, not HTTPS (default for localhost/127.x registries)")
    parser.add_argument("--username", help="registry user (else $PROXYWASM_HOST_REGISTRY_USERNAME, else "
                                           "~/.docker/config.json)")
    parser.add_argument("--password", help="its password (else $PROXYWASM_HOST_REGISTRY_PASSWORD, else asked "
                                           "on a terminal)")


def _fail(message: str, code: int = 1) -> int:
    print(f"proxywasm-host: {message}", file=sys.stderr)
    return code


def _serve_config_ok(args: argparse.Namespace) -> bool:
    """The numbers serve takes, checked before anything starts (exit 2 with one line)."""
    for flag in ("upstream_timeout", "idle_timeout", "request_timeout", "request_headers_timeout",
                 "connection_idle_timeout"):
        if getattr(args, flag) < 0:
            _fail(f"--{flag.replace('_', '-')} must not be negative", 2)
            return False
    for flag, value in (("buffer-limit", args.buffer_limit), ("max-connections", args.max_connections),
                        ("max-concurrent-streams", args.max_concurrent_streams)):
        if value is not None and value < 1:
            _fail(f"--{flag} must be at least 1", 2)
            return False
    if args.workers < 1 or (args.workers > 1 and args.http_server != "hypercorn"):
        _fail("--workers must be at least 1, and more than 1 needs --http-server hypercorn", 2)
        return False
    if args.max_connections is not None and args.http_server != "builtin":
        _fail("--max-connections needs --http-server builtin (hypercorn has no connection limit)", 2)
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    import importlib.util
    import tempfile

    needed = ["h11", "h2"] + (["hypercorn"] if args.http_server == "hypercorn" else []) + (
        ["aiohttp"] if args.upstream or args.cluster else []) + (["uvloop"] if args.loop == "uvloop" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return _fail(f"serve needs {', '.join(missing)}: pip install 'proxywasm-host[server]'", 2)
    from proxywasm_host.serve.server import ServeConfig, event_loop_kind, run
    from proxywasm_host.serve.workers import run_workers

    wasm: str | Path = args.wasm
    tmp = None
    if args.reload and args.wasm.startswith("oci://"):
        return _fail("--reload watches a .wasm file: pull the image first (proxywasm-host pull) and serve its plugin.wasm", 2)
    if args.wasm.startswith("oci://"):
        from proxywasm_host.deploy import oci

        tmp = tempfile.TemporaryDirectory(prefix="pwh-serve-")
        try:
            pulled = oci.pull(args.wasm, tmp.name, plain_http=args.plain_http)
        except oci.OciError as exc:
            return _fail(str(exc), 2)
        wasm = pulled.wasm
        print(f"proxywasm-host: pulled {args.wasm} ({pulled.manifest_digest}, {pulled.variant} image)", file=sys.stderr)
    config = ServeConfig(
        wasm=Path(wasm), host=args.host, port=args.port, upstream=args.upstream, clusters=dict(args.cluster),
        root_id=args.root_id, vm_id=args.vm_id, configuration=read_text_arg(args.config),
        vm_configuration=read_text_arg(args.vm_config), failure_policy=args.failure_policy,
        log_level=args.log_level, access_log=args.access_log, upstream_timeout=args.upstream_timeout,
        idle_timeout=args.idle_timeout, buffer_limit=args.buffer_limit, environment=dict(args.env),
        request_timeout=args.request_timeout, request_headers_timeout=args.request_headers_timeout,
        connection_idle_timeout=args.connection_idle_timeout, max_connections=args.max_connections,
        max_concurrent_streams=args.max_concurrent_streams, http_server=args.http_server, reload=args.reload,
    ) if _serve_config_ok(args) else None
    if config is None:
        return 2
    if config.upstream is not None:
        from urllib.parse import urlsplit

        parts = urlsplit(config.upstream)
        if parts.scheme != "http" or not parts.hostname:
            return _fail(f"--upstream {config.upstream!r}: expected http://host[:port][/prefix]", 2)
    try:
        if args.workers > 1:
            return run_workers(config, args.workers, loop=event_loop_kind(args.loop))
        run(config, loop=args.loop)
    except ModuleLoadError as exc:
        return _fail(f"load error: {exc}", 2)
    except (FilterFailed, FilterTrap) as exc:
        return _fail(f"the filter did not start: {exc}", 1)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", 2)
    except KeyboardInterrupt:
        return 130
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _build(args: argparse.Namespace) -> int:
    from proxywasm_host.deploy.build import build
    from proxywasm_host.errors import BuildError

    extra = list(args.cargo_args)
    try:
        artifacts = build(args.crate, target=args.target, release=not args.debug, package=args.package, extra_args=extra)
    except BuildError as exc:
        return _fail(str(exc), exc.returncode)
    if args.json:
        print(json.dumps({"artifacts": [str(p) for p in artifacts]}, indent=2))
        return 0
    for path in artifacts:
        print(path)
    return 0


def _package(args: argparse.Namespace) -> int:
    from proxywasm_host.deploy import oci

    name, _, tag = args.tag.rpartition(":") if ":" in args.tag.rsplit("/", 1)[-1] else (args.tag, "", "latest")
    output = args.output or Path(f"{name.replace('/', '_')}-{tag}.oci")
    try:
        inspect_report = inspect_module(args.wasm)
    except OSError as exc:
        return _fail(f"cannot read {args.wasm}: {exc.strerror}", 2)
    except Exception as exc:  # wasmtime's parse errors
        return _fail(f"{args.wasm}: not a valid WebAssembly module: {str(exc).splitlines()[0]}", 2)
    if not inspect_report["abi_version"]:
        return _fail(f"{args.wasm}: not a proxy-wasm module (no proxy_abi_version_* export)", 2)
    try:
        result = oci.package(args.wasm, output, tag=args.tag, root_ids=args.root_id,
                             abi_versions=args.abi_version or None, variant=args.variant)
    except (oci.OciError, OSError) as exc:
        return _fail(str(exc), 2)
    if args.json:
        print(json.dumps({"path": str(result.path), "tag": result.tag, "manifest_digest": result.manifest_digest,
                          "variant": result.variant, "manifest": result.manifest,
                          "runtime_config": result.runtime_config}, indent=2))
        return 0
    print(f"{result.path}  {result.manifest_digest}  (tag {result.tag}, {result.variant} image)")
    return 0


def _registry_call(args: argparse.Namespace, what: str) -> tuple[Any, int]:
    """Run push or pull with the registry flags: (result, 0), or (None, exit code) after one
    line on stderr: 2 for what the user wrote (a malformed reference, a missing layout, a
    username without a password), 1 for what the registry said or did."""
    import getpass
    import os

    from proxywasm_host.deploy import oci

    ref_text = args.ref
    try:
        ref = oci.parse_ref(ref_text)
    except oci.OciError as exc:
        return None, _fail(str(exc), 2)
    password = args.password
    if args.username and password is None and os.environ.get("PROXYWASM_HOST_REGISTRY_PASSWORD") is None:
        if not sys.stdin.isatty():
            return None, _fail(f"--username {args.username}: no password (give --password, set "
                               "$PROXYWASM_HOST_REGISTRY_PASSWORD, or run from a terminal to be asked)", 2)
        try:
            password = getpass.getpass(f"password for {args.username} at {ref.registry}: ")
        except (EOFError, KeyboardInterrupt):
            return None, _fail("no password given", 2)
    result: Any
    try:
        if what == "push":
            if not Path(args.layout).exists():
                return None, _fail(f"{args.layout}: no such layout directory or .tar", 2)
            result = oci.push(args.layout, ref, tag=args.tag, plain_http=args.plain_http,
                              username=args.username, password=password)
        else:
            result = oci.pull(ref, args.output, plain_http=args.plain_http, username=args.username,
                              password=password)
    except oci.OciError as exc:
        return None, _fail(str(exc), 1)
    except OSError as exc:
        return None, _fail(f"{what}: {exc.strerror or exc}", 1)
    return (ref, result), 0


def _push(args: argparse.Namespace) -> int:
    done, code = _registry_call(args, "push")
    if done is None:
        return code
    ref, digest = done
    if args.json:
        print(json.dumps({"ref": ref.url, "manifest_digest": digest}, indent=2))
        return 0
    print(f"{ref.url}  {digest}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    done, code = _registry_call(args, "pull")
    if done is None:
        return code
    _ref, pulled = done
    if args.json:
        print(json.dumps({"ref": pulled.ref.url, "wasm": str(pulled.wasm), "manifest_digest": pulled.manifest_digest,
                          "variant": pulled.variant, "runtime_config": pulled.runtime_config}, indent=2))
        return 0
    print(f"{pulled.wasm}  {pulled.manifest_digest}  ({pulled.variant} image)")
    return 0


def _plugin_config(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    raw = read_text_arg(text).decode()
    try:
        value = json.loads(raw)
    except ValueError:
        import yaml

        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--config is neither JSON nor YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("--config must be an object (pluginConfig is a google.protobuf.Struct)")
    return value


def _write_or_print(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)


def _istio_wasmplugin(args: argparse.Namespace) -> int:
    from proxywasm_host.deploy import istio, oci

    sha = args.sha256
    try:
        if sha == "auto":
            if args.url.startswith("file://") or args.wasm is not None and not args.url.startswith("oci://"):
                if args.wasm is None:
                    return _fail("--sha256 auto with a file:// url needs --wasm FILE", 2)
                sha = istio.file_sha256(args.wasm)
            else:
                if args.layout is None:
                    return _fail("--sha256 auto with an oci:// url needs --layout DIR (the packaged image)", 2)
                with oci.read_layout(args.layout) as lay:
                    sha = lay.manifest()[0].split(":", 1)[1]
        doc = istio.wasm_plugin(
            args.name, args.url, namespace=args.namespace, selector=dict(args.selector) or None,
            plugin_config=_plugin_config(args.config), plugin_name=args.plugin_name, phase=args.phase,
            priority=args.priority, image_pull_policy=args.pull_policy, image_pull_secret=args.pull_secret,
            sha256=sha, fail_strategy=args.fail_strategy, env=dict(args.env) or None, host_env=args.host_env,
        )
    except (ValueError, oci.OciError, OSError) as exc:
        return _fail(str(exc), 2)
    _write_or_print(istio.to_yaml(doc), args.output)
    return 0


def _istio_envoy(args: argparse.Namespace) -> int:
    from proxywasm_host.deploy import istio

    try:
        config = istio.envoy_bootstrap(
            args.wasm, upstream=args.upstream, port=args.port, admin_port=args.admin_port, root_id=args.root_id,
            vm_id=args.vm_id, configuration=read_text_arg(args.config), vm_configuration=read_text_arg(args.vm_config),
            clusters=dict(args.cluster), http2_upstream=args.http2_upstream,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        return _fail(str(exc), 2)
    _write_or_print(istio.to_yaml(config), args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cargo_args: list[str] = []
    if argv[:1] == ["build"] and "--" in argv:  # proxywasm-host build [OPTIONS] -- CARGO ARGS
        cut = argv.index("--")
        argv, cargo_args = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    if cargo_args:
        args.cargo_args = cargo_args
    try:
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "run":
            return _run(args)
        code: int = args.handler(args)
        return code
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
