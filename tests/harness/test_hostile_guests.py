"""Guests that loop, trap or misbehave: the host stops them, reports them and applies
Envoy's failure policy; it never crashes."""

from __future__ import annotations

import time

import pytest
from conftest import WAT

from proxywasm_host import FilterTrap, Host

LOOP = """
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))
"""

GROW = """
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; grow by 16 MiB chunks until refused, then trap if refused
    (block $done
      (loop $more
        (br_if $done (i32.eq (memory.grow (i32.const 256)) (i32.const -1)))
        (br $more)))
    unreachable))
"""


def test_infinite_loop_stops_at_the_deadline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    wat = tmp_path / "loop.wat"
    wat.write_text(LOOP)
    plugin = Host(callback_deadline_s=0.3).load_plugin(wat)
    start = time.monotonic()
    with pytest.raises(FilterTrap, match="deadline exceeded: the callback ran longer than 0.3 s"):
        plugin.http_stream().send_request_headers({":path": "/"})
    assert time.monotonic() - start < 5


def test_memory_growth_stops_at_the_cap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    wat = tmp_path / "grow.wat"
    wat.write_text(GROW)
    plugin = Host(memory_limit_bytes=64 << 20).load_plugin(wat)
    with pytest.raises(FilterTrap, match="unreachable"):
        plugin.http_stream().send_request_headers({":path": "/"})
    assert len(plugin.vm.runtime.memory()) <= 64 << 20  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "fail_reload"])
def test_failure_policies(policy: str) -> None:
    host = Host(raise_on_trap=False)
    plugin = host.load_plugin(WAT / "trap_in_headers.wat", failure_policy=policy)
    first = plugin.http_stream()
    first.send_request_headers({":path": "/"}, end_of_stream=True)
    assert len(plugin.traps) == 1 and plugin.traps[0].callback == "proxy_on_request_headers"
    later = plugin.http_stream()
    later.send_request_headers({":path": "/later"}, end_of_stream=True)
    if policy == "fail_closed":
        for s in (first, later):
            assert s.upstream_request is None
            assert s.downstream_response is not None and s.downstream_response.status == 503
            assert s.local_response is not None and s.local_response.details == "wasm_fail_stream"
    elif policy == "fail_open":
        # the trapping callback counts as Continue and later streams skip the filter
        for s in (first, later):
            assert s.upstream_request is not None
        later.send_response_headers({":status": "200"}, end_of_stream=True)
        assert later.downstream_response is not None and later.downstream_response.status == 200
    else:
        # a fresh VM ran the later stream (and trapped again: the module is the same)
        assert plugin.reloads == 1
        assert len(plugin.traps) == 2
        assert later.context_id == 2  # context ids start again in the new VM


def test_bad_failure_policy_is_a_usage_error() -> None:
    from proxywasm_host import HarnessUsageError

    with pytest.raises(HarnessUsageError, match="failure_policy must be"):
        Host().load_plugin(WAT / "callback_recorder.wat", failure_policy="fail_sometimes")


CREATE_TRAP = """
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  ;; the root (parent 0) is created fine; a stream context (parent = root) traps
  (func (export "proxy_on_context_create") (param i32 i32)
    (if (local.get 1) (then unreachable))))
"""


def test_trap_while_creating_a_stream_context_fails_the_stream_closed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    wat = tmp_path / "create.wat"
    wat.write_text(CREATE_TRAP)
    plugin = Host().load_plugin(wat)
    stream = plugin.http_stream()
    with pytest.raises(FilterTrap) as info:
        stream.send_request_headers({":path": "/"}, end_of_stream=True)
    assert info.value.callback == "proxy_on_context_create"
    assert stream.local_response is not None and stream.local_response.status_code == 503
    assert stream.upstream_request is None and stream.completed
