"""Summarize a py-spy raw profile of ``profile_request.py``: where a request's time goes.

    py-spy record -r 2000 -f raw -o /tmp/spy.txt -- python benchmarks/profile_request.py --requests 100000
    python benchmarks/spy_summary.py /tmp/spy.txt [--top 25]

Only the samples inside the timed request loop count (the module load, plugin start and
warm-up are left out).  Without ``--native``, time spent in C (a guest call: the crossing,
wasmtime and the filter's own code, and the C parts of host functions) is charged to the
Python line that called it, e.g. ``Vm.call_with`` for the guest calls; with ``--native`` it is
listed under the C frames.  Prints the share of samples by function (self and inclusive)
and by line (self).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

LOOP = "main.<locals>.run"  # profile_request.py's request loop
_LINE = re.compile(r":\d+\)")


def summarize(path: str, top: int) -> str:
    by_line: collections.Counter[str] = collections.Counter()
    by_fn: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            stack, _, count = raw.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            if not any(f.startswith(LOOP) for f in frames):
                continue
            n = int(count)
            total += n
            by_line[frames[-1]] += n
            by_fn[_LINE.sub(")", frames[-1])] += n
            for fn in {_LINE.sub(")", f) for f in frames}:
                inclusive[fn] += n
    if not total:
        return f"{path}: no samples inside {LOOP} (was it recorded from benchmarks/profile_request.py?)"
    out = [f"{total} samples in the request loop"]
    for title, counter in (("self, by function", by_fn), ("inclusive, by function", inclusive),
                           ("self, by line", by_line)):
        out.append(f"--- {title}")
        out += [f"{100 * v / total:5.1f}%  {k}" for k, v in counter.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarize(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
