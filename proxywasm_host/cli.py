"""``proxywasm-host``: inspect a filter, or run one HTTP exchange through it.

    proxywasm-host inspect FILTER.wasm [--json]
    proxywasm-host run FILTER.wasm -H ':authority: localhost:8080' [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import FilterFailed, FilterTrap, HarnessUsageError, ModuleLoadError, ProxyWasmError
from .harness import Host
from .runtime import inspect_module
from .scenario import HttpRequest, HttpResponse

#: pseudo-headers Envoy always gives a filter for an HTTP/1.1 request, filled in when absent
DEFAULT_PSEUDO = ((":authority", "localhost:8080"), (":path", "/"), (":method", "GET"), (":scheme", "http"))


def parse_header(text: str) -> tuple[str, str]:
    """``'name: value'`` → (name, value); pseudo-headers keep their leading colon."""
    start = 1 if text.startswith(":") else 0
    sep = text.find(":", start)
    if sep <= start:
        raise argparse.ArgumentTypeError(f"expected 'name: value', got {text!r}")
    return text[:sep].strip().lower(), text[sep + 1 :].strip()


def read_text_arg(value: str | None) -> bytes:
    """``TEXT`` or ``@FILE``."""
    if value is None:
        return b""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise SystemExit(f"proxywasm-host: cannot read {value[1:]}: {exc.strerror}") from None
    return value.encode()


def request_headers(given: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    names = {k for k, _ in given}
    pseudo = [(k, v) for k, v in given if k.startswith(":")]
    pseudo += [(k, v) for k, v in DEFAULT_PSEUDO if k not in names]
    return tuple(pseudo + [(k, v) for k, v in given if not k.startswith(":")])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxywasm-host", description=__doc__.split("\n\n")[0])
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
    run.add_argument("--response-status", type=int, default=200)
    run.add_argument("--response-header", action="append", type=parse_header, default=[], metavar="'NAME: VALUE'")
    run.add_argument("--response-body", action="append", default=[])
    run.add_argument("--response-trailer", action="append", type=parse_header, default=[], metavar="'NAME: VALUE'")
    run.add_argument("--wait-ms", type=float, default=0, help="virtual time to let a paused stream resume on ticks")
    run.add_argument("--json", action="store_true", help="print one JSON object")
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
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['file']}  ({report['size']} bytes, sha256 {report['sha256'][:16]}…)")
        print(f"ABI version: {report['abi_version'] or 'none (not a proxy-wasm module)'}")
        print(f"allocator:   {report['allocator'] or 'missing'}")
        print(f"start:       {report['start'] or 'none'}")
        callbacks = [e["name"] for e in report["exports"] if e["name"].startswith(("proxy_on_", "envoy_on_"))]
        print(f"callbacks ({len(callbacks)}): {', '.join(callbacks)}")
        print(f"imports ({len(report['imports'])}):")
        for imp in report["imports"]:
            mark = "ok " if imp["provided"] else "MISSING"
            print(f"  {mark} {imp['module']}.{imp['name']}")
        for problem in report["problems"]:
            print(f"problem: {problem}")
    return 1 if report["problems"] else 0


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
    try:
        host = Host()
        plugin = host.load_plugin(
            args.wasm,
            root_id=args.root_id,
            vm_id=args.vm_id,
            configuration=read_text_arg(args.config),
            vm_configuration=read_text_arg(args.vm_config),
        )
        result = plugin.exchange(request, response, wait_ms=args.wait_ms)
    except ModuleLoadError as exc:
        print(f"proxywasm-host: load error: {exc}", file=sys.stderr)
        return 2
    except FilterTrap as exc:
        print(f"proxywasm-host: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except (FilterFailed, HarnessUsageError, ProxyWasmError) as exc:
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
        print("upstream request:")
        for k, v in up.headers:
            print(f"  {k}: {v}")
        if up.body:
            print(f"  body: {up.body!r}")
        for k, v in up.trailers or []:
            print(f"  trailer {k}: {v}")
    down = result.downstream_response
    if down is not None:
        print(f"downstream response: {down.status}")
        for k, v in down.headers:
            print(f"  {k}: {v}")
        if down.body:
            print(f"  body: {down.body!r}")
        for k, v in down.trailers or []:
            print(f"  trailer {k}: {v}")
    if result.local_reply is not None:
        print(f"local reply: {result.local_reply.status} details={result.local_reply.details!r}")
    for record in result.logs:
        print(f"[{record.level}] {record.message}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _inspect(args) if args.command == "inspect" else _run(args)
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
