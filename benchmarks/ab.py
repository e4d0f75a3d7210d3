"""Per-request CPU of two checkouts (and their pure-Python paths) side by side, interleaved.

    python benchmarks/ab.py --before /path/to/other/checkout [--rounds 7] [--filters hello_0_2,noop,go,as]

Each sample is a fresh child process that imports the package from one checkout, loads
one filter as ``benchmarks/run.py`` does (``ours``: the stream path, ``Host(log_level=WARN)``)
and times requests with ``time.thread_time`` (median of 3 short rounds).  Round by round,
every filter runs on every variant in turn: *before* and *after* (this checkout), each also
with ``PROXYWASM_HOST_NO_SPEEDUPS=1`` (*pure*), so a slow spell of the shared machine hits
them all alike.  Prints per-round medians and minima, and the after ÷ before ratio per round
(median) and of the minima.  The other checkout needs its C extensions built in place
(``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = """
import json, statistics, sys
sys.path[:0] = [{root!r}, {root!r} + "/benchmarks"]
import run as r
f = next(f for f in r.FILTERS if f.key == {key!r})
runner = r.ours_runner(f)
n = r.calibrate(runner, {budget})
samples = [r.timed_round(runner, n) for _ in range(3)]
import proxywasm_host
assert proxywasm_host.__file__.startswith({root!r}), proxywasm_host.__file__
print(json.dumps(statistics.median(samples)))
"""


def sample(root: Path, key: str, pure: bool, budget: float) -> float:
    env = dict(os.environ)
    env.pop("PROXYWASM_HOST_NO_SPEEDUPS", None)
    if pure:
        env["PROXYWASM_HOST_NO_SPEEDUPS"] = "1"
    code = CHILD.format(root=str(root), key=key, budget=budget)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{root} {key} pure={pure}: {proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (built in place)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--filters", default="hello_0_2,noop,go,as")
    parser.add_argument("--budget", type=float, default=0.15, help="seconds per timed round in a child")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = {"before": (args.before.resolve(), False), "after": (HERE, False),
                "before pure": (args.before.resolve(), True), "after pure": (HERE, True)}
    keys = args.filters.split(",")
    samples: dict[str, dict[str, list[float]]] = {k: {v: [] for v in variants} for k in keys}
    load_start = os.getloadavg()
    for rnd in range(args.rounds):
        for key in keys:
            for name, (root, pure) in variants.items():
                samples[key][name].append(sample(root, key, pure, args.budget))
        print(f"round {rnd + 1}/{args.rounds} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    load_end = os.getloadavg()
    print(f"CPU µs per request, median of {args.rounds} interleaved rounds (fastest); load average "
          f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end")
    print(f"{'filter':<10} " + " ".join(f"{v:>18}" for v in variants) + f" {'after/before':>16} {'pure a/b':>12}")
    for key in keys:
        s = samples[key]
        cells = [f"{statistics.median(s[v]):7.1f} ({min(s[v]):5.1f})" for v in variants]
        ratio = statistics.median(a / b for a, b in zip(s["after"], s["before"]))
        fastest = min(s["after"]) / min(s["before"])
        pure = statistics.median(a / b for a, b in zip(s["after pure"], s["before pure"]))
        print(f"{key:<10} " + " ".join(f"{c:>18}" for c in cells) + f" {ratio:8.2f} ({fastest:.2f}) {pure:12.2f}")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "load": [load_start, load_end]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
