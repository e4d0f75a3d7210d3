"""Kept for old instructions: the exchange benchmark is now part of ``benchmarks/run.py``.

    python benchmarks/bench_request.py [run.py options]   # = run.py --only exchange --no-envoy
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--only", "exchange", "--no-envoy", *sys.argv[1:]]
    runpy.run_path(str(Path(__file__).with_name("run.py")), run_name="__main__")
