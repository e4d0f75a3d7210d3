"""Exceptions raised to the embedder (test author, CLI, server).

One root, :class:`ProxyWasmError`, split by who is at fault: the module
(:class:`ModuleLoadError`, :class:`FilterTrap`, :class:`FilterFailed`,
:class:`UnexpectedHostcall`), the test author (:class:`HarnessUsageError`) or the
tools around the host (:class:`EnvoyError`, :class:`BuildError`, :class:`OciError`).
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


class UnexpectedHostcall(ProxyWasmError):
    """Strict mode: the filter made a hostcall the test did not list as allowed."""


class EnvoyError(ProxyWasmError):
    """The real Envoy of the differential backend could not be started, or an exchange
    through it failed; ``log_tail``/``log`` hold what Envoy printed."""

    def __init__(self, message: str, log_tail: str = "", log: str = ""):
        super().__init__(message + (f"\n--- envoy log tail ---\n{log_tail}" if log_tail else ""))
        self.message = message
        self.log_tail = log_tail
        self.log = log or log_tail  # the whole log, when there is one (start-up failures)


class BuildError(ProxyWasmError):
    """``proxywasm-host build``: cargo failed or built no module; ``returncode`` is the exit code to use."""

    def __init__(self, message: str, returncode: int = 1):
        super().__init__(message)
        self.returncode = returncode


class OciError(ProxyWasmError):
    """A layout, image or registry problem, with a message for the user."""
