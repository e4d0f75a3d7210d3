"""Summarize a py-spy raw profile of ``profile_request.py``: where a request's time goes.

    py-spy record -r 2000 -f raw -o /tmp/spy.txt -- python benchmarks/profile_request.py --requests 100000
    python benchmarks/spy_summary.py /tmp/spy.txt [--top 25]
    py-spy record --native -r 1000 -f raw -o /tmp/spyn.txt -- python benchmarks/profile_request.py --requests 100000
    python benchmarks/spy_summary.py /tmp/spyn.txt --parts    # the request's time by part

Only the samples inside the timed request loop count (the module load, plugin start and
warm-up are left out).  Without ``--native``, time spent in C (a guest call: the crossing,
wasmtime and the filter's own code, and the C parts of host functions) is charged to the
Python line that called it, e.g. ``Vm.call_with`` for the guest calls; with ``--native`` it is
listed under the C frames.  Prints the share of samples by function (self and inclusive)
and by line (self).  ``--parts`` (a ``--native`` recording) sorts every sample into the part
of the request it was in, by its innermost frame that says so (see PARTS): the filter's own
code (the JIT-compiled wasm: frames without a symbol under a guest call), wasmtime, the C
crossings and codec, the host functions, the stream and harness; CPython's own work
(allocation, freeing, dict lookups, calls) is charged to the part that asked for it.
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


#: (part, frame-name pattern), tried in order on each frame from the innermost outwards;
#: frames that match none (CPython's own functions) are charged to the first that does
PARTS = (
    ("filter's own code (wasm, JIT)", re.compile(r"^0x[0-9a-f]+$")),
    ("wasmtime (calls, traps, memory size)", re.compile(r"wasmtime")),
    ("C crossings and codec (_speedups.c, _codec.c)",
     re.compile(r"^(sp_\w+|trampoline|run_hostcall|dropped_log|exception_to_trap|codec_\w+|header_name)$")),
    ("host functions (hostcalls, header maps)",
     re.compile(r"^CPy(Def|Py)_(base|basics|data|streams|shared|callouts|higress|wasi|spec|headers|codec|text)___")),
    ("stream, Vm and harness", re.compile(r"^(CPy(Def|Py)_|CPyL_)|\.py:\d+\)$|^(HttpStream|Plugin|main)\b")),
)


def parts(path: str) -> str:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            stack, _, count = raw.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            loop = [i for i, f in enumerate(frames) if f.startswith(LOOP)]
            if not loop:
                continue
            n = int(count)
            total += n
            inner = frames[loop[-1] + 1:]
            part = "stream, Vm and harness"  # (the loop's own line)
            for frame in reversed(inner):
                name = frame.split(" (")[0]
                found = next((label for label, pattern in PARTS if pattern.search(name) or pattern.search(frame)), None)
                if found is not None:
                    part = found
                    break
            counts[part] += n
    if not total:
        return f"{path}: no samples inside {LOOP}"
    out = [f"{total} samples in the request loop, by part (innermost frame that names one)"]
    out += [f"{100 * counts[label] / total:5.1f}%  {label}" for label, _ in PARTS]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--parts", action="store_true", help="the request's time by part (a --native recording)")
    args = parser.parse_args()
    print(parts(args.profile) if args.parts else summarize(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
