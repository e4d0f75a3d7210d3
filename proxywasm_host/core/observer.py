"""What the host records about hostcalls and logs: trace records, injected faults, strict mode, coverage, log entries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxywasm_host.core.guest import GuestMemoryError
from proxywasm_host.core.spec import HOSTCALLS
from proxywasm_host.core.types import (
    LogLevel,
    Status,
)

if TYPE_CHECKING:
    from proxywasm_host.core.hostcalls.base import AbiHostBase


@dataclass
class HostcallRecord:
    """One hostcall as the guest made it (trace mode)."""

    context_id: int
    name: str
    args: dict[str, Any]
    result: int | None
    injected: bool = False

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" if isinstance(v, bytes) else f"{k}={v}" for k, v in self.args.items())
        result = "" if self.result is None else f" -> {_status_name(self.name, self.result)}"
        return f"ctx={self.context_id} {self.name}({args}){result}{' [injected]' if self.injected else ''}"


def _status_name(name: str, value: int) -> str:
    spec = HOSTCALLS.get(name)
    if spec is not None and not spec.wasi_errno:
        try:
            return Status(value).name
        except ValueError:
            return str(value)
    return f"errno {value}"


@dataclass
class Fault:
    status: int
    times: int | None  # None = every call


class HostcallObserver:
    """Tracing, fault injection, strict mode and coverage counting, all off by default."""

    def __init__(self) -> None:
        self.trace: list[HostcallRecord] | None = None
        self.faults: dict[str, Fault] = {}
        self.allowed: frozenset[str] | None = None
        self.violations: list[str] = []
        self.coverage: dict[str, int] | None = None

    def _decode(self, host: AbiHostBase, names: tuple[str, ...], args: tuple[int, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        i = 0
        while i < len(args):
            pname = names[i]
            if pname.endswith("_ptr") and i + 1 < len(args) and names[i + 1].endswith(("_len", "_size")) and not pname.startswith("ret"):
                base = pname[: -len("_ptr")]
                try:
                    data = host.read(args[i], min(args[i + 1], 256))
                    out[base] = data + (b"..." if args[i + 1] > 256 else b"")
                except GuestMemoryError:
                    out[base] = f"<bad memory {args[i]:#x}+{args[i + 1]}>"
                i += 2
                continue
            out[pname] = args[i]
            i += 1
        return out

    def around(self, host: AbiHostBase, name: str, names: tuple[str, ...], args: tuple[int, ...],
               call: Callable[[], int | None]) -> int | None:
        if self.coverage is not None:
            self.coverage[name] = self.coverage.get(name, 0) + 1
        if self.allowed is not None and name not in self.allowed:
            self.violations.append(f"unexpected hostcall {name} from context {host.active.id}")
        decoded = self._decode(host, names, args) if self.trace is not None else {}
        fault = self.faults.get(name)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[name]
            result: int | None = fault.status
            injected = True
        else:
            result = call()
            injected = False
        if self.trace is not None:
            self.trace.append(HostcallRecord(host.active.id, name, decoded, None if result is None else int(result), injected))
        return result


@dataclass
class LogEntry:
    """One line the filter logged (``proxy_log`` or stdout/stderr through ``fd_write``)."""

    level: LogLevel
    message: str
    context_id: int
    source: str = "proxy_log"  # or "stdout" / "stderr" / "host"
    root_id: int = 0

    def __str__(self) -> str:
        return f"[{self.level.label}] {self.message}"
