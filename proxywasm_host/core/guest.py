"""The embedder interface of the core: what a runtime gives the ABI host (memory, allocator) and the errors that cross it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


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


class _NoGuest:
    """The guest of an AbiHost no runtime has attached a module to yet."""

    def memory(self) -> memoryview:
        raise RuntimeError("AbiHost used before a runtime attached a guest (AbiHost.attach_guest)")

    def allocate(self, size: int) -> int:
        raise RuntimeError("AbiHost used before a runtime attached a guest (AbiHost.attach_guest)")


#: stands in until :meth:`~proxywasm_host.core.hostcalls.base.AbiHostBase.attach_guest`
NO_GUEST: Guest = _NoGuest()


@dataclass(frozen=True)
class MemoryAccess:
    """A runtime's own copies in and out of linear memory, used by the ABI host in place of
    its Python ones (same contracts: out-of-range is :class:`GuestMemoryError`)."""

    #: (ptr, size) -> the bytes; size 0 is b""
    read: Callable[[int, int], bytes]
    #: data -> address of a new guest allocation holding it
    give: Callable[[bytes | bytearray | memoryview], int]
    #: (ptr1, value1, ptr2, value2): two u32 out-params, the first written before the second is checked
    write_u32_pair: Callable[[int, int, int, int], None]
