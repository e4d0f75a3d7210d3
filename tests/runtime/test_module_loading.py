"""Modules Envoy would refuse are refused here too, with a message naming the reason."""

from __future__ import annotations

import pytest
from conftest import WAT

from proxywasm_host import FilterTrap, Host, ModuleLoadError


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("not_proxy_wasm", "missing Proxy-Wasm ABI version"),
        ("unknown_abi", "unknown Proxy-Wasm ABI version 'proxy_abi_version_0_x_x'"),
        ("unknown_import", "env.proxy_make_coffee is not provided"),
        ("wrong_version_import", "env.proxy_get_log_level exists only in ABI 0.2.1, not in 0.2.0"),
        ("import_type_mismatch", "env.proxy_log has type ('i32', 'i32', 'i32')->() but the host provides"),
        ("bad_callback_signature", "bad function signature for proxy_on_request_headers"),
        ("no_allocator", "missing malloc function"),
    ],
)
def test_refused_modules(fixture: str, message: str) -> None:
    with pytest.raises(ModuleLoadError) as info:
        Host().load_plugin(WAT / f"{fixture}.wat")
    assert message in str(info.value)
    assert f"{fixture}.wat" in str(info.value)


def test_garbage_bytes() -> None:
    with pytest.raises(ModuleLoadError, match="not a valid WebAssembly module"):
        Host().load_plugin(b"\x00asm\x01\x00\x00\x00garbage")


def test_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModuleLoadError, match="cannot read"):
        Host().load_plugin(tmp_path / "nope.wasm")


def test_trap_names_callback_context_and_panic_message() -> None:
    plugin = Host().load_plugin(WAT / "trap_in_headers.wat")
    stream = plugin.http_stream()
    with pytest.raises(FilterTrap) as info:
        stream.send_request_headers({":path": "/"})
    err = info.value
    assert err.callback == "proxy_on_request_headers"
    assert err.context_id == stream.context_id == 2
    assert err.panic_message == "panicked at src/lib.rs:7:9: boom"
    assert "unreachable" in err.trap_message
    assert err.headline == "filter trapped in proxy_on_request_headers (context 2): panicked at src/lib.rs:7:9: boom"
    assert str(err).splitlines()[:2] == [
        "filter trapped in proxy_on_request_headers (context 2)", "  panicked at src/lib.rs:7:9: boom"]
    # Envoy (fail_open=false) answers the stream with 503 and sends no more callbacks.
    assert stream.local_response is not None and stream.local_response.status_code == 503
    assert stream.local_response.details == "wasm_fail_stream"
    assert stream.completed


def test_failed_vm_fails_later_streams_closed() -> None:
    plugin = Host().load_plugin(WAT / "trap_in_headers.wat")
    with pytest.raises(FilterTrap):
        plugin.http_stream().send_request_headers({":path": "/"})
    later = plugin.http_stream()
    assert later.send_request_headers({":path": "/"}) is None
    assert later.local_response is not None and later.local_response.status_code == 503
    assert later.upstream_request is None
