"""Hostcalls for stream control, local replies, effective context, proxy_done and properties."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxywasm_host.core import properties
from proxywasm_host.core.hostcalls.shared import SharedCalls
from proxywasm_host.core.spec import hostcall
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import NOT_FOUND as _NOT_FOUND
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import (
    Status,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class StreamCalls(SharedCalls):
    """Stream control, local responses, context switches and properties."""


    # -- stream control -------------------------------------------------------------------
    @hostcall("proxy_continue_stream")
    def proxy_continue_stream(self, stream_type: int) -> int:
        if stream_type > 3:
            return _BAD_ARGUMENT
        return self.active.continue_stream(stream_type)

    @hostcall("proxy_close_stream")
    def proxy_close_stream(self, stream_type: int) -> int:
        if stream_type > 3:
            return _BAD_ARGUMENT
        return self.active.close_stream(stream_type)

    @hostcall("proxy_continue_request")
    def proxy_continue_request(self) -> int:
        return self.active.continue_stream(0)

    @hostcall("proxy_continue_response")
    def proxy_continue_response(self) -> int:
        return self.active.continue_stream(1)

    @hostcall("proxy_clear_route_cache")
    def proxy_clear_route_cache(self) -> int:
        return self.active.clear_route_cache()

    @hostcall("proxy_send_local_response")
    def proxy_send_local_response(
        self,
        status_code: int,
        details_ptr: int,
        details_len: int,
        body_ptr: int,
        body_len: int,
        headers_ptr: int,
        headers_len: int,
        grpc_status: int,
    ) -> int:
        details = self.read(details_ptr, details_len)
        body = self.read(body_ptr, body_len)
        headers = self.read_pairs(headers_ptr, headers_len)
        return self.active.send_local_response(status_code, details, body, headers, grpc_status)

    # -- context --------------------------------------------------------------------------
    @hostcall("proxy_set_effective_context")
    def proxy_set_effective_context(self, context_id: int) -> int:
        ctx = self.contexts.get(context_id)
        if ctx is None:
            return _BAD_ARGUMENT
        self.effective = None if context_id == 0 else ctx
        return _OK

    @hostcall("proxy_done")
    def proxy_done(self) -> int:
        root = self.active.root
        if root is None or not root.pending_done:
            return _NOT_FOUND
        root.pending_done = False
        self.deferred.append(lambda: self.delivery.root_done(root))
        return _OK

    @hostcall("proxy_get_status")
    def proxy_get_status(self, ret_code_ptr: int, ret_msg_ptr_ptr: int, ret_msg_size_ptr: int) -> int:
        root = self.active.root
        code, message = (root.status_code, root.status_message) if root is not None else (0, b"")
        self.write_u32(ret_code_ptr, code)
        return self.return_bytes(ret_msg_ptr_ptr, ret_msg_size_ptr, message)

    # -- properties -----------------------------------------------------------------------
    @hostcall("proxy_get_property")
    def proxy_get_property(self, path_ptr: int, path_len: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        raw = self.read(path_ptr, path_len)
        status, value = self.resolve_property(raw)
        if status != _OK:
            return status
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, value)

    def resolve_property(self, raw_path: bytes) -> tuple[Status, bytes]:
        return properties.lookup(self, self.active, raw_path)

    @hostcall("proxy_set_property")
    def proxy_set_property(self, path_ptr: int, path_len: int, val_ptr: int, val_len: int) -> int:
        path = self.read(path_ptr, path_len)
        value = self.read(val_ptr, val_len)
        return self.active.set_filter_state(b"wasm." + path, value)
