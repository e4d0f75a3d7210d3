"""Contexts as the host sees them: the VM context, root contexts (one per plugin) and
stream contexts.  Pure state, no wasmtime (docs/abi-notes.md §7).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.higress import REDIS_CALL_RESPONSE
from proxywasm_host.core.types import BufferType, MapType, Status

if TYPE_CHECKING:
    from proxywasm_host.core.hostcalls.base import AbiHostBase as AbiHost
@dataclass(frozen=True)
class PluginConfig:
    """What Envoy's PluginConfig and VmConfig say about one plugin."""

    root_id: str = ""
    configuration: bytes = b""
    vm_configuration: bytes = b""
    vm_id: str = ""
    name: str = ""
    #: user-supplied properties: path (tuple of segments) -> value
    properties: Mapping[tuple[str, ...], Any] = field(default_factory=dict)
    #: what Envoy does after the VM failed: "fail_closed" (503), "fail_open" (skip the filter)
    #: or "fail_reload" (a fresh VM for the next stream)
    failure_policy: str = "fail_closed"


@mypyc_attr(allow_interpreted_subclasses=True)
class Context:
    """Base of every context: answers "not available" for everything stream-related."""

    kind = "vm"

    def __init__(self, host: AbiHost, context_id: int) -> None:
        self.host = host
        self.id = context_id
        self.created = False  # on_context_create delivered
        self.deleted = False

    @property
    def root(self) -> RootContext | None:
        return None

    # Header maps ---------------------------------------------------------------------
    def get_map(self, map_type: int, *, for_write: bool) -> tuple[Status, HeaderMap | None]:
        """The map a header hostcall works on, or the status Envoy returns instead."""
        root = self.root
        if root is not None and not for_write:
            if map_type in (MapType.HTTP_CALL_RESPONSE_HEADERS, MapType.HTTP_CALL_RESPONSE_TRAILERS):
                if root.http_call_response is not None:
                    headers, trailers = root.http_call_response
                    return Status.OK, headers if map_type == MapType.HTTP_CALL_RESPONSE_HEADERS else trailers
            elif map_type in (MapType.GRPC_CALL_INITIAL_METADATA, MapType.GRPC_CALL_TRAILING_METADATA):
                if root.grpc_metadata is not None and root.grpc_metadata[0] == map_type:
                    return Status.OK, root.grpc_metadata[1]
        return Status.BAD_ARGUMENT, None

    # Buffers -------------------------------------------------------------------------
    def get_buffer(self, buffer_type: int) -> tuple[Status, bytes | bytearray | None]:
        host = self.host
        if buffer_type == BufferType.VM_CONFIGURATION:
            root = self.root
            config = root.plugin.vm_configuration if root is not None else host.vm_configuration
            return Status.OK, config
        if buffer_type == BufferType.PLUGIN_CONFIGURATION:
            root = host.plugin_in_flight
            if root is not None:
                return Status.OK, root.plugin.configuration
            return Status.NOT_FOUND, None
        if buffer_type == BufferType.HTTP_CALL_RESPONSE_BODY:
            root = self.root
            if root is not None and root.http_call_body is not None:
                return Status.OK, root.http_call_body
            return Status.NOT_FOUND, None
        if buffer_type == BufferType.FOREIGN_FUNCTION_ARGUMENTS:
            if host.call_data is not None:
                return Status.OK, host.call_data
            return Status.NOT_FOUND, None
        if buffer_type == REDIS_CALL_RESPONSE and host.last_buffer_type == REDIS_CALL_RESPONSE:
            root = self.root
            if root is not None and root.redis_reply is not None:
                return Status.OK, root.redis_reply
            return Status.NOT_FOUND, None
        if buffer_type == BufferType.GRPC_CALL_MESSAGE:
            root = self.root
            if root is not None and root.grpc_message is not None:
                return Status.OK, root.grpc_message
            return Status.NOT_FOUND, None
        if buffer_type in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY):
            # Envoy hands out an empty buffer when no body is attached (docs/abi-notes.md §4.3).
            return Status.OK, b""
        return Status.NOT_FOUND, None

    def set_buffer(self, buffer_type: int, start: int, size: int, data: bytes) -> Status:
        if buffer_type in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY):
            return Status.NOT_FOUND
        if buffer_type in (
            BufferType.HTTP_CALL_RESPONSE_BODY,
            BufferType.GRPC_CALL_MESSAGE,
            BufferType.VM_CONFIGURATION,
            BufferType.PLUGIN_CONFIGURATION,
            BufferType.FOREIGN_FUNCTION_ARGUMENTS,
        ):
            status, _ = self.get_buffer(buffer_type)
            return Status.BAD_ARGUMENT if status == Status.OK else status
        return Status.NOT_FOUND

    # Stream control ------------------------------------------------------------------
    def continue_stream(self, stream_type: int) -> Status:
        return Status.OK if stream_type <= 2 else Status.UNIMPLEMENTED

    def close_stream(self, stream_type: int) -> Status:
        return Status.OK

    def send_local_response(
        self, status: int, details: bytes, body: bytes, headers: list[tuple[bytes, bytes]], grpc_status: int
    ) -> Status:
        return Status.OK  # Envoy: OK and nothing happens without an HTTP stream

    def clear_route_cache(self) -> Status:
        return Status.OK

    # Properties ----------------------------------------------------------------------
    def stream_property(self, segments: list[str]) -> tuple[bool, Any]:
        """Attributes only a stream has (request.*, response.*, ...)."""
        return False, None

    def set_filter_state(self, key: bytes, value: bytes) -> Status:
        return Status.NOT_FOUND  # no stream info (e.g. a root context)

    def filter_state(self, key: bytes) -> bytes | None:
        return None

    def set_envoy_filter_state(self, path: str, value: bytes, span: int) -> Status:
        """Envoy's ``set_envoy_filter_state`` foreign function; no stream info: NOT_FOUND."""
        return Status.NOT_FOUND

    def inject_encoded_data(self, data: bytes, end_stream: bool) -> Status:
        """Higress's proxy_inject_encoded_data_to_filter_chain; no HTTP stream: BAD_ARGUMENT."""
        return Status.BAD_ARGUMENT

    def set_upstream_override_host(self, host: str) -> Status:
        """Higress's proxy_set_upstream_override_host; no HTTP stream: BAD_ARGUMENT."""
        return Status.BAD_ARGUMENT


class RootContext(Context):
    """One per plugin: owns ticks, callouts and the plugin's configuration."""

    kind = "root"

    def __init__(self, host: AbiHost, context_id: int, plugin: PluginConfig) -> None:
        super().__init__(host, context_id)
        self.plugin = plugin
        self.tick_period_ms = 0
        self.next_tick_ns: int | None = None
        self.pending_done = False
        # set only during proxy_on_http_call_response
        self.http_call_response: tuple[HeaderMap, HeaderMap] | None = None
        self.http_call_body: bytes | None = None
        # set only during the proxy_on_grpc_* callbacks
        self.grpc_metadata: tuple[int, HeaderMap] | None = None
        self.grpc_message: bytes | None = None
        self.status_code = 0
        self.status_message = b""
        # set only during proxy_on_redis_call_response (Higress)
        self.redis_reply: bytes | None = None

    @property
    def root(self) -> RootContext:
        return self
