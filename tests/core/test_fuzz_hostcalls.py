"""100,000 fuzzed hostcalls through a real wasm guest: statuses only, no host error."""

from __future__ import annotations

import os

from fuzz_hostcalls import SPECS, run

from proxywasm_host import Status

CALLS = int(os.environ.get("PROXYWASM_FUZZ_CALLS", "100000"))


def test_fuzzed_hostcalls_never_break_the_host() -> None:
    fuzzer = run(CALLS, seed=int(os.environ.get("PROXYWASM_FUZZ_SEED", "1")))
    assert fuzzer.calls >= CALLS
    assert fuzzer.host_errors == []
    # every host function with a result was reached, and bad memory was answered as Envoy does
    assert len(fuzzer.statuses) == len([s for s in SPECS if s.results])
    assert fuzzer.statuses["proxy_log"].get(Status.INVALID_MEMORY_ACCESS, 0) > 0
    assert fuzzer.statuses["fd_write"].get(21, 0) > 0  # EFAULT
    print(f"{fuzzer.calls} fuzzed hostcalls")
