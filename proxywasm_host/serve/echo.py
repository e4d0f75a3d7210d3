"""The built-in echo upstream: an ASGI app with httpbin's most used endpoints (in-process or alone)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from proxywasm_host.net.asgi import run_lifespan
from proxywasm_host.net.httpserver import EXT_TRAILERS, HttpServer, Limits
from proxywasm_host.serve.config import canonical_header_name, text

__all__ = ["ECHO_DATA_LIMIT", "ECHO_TRAILERS_EXT", "bind", "echo_app", "run_echo"]

ECHO_TRAILERS_EXT = EXT_TRAILERS
#: largest body /bytes and /stream-bytes make
_ECHO_MAX_BYTES = 100 * 1024 * 1024
#: a request body up to this size is echoed as ``data`` (and ``json``); a larger one is counted
#: and hashed as it streams by (``data`` is null; ``body_length``/``body_sha256`` always say it)
ECHO_DATA_LIMIT = 1 << 20


def _echo_headers(scope: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        name = canonical_header_name(text(k))
        value = text(v)
        out[name] = f"{out[name]},{value}" if name in out else value
    return dict(sorted(out.items()))


async def echo_app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """httpbin's most used endpoints, enough to see what a filter did to a request:

    ``/headers`` ``{"headers": {...}}``; ``/get``, ``/post``, ``/put``, ``/patch``, ``/delete``,
    ``/anything[/...]`` ``{"args", "data", "headers", "method", "url"}`` (plus ``"trailers"`` when
    the request had some); ``/status/N``; ``/bytes/N``; ``/stream-bytes/N?chunk_size=K`` (N bytes
    in chunks of K, each its own body message); ``/delay/S`` (at most 10 s); ``/user-agent``;
    ``/trailers?name=value...`` (body ``ok``, those pairs as response trailers); ``/`` lists them.
    """
    if scope["type"] == "lifespan":
        await run_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = bytearray()
    length = 0
    digest = hashlib.sha256()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        length += len(chunk)
        digest.update(chunk)
        if length <= ECHO_DATA_LIMIT:
            body += chunk
        elif body:
            body = bytearray()  # too big to echo: only counted from here on
        if not message.get("more_body", False):
            break
    echoed = length <= ECHO_DATA_LIMIT
    path = scope["path"]
    query = text(scope.get("query_string", b""))
    args: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        args[k] = [*args[k], v] if isinstance(args.get(k), list) else ([args[k], v] if k in args else v)
    headers = _echo_headers(scope)
    host = headers.get("Host", "localhost")
    url = f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")
    trailers = (scope.get("extensions") or {}).get(ECHO_TRAILERS_EXT)
    parts = [p for p in path.split("/") if p]
    head = parts[0] if parts else ""

    def request_info() -> dict[str, Any]:
        info: dict[str, Any] = {
            "args": args,
            "data": body.decode("utf-8", "replace") if echoed else None,
            "body_length": length,
            "body_sha256": digest.hexdigest(),
            "headers": headers,
            "method": scope["method"],
            "url": url,
        }
        if trailers is not None:
            info["trailers"] = {canonical_header_name(k): v for k, v in trailers}
        try:
            info["json"] = json.loads(body) if body and echoed else None
        except ValueError:
            info["json"] = None
        return info

    try:
        if head == "headers" and len(parts) == 1:
            await _echo_send(send, 200, {"headers": headers})
        elif head in ("get", "post", "put", "patch", "delete", "anything") and (len(parts) == 1 or head == "anything"):
            await _echo_send(send, 200, request_info())
        elif head == "user-agent" and len(parts) == 1:
            await _echo_send(send, 200, {"user-agent": headers.get("User-Agent")})
        elif head == "status" and len(parts) == 2 and parts[1].isdigit() and 100 <= int(parts[1]) <= 599:
            await _echo_raw(send, int(parts[1]), [], [b""])
        elif head == "bytes" and len(parts) == 2 and parts[1].isdigit():
            n = min(int(parts[1]), _ECHO_MAX_BYTES)
            await _echo_raw(send, 200, [(b"content-type", b"application/octet-stream")], [_pattern(n)])
        elif head == "stream-bytes" and len(parts) == 2 and parts[1].isdigit():
            n = min(int(parts[1]), _ECHO_MAX_BYTES)
            size = max(1, int(args.get("chunk_size", 10240)) if str(args.get("chunk_size", "1")).isdigit() else 10240)
            data = _pattern(n)
            chunks = [data[i : i + size] for i in range(0, n, size)] or [b""]
            await _echo_raw(send, 200, [(b"content-type", b"application/octet-stream")], chunks, length=False)
        elif head == "delay" and len(parts) == 2:
            await asyncio.sleep(min(max(float(parts[1]), 0.0), 10.0))
            await _echo_send(send, 200, request_info())
        elif head == "trailers" and len(parts) == 1:
            pairs = [(k.lower().encode(), v.encode()) for k, v in parse_qsl(query, keep_blank_values=True)]
            await _echo_raw(send, 200, [(b"content-type", b"text/plain")], [b"ok\n"], trailers=pairs)
        elif not parts:
            await _echo_send(send, 200, {"endpoints": ["/headers", "/get", "/post", "/put", "/patch", "/delete",
                                                       "/anything", "/status/N", "/bytes/N", "/stream-bytes/N",
                                                       "/delay/S", "/user-agent", "/trailers?name=value"]})
        else:
            await _echo_send(send, 404, {"error": f"no such endpoint: {path}"})
    except ValueError:
        await _echo_send(send, 400, {"error": f"bad request for {path}"})


def _pattern(n: int) -> bytes:
    unit = bytes(range(97, 123))  # a..z
    return (unit * (n // len(unit) + 1))[:n]


async def _echo_send(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, obj: Any) -> None:
    data = (json.dumps(obj, indent=2) + "\n").encode()
    await _echo_raw(send, status, [(b"content-type", b"application/json")], [data])


async def _echo_raw(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    *,
    length: bool = True,
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if length:
        headers = [*headers, (b"content-length", str(sum(len(c) for c in chunks)).encode())]
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    if trailers:
        start["trailers"] = True
    await send(start)
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
    if trailers:
        await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


def run_echo(host: str = "127.0.0.1", port: int = 0, ready: Callable[[int], None] | None = None) -> None:
    """Serve :func:`echo_app` alone (the benchmark's upstream): ``python -m proxywasm_host.serve.echo``."""

    async def main() -> None:
        sockets = bind(host, port)
        bound = sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"echo upstream on http://{host}:{bound}", file=sys.stderr, flush=True)
        if ready is not None:
            ready(bound)
        await HttpServer(echo_app, limits=Limits(graceful_timeout=0.5)).serve(sockets, stop)

    asyncio.run(main())


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (``localhost``: 127.0.0.1 and ::1, same port)."""
    addrs: list[tuple[socket.AddressFamily, str]] = []
    if host == "localhost":
        addrs += [(socket.AddressFamily.AF_INET, "127.0.0.1"), (socket.AddressFamily.AF_INET6, "::1")]
    else:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        for info in infos:
            entry = (socket.AddressFamily(info[0]), str(info[4][0]))
            if entry not in addrs:
                addrs.append(entry)
        addrs = addrs[:1]
    sockets: list[socket.socket] = []
    for family, addr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            if not sockets:
                raise
            continue  # e.g. no IPv6 on this machine
        sockets.append(sock)
        port = sock.getsockname()[1]
    return sockets


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(prog="python -m proxywasm_host.serve.echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    run_echo(ns.host, ns.port)
