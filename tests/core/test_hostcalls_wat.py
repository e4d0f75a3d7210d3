"""Hostcalls driven with raw guest arguments through the probe module: the status Envoy
returns for bad pointers, unknown enums and malformed maps, and never an exception."""

from __future__ import annotations

import struct

import pytest
from conftest import WAT, u32

from proxywasm_host import Host, Status
from proxywasm_host.core.codec import encode_pairs

BAD = 0xFFFFFFF0  # far outside a 2-page memory
SCRATCH = 0x8000  # guest scratch area the tests write arguments into
RET = 0x7000  # out-params


class Probe:
    def __init__(self, **plugin_options) -> None:  # type: ignore[no-untyped-def]
        self.host = Host()
        self.plugin = self.host.load_plugin(WAT / "hostcall_probe.wat", **plugin_options)
        self.stream = self.plugin.http_stream()
        self.stream.send_request_headers([(":path", "/a"), ("x-one", "1"), ("x-dup", "a"), ("x-dup", "b")])
        self.ctx = self.stream.context
        # The probe's calls stand for calls made during on_request_headers: Envoy forgets the
        # request header map once that callback continued (BAD_ARGUMENT afterwards).
        self.ctx.request.headers_released = False

    @property
    def mem(self) -> memoryview:
        return self.plugin.vm.runtime.memory()  # type: ignore[attr-defined]

    def put(self, data: bytes, addr: int = SCRATCH) -> tuple[int, int]:
        self.mem[addr : addr + len(data)] = data
        return addr, len(data)

    def call(self, name: str, *args: int, ctx=None) -> int:  # type: ignore[no-untyped-def]
        return self.plugin.vm.call(ctx or self.ctx, f"call_{name}", *[a & 0xFFFFFFFF for a in args])

    def returned(self) -> bytes:
        ptr, size = u32(self.mem, RET), u32(self.mem, RET + 4)
        return bytes(self.mem[ptr : ptr + size])


@pytest.fixture
def probe() -> Probe:
    return Probe()


def test_log_statuses(probe: Probe) -> None:
    ptr, n = probe.put(b"hello")
    assert probe.call("proxy_log", 2, ptr, n) == Status.OK
    assert probe.plugin.log_messages("info") == ["hello"]
    assert probe.call("proxy_log", 6, ptr, n) == Status.BAD_ARGUMENT
    assert probe.call("proxy_log", 2, BAD, 10) == Status.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_log", 2, 0, 0) == Status.OK  # (null, 0) is a valid empty string


def test_logs_below_the_level_are_dropped_with_the_same_statuses() -> None:
    """Below the host's level a log is dropped before Python (in the C crossings when built):
    the statuses stay AbiHost.proxy_log's, a level change applies at once, and with an
    observer (trace) every call still reaches Python and is recorded."""
    from proxywasm_host import LogLevel

    probe = Probe()
    abi = probe.plugin.vm.host
    abi.log_level = LogLevel.WARN
    ptr, n = probe.put(b"dropped")
    end = len(probe.mem)
    for level in (LogLevel.TRACE, LogLevel.DEBUG, LogLevel.INFO):
        assert probe.call("proxy_log", level, ptr, n) == Status.OK
    assert probe.call("proxy_log", LogLevel.INFO, end - n, n) == Status.OK  # ends at the last byte
    assert probe.call("proxy_log", LogLevel.INFO, end - n + 1, n) == Status.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_log", LogLevel.INFO, BAD, 10) == Status.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_log", LogLevel.INFO, BAD, 0) == Status.OK  # no range to check
    assert probe.call("proxy_log", 6, ptr, n) == Status.BAD_ARGUMENT
    assert probe.plugin.log_messages() == []
    assert probe.call("proxy_log", LogLevel.WARN, ptr, n) == Status.OK
    abi.log_level = LogLevel.DEBUG
    assert probe.call("proxy_log", LogLevel.DEBUG, ptr, n) == Status.OK
    assert probe.call("proxy_log", LogLevel.TRACE, ptr, n) == Status.OK
    assert probe.plugin.log_messages() == ["dropped", "dropped"]

    host = Host(log_level=LogLevel.ERROR, trace=True)
    plugin = host.load_plugin(WAT / "hostcall_probe.wat")
    stream = plugin.http_stream()
    stream.send_request_headers([(":path", "/")])
    mem = plugin.vm.runtime.memory()  # type: ignore[attr-defined]
    mem[SCRATCH : SCRATCH + 2] = b"hi"
    assert plugin.vm.call(stream.context, "call_proxy_log", int(LogLevel.INFO), SCRATCH, 2) == Status.OK
    logs = [r for r in host.hostcall_trace if r.name == "proxy_log"]
    assert [(r.args["level"], r.result) for r in logs] == [(int(LogLevel.INFO), Status.OK)]
    assert plugin.log_messages() == []


def test_header_value_lookup(probe: Probe) -> None:
    ptr, n = probe.put(b"X-DUP")
    assert probe.call("proxy_get_header_map_value", 0, ptr, n, RET, RET + 4) == Status.OK
    assert probe.returned() == b"a"  # first value, key lower-cased
    ptr, n = probe.put(b"absent")
    assert probe.call("proxy_get_header_map_value", 0, ptr, n, RET, RET + 4) == Status.NOT_FOUND
    assert probe.call("proxy_get_header_map_value", 8, ptr, n, RET, RET + 4) == Status.BAD_ARGUMENT
    assert probe.call("proxy_get_header_map_value", 0, BAD, 4, RET, RET + 4) == Status.INVALID_MEMORY_ACCESS
    ptr, n = probe.put(b"x-one")
    assert probe.call("proxy_get_header_map_value", 0, ptr, n, BAD, RET + 4) == Status.INVALID_MEMORY_ACCESS
    # response headers do not exist yet during the request phase
    assert probe.call("proxy_get_header_map_value", 2, ptr, n, RET, RET + 4) == Status.BAD_ARGUMENT


def test_header_pairs_round_trip_through_guest_memory(probe: Probe) -> None:
    assert probe.call("proxy_get_header_map_pairs", 0, RET, RET + 4) == Status.OK
    from proxywasm_host.core.codec import decode_pairs

    assert decode_pairs(probe.returned()) == [(b":path", b"/a"), (b"x-one", b"1"), (b"x-dup", b"a"), (b"x-dup", b"b")]
    new = encode_pairs([(b"A", b"1"), (b"b", b"")])
    ptr, n = probe.put(new)
    assert probe.call("proxy_set_header_map_pairs", 0, ptr, n) == Status.OK
    assert probe.stream.request_headers.items() == [("a", "1"), ("b", "")]
    # an unavailable map is empty, written as (0, 0)
    assert probe.call("proxy_get_header_map_pairs", 3, RET, RET + 4) == Status.OK
    assert (u32(probe.mem, RET), u32(probe.mem, RET + 4)) == (0, 0)
    assert probe.call("proxy_get_header_map_pairs", 9, RET, RET + 4) == Status.BAD_ARGUMENT


def test_malformed_pairs_clear_the_map_like_envoy(probe: Probe) -> None:
    ptr, n = probe.put(struct.pack("<III", 1, 500, 1) + b"k\0v\0")
    assert probe.call("proxy_set_header_map_pairs", 0, ptr, n) == Status.OK
    assert len(probe.stream.request_headers) == 0
    assert probe.call("proxy_set_header_map_pairs", 0, BAD, 12) == Status.INVALID_MEMORY_ACCESS


def test_mutations_and_size(probe: Probe) -> None:
    k, kn = probe.put(b"X-New")
    v, vn = probe.put(b"v1", SCRATCH + 64)
    assert probe.call("proxy_add_header_map_value", 0, k, kn, v, vn) == Status.OK
    assert probe.call("proxy_add_header_map_value", 0, k, kn, v, vn) == Status.OK
    assert probe.stream.request_headers.get_all("x-new") == ["v1", "v1"]
    v2, v2n = probe.put(b"v2", SCRATCH + 128)
    assert probe.call("proxy_replace_header_map_value", 0, k, kn, v2, v2n) == Status.OK
    assert probe.stream.request_headers.get_all("x-new") == ["v2"]
    assert probe.call("proxy_remove_header_map_value", 0, k, kn) == Status.OK
    assert "x-new" not in probe.stream.request_headers
    assert probe.call("proxy_remove_header_map_value", 0, k, kn) == Status.OK  # absent key: still OK
    assert probe.call("proxy_get_header_map_size", 0, RET) == Status.OK
    assert u32(probe.mem, RET) == probe.stream.request_headers.byte_size()
    assert probe.call("proxy_add_header_map_value", 6, k, kn, v, vn) == Status.BAD_ARGUMENT  # read-only type
    assert probe.call("proxy_add_header_map_value", 0, k, kn, BAD, 3) == Status.INVALID_MEMORY_ACCESS


def test_buffers(probe: Probe) -> None:
    s = probe.stream
    assert probe.call("proxy_get_buffer_bytes", 9, 0, 10, RET, RET + 4) == Status.BAD_ARGUMENT
    # body not attached during headers: an empty buffer, not an error; writing it is NOT_FOUND
    assert probe.call("proxy_get_buffer_status", 0, RET, RET + 4) == Status.OK
    assert u32(probe.mem, RET) == 0
    d, dn = probe.put(b"zz")
    assert probe.call("proxy_set_buffer_bytes", 0, 0, 0, d, dn) == Status.NOT_FOUND
    assert probe.call("proxy_get_buffer_bytes", 4, 0, 10, RET, RET + 4) == Status.NOT_FOUND
    assert probe.call("proxy_set_buffer_bytes", 6, 0, 0, d, dn) == Status.BAD_ARGUMENT  # immutable
    # Attach a body and edit it the way Envoy allows.
    s.context.request.buffer += b"hello world"
    s.context.request.body_writable = True
    assert probe.call("proxy_get_buffer_bytes", 0, 6, 0xFFFFFFFF, RET, RET + 4) == Status.OK  # u32::MAX size
    assert probe.returned() == b"world"
    assert probe.call("proxy_get_buffer_bytes", 0, 50, 10, RET, RET + 4) == Status.OK  # start past the end
    assert (u32(probe.mem, RET), u32(probe.mem, RET + 4)) == (0, 0)
    assert probe.call("proxy_set_buffer_bytes", 0, 0, 0, d, dn) == Status.OK  # prepend
    assert bytes(s.context.request.buffer) == b"zzhello world"
    assert probe.call("proxy_set_buffer_bytes", 0, 0xFFFFFFFF, 0, d, dn) == Status.OK  # append
    assert bytes(s.context.request.buffer) == b"zzhello worldzz"
    assert probe.call("proxy_set_buffer_bytes", 0, 3, 2, d, dn) == Status.BAD_ARGUMENT  # middle
    assert probe.call("proxy_set_buffer_bytes", 0, 0, 1000, d, dn) == Status.OK  # replace all
    assert bytes(s.context.request.buffer) == b"zz"


def test_allocator_failure_is_invalid_memory_access(probe: Probe) -> None:
    probe.plugin.vm.call(probe.ctx, "fail_alloc", 1)
    assert probe.call("proxy_get_header_map_pairs", 0, RET, RET + 4) == Status.INVALID_MEMORY_ACCESS
    probe.plugin.vm.call(probe.ctx, "fail_alloc", 0)
    assert probe.call("proxy_get_header_map_pairs", 0, RET, RET + 4) == Status.OK


def test_memory_growth_inside_the_allocator_is_seen() -> None:
    probe = Probe()
    pages_before = len(probe.mem) // 65536
    big = b"v" * (300 * 1024)
    probe.stream.context.request.headers.add(b"x-big", big)
    assert probe.call("proxy_get_header_map_pairs", 0, RET, RET + 4) == Status.OK
    assert len(probe.mem) // 65536 > pages_before
    from proxywasm_host.core.codec import decode_pairs

    assert (b"x-big", big) in decode_pairs(probe.returned())


def test_stream_control_statuses(probe: Probe) -> None:
    assert probe.call("proxy_continue_stream", 4) == Status.BAD_ARGUMENT
    assert probe.call("proxy_continue_stream", 3) == Status.UNIMPLEMENTED
    assert probe.call("proxy_close_stream", 4) == Status.BAD_ARGUMENT
    assert probe.call("proxy_set_effective_context", 999) == Status.BAD_ARGUMENT
    assert probe.call("proxy_set_effective_context", probe.plugin.context_id) == Status.OK
    assert probe.call("proxy_set_effective_context", 0) == Status.OK
    assert probe.call("proxy_done") == Status.NOT_FOUND


def test_time_and_log_level(probe: Probe) -> None:
    assert probe.call("proxy_get_current_time_nanoseconds", RET) == Status.OK
    assert struct.unpack_from("<Q", probe.mem, RET)[0] == probe.host.now_ns
    probe.host.advance_time(1500)
    assert probe.call("proxy_get_current_time_nanoseconds", RET) == Status.OK
    assert struct.unpack_from("<Q", probe.mem, RET)[0] == probe.host.now_ns
    assert probe.call("proxy_get_log_level", RET) == Status.OK
    assert u32(probe.mem, RET) == 0
    assert probe.call("proxy_get_current_time_nanoseconds", BAD) == Status.INVALID_MEMORY_ACCESS


def test_properties(probe: Probe) -> None:
    p, n = probe.put(b"request\0path")
    assert probe.call("proxy_get_property", p, n, RET, RET + 4) == Status.OK
    assert probe.returned() == b"/a"
    p, n = probe.put(b"request.path")  # dotted, single segment: Envoy does not split it
    assert probe.call("proxy_get_property", p, n, RET, RET + 4) == Status.NOT_FOUND
    p, n = probe.put(b"source\0port")
    assert probe.call("proxy_get_property", p, n, RET, RET + 4) == Status.OK
    assert len(probe.returned()) == 8
    p, n = probe.put(b"wasm_key")
    v, vn = probe.put(b"value!", SCRATCH + 64)
    assert probe.call("proxy_set_property", p, n, v, vn) == Status.OK
    assert probe.call("proxy_get_property", p, n, RET, RET + 4) == Status.OK
    assert probe.returned() == b"value!"
    # a root context has no stream info to store filter state in
    assert probe.call("proxy_set_property", p, n, v, vn, ctx=probe.plugin.root) == Status.NOT_FOUND
    assert probe.call("proxy_get_property", BAD, 4, RET, RET + 4) == Status.INVALID_MEMORY_ACCESS


def test_shared_data_cas(probe: Probe) -> None:
    k, kn = probe.put(b"key")
    v, vn = probe.put(b"one", SCRATCH + 64)
    assert probe.call("proxy_get_shared_data", k, kn, RET, RET + 4, RET + 8) == Status.NOT_FOUND
    assert probe.call("proxy_set_shared_data", k, kn, v, vn, 12345) == Status.OK  # absent: cas ignored
    assert probe.call("proxy_get_shared_data", k, kn, RET, RET + 4, RET + 8) == Status.OK
    cas = u32(probe.mem, RET + 8)
    assert probe.returned() == b"one" and cas != 0
    assert probe.call("proxy_set_shared_data", k, kn, v, vn, cas + 1) == Status.CAS_MISMATCH
    assert probe.call("proxy_set_shared_data", k, kn, v, vn, cas) == Status.OK
    assert probe.call("proxy_set_shared_data", k, kn, v, vn, cas) == Status.CAS_MISMATCH  # cas moved on
    assert probe.call("proxy_set_shared_data", k, kn, v, vn, 0) == Status.OK  # 0 = unconditional


def test_shared_queue(probe: Probe) -> None:
    name, nn = probe.put(b"q")
    assert probe.call("proxy_enqueue_shared_queue", 77, name, nn) == Status.NOT_FOUND
    assert probe.call("proxy_register_shared_queue", name, nn, RET, ctx=probe.plugin.root) == Status.OK
    token = u32(probe.mem, RET)
    assert probe.call("proxy_resolve_shared_queue", 0, 0, name, nn, RET + 4) == Status.OK
    assert u32(probe.mem, RET + 4) == token
    assert probe.call("proxy_dequeue_shared_queue", token, RET, RET + 4) == Status.EMPTY
    v, vn = probe.put(b"item", SCRATCH + 64)
    assert probe.call("proxy_enqueue_shared_queue", token, v, vn) == Status.OK
    assert probe.call("proxy_dequeue_shared_queue", token, RET, RET + 4) == Status.OK
    assert probe.returned() == b"item"


def test_metrics_follow_envoy(probe: Probe) -> None:
    name, nn = probe.put(b"requests")
    assert probe.call("proxy_define_metric", 3, name, nn, RET) == Status.BAD_ARGUMENT
    assert probe.call("proxy_define_metric", 0, name, nn, RET) == Status.OK
    counter = u32(probe.mem, RET)
    assert counter % 4 == 0
    assert probe.call("proxy_increment_metric", counter, 0) == Status.BAD_ARGUMENT  # counters need > 0
    assert probe.call("proxy_increment_metric", counter, 2) == Status.OK
    assert probe.call("proxy_record_metric", counter, 5) == Status.OK  # adds, not sets
    assert probe.plugin.metric("requests") == 7
    assert probe.call("proxy_define_metric", 2, name, nn, RET) == Status.OK
    histogram = u32(probe.mem, RET)
    assert probe.call("proxy_get_metric", histogram, RET) == Status.BAD_ARGUMENT
    assert probe.call("proxy_increment_metric", 4096 + 3, 1) == Status.NOT_FOUND


def test_http_call_statuses(probe: Probe) -> None:
    u, un = probe.put(b"cluster")
    h, hn = probe.put(encode_pairs([(b":path", b"/")]), SCRATCH + 64)
    probe.mem[RET : RET + 4] = b"\xff\xff\xff\xff"
    # :method and :authority missing
    assert probe.call("proxy_http_call", u, un, h, hn, 0, 0, 0, 0, 1000, RET) == Status.BAD_ARGUMENT
    assert u32(probe.mem, RET) == 0  # token pre-written
    assert probe.call("proxy_http_call", u, un, h, hn, 0, 0, 0, 0, 1000, BAD) == Status.INVALID_MEMORY_ACCESS
    full = encode_pairs([(b":path", b"/"), (b":method", b"GET"), (b":authority", b"x")])
    h, hn = probe.put(full, SCRATCH + 64)
    assert probe.call("proxy_http_call", u, un, h, hn, 0, 0, 0, 0, -1, RET) == Status.BAD_ARGUMENT  # negative timeout
    assert probe.call("proxy_http_call", u, un, h, hn, 0, 0, 0, 0, 1000, RET) == Status.OK
    assert probe.call("proxy_http_call", u, un, h, hn, 0, 0, 0, 0, 1000, RET + 4) == Status.OK
    assert (u32(probe.mem, RET), u32(probe.mem, RET + 4)) == (4, 8)
    assert [c.token for c in probe.plugin.pending_http_callouts] == [4, 8]


def test_unknown_clusters_get_envoys_statuses() -> None:
    host = Host(clusters=["known"])
    plugin = host.load_plugin(WAT / "hostcall_probe.wat")
    probe = Probe.__new__(Probe)
    probe.host, probe.plugin = host, plugin
    probe.stream = plugin.http_stream()
    probe.stream.send_request_headers({":path": "/"})
    probe.ctx = probe.stream.context
    u, un = probe.put(b"unknown")
    h, hn = probe.put(encode_pairs([(b":path", b"/"), (b":method", b"GET"), (b":authority", b"x")]), SCRATCH + 64)
    assert probe.call("proxy_http_call", u, un, h, hn, 0, 0, 0, 0, 1000, RET) == Status.BAD_ARGUMENT
    assert probe.call("proxy_grpc_call", u, un, u, un, u, un, 0, 0, 0, 0, 1000, RET) == Status.PARSE_FAILURE
    k, kn = probe.put(b"known", SCRATCH + 256)
    assert probe.call("proxy_http_call", k, kn, h, hn, 0, 0, 0, 0, 1000, RET) == Status.OK
    assert probe.call("proxy_grpc_call", k, kn, u, un, u, un, 0, 0, 0, 0, 1000, RET) == Status.OK
    assert u32(probe.mem, RET) == 5
    assert probe.call("proxy_grpc_stream", k, kn, u, un, u, un, 0, 0, RET) == Status.OK
    assert u32(probe.mem, RET) == 6
    assert probe.call("proxy_grpc_send", 5, 0, 0, 0) == Status.BAD_ARGUMENT  # not a stream
    assert probe.call("proxy_grpc_send", 6, u, un, 1) == Status.OK
    assert probe.call("proxy_grpc_send", 10, u, un, 0) == Status.NOT_FOUND
    assert probe.call("proxy_grpc_cancel", 5) == Status.OK
    assert probe.call("proxy_grpc_cancel", 5) == Status.NOT_FOUND
    assert probe.call("proxy_grpc_close", 4) == Status.BAD_ARGUMENT
    assert probe.call("proxy_get_status", RET, RET + 4, RET + 8) == Status.OK
    assert u32(probe.mem, RET) == 0
    stream_call = plugin.grpc_calls[1]
    assert stream_call.streaming and stream_call.sent_messages == [b"unknown"] and stream_call.local_end_stream


def test_foreign_functions() -> None:
    probe = Probe(foreign_functions={"reverse": lambda args: args[::-1]})
    name, nn = probe.put(b"reverse")
    a, an = probe.put(b"abc", SCRATCH + 64)
    assert probe.call("proxy_call_foreign_function", name, nn, a, an, RET, RET + 4) == Status.OK
    assert probe.returned() == b"cba"
    name, nn = probe.put(b"unknown")
    assert probe.call("proxy_call_foreign_function", name, nn, a, an, RET, RET + 4) == Status.NOT_FOUND


def test_wasi(probe: Probe) -> None:
    text, tn = probe.put(b"to stdout\n", SCRATCH + 64)
    probe.mem[SCRATCH : SCRATCH + 8] = struct.pack("<II", text, tn)
    assert probe.call("fd_write", 1, SCRATCH, 1, RET) == 0
    assert u32(probe.mem, RET) == tn
    assert probe.plugin.logs[-1].message == "to stdout" and probe.plugin.logs[-1].source == "stdout"
    assert probe.call("fd_write", 3, SCRATCH, 1, RET) == 8  # EBADF
    probe.mem[SCRATCH : SCRATCH + 8] = struct.pack("<II", BAD, 5)
    assert probe.call("fd_write", 2, SCRATCH, 1, RET) == 21  # EFAULT
    assert probe.call("random_get", SCRATCH, 65537) == 28  # EINVAL above the 64 KiB cap
    assert probe.call("random_get", SCRATCH, 16) == 0
    assert probe.call("clock_time_get", 2, 0, RET) == 58  # ENOTSUP
    assert probe.call("clock_time_get", 0, 0, RET) == 0
    assert struct.unpack_from("<Q", probe.mem, RET)[0] == probe.host.now_ns
    assert probe.call("poll_oneoff", 0, 0, 0, RET) == 0
    assert probe.call("path_open", 3, 0, 0, 0, 0, 0, 0, 0, RET) == 44  # ENOENT
    assert probe.call("environ_sizes_get", RET, RET + 4) == 0
    assert (u32(probe.mem, RET), u32(probe.mem, RET + 4)) == (0, 0)


def test_environment_variables() -> None:
    probe = Probe(environment={"A": "1", "BB": "two"})
    assert probe.call("environ_sizes_get", RET, RET + 4) == 0
    assert (u32(probe.mem, RET), u32(probe.mem, RET + 4)) == (2, len(b"A=1\0BB=two\0"))
    assert probe.call("environ_get", RET, SCRATCH) == 0
    assert bytes(probe.mem[SCRATCH : SCRATCH + 11]) == b"A=1\0BB=two\0"
    assert u32(probe.mem, RET + 4) == SCRATCH + 4


DNS_GUEST = """
(module
  (import "env" "envoy_resolve_dns" (func $resolve (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 0) "example.test")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap)) (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $resolve (i32.const 0) (i32.const 12) (i32.const 100)))
    (i32.const 1))
  ;; log the raw CallData bytes the host provides
  (func (export "envoy_on_resolve_dns") (param $root i32) (param $token i32) (param $size i32)
    (drop (call $get (i32.const 8) (i32.const 0) (local.get $size) (i32.const 200) (i32.const 204)))
    (drop (call $log (i32.const 2) (i32.load (i32.const 200)) (i32.load (i32.const 204))))))
"""


@pytest.mark.parametrize(("answers", "expected"), [
    (["10.0.0.1", ("10.0.0.2", 30)], struct.pack("<III", 2, 60, 30) + b"10.0.0.1\0" + b"10.0.0.2\0"),
    ([], b""),  # unknown name: Envoy reports a failure with size 0
])
def test_envoy_resolve_dns(tmp_path, answers, expected) -> None:  # type: ignore[no-untyped-def]
    wat = tmp_path / "dns.wat"
    wat.write_text(DNS_GUEST)
    plugin = Host(dns={"example.test": answers}).load_plugin(wat)
    mem = plugin.vm.runtime.memory()  # type: ignore[attr-defined]
    assert u32(mem, 100) == 2  # first DNS token
    assert len(plugin.logs) == 1  # envoy_on_resolve_dns ran once, after on_vm_start returned
    ptr, size = u32(mem, 200), u32(mem, 204)
    assert bytes(mem[ptr : ptr + size]) == expected
