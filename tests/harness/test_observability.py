"""Hostcall trace, fault injection and strict mode, on real SDK filters."""

from __future__ import annotations

import pytest
from conftest import RUST_TARGETS, WAT, fixture_wasm

from proxywasm_host import FilterTrap, HarnessUsageError, Host, Status
from proxywasm_host.errors import UnexpectedHostcall

HELLO = fixture_wasm(f"hello_world-{RUST_TARGETS[0]}")
GET = {":authority": "example.com", ":path": "/"}


def test_trace_records_decoded_hostcalls() -> None:
    host = Host(trace=True)
    plugin = host.load_plugin(HELLO)
    plugin.http_stream().send_request_headers(GET, end_of_stream=True)
    trace = host.hostcall_trace
    names = [r.name for r in trace]
    assert "proxy_get_header_map_pairs" in names
    add = [r for r in trace if r.name == "proxy_add_header_map_value"]
    assert len(add) == 1
    assert add[0].args["key"] == b"x-hello" and add[0].args["val"] == b"Hello world from example.com"
    assert add[0].result == Status.OK and add[0].context_id == 2
    assert "proxy_add_header_map_value(map_type=0, key=b'x-hello', val=b'Hello world from example.com') -> OK" in str(add[0])


def test_trace_is_off_by_default() -> None:
    with pytest.raises(HarnessUsageError, match="Host\\(trace=True\\)"):
        _ = Host().hostcall_trace


def test_injected_fault_reaches_the_filter() -> None:
    host = Host(trace=True)
    plugin = host.load_plugin(HELLO)
    host.inject_fault("proxy_get_header_map_value", Status.NOT_FOUND)
    with pytest.raises(FilterTrap, match="unwrap"):
        plugin.http_stream().send_request_headers(GET, end_of_stream=True)
    assert [r for r in host.hostcall_trace if r.injected][0].name == "proxy_get_header_map_value"


def test_fault_counts_down() -> None:
    host = Host()
    plugin = host.load_plugin(WAT / "hostcall_probe.wat")
    host.inject_fault("proxy_log", Status.INTERNAL_FAILURE, times=2)
    results = [plugin.vm.call(plugin.root, "call_proxy_log", 2, 0, 0) for _ in range(3)]
    assert results == [Status.INTERNAL_FAILURE, Status.INTERNAL_FAILURE, Status.OK]
    with pytest.raises(HarnessUsageError, match="did you mean 'proxy_log'"):
        host.inject_fault("log", Status.OK)


def test_strict_mode_fails_on_unexpected_hostcalls() -> None:
    host = Host(allowed_hostcalls={"proxy_log", "proxy_get_header_map_pairs", "proxy_get_header_map_value"})
    plugin = host.load_plugin(HELLO)
    with pytest.raises(UnexpectedHostcall, match="unexpected hostcall proxy_add_header_map_value from context 2"):
        plugin.http_stream().send_request_headers(GET, end_of_stream=True)
    with pytest.raises(HarnessUsageError, match="unknown host functions"):
        Host(allowed_hostcalls={"proxy_frobnicate"})


def test_coverage_counts() -> None:
    counts: dict[str, int] = {}
    host = Host(coverage=counts)
    host.load_plugin(HELLO).http_stream().send_request_headers(GET, end_of_stream=True)
    assert counts["proxy_add_header_map_value"] == 1
    assert counts["proxy_get_header_map_pairs"] >= 1
