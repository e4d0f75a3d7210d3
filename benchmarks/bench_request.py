"""Per-request cost of a full HTTP exchange through a filter in the in-process host.

    python benchmarks/bench_request.py [--requests N] [--repeats R] [--json OUT]

One "request" = new stream → request headers (the filter reads and writes headers) →
response headers → on_log/on_done/on_delete, the same exchange Envoy runs per request.
Each filter is measured in R interleaved rounds of N requests; the table reports the
median and spread (min–max) of the per-request time across rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxywasm_host import Host  # noqa: E402

FILTERS = [
    ("hello_world 0.2.x (wasm32-unknown-unknown)", "hello_world-wasm32-unknown-unknown"),
    ("hello_world 0.2.x (wasm32-wasip1)", "hello_world-wasm32-wasip1"),
    ("hello_world 0.1.x (wasm32-unknown-unknown)", "hello_world_0_1-wasm32-unknown-unknown"),
    ("noop 0.2.x", "noop-wasm32-unknown-unknown"),
    ("Go hello_world", "go_hello_world-wasip1"),
]
REQUEST = [(":authority", "localhost:8080"), (":path", "/headers"), (":method", "GET"), (":scheme", "http"),
           ("user-agent", "curl/8.0"), ("accept", "*/*")]
RESPONSE = [(":status", "200"), ("content-type", "application/json"), ("content-length", "2")]


def one_round(plugin, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        stream = plugin.http_stream()
        stream.send_request_headers(REQUEST, end_of_stream=True)
        stream.send_response_headers(RESPONSE, end_of_stream=True)
    return (time.perf_counter() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    plugins = []
    for label, name in FILTERS:
        path = REPO / "fixtures" / "wasm" / f"{name}.wasm"
        if not path.exists():
            print(f"skip {label}: {path} missing", file=sys.stderr)
            continue
        host = Host(log_level=__import__("proxywasm_host").LogLevel.INFO)  # tutorial logs at trace
        plugin = host.load_plugin(path)
        one_round(plugin, 20)  # warm-up
        plugins.append((label, plugin, []))
    for _ in range(args.repeats):  # interleave filters so machine noise hits all alike
        for _label, plugin, samples in plugins:
            samples.append(one_round(plugin, args.requests))
    rows = []
    print(f"{'filter':48} {'median µs/req':>14} {'min':>8} {'max':>8}")
    for label, _plugin, samples in plugins:
        med = statistics.median(samples) * 1e6
        rows.append({"filter": label, "median_us": med, "min_us": min(samples) * 1e6, "max_us": max(samples) * 1e6})
        print(f"{label:48} {med:14.1f} {min(samples) * 1e6:8.1f} {max(samples) * 1e6:8.1f}")
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps({"requests": args.requests, "repeats": args.repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
