"""Higress's host functions (ABI 0.2.100, docs/abi-notes.md §2.1): Redis calls and the
upstream-host extras, linked only for modules with Higress's marker."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxywasm_host.core.higress import RedisCall
from proxywasm_host.core.hostcalls.wasi import WasiCalls
from proxywasm_host.core.spec import MASK32, hostcall
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import Status


@mypyc_attr(allow_interpreted_subclasses=True)
class HigressCalls(WasiCalls):
    """proxy_redis_init / proxy_redis_call and Higress's upstream extras."""

    @hostcall("proxy_redis_init")
    def proxy_redis_init(
        self, up_ptr: int, up_len: int, user_ptr: int, user_len: int, pass_ptr: int, pass_len: int, timeout_ms: int
    ) -> int:
        """Set up a Redis cluster for proxy_redis_call: an unknown cluster is BAD_ARGUMENT
        (Higress's Envoy looks the cluster up in its cluster manager: inferred)."""
        cluster = self.read(up_ptr, up_len).decode("utf-8", "surrogateescape")
        username = self.read(user_ptr, user_len).decode("utf-8", "surrogateescape")
        password = self.read(pass_ptr, pass_len).decode("utf-8", "surrogateescape")
        if self.clusters is not None and cluster not in self.clusters:
            return _BAD_ARGUMENT
        self.redis_clusters[cluster] = (username, password, timeout_ms)
        return _OK

    @hostcall("proxy_redis_call")
    def proxy_redis_call(self, up_ptr: int, up_len: int, query_ptr: int, query_len: int, ret_token_ptr: int) -> int:
        """Send a RESP command to a cluster set up with proxy_redis_init (else BAD_ARGUMENT);
        the reply comes with proxy_on_redis_call_response on the root context."""
        cluster = self.read(up_ptr, up_len).decode("utf-8", "surrogateescape")
        query = self.read(query_ptr, query_len)
        root = self.active.root
        if cluster not in self.redis_clusters or root is None:
            return _BAD_ARGUMENT
        token = self._next_redis_token
        self._next_redis_token = (token + 4) & MASK32 or 7
        call = RedisCall(token, cluster, query, root.id, self.active.id, _deliver=self.delivery.redis_response)
        self.write_u32(ret_token_ptr, token)
        self.redis_calls[token] = call
        self.redis_history.append(call)
        if self.on_redis_call is not None:
            route = self.on_redis_call
            self.deferred.append(lambda: route(call))
        return _OK

    @hostcall("proxy_inject_encoded_data_to_filter_chain")
    def proxy_inject_encoded_data_to_filter_chain(self, body_ptr: int, body_len: int, end_stream: int) -> int:
        """Bytes for the client, after this filter (HTTP streams only; else BAD_ARGUMENT)."""
        data = self.read(body_ptr, body_len)
        return self.active.inject_encoded_data(data, bool(end_stream))

    @hostcall("proxy_get_upstream_hosts")
    def proxy_get_upstream_hosts(self, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        """Linked so Higress modules load; its reply format was not established: UNIMPLEMENTED."""
        return Status.UNIMPLEMENTED

    @hostcall("proxy_set_upstream_override_host")
    def proxy_set_upstream_override_host(self, host_ptr: int, host_len: int) -> int:
        """The host the upstream request should go to (HTTP streams; else BAD_ARGUMENT)."""
        host = self.read(host_ptr, host_len).decode("utf-8", "surrogateescape")
        return self.active.set_upstream_override_host(host)
