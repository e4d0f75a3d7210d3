"""Send a filter's gRPC call or stream to a real gRPC server and answer it with what the
server sent: used when a test maps a cluster to ``grpc://host:port``,
``Host(clusters={"grpc_cluster": "grpc://127.0.0.1:50051"})``.  Needs ``grpcio``
(``pip install grpcio``; in the ``test`` extra).

What the filter sees follows Envoy 1.40's gRPC client as measured (docs/conformance.md, issue 12 table):

* unary success: ``proxy_on_grpc_receive`` with the response message (no metadata
  callbacks); failure: ``proxy_on_grpc_close`` with the status, ``proxy_get_status``
  message ``<grpc-message>{via_upstream}``;
* no answer within the call's ``timeout_ms``: closed with UNAVAILABLE (14),
  ``upstream request timeout{response_timeout}``, as Envoy's own timer does (in Envoy a
  server that enforces the deadline it is sent can race that timer: 4 or 13 were seen);
* a stream is sent once the filter half-closed it (``proxy_grpc_send(..., end_stream=1)``
  or ``proxy_grpc_close``) with every message it sent, then the server's initial
  metadata, each message, the trailing metadata and the close are delivered in order
  (close message ``via_upstream`` when the server gave none).  A stream the filter never
  half-closes is not sent (answer it from a ``grpc_router`` instead).
"""

from __future__ import annotations

import importlib
import time
from typing import Any
from urllib.parse import urlsplit

from proxywasm_host.core.callouts import GrpcCall


def _grpc() -> Any:
    try:
        return importlib.import_module("grpc")  # (no type stubs: used as Any)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "a grpc:// cluster needs grpcio: pip install grpcio (or the test extra: pip install 'proxywasm-host[test]')"
        ) from exc


def _address(target: str) -> str:
    parts = urlsplit(target)
    if parts.scheme != "grpc" or not parts.hostname or not parts.port:
        raise ValueError(f"gRPC cluster URL {target!r}: expected grpc://host:port")
    return f"{parts.hostname}:{parts.port}"


def _message(details: str | None) -> str:
    """``proxy_get_status``'s message for a close the server sent (Envoy appends the
    response code details)."""
    return f"{details}{{via_upstream}}" if details else "via_upstream"


def _metadata(call: GrpcCall) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in call.initial_metadata if not k.startswith(":")]


def initial_metadata_as_envoy(custom: Any, elapsed_ms: int) -> list[tuple[str, str]]:
    """The server's initial metadata the way Envoy's gRPC client hands it to the filter: the
    response headers (``:status``, ``content-type``, grpcio's ``grpc-accept-encoding``),
    the server's own entries, then the router's ``x-envoy-upstream-service-time``."""
    out = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-accept-encoding", "identity, deflate, gzip")]
    out += [(str(k), v if isinstance(v, str) else bytes(v).decode("latin-1")) for k, v in (custom or ())]
    out.append(("x-envoy-upstream-service-time", str(elapsed_ms)))
    return out


def trailing_metadata_as_envoy(custom: Any, code: int, details: str | None) -> list[tuple[str, str]]:
    """The server's trailers as Envoy's gRPC client hands them over (grpcio server, measured):
    ``grpc-status``, ``grpc-message`` (also when empty), then the server's own entries."""
    out = [("grpc-status", str(code)), ("grpc-message", details or "")]
    out += [(str(k), v if isinstance(v, str) else bytes(v).decode("latin-1")) for k, v in (custom or ())]
    return out


def forward_grpc(call: GrpcCall, target: str) -> None:
    """Run ``call`` against the gRPC server at ``target`` (``grpc://host:port``) and deliver the
    answer into the filter.  Blocks until the server answered (or the deadline passed)."""
    grpc = _grpc()
    channel = grpc.insecure_channel(_address(target))
    path = f"/{call.service}/{call.method}"
    timeout = (call.timeout_ms & 0xFFFFFFFF) / 1000 if call.timeout_ms else None
    try:
        if not call.streaming:
            # The server gets the deadline (grpc-timeout) a little later than the call's own
            # timeout, which is kept here: no answer within timeout_ms is Envoy's own timer
            # (14 UNAVAILABLE, "upstream request timeout"), whatever the server does.
            future = channel.unary_unary(path).future(
                call.message, metadata=_metadata(call), timeout=None if timeout is None else timeout + 1.0
            )
            try:
                reply = future.result(timeout=timeout)
            except grpc.FutureTimeoutError:
                future.cancel()
                if call.pending:
                    call.time_out()
                return
            except grpc.RpcError as err:
                if call.pending:
                    call.close(int(err.code().value[0]), _message(err.details()))
                return
            if call.pending:
                call.respond(reply)
            return
        started = time.monotonic()
        responses = channel.stream_stream(path)(iter(list(call.sent_messages)), metadata=_metadata(call))
        try:
            initial = responses.initial_metadata()
            if call.pending:
                call.send_initial_metadata(initial_metadata_as_envoy(initial, int((time.monotonic() - started) * 1000)))
            for message in responses:
                if not call.pending:
                    return
                call.send_message(message)
        except grpc.RpcError:
            pass  # the status comes below
        code = int(responses.code().value[0])
        details = responses.details()
        if call.pending:
            call.send_trailing_metadata(trailing_metadata_as_envoy(responses.trailing_metadata(), code, details))
        if call.pending:
            call.close(code, _message(details))
    finally:
        channel.close()
