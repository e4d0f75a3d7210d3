"""``proxy_get_property``: Envoy's attribute paths and value encodings (docs/abi-notes.md §6.2, §6.3, §10).

Resolution order as in Envoy: stream attributes (request.*, response.*,
source.*, destination.*, connection.*), then the Wasm tokens (plugin_name,
plugin_root_id, plugin_vm_id, connection_id), then user-supplied properties
and finally filter state written by ``proxy_set_property`` (key ``wasm.<path>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from proxywasm_host.core import codec
from proxywasm_host.core.types import Status

if TYPE_CHECKING:
    from proxywasm_host.core.context import Context
    from proxywasm_host.core.hostcalls.base import AbiHostBase as AbiHost
class Int(int):
    """Marks a value as Envoy ``int`` (int64) rather than ``uint``."""


class UInt(int):
    """Marks a value as Envoy ``uint``."""


class Timestamp(int):
    """Nanoseconds since the Unix epoch."""


class Duration(int):
    """Nanoseconds."""


def encode_value(value: Any) -> tuple[Status, bytes]:
    """Serialize a property value the way Envoy's ``serializeValue`` does."""
    if type(value) is str:  # the usual case (paths, header values, names) before the type ladder
        return Status.OK, value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):
        return Status.OK, codec.encode_bool(value)
    if isinstance(value, UInt):
        return Status.OK, codec.encode_uint(value)
    if isinstance(value, int):  # Int, Timestamp, Duration, plain int
        return Status.OK, codec.encode_int(value)
    if isinstance(value, float):
        return Status.OK, codec.encode_double(value)
    if isinstance(value, str):
        return Status.OK, value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Status.OK, bytes(value)
    if isinstance(value, Mapping):
        pairs = []
        for k, v in value.items():
            ks, kb = encode_value(k)
            vs, vb = encode_value(v)
            if ks != Status.OK or vs != Status.OK:
                return Status.SERIALIZATION_FAILURE, b""
            pairs.append((kb, vb))
        return Status.OK, codec.encode_map(pairs)
    if isinstance(value, (list, tuple)):
        items = []
        for v in value:
            vs, vb = encode_value(v)
            if vs != Status.OK:
                return Status.SERIALIZATION_FAILURE, b""
            items.append(vb)
        return Status.OK, codec.encode_list(items)
    return Status.SERIALIZATION_FAILURE, b""


def _navigate(value: Any, rest: list[str]) -> tuple[bool, Any]:
    for segment in rest:
        if isinstance(value, Mapping):
            if segment in value:
                value = value[segment]
                continue
            return False, None
        if isinstance(value, (list, tuple)):
            if segment.isdigit() and int(segment) < len(value):
                value = value[int(segment)]
                continue
            return False, None
        return False, None
    return True, value


_WASM_TOKENS = frozenset({"plugin_name", "plugin_root_id", "plugin_vm_id"})


def lookup(host: AbiHost, ctx: Context, raw_path: bytes) -> tuple[Status, bytes]:
    parts = codec.split_property_path(raw_path)
    try:  # without an error handler decode() takes a faster path; same text when it succeeds
        segments = [s.decode() for s in parts]
    except UnicodeDecodeError:
        segments = [s.decode("utf-8", "surrogateescape") for s in parts]
    if not segments:
        return Status.NOT_FOUND, b""
    if segments[0] == "filter_state" and len(segments) >= 2:
        # Envoy's filter_state attribute: an object set with set_envoy_filter_state (its
        # serialized bytes) or a wasm.* property written with proxy_set_property
        state = ctx.filter_state(segments[1].encode("utf-8", "surrogateescape"))
        if state is None or len(segments) > 2:
            return Status.NOT_FOUND, b""
        return Status.OK, bytes(state)
    found, value = ctx.stream_property(segments)
    if not found:
        root = ctx.root
        plugin = root.plugin if root is not None else None
        head = segments[0]
        if head in _WASM_TOKENS and len(segments) == 1:
            tokens: dict[str, Any] = {
                "plugin_name": plugin.name if plugin else "",
                "plugin_root_id": plugin.root_id if plugin else "",
                "plugin_vm_id": host.vm_id,
            }
            found, value = True, tokens[head]
        elif plugin is not None:
            # longest user-supplied path that prefixes the request (few keys: cheap for any path)
            for key in sorted(plugin.properties, key=len, reverse=True):
                if len(key) <= len(segments) and tuple(segments[: len(key)]) == key:
                    found, value = _navigate(plugin.properties[key], segments[len(key) :])
                    break
    if not found and len(segments) >= 1:
        state = ctx.filter_state(b"wasm." + raw_path.rstrip(b"\0"))
        if state is None:
            state = ctx.filter_state(b"wasm." + segments[0].encode("utf-8", "surrogateescape"))
        if state is not None:
            found, value = True, state
    if not found:
        return Status.NOT_FOUND, b""
    if value is None:
        return Status.SERIALIZATION_FAILURE, b""
    return encode_value(value)
