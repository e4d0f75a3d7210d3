"""Envoy filter state a wasm filter writes with the ``set_envoy_filter_state`` foreign
function (Envoy ``source/extensions/common/wasm/foreign.cc`` and ``context.cc``
``setEnvoyFilterState``; ``ext/set_envoy_filter_state.proto``)."""

from __future__ import annotations

from typing import Any

from proxywasm_host.core.types import Status


def _ip_port(value: bytes) -> bool:
    host, sep, port = value.decode("utf-8", "replace").rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536)


#: Envoy's filter-state object factories a wasm filter can name in set_envoy_filter_state
#: (registry key -> check of the bytes; None accepts any), from Envoy's "well known filter
#: state objects" (docs/root/configuration/advanced/well_known_filter_state.rst) and the
#: set_filter_state filter's generic "envoy.string". Unknown keys are NOT_FOUND.
ENVOY_FILTER_STATE_FACTORIES: dict[str, Any] = {
    "envoy.tcp_proxy.cluster": None,
    "envoy.udp_proxy.cluster": None,
    "envoy.network.upstream_server_name": None,
    "envoy.network.application_protocols": None,
    "envoy.network.upstream_subject_alt_names": None,
    "envoy.network.transport_socket.original_dst_address": _ip_port,
    "envoy.filters.listener.original_dst.local_ip": _ip_port,
    "envoy.tcp_proxy.per_connection_idle_timeout_ms": lambda b: b.isdigit(),
    "envoy.string": None,
}


def parse_filter_state_args(data: bytes) -> tuple[str, bytes, int] | None:
    """Protobuf ``SetEnvoyFilterStateArguments {string path = 1; string value = 2;
    LifeSpan span = 3;}``: (path, value, span), or None when it does not parse."""
    fields: dict[int, Any] = {1: b"", 2: b"", 3: 0}
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    try:
        while i < n:
            key = varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                value: Any = varint()
            elif wire == 2:
                size = varint()
                if i + size > n:
                    return None
                value, i = data[i : i + size], i + size
            elif wire == 1:
                i += 8
                value = None
            elif wire == 5:
                i += 4
                value = None
            else:
                return None
            if i > n:
                return None
            if number in (1, 2) and wire != 2 or number == 3 and wire != 0:
                return None  # a known field with the wrong wire type
            if number in fields:
                fields[number] = value
        path = fields[1].decode("utf-8")
        value_bytes = fields[2]
        value_bytes.decode("utf-8")  # proto3 strings must be UTF-8
    except (ValueError, UnicodeDecodeError):
        return None
    return path, bytes(value_bytes), int(fields[3])


def set_envoy_filter_state(store: dict[bytes, bytes], path: str, value: bytes) -> Status:
    """Envoy's Context::setEnvoyFilterState: the key names an object factory (unknown:
    NOT_FOUND), the factory makes the object from the bytes (refused: BAD_ARGUMENT)."""
    if path not in ENVOY_FILTER_STATE_FACTORIES:
        return Status.NOT_FOUND
    check = ENVOY_FILTER_STATE_FACTORIES[path]
    if check is not None and not check(value):
        return Status.BAD_ARGUMENT
    store[path.encode("utf-8")] = value
    return Status.OK


