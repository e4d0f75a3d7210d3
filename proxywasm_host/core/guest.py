"""The embedder interface of the core: what a runtime gives the ABI host (memory, allocator) and the errors that cross it."""

from __future__ import annotations

from typing import Callable, Protocol


class GuestMemoryError(Exception):
    """A guest pointer/size pair outside linear memory."""


class GuestTrapped(Exception):
    """The guest trapped during a re-entrant call made from inside a hostcall."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class Guest(Protocol):
    """What the runtime layer provides to the ABI state."""

    def memory(self) -> memoryview:
        """A writable byte view of the whole linear memory, valid until the guest runs again."""

    def allocate(self, size: int) -> int:
        """Call the guest allocator; 0 when it failed."""


class WasmTrap(Exception):
    """Raised by the runtime layer when the guest traps."""


class GuestRuntime(Protocol):
    """What the runtime layer provides to the VM: the module's exports, ready to call."""

    def has_export(self, name: str) -> bool: ...

    def export(self, name: str) -> Callable[..., int | None] | None:
        """The exported function ``name`` ready to call with its arguments (it raises
        :class:`WasmTrap` when the guest traps), or None when the module has no such export."""
