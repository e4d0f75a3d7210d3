"""VM-level services through a real Envoy: the module as ``envoy.bootstrap.wasm`` with
``singleton: true`` (its own VM on Envoy's main thread, a root context and no streams),
next to an HTTP listener whose ``envoy.filters.http.wasm`` plugin talks to it through
shared data and queues.  :func:`run_service_in_envoy` sends requests through the listener
and reports what reached the upstream and what each plugin logged.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field
from typing import Any

from proxywasm_host.envoy.config import plugin_config, render_envoy_config
from proxywasm_host.envoy.logs import filter_logs, parse_envoy_log
from proxywasm_host.envoy.process import EnvoyProcess
from proxywasm_host.http.scenario import HttpResponse, LogRecord, PluginSpec
from proxywasm_host.net.upstream import UpstreamServer


def wasm_service_config(plugin: PluginSpec, *, singleton: bool = True) -> dict[str, Any]:
    """The ``bootstrap_extensions`` entry running ``plugin`` as a VM-level service."""
    config = plugin_config(plugin)
    return {
        "name": "envoy.bootstrap.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
            "singleton": singleton,
            "config": config,
        },
    }


@dataclass
class ServiceRun:
    """Requests through an HTTP plugin next to a singleton service, as Envoy ran them."""

    upstream_headers: list[list[tuple[str, str]]]  # per request, what reached the upstream
    service_logs: list[LogRecord]
    http_logs: list[LogRecord]
    log: str = field(repr=False, default="")


def run_service_in_envoy(
    service: PluginSpec,
    http_plugin: PluginSpec,
    paths: list[str],
    *,
    gap: float = 0.2,
    settle: float = 0.5,
    envoy: str | None = None,
    startup_timeout: float = 30.0,
) -> ServiceRun:
    """Start Envoy with ``service`` as a singleton and ``http_plugin`` on the HTTP listener;
    send one GET per path (``gap`` seconds apart, so the service's queue notifications run
    in between); report the upstream's headers and the two plugins' logs."""
    upstream = UpstreamServer(HttpResponse())
    upstream.start()
    try:
        config = render_envoy_config(http_plugin, listener_port=0, admin_port=0, upstream_port=upstream.port, http2=False)
        config["bootstrap_extensions"] = [wasm_service_config(service)]
        with EnvoyProcess(config, envoy=envoy, startup_timeout=startup_timeout) as proc:
            for path in paths:
                conn = http.client.HTTPConnection("127.0.0.1", proc.listener_port, timeout=5)
                try:
                    conn.request("GET", path, headers={"host": "example.com"})
                    conn.getresponse().read()
                finally:
                    conn.close()
                time.sleep(gap)
            upstream.wait_for_requests(len(paths), timeout=5)
            time.sleep(settle)
            log = proc.read_log()
        lines = parse_envoy_log(log)
        return ServiceRun(
            upstream_headers=[list(r.headers) for r in upstream.requests],
            service_logs=filter_logs(lines, service),
            http_logs=filter_logs(lines, http_plugin),
            log=log,
        )
    finally:
        upstream.stop()
