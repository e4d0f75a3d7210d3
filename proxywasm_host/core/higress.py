"""Higress's ABI extension (marker ``proxy_abi_version_0_2_100``; docs/abi-notes.md §2.1):
Redis calls a filter makes through the gateway, waiting for the test (or a real Redis) to
answer them, and the RESP framing needed to know where one reply ends.  Pure state;
delivery into the guest goes through the owning :class:`~proxywasm_host.core.vm.Vm`.

Signatures from the Higress Go SDK (github.com/higress-group/proxy-wasm-go-sdk,
``proxywasm/internal/abi_hostcalls.go`` and ``abi_callback_l7.go``):
``proxy_redis_init(upstream, username, password, timeout_ms)``,
``proxy_redis_call(upstream, query, *callout_id)`` with ``query`` a RESP command, and the
answer ``proxy_on_redis_call_response(plugin_context, callout_id, status, size)`` with the
reply (RESP bytes) readable as buffer type 9 during that callback only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proxywasm_host.errors import HarnessUsageError

#: buffer type of the Redis reply during proxy_on_redis_call_response (Higress)
REDIS_CALL_RESPONSE = 9


@dataclass
class RedisCall:
    """One ``proxy_redis_call``: the RESP query the filter sent, and how it ended."""

    token: int
    cluster: str
    query: bytes
    root_context_id: int
    context_id: int
    state: str = "pending"  # answered | failed | cancelled (its root was deleted)
    _deliver: Callable[[RedisCall, int, bytes], None] | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    @property
    def command(self) -> list[bytes]:
        """The query as a list of arguments (``[b"GET", b"key"]``); [] if it is not a RESP array."""
        value = parse_resp(self.query)
        if value is None or not isinstance(value[0], list):
            return []
        return [v for v in value[0] if isinstance(v, bytes)]

    def _finish(self, state: str) -> Callable[[RedisCall, int, bytes], None]:
        if not self.pending:
            raise HarnessUsageError(f"Redis call {self.token} to {self.cluster!r} was already {self.state}")
        assert self._deliver is not None
        self.state = state
        return self._deliver

    def respond(self, reply: bytes | str) -> None:
        """Answer with a raw RESP reply (``b"+PONG\\r\\n"``, ``b"$3\\r\\nbar\\r\\n"``): the filter's
        ``proxy_on_redis_call_response`` runs now with status 0."""
        data = reply.encode() if isinstance(reply, str) else bytes(reply)
        if resp_length(data) != len(data):
            raise HarnessUsageError(f"not one complete RESP reply: {data!r} (e.g. b'+OK\\r\\n', b'$3\\r\\nbar\\r\\n')")
        self._finish("answered")(self, 0, data)

    def fail(self, status: int = 1) -> None:
        """The call failed (network error, timeout): the callback gets ``status`` and no reply."""
        if status == 0:
            raise HarnessUsageError("fail() needs a non-zero status; answer with respond() instead")
        self._finish("failed")(self, status, b"")


def resp_length(data: bytes, start: int = 0) -> int | None:
    """Length of the one RESP value starting at ``start`` (incomplete: None)."""
    end = data.find(b"\r\n", start)
    if end < 0 or end == start:
        return None
    kind, line = data[start : start + 1], data[start + 1 : end]
    after = end + 2
    if kind in (b"+", b"-", b":", b"_", b",", b"#"):
        return after - start
    try:
        count = int(line)
    except ValueError:
        return None
    if kind in (b"$", b"!", b"="):
        if count < 0:
            return after - start
        stop = after + count + 2
        return stop - start if len(data) >= stop else None
    if kind in (b"*", b"%", b"~", b">"):
        pos = after
        for _ in range(max(count, 0) * (2 if kind == b"%" else 1)):
            n = resp_length(data, pos)
            if n is None:
                return None
            pos += n
        return pos - start
    return None


def parse_resp(data: bytes, start: int = 0) -> tuple[object, int] | None:
    """(value, length) of the RESP value at ``start``: bulk strings as bytes, arrays as lists."""
    n = resp_length(data, start)
    if n is None:
        return None
    kind = data[start : start + 1]
    end = data.find(b"\r\n", start)
    line = data[start + 1 : end]
    if kind == b"*":
        items, pos = [], end + 2
        for _ in range(max(int(line), 0)):
            item = parse_resp(data, pos)
            if item is None:
                return None
            items.append(item[0])
            pos += item[1]
        return items, n
    if kind == b"$":
        size = int(line)
        return (None if size < 0 else data[end + 2 : end + 2 + size]), n
    return line, n
