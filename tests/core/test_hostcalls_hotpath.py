"""The hand-tuned hot hostcalls (logging, header maps, returning data) keep Envoy's statuses
and the order of their checks, driven directly against a fake guest (no wasmtime)."""

from __future__ import annotations

import struct

from proxywasm_host.core import codec
from proxywasm_host.core.context import Context
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.types import AbiVersion, LogLevel, Status

MEM = 4096
BAD = MEM - 2  # a pointer whose u32 / 10-byte range runs past the end of memory


class FakeGuest:
    def __init__(self) -> None:
        self.mem = memoryview(bytearray(MEM))
        self.next = 1024
        self.allocations: list[int] = []

    def memory(self) -> memoryview:
        return self.mem

    def allocate(self, size: int) -> int:
        ptr = self.next
        self.next += size
        self.allocations.append(size)
        return ptr if self.next <= MEM else 0


class MapContext(Context):
    """A context with one writable request header map (map type 0); others are refused."""

    def __init__(self, host: AbiHost) -> None:
        super().__init__(host, 7)
        self.headers = HeaderMap([(":path", "/"), ("x-a", "1")])

    def get_map(self, map_type: int, *, for_write: bool) -> tuple[Status, HeaderMap | None]:
        return (Status.OK, self.headers) if map_type == 0 else (Status.BAD_ARGUMENT, None)


def make(log_level: LogLevel = LogLevel.TRACE, abi: AbiVersion = AbiVersion.V0_2_1) -> tuple[AbiHost, FakeGuest, MapContext]:
    host = AbiHost(abi, log_level=log_level)
    guest = FakeGuest()
    host.guest = guest
    ctx = MapContext(host)
    host.register(ctx)
    host.current = ctx
    return host, guest, ctx


def put(guest: FakeGuest, ptr: int, data: bytes) -> tuple[int, int]:
    guest.mem[ptr : ptr + len(data)] = data
    return ptr, len(data)


def u32(guest: FakeGuest, ptr: int) -> int:
    return struct.unpack_from("<I", guest.mem, ptr)[0]


def test_filtered_log_still_checks_memory_and_records_nothing() -> None:
    host, guest, _ = make(LogLevel.WARN)
    ptr, n = put(guest, 100, b"hello")
    assert host.proxy_log(LogLevel.INFO, ptr, n) == Status.OK
    assert host.proxy_log(LogLevel.INFO, BAD, 10) == Status.INVALID_MEMORY_ACCESS
    assert host.proxy_log(LogLevel.INFO, BAD, 0) == Status.OK  # empty: no range to check
    assert host.proxy_log(6, BAD, 10) == Status.BAD_ARGUMENT  # level is checked first
    assert host.logs == []
    assert host.proxy_log(LogLevel.ERROR, ptr, n) == Status.OK
    assert [(e.level, e.message, e.context_id) for e in host.logs] == [(LogLevel.ERROR, "hello", 7)]
    assert type(host.logs[0].level) is LogLevel


def test_return_bytes_checks_each_result_pointer_in_order() -> None:
    host, guest, _ = make()
    kptr, klen = put(guest, 100, b"x-a")
    assert host.proxy_get_header_map_value(0, kptr, klen, 200, 204) == Status.OK
    assert bytes(guest.mem[u32(guest, 200) : u32(guest, 200) + u32(guest, 204)]) == b"1"
    # the pointer is written before the size pointer is found bad (as before)
    assert host.proxy_get_header_map_value(0, kptr, klen, 300, BAD) == Status.INVALID_MEMORY_ACCESS
    assert u32(guest, 300) != 0
    assert host.proxy_get_header_map_value(0, kptr, klen, BAD, 304) == Status.INVALID_MEMORY_ACCESS
    guest.next = MEM  # the allocator fails: 0
    assert host.proxy_get_header_map_value(0, kptr, klen, 200, 204) == Status.INVALID_MEMORY_ACCESS


def test_get_pairs_serializes_the_map_and_empty_is_null() -> None:
    host, guest, ctx = make()
    assert host.proxy_get_header_map_pairs(0, 200, 204) == Status.OK
    ptr, size = u32(guest, 200), u32(guest, 204)
    assert codec.decode_pairs(guest.mem, ptr, size) == [(b":path", b"/"), (b"x-a", b"1")]
    ctx.headers = HeaderMap()
    before = list(guest.allocations)
    assert host.proxy_get_header_map_pairs(0, 200, 204) == Status.OK
    assert (u32(guest, 200), u32(guest, 204)) == (0, 0) and guest.allocations == before
    assert host.proxy_get_header_map_pairs(2, 200, 204) == Status.OK  # refused map: empty
    assert host.proxy_get_header_map_pairs(8, 200, 204) == Status.BAD_ARGUMENT
    assert host.proxy_get_header_map_pairs(0, 200, BAD) == Status.INVALID_MEMORY_ACCESS
    ctx.headers = HeaderMap([("a", "b")])
    assert host.proxy_get_header_map_pairs(0, BAD, 204) == Status.INVALID_MEMORY_ACCESS


def test_missing_value_by_abi() -> None:
    host, guest, _ = make()
    kptr, klen = put(guest, 100, b"nope")
    assert host.proxy_get_header_map_value(0, kptr, klen, 200, 204) == Status.NOT_FOUND
    assert host.proxy_get_header_map_value(2, kptr, klen, 200, 204) == Status.BAD_ARGUMENT
    assert host.proxy_get_header_map_value(9, BAD, 10, 200, 204) == Status.BAD_ARGUMENT
    assert host.proxy_get_header_map_value(0, BAD, 10, 200, 204) == Status.INVALID_MEMORY_ACCESS
    legacy, lguest, _ = make(abi=AbiVersion.V0_1_0)
    put(lguest, 100, b"nope")
    assert legacy.proxy_get_header_map_value(0, kptr, klen, 200, 204) == Status.OK
    assert (u32(lguest, 200), u32(lguest, 204)) == (0, 0)


def test_mutations_check_value_then_map_type_then_key_then_map() -> None:
    host, guest, ctx = make()
    kptr, klen = put(guest, 100, b"X-B")
    vptr, vlen = put(guest, 120, b"v")
    assert host.proxy_add_header_map_value(9, BAD, 10, BAD, 10) == Status.INVALID_MEMORY_ACCESS
    assert host.proxy_add_header_map_value(9, BAD, 10, vptr, vlen) == Status.BAD_ARGUMENT
    assert host.proxy_add_header_map_value(0, BAD, 10, vptr, vlen) == Status.INVALID_MEMORY_ACCESS
    assert host.proxy_add_header_map_value(2, kptr, klen, vptr, vlen) == Status.BAD_ARGUMENT
    assert host.proxy_replace_header_map_value(9, BAD, 10, BAD, 10) == Status.INVALID_MEMORY_ACCESS
    assert host.proxy_remove_header_map_value(9, BAD, 10) == Status.BAD_ARGUMENT
    assert host.proxy_remove_header_map_value(0, BAD, 10) == Status.INVALID_MEMORY_ACCESS
    assert ctx.headers.items() == [(":path", "/"), ("x-a", "1")]
    assert host.proxy_add_header_map_value(0, kptr, klen, vptr, vlen) == Status.OK
    assert host.proxy_add_header_map_value(0, kptr, klen, vptr, vlen) == Status.OK
    put(guest, 120, b"w")
    assert host.proxy_replace_header_map_value(0, kptr, klen, vptr, vlen) == Status.OK
    assert ctx.headers.items() == [(":path", "/"), ("x-a", "1"), ("x-b", "w")]
    assert host.proxy_remove_header_map_value(0, kptr, klen) == Status.OK
    assert ctx.headers.items() == [(":path", "/"), ("x-a", "1")]


def test_encode_pairs_matches_the_layout_written_out() -> None:
    pairs = [(b"", b""), (b"k", b"value"), (b"\0x", b"y\0")]
    slow = struct.pack("<I", len(pairs))
    slow += b"".join(struct.pack("<II", len(k), len(v)) for k, v in pairs)
    slow += b"".join(k + b"\0" + v + b"\0" for k, v in pairs)
    assert codec.encode_pairs(pairs) == slow
    assert codec.encode_pairs([]) == b"\0\0\0\0"


class Broken(MapContext):
    def get_map(self, map_type: int, *, for_write: bool) -> tuple[Status, HeaderMap | None]:
        raise RuntimeError("boom")


def test_every_guard_arity_turns_errors_into_statuses_and_lets_traps_through() -> None:
    from proxywasm_host.core.guest import GuestTrapped
    from proxywasm_host.core.observer import HostcallObserver
    for observed in (False, True):
        host, guest, _ = make()
        if observed:
            host.observer = HostcallObserver()
            host.observer.trace = []
        host.current = Broken(host)
        put(guest, 100, b"k")
        assert host.proxy_get_header_map_pairs(0, 200, 204) == Status.INTERNAL_FAILURE  # 3 params
        assert host.proxy_get_header_map_value(0, 100, 1, 200, 204) == Status.INTERNAL_FAILURE  # 5
        assert host.proxy_set_effective_context(12345) == Status.BAD_ARGUMENT  # 1 (*args guard)
        assert host.proxy_get_property(BAD, 10, 200, 204) == Status.INVALID_MEMORY_ACCESS  # 4
        assert host.host_errors == ["proxy_get_header_map_pairs: RuntimeError: boom",
                                    "proxy_get_header_map_value: RuntimeError: boom"]
        host.current = MapContext(host)

        def trap(size: int) -> int:
            raise GuestTrapped(RuntimeError("allocator trapped"))

        guest.allocate = trap  # type: ignore[method-assign]
        try:
            host.proxy_get_header_map_pairs(0, 200, 204)
        except GuestTrapped:
            pass
        else:
            raise AssertionError("GuestTrapped must propagate")
        if observed:
            assert [r.name for r in host.observer.trace] == [  # type: ignore[union-attr]
                "proxy_get_header_map_pairs", "proxy_get_header_map_value", "proxy_set_effective_context",
                "proxy_get_property"]


def test_header_text_round_trips_any_bytes() -> None:
    raw = [(b"x-bin", b"\xff\xfe"), (b"x-utf8", "é".encode()), (b"x-plain", b"v")]
    hmap = HeaderMap(raw)
    assert hmap.items() == [("x-bin", "\udcff\udcfe"), ("x-utf8", "é"), ("x-plain", "v")]
    assert hmap.value("x-bin") == "\udcff\udcfe" and hmap["x-utf8"] == "é"
    assert HeaderMap(hmap.items()).pairs() == raw  # text with lone surrogates goes back to the bytes
    assert HeaderMap([("X-Bin", "\udcff")]).get(b"x-bin") == b"\xff"
    assert "X-BIN" in hmap and hmap.get_all("x-plain") == ["v"]
    mixed = HeaderMap([("A", b"1"), (b"B", "2")])
    assert mixed.pairs() == [(b"a", b"1"), (b"b", b"2")]
    copy = mixed.copy()
    copy.add(b"c", b"3")
    assert len(mixed) == 2 and len(copy) == 3
