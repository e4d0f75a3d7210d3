"""Exceptions raised to the embedder (test author, CLI, server).

One root, :class:`ProxyWasmError`, split by who is at fault: the module
(:class:`ModuleLoadError`, :class:`FilterTrap`, :class:`FilterFailed`,
:class:`UnexpectedHostcall`), the test author (:class:`HarnessUsageError`) or the
tools around the host (:class:`EnvoyError`, :class:`BuildError`, :class:`OciError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ProxyWasmError(Exception):
    """Base class of every error this package raises on purpose."""


class ModuleLoadError(ProxyWasmError):
    """The module cannot be compiled, linked or started."""


@dataclass(frozen=True)
class TrapFrame:
    """One function of a trap's backtrace, innermost first (as wasmtime reports them).

    ``file``/``line``/``column`` come from the module's DWARF line tables: a Rust filter
    built with ``debug = "line-tables-only"`` (or ``true``) and without ``strip`` has them,
    a stripped release build has function names only.  Functions the compiler inlined into
    frame ``index`` share its ``offset`` and have ``inlined=True``."""

    index: int
    offset: int
    function: str
    module: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None
    inlined: bool = False

    @property
    def location(self) -> str | None:
        """``file:line:column`` (or as much of it as is known)."""
        if self.file is None:
            return None
        return ":".join([self.file, *(str(n) for n in (self.line, self.column) if n is not None)])

    @property
    def is_runtime(self) -> bool:
        """Panic/abort machinery of the language runtime (Rust std/core, Go runtime), not the filter."""
        name = self.function
        if self.file is not None and self.file.startswith(_RUNTIME_FILES):
            return True
        return name.startswith(_RUNTIME_PREFIXES) or name in _RUNTIME_NAMES

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{'  (inlined) ' if self.inlined else ''}{self.function}{where}"

    def to_json_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "offset": self.offset,
            "function": self.function,
            "module": self.module,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "inlined": self.inlined,
        }


_RUNTIME_FILES = ("/rustc/", "/usr/lib/rustlib/", "library/std/", "library/core/", "library/alloc/")
_RUNTIME_PREFIXES = (
    "std::", "core::", "alloc::", "__rust", "rust_", "<&T as core::", "runtime.", "__rustc::",
)
_RUNTIME_NAMES = frozenset(
    {"abort", "abort_internal", "panic_fmt", "panic_handler", "panic_with_hook", "panic",
     "{closure#0}", "__rust_end_short_backtrace", "begin_panic_handler", "rust_begin_unwind"}
)
_FRAME_RE = re.compile(r"^\s*(\d+):\s+0x([0-9a-fA-F]+) - (.*)$")
_INLINED_RE = re.compile(r"^\s+- (.*)$")
_AT_RE = re.compile(r"^\s+at (.+?)(?::(\d+))?(?::(\d+))?$")
_CRATE_HASH_RE = re.compile(r"\[[0-9a-f]{5,16}\]")


def _split_module(text: str) -> tuple[str | None, str]:
    # "panic.wasm!name" (no DWARF) or "name" (DWARF symbol); a name may hold "!" itself
    # (Rust's never type), a module name ends in ".wasm" or is "<unknown>".
    head, sep, tail = text.partition("!")
    if sep and (head.endswith(".wasm") or head == "<unknown>" or " " not in head and "<" not in head):
        return (None if head == "<unknown>" else head), tail
    return None, text


def parse_backtrace(message: str) -> tuple[TrapFrame, ...]:
    """The frames of a wasmtime trap report (``wasm backtrace:`` section), innermost first."""
    frames: list[TrapFrame] = []
    index = offset = -1
    module: str | None = None
    for raw in message.splitlines():
        m = _FRAME_RE.match(raw)
        if m:
            index, offset = int(m.group(1)), int(m.group(2), 16)
            module, name = _split_module(m.group(3).strip())
            frames.append(TrapFrame(index, offset, _CRATE_HASH_RE.sub("", name), module))
            continue
        if index < 0:
            continue
        m = _INLINED_RE.match(raw)
        if m:
            frames.append(TrapFrame(index, offset, _CRATE_HASH_RE.sub("", m.group(1).strip()), module, inlined=True))
            continue
        m = _AT_RE.match(raw)
        if m and frames and frames[-1].file is None:
            last = frames[-1]
            frames[-1] = TrapFrame(
                last.index, last.offset, last.function, last.module, m.group(1),
                int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None, last.inlined,
            )
            continue
        if raw.strip() and not raw.startswith(" "):
            index = -1  # "Caused by:", "note: ..." end the backtrace
    # wasmtime lists a frame's inlined functions innermost first, the frame's own function
    # (the one the offset belongs to) last: mark all but the last of each index as inlined.
    out: list[TrapFrame] = []
    for i, frame in enumerate(frames):
        last_of_index = i + 1 == len(frames) or frames[i + 1].index != frame.index
        inlined = not last_of_index
        out.append(frame if frame.inlined == inlined else TrapFrame(
            frame.index, frame.offset, frame.function, frame.module, frame.file, frame.line, frame.column, inlined))
    return tuple(out)


def filter_frames(frames: tuple[TrapFrame, ...]) -> tuple[TrapFrame, ...]:
    """The frames from the first one that is not panic machinery on (all when none is)."""
    for i, frame in enumerate(frames):
        if not frame.is_runtime:
            return frames[i:]
    return frames


class FilterTrap(ProxyWasmError):
    """The guest trapped (Rust panic, unreachable, out-of-bounds, ...) inside a callback.

    ``str()`` gives, in this order: the callback, the guest's panic message (when it logged
    one), what trapped, and the filter's backtrace (function names; source file:line where
    the module has DWARF line tables).  ``frames`` holds every frame, ``trap_message``
    wasmtime's whole report."""

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
        self.frames: tuple[TrapFrame, ...] = parse_backtrace(trap_message)
        super().__init__(self.describe())

    @property
    def summary(self) -> str:
        """What trapped, in one line (``wasm trap: ...`` or ``deadline exceeded: ...``)."""
        return trap_summary(self.trap_message)

    @property
    def headline(self) -> str:
        """One line: the callback and the panic message's first line (or the trap summary)."""
        first = self.panic_message.strip().splitlines() if self.panic_message else []
        if first:
            # Rust: "panicked at src/lib.rs:7:9:\nboom" -> "panicked at src/lib.rs:7:9: boom"
            text = " ".join(line.strip() for line in first[:2])
        else:
            text = self.summary
        return f"filter trapped in {self.callback} (context {self.context_id}): {text}"

    def describe(self, *, max_frames: int | None = None) -> str:
        """The whole report: headline, panic message, trap, backtrace."""
        lines = [f"filter trapped in {self.callback} (context {self.context_id})"]
        if self.panic_message:
            lines += [f"  {line}" for line in self.panic_message.strip().splitlines()]
        lines.append(f"  {self.summary}")
        shown = filter_frames(self.frames)
        if shown:
            lines.append("  backtrace (innermost first):")
            for frame in shown[:max_frames] if max_frames else shown:
                lines.append(f"    {frame}")
            if max_frames and len(shown) > max_frames:
                lines.append(f"    ... {len(shown) - max_frames} more")
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "callback": self.callback,
            "context_id": self.context_id,
            "panic_message": self.panic_message,
            "trap": self.summary,
            "frames": [f.to_json_dict() for f in self.frames],
            "filter_frames": [f.to_json_dict() for f in filter_frames(self.frames)],
            "trap_message": self.trap_message,
        }


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
