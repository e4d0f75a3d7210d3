"""Exceptions raised to the embedder (test author, CLI, server).

One root, :class:`ProxyWasmError`, split by who is at fault: the module
(:class:`ModuleLoadError`, :class:`FilterTrap`, :class:`FilterFailed`), the
test author (:class:`HarnessUsageError`) or this host (:class:`HostBug`).
"""

from __future__ import annotations


class ProxyWasmError(Exception):
    """Base class of every error this package raises on purpose."""


class ModuleLoadError(ProxyWasmError):
    """The module cannot be compiled, linked or started."""


class FilterTrap(ProxyWasmError):
    """The guest trapped (Rust panic, unreachable, out-of-bounds, ...) inside a callback."""

    def __init__(
        self,
        callback: str,
        context_id: int,
        trap_message: str,
        panic_message: str | None = None,
    ) -> None:
        self.callback = callback
        self.context_id = context_id
        self.trap_message = trap_message
        self.panic_message = panic_message
        text = f"filter trapped in {callback} (context {context_id})"
        if panic_message:
            text += f": {panic_message}"
        text += f"\n  {trap_summary(trap_message)}"
        super().__init__(text)


def trap_summary(message: str) -> str:
    """The one line of a wasmtime trap report that says what happened."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("deadline exceeded"):
        return lines[0].split(" (")[0]
    for line in reversed(lines):
        if line.startswith("wasm trap:"):
            return line
    return "wasm trap: " + (lines[0] if lines else "?")


class FilterFailed(ProxyWasmError):
    """A root-context start-up callback refused to run (on_vm_start / on_configure returned false)."""


class HarnessUsageError(ProxyWasmError):
    """The test drove the harness in a way Envoy never would; the message says what to do."""


class HostBug(ProxyWasmError):
    """An internal error of this host surfaced during a hostcall (please report it)."""


class UnexpectedHostcall(ProxyWasmError):
    """Strict mode: the filter made a hostcall the test did not list as allowed."""
