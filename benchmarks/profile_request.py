"""Run the tutorial-filter exchange in a loop, for a profiler or a quick breakdown.

    python benchmarks/profile_request.py [--filter NAME] [--requests N] [--no-gc]
    python benchmarks/profile_request.py --breakdown     # where the time per request goes
    py-spy record --native -r 1000 -f raw -o /tmp/spy.txt -- python benchmarks/profile_request.py

``--breakdown`` wraps the runtime's guest calls, allocations and host functions with
timers (which adds ~0.3 µs to each) and prints per request: the time outside guest calls
(harness, stream, Vm), inside them minus the host functions (ctypes crossings, wasmtime,
the guest's own code), and in the host functions' Python.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from time import perf_counter_ns as now
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxywasm_host import Host, LogLevel  # noqa: E402

REQUEST = [(":authority", "localhost:8080"), (":path", "/hello"), (":method", "GET"), (":scheme", "http"),
           ("x-forwarded-proto", "http"), ("x-request-id", "0b4b5a4e-9f43-4d2c-8a43-5c0b6f0d9e21")]
RESPONSE = [(":status", "200"), ("content-length", "0")]


def instrument(vm: Any) -> dict[str, int]:
    acc = {"call": 0, "ncall": 0, "host": 0, "nhost": 0, "alloc": 0, "nalloc": 0}

    depth = {"call": 0, "host": 0, "alloc": 0}

    def timed(fn: Any, key: str) -> Any:
        # only the outermost of each kind counts: a guest allocation inside a hostcall (Go's
        # malloc export) is a guest call too, and would be counted twice
        def wrapper(*args: Any) -> Any:
            if depth[key]:
                return fn(*args)
            depth[key] += 1
            t = now()
            try:
                return fn(*args)
            finally:
                depth[key] -= 1
                acc[key] += now() - t
                acc["n" + key] += 1
        return wrapper

    runtime = vm.runtime
    export = runtime.export
    def timed_export(name: str) -> Any:
        fn = export(name)
        return None if fn is None else timed(fn, "call")

    runtime.export = timed_export
    vm._exports.clear()  # the Vm asks again, for the timed ones
    host = vm.host
    # guest allocations happen in host.give (allocate + copy; C when built), or through
    # runtime.allocate on the Python path
    if host.give != host._give_py:  # the runtime's own (a C copy when built)
        host.give = timed(host.give, "alloc")
    else:
        runtime.allocate = timed(runtime.allocate, "alloc")
    fns = runtime._boundary.host_fns  # (the list the crossings read: changed in place)
    fns[:] = [None if f is None else timed(f, "host") for f in fns]
    return acc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", default="hello_world-wasm32-unknown-unknown")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--no-gc", action="store_true", help="disable Python's cyclic GC")
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    plugin = Host(log_level=LogLevel.WARN).load_plugin(REPO / "fixtures" / "wasm" / f"{args.filter}.wasm")
    acc = instrument(plugin.vm) if args.breakdown else None

    def run(n: int) -> None:
        for _ in range(n):
            s = plugin.http_stream()
            s.send_request_headers(REQUEST, end_of_stream=True)
            s.send_response_headers(RESPONSE, end_of_stream=True)

    if args.no_gc:
        gc.disable()
    run(300)
    if acc is not None:
        for key in acc:
            acc[key] = 0
    n = args.requests
    t = time.thread_time()
    run(n)
    total = (time.thread_time() - t) / n * 1e6
    print(f"{args.filter}: {total:.1f} µs CPU per request over {n} requests (GC {'off' if args.no_gc else 'on'})")
    if acc is not None:
        calls, host, alloc = acc["call"] / n / 1e3, acc["host"] / n / 1e3, acc["alloc"] / n / 1e3
        print(f"  guest calls: {acc['ncall'] / n:.0f}/request, {calls:.1f} µs including the hostcalls they make")
        print(f"  host functions: {acc['nhost'] / n:.0f}/request, {host:.1f} µs (of which {acc['nalloc'] / n:.0f} "
              f"guest allocations with their copies, {alloc:.1f} µs)")
        print(f"  => outside guest calls (harness, stream, Vm): {total - calls:.1f} µs")
        print(f"  => ctypes crossings + wasmtime + guest code: {calls - host + alloc:.1f} µs")
        print(f"  => host functions' Python: {host - alloc:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
