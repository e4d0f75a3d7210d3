"""Hostcalls that leave the stream: HTTP callouts, gRPC, foreign functions and Envoy's extras (DNS)."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from mypy_extensions import mypyc_attr

from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.filter_state import parse_filter_state_args
from proxywasm_host.core.hostcalls.higress import HigressCalls
from proxywasm_host.core.spec import MASK32, hostcall
from proxywasm_host.core.text import decode_pairs_text
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import NOT_FOUND as _NOT_FOUND
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import (
    Status,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class CalloutCalls(HigressCalls):
    """HTTP and gRPC callouts, foreign functions, DNS and the emscripten/pthread stubs."""


    # -- callouts (docs/abi-notes.md §5.6) --------------------------------------------------
    def cluster_known(self, name: str, hostcall: str = "proxy_http_call") -> bool:
        """Whether ``name`` is a cluster of this host: every name when no clusters were declared
        (the permissive mode), else only the declared ones.  A refused name is explained in
        :attr:`notices` (Envoy answers BAD_ARGUMENT for an HTTP call, PARSE_FAILURE for gRPC)."""
        if self.clusters is None or name in self.clusters:
            return True
        self.notices.append(
            f"{hostcall} to cluster {name!r}, which this host does not declare: refused as Envoy refuses "
            f"an unknown cluster. Declare it: Host(clusters={{{name!r}: None}}) to answer its calls from the "
            f"test, or {{{name!r}: 'http://host:port'}} / {{{name!r}: 'grpc://host:port'}} to send them to a real "
            "server (DifferentialRunner/compare: clusters={...}); Host(clusters=None) accepts every name"
        )
        return False

    @hostcall("proxy_http_call")
    def proxy_http_call(
        self,
        upstream_ptr: int,
        upstream_len: int,
        headers_ptr: int,
        headers_len: int,
        body_ptr: int,
        body_len: int,
        trailers_ptr: int,
        trailers_len: int,
        timeout_ms: int,
        ret_token_ptr: int,
    ) -> int:
        self.write_u32(ret_token_ptr, 0)
        cluster = self.read(upstream_ptr, upstream_len).decode("utf-8", "surrogateescape")
        headers = decode_pairs_text(self.read_pairs(headers_ptr, headers_len))
        body = self.read(body_ptr, body_len)
        trailers = decode_pairs_text(self.read_pairs(trailers_ptr, trailers_len))
        if timeout_ms & 0x80000000:  # Envoy reads it as a signed int: negative is refused
            return _BAD_ARGUMENT
        if not self.cluster_known(cluster):
            return _BAD_ARGUMENT
        names = {k.lower() for k, _ in headers}
        if not {":path", ":method", ":authority"} <= names:
            return _BAD_ARGUMENT
        root = self.active.root
        if root is None:
            return _BAD_ARGUMENT
        headers = [(k.lower(), v) for k, v in headers]
        if body:
            headers = [(k, v) for k, v in headers if k != "content-length"] + [("content-length", str(len(body)))]
        token = self._next_http_token
        self._next_http_token = (token + 4) & MASK32 or 4
        callout = HttpCallout(
            token, cluster, headers, body, trailers, timeout_ms, root.id, self.active.id, self.clock.monotonic_ns,
            _deliver=self.delivery.http_response,
        )
        self.http_callouts[token] = callout
        self.record_callout(callout)
        self.write_u32(ret_token_ptr, token)
        if self.on_http_callout is not None:
            self.deferred.append(lambda: self.on_http_callout(callout))  # type: ignore[misc]
        return _OK

    def _grpc_open(self, streaming: bool, up: tuple[int, int], svc: tuple[int, int], method: tuple[int, int],
                   md: tuple[int, int], message: bytes | None, timeout_ms: int, ret_token_ptr: int) -> int:
        cluster = self.read(*up).decode("utf-8", "surrogateescape")
        service = self.read(*svc).decode("utf-8", "surrogateescape")
        meth = self.read(*method).decode("utf-8", "surrogateescape")
        metadata = decode_pairs_text(self.read_pairs(*md))
        if not self.cluster_known(cluster, "proxy_grpc_stream" if streaming else "proxy_grpc_call"):
            return Status.PARSE_FAILURE
        root = self.active.root
        if root is None:
            return _BAD_ARGUMENT
        if streaming:
            token, self._next_grpc_stream = self._next_grpc_stream, self._next_grpc_stream + 4
        else:
            token, self._next_grpc_call = self._next_grpc_call, self._next_grpc_call + 4
        call = GrpcCall(token, streaming, cluster, service, meth, metadata, [message] if message is not None else [],
                        timeout_ms, root.id, self.active.id, dispatched_at_ns=self.clock.monotonic_ns,
                        _deliver=self.delivery.grpc_event)
        self.grpc_calls[token] = call
        self.record_callout(call)
        self.write_u32(ret_token_ptr, token)  # written only on success (Envoy)
        self._notify_grpc(call)
        return _OK

    def _notify_grpc(self, call: GrpcCall) -> None:
        hook = self.on_grpc_call
        if hook is not None:
            self.deferred.append(lambda: hook(call))

    @hostcall("proxy_grpc_call")
    def proxy_grpc_call(self, up_ptr: int, up_len: int, svc_ptr: int, svc_len: int, m_ptr: int, m_len: int, md_ptr: int, md_len: int, msg_ptr: int, msg_len: int, timeout_ms: int, ret_token_ptr: int) -> int:
        message = self.read(msg_ptr, msg_len)
        return self._grpc_open(False, (up_ptr, up_len), (svc_ptr, svc_len), (m_ptr, m_len), (md_ptr, md_len),
                               message, timeout_ms, ret_token_ptr)

    @hostcall("proxy_grpc_stream")
    def proxy_grpc_stream(self, up_ptr: int, up_len: int, svc_ptr: int, svc_len: int, m_ptr: int, m_len: int, md_ptr: int, md_len: int, ret_token_ptr: int) -> int:
        return self._grpc_open(True, (up_ptr, up_len), (svc_ptr, svc_len), (m_ptr, m_len), (md_ptr, md_len),
                               None, 0, ret_token_ptr)

    @hostcall("proxy_grpc_send")
    def proxy_grpc_send(self, token: int, msg_ptr: int, msg_len: int, end_stream: int) -> int:
        message = self.read(msg_ptr, msg_len)
        if token % 4 != 2:
            return _BAD_ARGUMENT
        call = self.grpc_calls.get(token)
        if call is None or call.state in ("cancelled", "closed"):
            return _NOT_FOUND
        call.sent_messages.append(message)
        if end_stream and not call.local_end_stream:
            call.local_end_stream = True
            self._notify_grpc(call)
        return _OK

    @hostcall("proxy_grpc_cancel")
    def proxy_grpc_cancel(self, token: int) -> int:
        if token % 4 not in (1, 2):
            return _BAD_ARGUMENT
        call = self.grpc_calls.get(token)
        if call is None or call.state in ("cancelled", "closed"):
            return _NOT_FOUND
        call.state = "cancelled"
        return _OK

    @hostcall("proxy_grpc_close")
    def proxy_grpc_close(self, token: int) -> int:
        if token % 4 not in (1, 2):
            return _BAD_ARGUMENT
        call = self.grpc_calls.get(token)
        if call is None or call.state in ("cancelled", "closed"):
            return _NOT_FOUND
        if call.streaming:
            if not call.local_end_stream:
                call.local_end_stream = True  # half-close: messages may still arrive
                self._notify_grpc(call)
        else:
            call.state = "cancelled"
        return _OK

    # -- foreign functions ----------------------------------------------------------------
    @hostcall("proxy_call_foreign_function")
    def proxy_call_foreign_function(self, name_ptr: int, name_len: int, args_ptr: int, args_len: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        name = self.read(name_ptr, name_len).decode("utf-8", "surrogateescape")
        args = self.read(args_ptr, args_len)
        fn = self.foreign_functions.get(name)
        observer = self.observer
        if observer is not None and observer.coverage is not None:
            key = f"foreign:{name}"
            observer.coverage[key] = observer.coverage.get(key, 0) + 1
        if fn is None and name == "set_envoy_filter_state":
            return self._set_envoy_filter_state(args, ret_ptr_ptr, ret_size_ptr)
        if fn is None:
            builtin = ENVOY_FOREIGN_FUNCTIONS.get(name)
            if builtin is None:
                return _NOT_FOUND
            status, result = builtin(args)
            if ret_ptr_ptr:  # Envoy writes the results pointers even on error
                self.return_bytes(ret_ptr_ptr, ret_size_ptr, result)
            return status
        result = fn(args) or b""
        if ret_ptr_ptr:
            return self.return_bytes(ret_ptr_ptr, ret_size_ptr, result)
        return _OK

    def _set_envoy_filter_state(self, args: bytes, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        """Envoy's ``set_envoy_filter_state``: protobuf SetEnvoyFilterStateArguments (path,
        value, span); unparsable: BAD_ARGUMENT; then the (effective) context's filter state."""
        parsed = parse_filter_state_args(args)
        status = _BAD_ARGUMENT if parsed is None else self.active.set_envoy_filter_state(*parsed)
        if ret_ptr_ptr:  # Envoy writes the (empty) results even on error
            self.return_bytes(ret_ptr_ptr, ret_size_ptr, b"")
        return status

    # -- Envoy / emscripten extras ---------------------------------------------------------
    @hostcall("envoy_resolve_dns")
    def envoy_resolve_dns(self, addr_ptr: int, addr_len: int, ret_token_ptr: int) -> int:
        """Envoy's DNS extension: answered after the guest call returns, from the test's
        ``dns`` table, with envoy_on_resolve_dns(root, token, size) (docs/abi-notes.md §5.10, §6.4)."""
        name = self.read(addr_ptr, addr_len).decode("utf-8", "surrogateescape")
        root = self.active.root
        if root is None:
            return _BAD_ARGUMENT
        token = self._next_dns_token
        self._next_dns_token = token + 1 if token + 1 <= MASK32 else 1
        self.write_u32(ret_token_ptr, token)
        answers = self.dns.get(name, [])
        self.deferred.append(lambda: self.delivery.dns_answers(root, token, answers))
        return _OK

    @hostcall("pthread_equal")
    def pthread_equal(self, a: int, b: int) -> int:
        return 1 if a == b else 0

    @hostcall("emscripten_notify_memory_growth")
    def emscripten_notify_memory_growth(self, index: int) -> None:
        return None


def _zlib(op: Callable[[bytes], bytes]) -> Callable[[bytes], tuple[Status, bytes]]:
    def run(data: bytes) -> tuple[Status, bytes]:
        try:
            return Status.OK, op(data)
        except zlib.error:
            return Status.SERIALIZATION_FAILURE, b""

    return run


#: foreign functions every Envoy registers (docs/abi-notes.md §8); a test's own functions win
ENVOY_FOREIGN_FUNCTIONS: dict[str, Callable[[bytes], tuple[Status, bytes]]] = {
    "compress": _zlib(zlib.compress),
    "uncompress": _zlib(zlib.decompress),
    "clear_route_cache": lambda _args: (Status.OK, b""),
}
