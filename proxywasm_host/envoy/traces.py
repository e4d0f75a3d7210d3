"""Callback traces of one exchange on both backends: parsed from Envoy's wasm trace log, recorded in-process by a CallObserver."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_ALLOCATORS = {"malloc", "proxy_on_memory_allocate"}
_ENTRY_POINTS = {"_initialize", "_start", "main", "__main_void"}

@dataclass
class CallbackTrace:
    """One callback into the module and the ``proxy_*`` hostcalls it made (by name)."""

    name: str
    args: tuple[int, ...]
    hostcalls: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        calls = ", ".join(self.hostcalls)
        return f"{self.name}({', '.join(map(str, self.args))}) -> [{calls}]"


def _is_callback(name: str) -> bool:
    return (name.startswith("proxy_on_") and name not in _ALLOCATORS) or name in _ENTRY_POINTS


_CALL = re.compile(r"^\[(host->vm|host<-vm|vm->host|vm<-host)\] ([\w.]+)(?:\((.*)\)| return:.*)?$")


def _int_args(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            out.append(-1)
    return tuple(out)


def envoy_callback_trace(lines: Iterable[str]) -> list[CallbackTrace]:
    """Callbacks and their hostcalls from Envoy's ``wasm:trace`` records.

    ``[host->vm] proxy_on_x(args)`` opens a callback (allocator calls are not
    callbacks), ``[host<-vm] proxy_on_x return: ...`` closes it, and every
    ``[vm->host] env.proxy_y(...)`` belongs to the innermost open callback.
    A ``Function: ... failed`` record (a trap) closes everything.
    """
    out: list[CallbackTrace] = []
    stack: list[CallbackTrace | None] = []
    for line in lines:
        first = line.split("\n", 1)[0]
        if first.startswith("Function: ") and " failed" in first:
            stack.clear()
            continue
        m = _CALL.match(first)
        if not m:
            continue
        arrow, name, args = m.group(1), m.group(2), m.group(3)
        if arrow == "host->vm":
            if _is_callback(name):
                cb = CallbackTrace(name, _int_args(args or ""))
                out.append(cb)
                stack.append(cb)
            else:
                stack.append(None)
        elif arrow == "host<-vm":
            if stack:
                stack.pop()
        elif arrow == "vm->host":
            call = name.split(".", 1)[1] if name.startswith("env.") else name
            if not call.startswith("proxy_"):
                continue  # WASI (the Go runtime's clock reads vary from run to run)
            owner = next((c for c in reversed(stack) if c is not None), None)
            if owner is not None:
                owner.hostcalls.append(call)
    return out


class _CallRecorder:
    """Records callback entries/exits of in-process VMs against the host's hostcall trace
    (a :class:`~proxywasm_host.core.vm.CallObserver` given to the Host)."""

    def __init__(self) -> None:
        self.host: Any = None  # set once the Host it observes exists
        self.events: list[tuple[str, str, tuple[int, ...], int]] = []

    def enter(self, vm: Any, context: Any, name: str, args: tuple[int, ...]) -> None:
        if _is_callback(name) and vm.runtime.has_export(name):
            self.events.append(("enter", name, tuple(args), self._mark()))

    def exit(self, vm: Any, context: Any, name: str) -> None:
        if _is_callback(name) and vm.runtime.has_export(name):
            self.events.append(("exit", name, (), self._mark()))

    def _mark(self) -> int:
        return self.host.hostcall_count if self.host is not None else 0

    def mark(self) -> tuple[int, int]:
        return len(self.events), self._mark()

    def since(self, mark: tuple[int, int]) -> list[CallbackTrace]:
        return inprocess_callback_trace(self.events[mark[0] :], self.host.hostcall_trace, mark[1])


def inprocess_callback_trace(
    events: Sequence[tuple[str, str, tuple[int, ...], int]], trace: Sequence[Any], start: int = 0
) -> list[CallbackTrace]:
    """Callbacks with their hostcalls, from recorded (enter/exit, name, args, trace index) events."""
    out: list[CallbackTrace] = []
    stack: list[CallbackTrace] = []
    pos = start

    def take(until: int) -> None:
        nonlocal pos
        for rec in trace[pos:until]:
            if rec.name.startswith("proxy_") and stack:
                stack[-1].hostcalls.append(rec.name)
        pos = max(pos, until)

    for kind, name, args, index in events:
        take(index)
        if kind == "enter":
            cb = CallbackTrace(name, args)
            out.append(cb)
            stack.append(cb)
        elif stack:
            stack.pop()
    take(len(trace))
    return out


def _significant(trace: list[CallbackTrace]) -> list[CallbackTrace]:
    # A proxy_on_tick that made no proxy_* call did nothing observable; Envoy's
    # real-time ticks fire whenever they fall due, the virtual clock's only
    # when the host waits.
    return [c for c in trace if not (c.name == "proxy_on_tick" and not c.hostcalls)]


# --------------------------------------------------------------------------
# normalisation and diffing
