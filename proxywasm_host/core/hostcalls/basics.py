"""Hostcalls for logging and time."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxywasm_host.core.guest import GuestMemoryError
from proxywasm_host.core.hostcalls.base import _CRITICAL, _LOG_LEVELS
from proxywasm_host.core.hostcalls.data import DataCalls
from proxywasm_host.core.spec import hostcall
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import OK as _OK


@mypyc_attr(allow_interpreted_subclasses=True)
class BasicCalls(DataCalls):
    """proxy_log, log level, time and tick period."""


    @hostcall("proxy_log")
    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        if level > _CRITICAL:
            return _BAD_ARGUMENT
        if level < self._log_level:  # filtered out: a bad pointer still fails, nothing is copied
            if size and ptr + size > len(self.guest.memory()):
                raise GuestMemoryError  # what read() checks
            return _OK
        self.emit_log(_LOG_LEVELS[level], self.read(ptr, size))
        return _OK

    @hostcall("proxy_get_log_level")
    def proxy_get_log_level(self, ret_ptr: int) -> int:
        self.write_u32(ret_ptr, int(self.log_level))
        return _OK

    # -- time -----------------------------------------------------------------------------
    @hostcall("proxy_get_current_time_nanoseconds")
    def proxy_get_current_time_nanoseconds(self, ret_ptr: int) -> int:
        self.write_u64(ret_ptr, self.clock.wall_ns)
        return _OK

    @hostcall("proxy_set_tick_period_milliseconds")
    def proxy_set_tick_period_milliseconds(self, period_ms: int) -> int:
        root = self.active.root
        if root is not None:
            root.tick_period_ms = period_ms
            root.next_tick_ns = self.clock.monotonic_ns + period_ms * 1_000_000 if period_ms else None
        return _OK
