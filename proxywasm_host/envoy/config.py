"""Envoy bootstrap configuration for one plugin: listener, wasm filter, clusters, access log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxywasm_host.envoy.process import WASM_FILTER
from proxywasm_host.http.scenario import (
    PluginSpec,
    Scenario,
)


def _string_value(data: bytes) -> dict[str, str]:
    # A StringValue holds UTF-8 text; Envoy hands the module these bytes.
    return {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": data.decode("utf-8"),
    }


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


def plugin_config(plugin: PluginSpec) -> dict[str, Any]:
    """Envoy's ``PluginConfig`` for a plugin (its VM, root id, name and configurations): the
    ``config`` of the HTTP and network wasm filters and of the bootstrap wasm service."""
    vm_config: dict[str, Any] = {
        "runtime": "envoy.wasm.runtime.v8",
        "vm_id": plugin.vm_id,
        "code": {"local": {"filename": str(Path(plugin.wasm).resolve())}},
    }
    if plugin.vm_configuration:
        vm_config["configuration"] = _string_value(plugin.vm_configuration)
    config: dict[str, Any] = {
        "name": plugin.name,
        "root_id": plugin.root_id,
        "vm_config": vm_config,
    }
    if plugin.configuration:
        config["configuration"] = _string_value(plugin.configuration)
    return config


def wasm_filter_config(plugin: PluginSpec) -> dict[str, Any]:
    """The ``envoy.filters.http.wasm`` entry of ``http_filters`` for a plugin."""
    config = plugin_config(plugin)
    return {
        "name": WASM_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config,
        },
    }


@dataclass(frozen=True)
class HeaderToMetadata:
    """Envoy's built-in ``envoy.filters.http.header_to_metadata`` filter, placed before the
    wasm filter: when the request has ``header``, its value becomes the stream's dynamic
    metadata ``metadata.filter_metadata.<namespace>.<key>`` (a string), which the module
    reads with ``proxy_get_property``. ``remove`` also drops the header."""

    header: str
    namespace: str
    key: str
    remove: bool = False

    def envoy_filter(self) -> dict[str, Any]:
        return {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                "request_rules": [
                    {
                        "header": self.header,
                        "on_header_present": {"metadata_namespace": self.namespace, "key": self.key, "type": "STRING"},
                        "remove": self.remove,
                    }
                ],
            },
        }

    def value(self, headers: Sequence[tuple[str, str]]) -> str | None:
        """What the filter stores for these request headers (None: nothing). Envoy takes
        the first value of the header; an empty value sets nothing."""
        name = self.header.lower()
        for k, v in headers:
            if k.lower() == name:
                return v or None
        return None


@dataclass(frozen=True)
class Topology:
    """What surrounds the plugin under test on its listener, in front of its one route.

    * ``route_metadata``: the route's ``metadata.filter_metadata`` (namespace -> struct),
      what a module reads as ``xds.route_metadata.filter_metadata.<namespace>.<key>``
      (Envoy 1.40 answers NotFound for the older top-level ``route_metadata``).
    * ``header_to_metadata``: Envoy built-in filters that set dynamic metadata from request
      headers, before every wasm filter.
    * ``extra_plugins``: more wasm filters before the plugin under test, in this order.
      The same module with the same ``vm_id`` and VM configuration shares one VM with
      the plugin under test (each filter keeps its own root context); another ``vm_id``
      gets its own VM. Their logs are in :attr:`EnvoyExchange.log_lines`
      (:func:`~proxywasm_host.envoy.logs.filter_logs` with their spec picks them).
    """

    route_metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    header_to_metadata: tuple[HeaderToMetadata, ...] = ()
    extra_plugins: tuple[PluginSpec, ...] = ()

    def in_process_properties(self) -> dict[tuple[str, ...], Any]:
        """The plugin properties that give an in-process plugin the same route metadata."""
        if not self.route_metadata:
            return {}
        return {("xds", "route_metadata"): {"filter_metadata": {ns: dict(v) for ns, v in self.route_metadata.items()}}}

    def in_process_attributes(self, headers: Sequence[tuple[str, str]]) -> dict[tuple[str, ...], Any]:
        """The stream attributes the header_to_metadata filters would give this request."""
        spaces: dict[str, dict[str, str]] = {}
        for rule in self.header_to_metadata:
            value = rule.value(headers)
            if value is not None:
                spaces.setdefault(rule.namespace, {})[rule.key] = value
        return {("metadata",): {"filter_metadata": spaces}} if spaces else {}


# One JSON object per finished stream, on Envoy's stderr (written at once, unlike
# file access logs, which are flushed every --file-flush-interval-msec).
ACCESS_LOG_FORMAT = {
    "pwh_access": 1,
    "response_code": "%RESPONSE_CODE%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "response_flags": "%RESPONSE_FLAGS%",
    "protocol": "%PROTOCOL%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}


def render_envoy_config(
    scenario: Scenario | PluginSpec,
    *,
    listener_port: int,
    admin_port: int,
    upstream_port: int,
    http2: bool,
    access_log: bool = True,
    clusters: Mapping[str, int | str] | None = None,
    topology: Topology | None = None,
) -> dict[str, Any]:
    """A static bootstrap running the scenario's plugin in front of one upstream.

    ``http2`` selects the protocol Envoy speaks to the upstream (h2c prior
    knowledge when true -- needed for request/response trailers -- HTTP/1.1
    otherwise).  The listener accepts both (``codec_type: AUTO``).  Port 0
    for the listener or the admin lets the kernel choose;
    :class:`EnvoyProcess` finds out which.  Returns a dict: dump it as JSON
    (valid YAML too).

    ``access_log`` (an addition; default on) writes one JSON line per stream
    to Envoy's stderr (:data:`ACCESS_LOG_FORMAT`): the runner uses it to know
    when a stream is over and to read ``%RESPONSE_CODE_DETAILS%``.

    ``clusters`` (an addition) maps more cluster names to 127.0.0.1 ports:
    targets for the module's ``proxy_http_call`` (e.g. ``{"auth_cluster":
    8081}``).  They speak HTTP/1.1, Envoy's default for a cluster.  A value
    ``"grpc://host:port"`` declares an HTTP/2 cluster (what Envoy's gRPC
    client needs) for the module's ``proxy_grpc_call``/``proxy_grpc_stream``;
    ``"http://host:port"`` an HTTP/1.1 one on another host.

    ``topology`` (an addition): route metadata and more filters in front of the
    plugin (:class:`Topology`).
    """
    topo = topology or Topology()
    plugin = scenario.plugin if isinstance(scenario, Scenario) else scenario
    cluster: dict[str, Any] = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(upstream_port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [_route(topo)],
                }
            ],
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.stderr",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                    "log_format": {"json_format": ACCESS_LOG_FORMAT},
                },
            }
        ]
        if access_log
        else [],
        "http_filters": [
            *(rule.envoy_filter() for rule in topo.header_to_metadata),
            *(wasm_filter_config(extra) for extra in topo.extra_plugins),
            wasm_filter_config(plugin),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {"address": _socket_address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": _socket_address(listener_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster] + [_cluster_entry(name, target) for name, target in (clusters or {}).items()],
        },
    }


def _route(topology: Topology) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
    if topology.route_metadata:
        route["metadata"] = {"filter_metadata": {ns: dict(v) for ns, v in topology.route_metadata.items()}}
    return route


def _cluster_entry(name: str, target: int | str) -> dict[str, Any]:
    if isinstance(target, int):
        return _static_cluster(name, target)
    parts = urlsplit(target)
    if parts.scheme not in ("grpc", "http") or not parts.port:
        raise ValueError(f"cluster {name!r}: {target!r} is not a port, http://host:port or grpc://host:port")
    return _static_cluster(name, parts.port, address=parts.hostname or "127.0.0.1", http2=parts.scheme == "grpc")


def _static_cluster(name: str, port: int, *, address: str = "127.0.0.1", http2: bool = False) -> dict[str, Any]:
    if name == "upstream":
        raise ValueError("the cluster name 'upstream' is the route's own upstream; pick another name")
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": address, "port_value": int(port)}}}}]}],
        },
    }
    if http2:  # Envoy's gRPC client needs an HTTP/2 cluster
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


# --------------------------------------------------------------------------
# log parsing

# Envoy's default --log-format is "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v".
