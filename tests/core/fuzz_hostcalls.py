"""Fuzz every host function with random pointers, sizes and enum values through a real
wasm guest (fixtures/wat/hostcall_probe.wat re-exports each import).

    python tests/core/fuzz_hostcalls.py --calls 1000000 [--seed N]

The host must answer every call with a status (never raise into wasmtime), record no
internal error, and still work normally afterwards.  ``tests/core/test_fuzz_hostcalls.py``
runs 100,000 calls in CI.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from proxywasm_host import Host, Status  # noqa: E402
from proxywasm_host.core.codec import encode_pairs  # noqa: E402
from proxywasm_host.core.spec import imports_for  # noqa: E402
from proxywasm_host.core.types import AbiVersion  # noqa: E402

PROBE = REPO / "fixtures" / "wat" / "hostcall_probe.wat"
VALID_PAIRS_AT = 0x4000
STRING_AT = 0x5000
SPECS = [spec for module, spec in imports_for(AbiVersion.V0_2_1) if module != "wasi_unstable"]
#: calls that end the guest's world on purpose are fuzzed too, except proc_exit which only logs
RESET_EVERY = 2000


def _arg(rnd: random.Random, kind: str, mem_size: int) -> int:
    roll = rnd.random()
    if kind in "qQ":
        return rnd.choice([0, 1, -1, 2**63 - 1, -(2**63), rnd.getrandbits(64) - 2**63])
    if roll < 0.25:
        return rnd.randint(0, 12)  # small: enum values, lengths, ids
    if roll < 0.45:
        return rnd.choice([VALID_PAIRS_AT, STRING_AT, 0x6000, 0x6004, 0x7000])  # plausible pointers
    if roll < 0.6:
        return rnd.randint(0, mem_size + 4096)  # around the end of memory
    if roll < 0.7:
        return rnd.choice([0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, mem_size, mem_size - 1])
    return rnd.getrandbits(32)


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.calls = 0
        self.statuses: dict[str, dict[int, int]] = {}
        self.host_errors: list[str] = []
        self._fresh()

    def _fresh(self) -> None:
        self.host = Host(random_seed=self.rnd.getrandbits(32), callback_deadline_s=30)
        self.plugin = self.host.load_plugin(PROBE, foreign_functions={"echo": lambda b: b})
        self.stream = self.plugin.http_stream()
        self.stream.send_request_headers([(":path", "/"), ("a", "1")])
        mem = self.plugin.vm.runtime.memory()  # type: ignore[attr-defined]
        pairs = encode_pairs([(b"x-fuzz", b"1"), (b":status", b"200")])
        mem[VALID_PAIRS_AT : VALID_PAIRS_AT + len(pairs)] = pairs
        mem[STRING_AT : STRING_AT + 16] = b"request\0path\0..."

    def step(self) -> None:
        spec = self.rnd.choice(SPECS)
        mem_size = len(self.plugin.vm.runtime.memory())  # type: ignore[attr-defined]
        args = [_arg(self.rnd, kind, mem_size) for kind in spec.params]
        args = [a & 0xFFFFFFFF if kind == "u" else a for a, kind in zip(args, spec.params)]
        ctx = self.stream.context if self.rnd.random() < 0.8 else self.plugin.root
        result = self.plugin.vm.call(ctx, f"call_{spec.name}", *args)
        self.calls += 1
        if spec.results:
            self.statuses.setdefault(spec.name, {}).setdefault(result, 0)
            self.statuses[spec.name][result] += 1
        if self.plugin.vm.host.host_errors:
            self.host_errors.extend(f"{spec.name}{tuple(args)}: {e}" for e in self.plugin.vm.host.host_errors)
            self.plugin.vm.host.host_errors.clear()
        if self.rnd.random() < 0.01:
            self.plugin.vm.flush()  # run deferred local replies / continues / resets
        if self.calls % RESET_EVERY == 0:
            self.check_still_healthy()
            self._fresh()

    def check_still_healthy(self) -> None:
        """After fuzzing, ordinary use of the same host still behaves."""
        fresh = self.plugin.http_stream()
        fresh.send_request_headers([(":path", "/ok")])
        assert fresh.request_headers.items() == [(":path", "/ok")]
        result = self.plugin.vm.call(fresh.context, "call_proxy_get_header_map_pairs", 0, 0x7000, 0x7004)
        assert result == Status.OK, result


def run(calls: int, seed: int = 0) -> Fuzzer:
    fuzzer = Fuzzer(seed)
    while fuzzer.calls < calls:
        fuzzer.step()
    fuzzer.check_still_healthy()
    return fuzzer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    fuzzer = run(args.calls, args.seed)
    elapsed = time.perf_counter() - start
    covered = len(fuzzer.statuses)
    print(f"{fuzzer.calls} fuzzed hostcalls in {elapsed:.1f} s ({fuzzer.calls / elapsed:.0f}/s), "
          f"{covered} host functions with results, {len(fuzzer.host_errors)} host errors")
    for err in fuzzer.host_errors[:20]:
        print("  host error:", err)
    return 1 if fuzzer.host_errors else 0


if __name__ == "__main__":
    sys.exit(main())
