"""Hostcalls that read and write the stream's data: configuration, buffers and header maps."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.hostcalls.base import (
    _LAST_MAP_TYPE,
)
from proxywasm_host.core.hostcalls.streams import StreamCalls
from proxywasm_host.core.spec import hostcall
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import NOT_FOUND as _NOT_FOUND
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import (
    AbiVersion,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class DataCalls(StreamCalls):
    """Configuration, buffers and header maps."""


    # -- configuration / buffers ----------------------------------------------------------
    @hostcall("proxy_get_configuration")
    def proxy_get_configuration(self, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        root = self.plugin_in_flight
        data = root.plugin.configuration if root is not None else self.vm_configuration
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, data)

    @hostcall("proxy_get_buffer_bytes")
    def proxy_get_buffer_bytes(self, buffer_type: int, start: int, max_size: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        if buffer_type > self.last_buffer_type:
            return _BAD_ARGUMENT
        status, buf = self.active.get_buffer(buffer_type)
        if status != _OK or buf is None:
            return status
        size = len(buf)
        length = 0 if start > size else min(max_size, size - start)
        if length == size:  # the whole buffer (the usual read): no view to slice
            return self.return_bytes(ret_ptr_ptr, ret_size_ptr, buf)
        # an empty range is (0, 0) without an allocation, like an empty buffer
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, memoryview(buf)[start : start + length])

    @hostcall("proxy_get_buffer_status")
    def proxy_get_buffer_status(self, buffer_type: int, ret_size_ptr: int, ret_flags_ptr: int) -> int:
        if buffer_type > self.last_buffer_type:
            return _BAD_ARGUMENT
        status, buf = self.active.get_buffer(buffer_type)
        if status != _OK or buf is None:
            return status
        self.write_u32_pair(ret_size_ptr, len(buf), ret_flags_ptr, 0)
        return _OK

    @hostcall("proxy_set_buffer_bytes")
    def proxy_set_buffer_bytes(self, buffer_type: int, start: int, size: int, data_ptr: int, data_len: int) -> int:
        if buffer_type > self.last_buffer_type:
            return _BAD_ARGUMENT
        data = self.read(data_ptr, data_len)
        return self.active.set_buffer(buffer_type, start, size, data)

    # -- header maps ----------------------------------------------------------------------
    # The hot hostcalls of every filter.  They spell ``self.active`` out (a property call
    # per hostcall adds up) and compare against the plain-int constants above.
    @hostcall("proxy_get_header_map_pairs")
    def proxy_get_header_map_pairs(self, map_type: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        ctx = self.effective if self.effective is not None else self.current
        status, hmap = ctx.get_map(map_type, for_write=False)
        pairs = hmap.frozen_pairs() if (status == _OK and hmap is not None) else ()
        return self.return_pairs(ret_ptr_ptr, ret_size_ptr, pairs)

    @hostcall("proxy_set_header_map_pairs")
    def proxy_set_header_map_pairs(self, map_type: int, ptr: int, size: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        pairs = self.read_pairs(ptr, size)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.set_pairs(pairs)
        return _OK

    @hostcall("proxy_get_header_map_size")
    def proxy_get_header_map_size(self, map_type: int, ret_size_ptr: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        self.write_u32(ret_size_ptr, hmap.byte_size())
        return _OK

    @hostcall("proxy_get_header_map_value")
    def proxy_get_header_map_value(self, map_type: int, key_ptr: int, key_len: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        ctx = self.effective if self.effective is not None else self.current
        status, hmap = ctx.get_map(map_type, for_write=False)
        if status != _OK or hmap is None:
            if status == _NOT_FOUND:  # map gone for good (e.g. on_log)
                return self.return_bytes(ret_ptr_ptr, ret_size_ptr, b"") if self._legacy_abi() else _NOT_FOUND
            return status
        value = hmap.get(key)
        if value is None:
            if self._legacy_abi():  # ABI 0.1.0: a missing key is an empty value
                return self.return_bytes(ret_ptr_ptr, ret_size_ptr, b"")
            return _NOT_FOUND
        return self.return_bytes(ret_ptr_ptr, ret_size_ptr, value)

    def _legacy_abi(self) -> bool:
        return self.abi_version == AbiVersion.V0_1_0

    def _writable_map(self, map_type: int) -> HeaderMap | None:
        """The header map a mutating hostcall works on, or None (Envoy: BAD_ARGUMENT)."""
        ctx = self.effective if self.effective is not None else self.current
        status, hmap = ctx.get_map(map_type, for_write=True)
        return hmap if status == _OK else None

    # add/replace/remove: same checks in the same order (value, map type, key, map)
    @hostcall("proxy_add_header_map_value")
    def proxy_add_header_map_value(self, map_type: int, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
        value = self.read(val_ptr, val_len)
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.add(key, value)
        return _OK

    @hostcall("proxy_replace_header_map_value")
    def proxy_replace_header_map_value(self, map_type: int, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
        value = self.read(val_ptr, val_len)
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.replace(key, value)
        return _OK

    @hostcall("proxy_remove_header_map_value")
    def proxy_remove_header_map_value(self, map_type: int, key_ptr: int, key_len: int) -> int:
        if map_type > _LAST_MAP_TYPE:
            return _BAD_ARGUMENT
        key = self.read(key_ptr, key_len)
        hmap = self._writable_map(map_type)
        if hmap is None:
            return _BAD_ARGUMENT
        hmap.remove(key)
        return _OK
