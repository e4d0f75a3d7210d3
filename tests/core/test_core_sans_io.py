"""The ABI core runs without wasmtime: a bytearray stands in for guest memory."""

from __future__ import annotations

import struct

import pytest

from proxywasm_host.core.context import PluginConfig
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.types import AbiVersion, Status


class ArrayGuest:
    """Guest memory as a bytearray with a bump allocator."""

    def __init__(self, size: int = 65536) -> None:
        self.mem = bytearray(size)
        self.heap = 32768

    def memory(self) -> memoryview:
        return memoryview(self.mem)

    def allocate(self, size: int) -> int:
        ptr, self.heap = self.heap, self.heap + size
        return ptr


def make(abi: AbiVersion) -> tuple[AbiHost, ArrayGuest]:
    host = AbiHost(abi)
    guest = ArrayGuest()
    host.guest = guest
    return host, guest


@pytest.mark.parametrize(("abi", "status", "value"), [(AbiVersion.V0_1_0, Status.OK, (0, 0)), (AbiVersion.V0_2_1, Status.NOT_FOUND, None)])
def test_missing_header_value_by_abi(abi: AbiVersion, status: Status, value: tuple[int, int] | None) -> None:
    host, guest = make(abi)
    from proxywasm_host.core.stream import HttpContext  # noqa: F401  (only to show the core imports cleanly)

    root = host.new_root_context(PluginConfig())

    class FakeStream(type(root).__mro__[1]):  # a plain Context with one request header map
        def get_map(self, map_type, *, for_write):  # type: ignore[no-untyped-def]
            from proxywasm_host.core.headers import HeaderMap

            return Status.OK, HeaderMap([(":path", "/")])

    host.current = FakeStream(host, 7)
    guest.mem[100:106] = b"absent"
    struct.pack_into("<II", guest.mem, 200, 0xAAAA, 0xBBBB)
    assert host.proxy_get_header_map_value(0, 100, 6, 200, 204) == status
    written = struct.unpack_from("<II", guest.mem, 200)
    assert written == (value if value is not None else (0xAAAA, 0xBBBB))
