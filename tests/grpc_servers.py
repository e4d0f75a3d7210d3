"""Real gRPC servers for tests (grpcio): the raw-bytes service ``pkg.Svc`` the probe
fixture calls, and a TCP black hole that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the gRPC tests need grpcio: pip install grpcio")


def _call(request: bytes, context: Any) -> bytes:
    """``pkg.Svc/Call``: ``pong:<message>``; ``fail`` -> PERMISSION_DENIED "nope"; ``slow...`` sleeps 2 s."""
    context.send_initial_metadata((("x-server", "py"),))
    if request == b"fail":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "nope")
    if request.startswith(b"slow"):
        time.sleep(2)
    context.set_trailing_metadata((("x-trailer", "t"),))
    return b"pong:" + request


def _stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    """``pkg.Svc/Stream``: ``echo:<message>`` for every message, then OK."""
    context.send_initial_metadata((("x-server", "py"),))
    for request in requests:
        yield b"echo:" + request
    context.set_trailing_metadata((("x-trailer", "t"),))


class GrpcServer:
    """``pkg.Svc`` on 127.0.0.1, a context manager; :attr:`url` is ``grpc://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler("pkg.Svc", {
            "Call": grpc.unary_unary_rpc_method_handler(_call),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream),
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcServer:
        self.server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop(0)


class BlackHole:
    """Accepts TCP connections and never answers (a gRPC server that does not respond)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def __enter__(self) -> BlackHole:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
