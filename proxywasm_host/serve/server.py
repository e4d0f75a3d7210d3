"""``proxywasm-host serve``: a real local HTTP proxy that runs every request through a filter.

    proxywasm-host serve FILTER.wasm [--port 8080] [--upstream URL] [--cluster NAME=URL]...

hypercorn (ASGI) speaks HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge or upgrade) on
the listening socket; each request becomes one :class:`~proxywasm_host.harness.host.HttpStream`
of the same in-process host the harness uses, fed event by event as the bytes arrive:

    request headers → request body chunks → request trailers   (client → filter → upstream)
    response headers → response body chunks → response trailers (upstream → filter → client)

What the filter forwards goes on at once (bodies are streamed, not collected, unless the filter
buffers them); a paused stream waits until the filter resumes it from a tick (ticks run on the
real clock), from an HTTP callout's answer (callouts go to the real URLs of ``--cluster``) or
from another stream; local replies, ``proxy_close_stream`` and traps (503, Envoy's fail-closed)
are honoured.  The upstream is ``--upstream URL`` (through aiohttp) or, by default, a built-in
echo upstream in the same process whose ``/headers`` answers the request headers it received as
JSON, like httpbin.

Everything that touches the filter runs on the asyncio loop's thread: the harness is
synchronous and not thread-safe, and no filter call awaits anything.  See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.observer import LogEntry
from proxywasm_host.core.types import LogLevel
from proxywasm_host.errors import FilterTrap, HarnessUsageError
from proxywasm_host.harness.host import Host, HttpStream, Plugin
from proxywasm_host.net.asgi import run_lifespan

__all__ = ["ServeConfig", "FilterServer", "echo_app", "serve", "parse_cluster"]

#: headers a proxy never forwards (RFC 9110 §7.6.1); Envoy removes them before the filters
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
#: bytes a stream may hold (buffered by the filter, or not yet sent on) before it is failed;
#: Envoy's default per_connection_buffer_limit_bytes
DEFAULT_BUFFER_LIMIT = 1 << 20
SERVER_NAME = "proxywasm-host"

_LEVELS = {lv.label: lv for lv in LogLevel}


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _raw(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def parse_cluster(text: str) -> tuple[str, str]:
    """``NAME=URL`` → (name, url); the URL must be ``http://host:port[/prefix]``."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise ValueError(f"expected NAME=URL, got {text!r}")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"cluster {name!r}: {url!r} is not an http://host[:port] URL")
    return name, url.rstrip("/")


def canonical_header_name(name: str) -> str:
    """``x-request-id`` → ``X-Request-Id`` (how httpbin shows header names)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


# ---------------------------------------------------------------------------------------------
# the built-in echo upstream (an ASGI app: runs in-process, or on its own under hypercorn)
# ---------------------------------------------------------------------------------------------

ECHO_TRAILERS_EXT = "proxywasm.request_trailers"  # same key upstream.py's hypercorn hooks use
_ECHO_MAX_BYTES = 100 * 1024 * 1024


def _echo_headers(scope: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        name = canonical_header_name(_text(k))
        value = _text(v)
        out[name] = f"{out[name]},{value}" if name in out else value
    return dict(sorted(out.items()))


async def echo_app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
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
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > _ECHO_MAX_BYTES:
            await _echo_send(send, 413, {"error": "request body too large"})
            return
        if not message.get("more_body", False):
            break
    path = scope["path"]
    query = _text(scope.get("query_string", b""))
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
            "data": body.decode("utf-8", "replace"),
            "headers": headers,
            "method": scope["method"],
            "url": url,
        }
        if trailers is not None:
            info["trailers"] = {canonical_header_name(k): v for k, v in trailers}
        try:
            info["json"] = json.loads(body) if body else None
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


async def _echo_send(send: Callable[[dict], Awaitable[None]], status: int, obj: Any) -> None:
    data = (json.dumps(obj, indent=2) + "\n").encode()
    await _echo_raw(send, status, [(b"content-type", b"application/json")], [data])


async def _echo_raw(
    send: Callable[[dict], Awaitable[None]],
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


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class ServeConfig:
    """Everything ``proxywasm-host serve`` takes (see ``proxywasm-host serve --help``)."""

    wasm: Path | str | bytes
    host: str = "localhost"
    port: int = 8080
    upstream: str | None = None  # None: the built-in echo upstream
    clusters: dict[str, str] = field(default_factory=dict)
    root_id: str = ""
    vm_id: str = ""
    configuration: bytes = b""
    vm_configuration: bytes = b""
    failure_policy: str = "fail_closed"
    log_level: str = "info"
    access_log: bool = False
    upstream_timeout: float = 15.0  # Envoy's default route timeout
    idle_timeout: float = 300.0  # Envoy's default stream_idle_timeout
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    graceful_timeout: float = 5.0
    environment: dict[str, str] = field(default_factory=dict)
    callback_deadline_s: float = 10.0


def _log_level(name: str) -> LogLevel:
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(_LEVELS)}") from None


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------


class FilterServer:
    """One loaded filter behind hypercorn; :meth:`app` is the ASGI application.

    Create it, then ``await server.serve(shutdown_event)`` (or use :func:`serve`, which binds
    the sockets and installs the signal handlers)."""

    def __init__(self, config: ServeConfig, *, out: Any = None) -> None:
        self.config = config
        self.out = out if out is not None else sys.stderr
        self.level = _log_level(config.log_level)
        # callouts are sent asynchronously on the server's loop (the router runs from vm.flush())
        host = Host(
            start_time_ns=time.time_ns(),
            callout_router=self._dispatch_callout,
            log_level=self.level,
            clusters=dict(config.clusters),
            raise_on_trap=False,
            callback_deadline_s=config.callback_deadline_s,
        )
        self.host = host
        self._mono0 = time.monotonic_ns()
        self._clock0 = host.clock.monotonic_ns
        self.plugin: Plugin = host.load_plugin(
            config.wasm,
            root_id=config.root_id,
            vm_id=config.vm_id,
            configuration=config.configuration,
            vm_configuration=config.vm_configuration,
            failure_policy=config.failure_policy,
            environment=config.environment,
        )
        self.name = config.root_id or (Path(config.wasm).stem if isinstance(config.wasm, (str, Path)) else "filter")
        self.active: set[_Exchange] = set()
        self.waiting: set[_Exchange] = set()
        self.stats = {"requests": 0, "local_replies": 0, "fail_closed": 0, "upstream_errors": 0, "bad_requests": 0}
        self._traps_seen = 0
        self._client: Any = None  # aiohttp.ClientSession, created on the loop
        self._tasks: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self.drain_logs()

    # -- logging ------------------------------------------------------------------------------
    def log(self, level: str, message: str, *, source: str = SERVER_NAME) -> None:
        if _LEVELS.get(level, LogLevel.INFO) < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        try:
            self.out.write(f"[{stamp}][{level}][{source}] {message}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def drain_logs(self) -> None:
        """Print what the filter logged since last time, and forget it (the server runs for
        long: the VM's log list must not grow)."""
        for vm in {self.plugin.vm}:
            logs: list[LogEntry] = vm.host.logs
            if logs:
                entries = logs[:]
                del logs[:]
                for e in entries:
                    where = f"{self.name} ctx={e.context_id}" if e.context_id else self.name
                    tag = "" if e.source == "proxy_log" else f" ({e.source})"
                    self.log(e.level.label, f"[{where}]{tag} {e.message.rstrip()}", source="wasm")
            if vm.host.host_errors:
                errors = vm.host.host_errors[:]
                del vm.host.host_errors[:]
                for text in errors:
                    self.log("error", f"[{self.name}] host: {text}", source="wasm")
        traps = self.plugin.traps
        while self._traps_seen < len(traps):
            trap = traps[self._traps_seen]
            self._traps_seen += 1
            summary = str(trap).splitlines()[0]
            self.log("critical", f"[{self.name}] filter trapped: {summary} (failure policy "
                                 f"{self.config.failure_policy})", source="wasm")

    # -- running filter code -------------------------------------------------------------------
    def sync_clock(self) -> None:
        """Move the host's clock to real time; fires the ticks and callout timeouts now due."""
        host = self.host
        behind = (time.monotonic_ns() - self._mono0) - (host.clock.monotonic_ns - self._clock0)
        if behind > 0:
            try:
                host.advance_time(behind / 1e6)
            except FilterTrap:
                pass  # a tick trapped: the VM is failed, reported by drain_logs

    def filter_call(self, fn: Callable[[], Any], exchange: _Exchange | None = None) -> Any:
        """Run ``fn`` (a call into the filter) with the clock synced; then print its logs and
        move on every stream it may have resumed."""
        self.sync_clock()
        result = None
        try:
            result = fn()
        except FilterTrap:
            pass  # root callback trapped (stream traps follow the failure policy instead)
        except HarnessUsageError as exc:
            self.log("error", f"[{self.name}] {exc}")
        self.after_filter_work(exchange)
        return result

    def after_filter_work(self, exchange: _Exchange | None = None) -> None:
        self.drain_logs()
        if exchange is not None:
            exchange.pump()
            for other in list(self.waiting):
                if other is not exchange:
                    other.pump()
        else:
            for other in list(self.active):
                other.pump()

    async def _tick_loop(self) -> None:
        """Real-time ticks: keep the virtual clock on the wall clock."""
        while True:
            self.sync_clock()
            self.after_filter_work()
            self._close_grpc_calls()
            self._trim_history()
            delay = 0.05
            for vm in {self.plugin.vm}:
                if vm.failed is None:
                    tick = vm.next_tick()
                    if tick is not None:
                        delay = min(delay, max(0.001, (tick[0] - self.host.clock.monotonic_ns) / 1e9))
            await asyncio.sleep(delay)

    def _trim_history(self) -> None:
        history = self.plugin.vm.host.callout_history
        if len(history) > 64:
            history[:] = [c for c in history if (c.pending if isinstance(c, HttpCallout) else c.state not in ("closed", "cancelled"))]

    def _close_grpc_calls(self) -> None:
        """gRPC callouts have no real transport here: answer UNAVAILABLE, as Envoy does for a
        cluster it cannot reach."""
        for call in list(self.plugin.vm.host.grpc_calls.values()):
            if isinstance(call, GrpcCall) and call.state not in ("closed", "cancelled"):
                self.log("warn", f"[{self.name}] gRPC callout {call.service}/{call.method} to {call.cluster!r}: "
                                 "serve has no gRPC transport; closing it with 14 UNAVAILABLE")
                self.filter_call(lambda call=call: call.close(14, "serve does not forward gRPC callouts"))

    # -- callouts ------------------------------------------------------------------------------
    def _dispatch_callout(self, callout: HttpCallout) -> None:
        url = self.config.clusters.get(callout.cluster)
        if url is None:
            return
        self.spawn(self._forward_callout(callout, url))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward_callout(self, callout: HttpCallout, base: str) -> None:
        import aiohttp

        method, path, headers = callout.http_request()
        timeout = aiohttp.ClientTimeout(total=callout.timeout_ms / 1000 if callout.timeout_ms else None, connect=5.0)
        parts = urlsplit(base)
        url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"
        try:
            async with self.client.request(method, url, headers=headers, data=callout.body or None,
                                           timeout=timeout) as response:
                body = await response.read()
                status = response.status
                raw_headers = response.raw_headers
        except asyncio.TimeoutError:
            if callout.pending:
                self.filter_call(callout.time_out)
            return
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.log("warn", f"[{self.name}] callout to {callout.cluster} ({url}) failed: {exc!r}")
            if callout.pending:
                self.filter_call(callout.fail)
            return
        if not callout.pending:
            return  # timed out meanwhile (the clock is real time)
        pairs = [(_text(k).lower(), _text(v)) for k, v in raw_headers if _text(k).lower() not in HOP_BY_HOP]
        self.filter_call(lambda: callout.respond(status, pairs, body))

    @property
    def client(self) -> Any:
        """The aiohttp session for upstream requests and callouts (httpx was 50x slower at 50
        concurrent requests: its connection pool degrades with concurrency)."""
        if self._client is None:
            import aiohttp

            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, force_close=False),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self.config.upstream_timeout),
                trust_env=False,
            )
        return self._client

    # -- ASGI ------------------------------------------------------------------------------------
    async def app(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self._ticker is None:
            self._ticker = self.spawn(self._tick_loop())
        exchange = _Exchange(self, scope, receive, send)
        await exchange.run()

    async def start(self) -> None:
        """Start the real-time ticker (also started by the first request)."""
        if self._ticker is None:
            self._ticker = self.spawn(self._tick_loop())

    async def close(self) -> None:
        """Stop the ticker, close the upstream client, shut the plugin down (on_done)."""
        if self._ticker is not None:
            self._ticker.cancel()
        for ex in list(self.active):
            ex.abort("server shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self.plugin.vm.failed is None and not self.plugin.root.deleted:
            done = self.filter_call(self.plugin.shutdown)
            deadline = time.monotonic() + 1.0
            while done is False and not self.plugin.root.deleted and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the root asked to finish later (proxy_done from a tick)
                self.sync_clock()
                self.drain_logs()
        self.drain_logs()


# ---------------------------------------------------------------------------------------------
# one request
# ---------------------------------------------------------------------------------------------


class _UpstreamFailure(Exception):
    def __init__(self, status: int, body: str, details: str):
        super().__init__(body)
        self.status, self.body, self.details = status, body, details


class _Exchange:
    """One request/response through the filter: ASGI on one side, the upstream on the other."""

    def __init__(self, server: FilterServer, scope: dict, receive: Callable, send: Callable) -> None:
        self.server = server
        self.scope = scope
        self.receive = receive
        self.send = send
        self.h2 = scope.get("http_version") == "2"
        self.stream: HttpStream | None = None
        self.ctx: Any = None
        self.started_at = time.monotonic()
        # upstream leg
        self.up_task: asyncio.Task | None = None
        self.up_queue: deque[bytes | None] = deque()
        self.up_event = asyncio.Event()
        self.up_pending = 0
        self.up_drained = asyncio.Event()
        self.up_sent = 0
        self.up_eos = False
        self.up_trailers: list[tuple[str, str]] | None = None
        self.up_started_at = 0.0
        # downstream
        self.down: deque[dict] = deque()
        self.down_pending = 0
        self.down_drained = asyncio.Event()
        self.wake = asyncio.Event()
        self.down_started = False
        self.down_sent = 0
        self.down_done = False
        self.want_trailers = False
        self.status = 0
        self.aborted: str | None = None
        self.reader: asyncio.Task | None = None
        self.last_activity = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # -- request side ----------------------------------------------------------------------------
    def _filter_headers(self) -> list[tuple[str, str]] | tuple[int, str]:
        """The request headers as Envoy's HCM hands them to the filters (docs/envoy-backend.md),
        or (status, reason) for a request Envoy would refuse."""
        scope = self.scope
        version = scope.get("http_version", "1.1")
        if version == "1.0":
            return 426, "HTTP/1.0 is not accepted (Envoy's default: accept_http_10 false)"
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = _text(raw_path) + (("?" + _text(scope["query_string"])) if scope.get("query_string") else "")
        if method == "CONNECT":
            return 405, "CONNECT is not supported"
        if not target.startswith("/"):
            return 400, f"request target {target!r} is not an absolute path"
        regular: list[tuple[str, str]] = []
        authority = None
        raw_h2 = (scope.get("extensions") or {}).get("proxywasm.raw_request_headers")
        for k, v in scope["headers"]:
            name, value = _text(k).lower(), _text(v)
            if name == "host":
                if authority is None:
                    authority = value
                continue
            if name in HOP_BY_HOP:
                continue
            if name == "te" and value.lower() != "trailers":
                continue
            regular.append((name, value))
        pseudo: list[tuple[str, str]]
        if self.h2 and raw_h2:
            pseudo = [(k, v) for k, v in raw_h2 if k.startswith(":")]
            if not any(k == ":scheme" for k, _ in pseudo):
                pseudo.append((":scheme", scope.get("scheme", "http")))
            if not any(k == ":authority" for k, _ in pseudo):
                pseudo.insert(0, (":authority", authority or ""))
        else:
            if authority is None:
                return 400, "missing Host header"
            pseudo = [(":authority", authority), (":path", target), (":method", method), (":scheme", scope.get("scheme", "http"))]
        headers = pseudo + regular
        if not any(k == "x-forwarded-proto" for k, _ in regular):
            headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        if not any(k == "x-request-id" for k, _ in regular):
            headers.append(("x-request-id", str(uuid.uuid4())))
        return headers

    def _request_has_no_body(self) -> bool:
        if self.h2:
            return False  # known only from the first ASGI message
        names = {_text(k).lower(): _text(v) for k, v in self.scope["headers"]}
        if "transfer-encoding" in names:
            return False
        return names.get("content-length", "0").strip() in ("", "0")

    def _attributes(self) -> dict[Any, Any]:
        from proxywasm_host.core.properties import Int

        attrs: dict[Any, Any] = {("request", "protocol"): "HTTP/2" if self.h2 else "HTTP/1.1"}
        client, server = self.scope.get("client"), self.scope.get("server")
        if client:
            attrs[("source", "address")] = f"{client[0]}:{client[1]}"
            attrs[("source", "port")] = Int(int(client[1]))
        if server and server[1] is not None:
            attrs[("destination", "address")] = f"{server[0]}:{server[1]}"
            attrs[("destination", "port")] = Int(int(server[1]))
        return attrs

    async def run(self) -> None:
        server = self.server
        server.stats["requests"] += 1
        headers = self._filter_headers()
        if isinstance(headers, tuple):
            server.stats["bad_requests"] += 1
            await self._plain(headers[0], headers[1])
            return
        first: dict | None = None
        if self._request_has_no_body():
            eos = True
        else:
            # end_of_stream on the headers is known with the first body event (HTTP/2, or a body)
            try:
                first = await asyncio.wait_for(self.receive(), timeout=server.config.idle_timeout)
            except asyncio.TimeoutError:
                await self._plain(408, "stream timeout")
                return
            if first["type"] == "http.disconnect":
                return  # gone before the request started: no stream, as in Envoy
            eos = not first.get("more_body", False) and not first.get("body") and self._request_trailers() is None
        try:
            self.stream = server.plugin.http_stream(attributes=self._attributes())
        except HarnessUsageError as exc:
            await self._plain(503, str(exc))
            return
        self.ctx = self.stream.context
        self.want_trailers = self.h2 and any(k == "te" and v.lower() == "trailers" for k, v in headers)
        server.active.add(self)
        try:
            stream = self.stream
            server.filter_call(lambda: stream.send_request_headers(headers, end_of_stream=eos), self)
            if first is not None and not eos:
                self._request_message(first)
                more = first.get("more_body", False)
            else:
                more = False
            self.reader = asyncio.get_running_loop().create_task(self._read_request(more))
            await self._send_loop()
        finally:
            await self._finish()

    def _request_trailers(self) -> list[tuple[str, str]] | None:
        trailers = (self.scope.get("extensions") or {}).get(ECHO_TRAILERS_EXT)
        return None if trailers is None else [(k.lower(), v) for k, v in trailers]

    def _request_message(self, message: dict) -> None:
        """Deliver one ASGI request-body message to the filter."""
        self.last_activity = time.monotonic()
        if self.ctx.completed or self.aborted:
            return
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        trailers = None if more else self._request_trailers()
        stream = self.stream
        assert stream is not None
        if self.ctx.request.end_received:
            return
        if chunk or (not more and trailers is None):
            self.server.filter_call(lambda: stream.send_request_body(chunk, end_of_stream=not more and trailers is None), self)
        if trailers is not None and not self.ctx.completed and not self.ctx.request.end_received:
            self.server.filter_call(lambda: stream.send_request_trailers(trailers), self)
        if len(self.ctx.request.buffer) > self.server.config.buffer_limit and not self.down_started:
            self._fail_locally(413, "request payload too large (the filter buffered more than the buffer limit)")

    async def _read_request(self, more: bool) -> None:
        """Feed the request body as it arrives; afterwards watch for the client going away."""
        try:
            while more:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.abort("client disconnected")
                    return
                self._request_message(message)
                more = message.get("more_body", False)
                while self.up_pending > self.server.config.buffer_limit and not self.aborted and not self.down_done:
                    self.up_drained.clear()
                    await self.up_drained.wait()
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if not self.down_done:
                        self.abort("client disconnected")
                    return
        except asyncio.CancelledError:
            pass

    # -- the filter's output -> upstream / downstream ------------------------------------------------
    def pump(self) -> None:
        """Move on whatever the filter released since last time (sync; called after every
        filter call)."""
        ctx = self.ctx
        if ctx is None:
            return
        req, resp = ctx.request, ctx.response
        if ctx.reset:
            self.abort("the filter reset the stream")
            return
        if ctx.local_response is not None and self.up_task is not None and not self.up_task.done():
            self.up_task.cancel()  # a local reply ends the upstream request
        # request side
        if self.up_task is None and req.forwarded_headers is not None and ctx.local_response is None and not self.aborted:
            self.up_started_at = time.monotonic()
            self.up_task = asyncio.get_running_loop().create_task(self._upstream(req.forwarded_headers.items()))
        if self.up_task is not None and not self.up_eos:
            chunk = self.stream.take_request_body()  # type: ignore[union-attr]
            if chunk:
                self.up_sent += len(chunk)
                self.up_queue.append(chunk)
                self.up_pending += len(chunk)
                self.up_event.set()
            if req.end_forwarded:
                if req.forwarded_trailers is not None:
                    self.up_trailers = req.forwarded_trailers.items()
                self.up_eos = True
                self.up_queue.append(None)
                self.up_event.set()
        # response side
        if resp.forwarded_headers is not None and not self.down_started:
            self.down_started = True
            self.status = int(resp.forwarded_headers.value(":status", "0") or 0)
            if ctx.local_response is not None:
                self.server.stats["local_replies"] += 1
                if ctx.local_response.details == "wasm_fail_stream":
                    self.server.stats["fail_closed"] += 1
            headers = []
            for k, v in resp.forwarded_headers.pairs():
                name = k.lower()
                if name.startswith(b":") or _text(name) in HOP_BY_HOP or name == b"server":
                    continue
                headers.append((name, v))
            headers.append((b"server", SERVER_NAME.encode()))
            start: dict[str, Any] = {"type": "http.response.start", "status": self.status or 502, "headers": headers}
            if self.want_trailers:
                start["trailers"] = True
            self._down_append(start)
        if self.down_started and not self.down_done:
            chunk = self.stream.take_response_body()  # type: ignore[union-attr]
            if chunk:
                self.down_sent += len(chunk)
                self._down_append({"type": "http.response.body", "body": chunk, "more_body": True})
            if resp.end_forwarded or ctx.completed:
                self.down_done = True
                self._down_append({"type": "http.response.body", "body": b"", "more_body": False})
                if self.want_trailers:
                    pairs = [(k.lower(), v) for k, v in resp.forwarded_trailers.pairs()] if resp.forwarded_trailers is not None else []
                    self._down_append({"type": "http.response.trailers", "headers": pairs, "more_trailers": False})
                elif resp.forwarded_trailers is not None and len(resp.forwarded_trailers):
                    self.server.log("debug", f"[{self.server.name} ctx={ctx.id}] response trailers dropped: "
                                             "the client did not ask for them (HTTP/1.1, or no te: trailers)")
        if ctx.completed and not self.down_started and not self.aborted:
            self.abort("the stream ended without a response")
        stopped = req.stopped is not None or resp.stopped is not None
        if stopped and not ctx.completed:
            self.server.waiting.add(self)
        else:
            self.server.waiting.discard(self)
        if len(resp.buffer) > self.server.config.buffer_limit and not ctx.completed:
            self._fail_locally(500, "response too large for the buffer limit (the filter buffered it)")

    def _down_append(self, message: dict) -> None:
        self.last_activity = time.monotonic()
        self.down.append(message)
        self.down_pending += len(message.get("body", b""))
        self.wake.set()

    def abort(self, reason: str) -> None:
        if self.aborted:
            return
        self.aborted = reason
        if self.up_task is not None and not self.up_task.done():
            self.up_task.cancel()
        self.server.waiting.discard(self)
        self.wake.set()
        self.up_drained.set()
        self.down_drained.set()

    def _fail_locally(self, status: int, reason: str) -> None:
        """A failure of the proxy itself (not of the filter): answer directly, end the stream."""
        self.server.log("warn", f"[{self.server.name} ctx={self.ctx.id}] {reason}")
        if not self.down_started:
            self.down_started = True
            self.status = status
            body = (reason + "\n").encode()
            self._down_append({"type": "http.response.start", "status": status,
                               "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                                           (b"server", SERVER_NAME.encode())]})
            self._down_append({"type": "http.response.body", "body": body, "more_body": False})
            self.down_done = True
            if self.up_task is not None and not self.up_task.done():
                self.up_task.cancel()
        else:
            self.abort(reason)
        if not self.ctx.completed:
            self.server.filter_call(self.ctx.complete)

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        idle = self.server.config.idle_timeout
        self.last_activity = time.monotonic()
        self._timer = loop.call_later(idle, self._idle_check)
        try:
            while True:
                while self.down:
                    message = self.down.popleft()
                    self.down_pending -= len(message.get("body", b""))
                    await self.send(message)
                self.down_drained.set()
                if self.aborted or (self.down_done and not self.down):
                    return
                self.wake.clear()
                await self.wake.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None

    def _idle_check(self) -> None:
        """Envoy's stream idle timeout: nothing moved for ``idle_timeout`` seconds."""
        idle = self.server.config.idle_timeout
        quiet = time.monotonic() - self.last_activity
        self._timer = None
        if self.down_done or self.aborted:
            return
        if quiet < idle:
            self._timer = asyncio.get_running_loop().call_later(idle - quiet, self._idle_check)
            return
        if not self.down_started:
            self.server.log("warn", f"[{self.server.name} ctx={self.ctx.id}] stream idle for {idle:g} s: 408")
            self._fail_locally(408, "stream timeout")
        else:
            self.abort(f"stream idle for {idle:g} s")

    async def _finish(self) -> None:
        server = self.server
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        if self.up_task is not None and not self.up_task.done():
            self.up_task.cancel()
        server.active.discard(self)
        server.waiting.discard(self)
        if self.ctx is not None and not self.ctx.completed:
            server.filter_call(self.ctx.complete)  # client gone / aborted: on_log, on_done, on_delete
        if self.ctx is not None:
            # Envoy cancels the HTTP callouts of a destroyed stream context (Context::onDestroy):
            # their answers never reach the filter
            callouts = server.plugin.vm.host.http_callouts
            for token, callout in list(callouts.items()):
                if callout.context_id == self.ctx.id and callout.pending:
                    callouts.pop(token, None)
                    callout.state = "cancelled"
        if self.stream is not None:
            try:
                server.plugin.streams.remove(self.stream)
            except ValueError:
                pass
        if server.config.access_log:
            took = (time.monotonic() - self.started_at) * 1000
            line = f'"{self.scope["method"]} {self.scope["path"]} HTTP/{self.scope.get("http_version")}" {self.status or "-"}'
            if self.aborted:
                line += f" aborted ({self.aborted})"
            server.log("info", f"{line} {took:.1f} ms", source="access")
        if self.aborted and self.down_started and not self.down_done:
            raise ConnectionAbortedError(self.aborted)  # hypercorn closes the connection / stream

    async def _plain(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.status = status
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                                     (b"server", SERVER_NAME.encode())]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    # -- the upstream leg ------------------------------------------------------------------------------
    async def _request_body(self) -> Any:
        while True:
            while not self.up_queue:
                self.up_event.clear()
                await self.up_event.wait()
            chunk = self.up_queue.popleft()
            if chunk is None:
                return
            self.up_pending -= len(chunk)
            self.up_drained.set()
            yield chunk

    async def _upstream(self, headers: list[tuple[str, str]]) -> None:
        try:
            if self.server.config.upstream is None:
                await self._echo_upstream(headers)
            else:
                await self._http_upstream(headers)
        except asyncio.CancelledError:
            raise
        except _UpstreamFailure as failure:
            self.server.stats["upstream_errors"] += 1
            self._router_reply(failure.status, failure.body)
        except Exception as exc:  # noqa: BLE001 - any upstream failure is the client's 503
            self.server.stats["upstream_errors"] += 1
            self.server.log("warn", f"[{self.server.name} ctx={self.ctx.id}] upstream failed: {exc!r}")
            self._router_reply(503, "upstream connect error or disconnect/reset before headers. "
                                    f"reset reason: {type(exc).__name__}")

    def _router_reply(self, status: int, text: str) -> None:
        """The router's own reply when the upstream fails (Envoy: it runs through the filter's
        encoder callbacks like a response)."""
        ctx, stream = self.ctx, self.stream
        if ctx.completed or self.aborted or ctx.local_response is not None:
            return
        if ctx.response.headers_received:
            self.abort(f"upstream failed mid-response: {text}")
            return
        body = text.encode()
        headers = [(":status", str(status)), ("content-length", str(len(body))), ("content-type", "text/plain")]
        self.server.filter_call(lambda: stream.send_response_headers(headers, end_of_stream=False), self)
        if not ctx.completed and not ctx.response.end_received:
            self.server.filter_call(lambda: stream.send_response_body(body, end_of_stream=True), self)

    def _upstream_headers(self, status: int, headers: list[tuple[str, str]], eos: bool) -> None:
        ctx, stream = self.ctx, self.stream
        if ctx.completed or self.aborted or ctx.local_response is not None:
            return
        took = int((time.monotonic() - self.up_started_at) * 1000)
        pairs = [(":status", str(status))] + [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        pairs.append(("x-envoy-upstream-service-time", str(took)))
        self.server.filter_call(lambda: stream.send_response_headers(pairs, end_of_stream=eos), self)

    def _upstream_body(self, chunk: bytes, eos: bool) -> None:
        ctx, stream = self.ctx, self.stream
        if ctx.completed or self.aborted or ctx.local_response is not None or ctx.response.end_received:
            return
        self.server.filter_call(lambda: stream.send_response_body(chunk, end_of_stream=eos), self)

    def _upstream_trailers(self, pairs: list[tuple[str, str]]) -> None:
        ctx, stream = self.ctx, self.stream
        if ctx.completed or self.aborted or ctx.local_response is not None or ctx.response.end_received:
            return
        self.server.filter_call(lambda: stream.send_response_trailers(pairs), self)

    async def _down_room(self) -> None:
        while self.down_pending > self.server.config.buffer_limit and not self.aborted:
            self.down_drained.clear()
            await self.down_drained.wait()

    @property
    def _upstream_gone(self) -> bool:
        return self.ctx.completed or bool(self.aborted) or self.ctx.local_response is not None

    async def _echo_upstream(self, headers: list[tuple[str, str]]) -> None:
        """Call :func:`echo_app` in-process, as an ASGI server would."""
        values = dict((k, v) for k, v in reversed(headers))
        target = values.get(":path", "/")
        path, _, query = target.partition("?")
        from urllib.parse import unquote

        scope_headers = [(b"host", _raw(values.get(":authority", "")))] + [
            (_raw(k), _raw(v)) for k, v in headers if not k.startswith(":")
        ]
        scope_headers.append((b"x-envoy-expected-rq-timeout-ms", str(int(self.server.config.upstream_timeout * 1000)).encode()))
        extensions: dict[str, Any] = {"http.response.trailers": {}}
        scope = {"type": "http", "http_version": "1.1", "method": values.get(":method", "GET"),
                 "scheme": values.get(":scheme", "http"), "path": unquote(path), "raw_path": _raw(path),
                 "query_string": _raw(query), "headers": scope_headers, "extensions": extensions}
        body_iter = self._request_body()
        status_holder: dict[str, Any] = {}

        async def receive() -> dict:
            try:
                chunk = await body_iter.__anext__()
            except StopAsyncIteration:
                if self.up_trailers is not None:
                    extensions[ECHO_TRAILERS_EXT] = list(self.up_trailers)
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: dict) -> None:
            if self._upstream_gone:
                return
            kind = message["type"]
            if kind == "http.response.start":
                status_holder["start"] = message
            elif kind == "http.response.body":
                start = status_holder.pop("start", None)
                more = message.get("more_body", False)
                trailers_follow = bool(status_holder.get("trailers_declared"))
                if start is not None:
                    status_holder["trailers_declared"] = trailers_follow = bool(start.get("trailers"))
                    hdrs = [(_text(k).lower(), _text(v)) for k, v in start.get("headers", [])]
                    body = message.get("body", b"")
                    eos_on_headers = not more and not body and not trailers_follow
                    self._upstream_headers(int(start["status"]), hdrs, eos_on_headers)
                    if eos_on_headers:
                        return
                if message.get("body") or not more:
                    self._upstream_body(message.get("body", b""), not more and not trailers_follow)
                await self._down_room()
            elif kind == "http.response.trailers":
                pairs = [(_text(k).lower(), _text(v)) for k, v in message.get("headers", [])]
                if pairs:
                    self._upstream_trailers(pairs)
                else:
                    self._upstream_body(b"", True)

        await echo_app(scope, receive, send)

    async def _http_upstream(self, headers: list[tuple[str, str]]) -> None:
        import aiohttp

        config = self.server.config
        values = dict((k, v) for k, v in reversed(headers))
        base = urlsplit(config.upstream or "")
        target = values.get(":path", "/")
        method = values.get(":method", "GET")
        url = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{target}"
        out = [("host", values.get(":authority", "") or base.netloc)]
        out += [(k, v) for k, v in headers if not k.startswith(":") and k != "host"]
        out.append(("x-envoy-expected-rq-timeout-ms", str(int(config.upstream_timeout * 1000))))
        content: Any = None
        if self.up_eos and self.up_trailers is None:
            # the whole body is known already: send it with its length
            content = b"".join(c for c in self.up_queue if c is not None) or None
            self.up_queue.clear()
            self.up_pending = 0
            self.up_drained.set()
        elif self.up_sent or not self.up_eos:
            content = self._request_body()
        if self.up_trailers:
            self.server.log("debug", f"[{self.server.name} ctx={self.ctx.id}] request trailers not sent: "
                                     "the HTTP client library cannot send trailers")
        try:
            response = await self.server.client.request(method, url, headers=out, data=content, allow_redirects=False,
                                                        compress=None, chunked=None)
        except asyncio.TimeoutError:
            raise _UpstreamFailure(504, "upstream request timeout", "upstream_response_timeout") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _UpstreamFailure(503, "upstream connect error or disconnect/reset before headers. "
                                        f"reset reason: connection failure ({exc})",
                                   "upstream_reset_before_response_started") from None
        try:
            pairs = [(_text(k).lower(), _text(v)) for k, v in response.raw_headers]
            length = response.headers.get("content-length")
            status = response.status
            eos = method == "HEAD" or status in (204, 304) or (length is not None and length.strip() == "0")
            self._upstream_headers(status, pairs, eos)
            if eos:
                return
            expected = int(length) if length is not None and length.strip().isdigit() else None
            received = 0
            async for chunk in response.content.iter_any():
                if self._upstream_gone:
                    return
                received += len(chunk)
                last = expected is not None and received >= expected
                self._upstream_body(chunk, last)
                if last:
                    return
                await self._down_room()
            self._upstream_body(b"", True)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            if self.ctx.response.headers_received:
                self.abort(f"upstream failed mid-response: {exc!r}")
            else:
                raise _UpstreamFailure(504, "upstream request timeout", "upstream_response_timeout") from None
        finally:
            response.release()


# ---------------------------------------------------------------------------------------------
# process entry point
# ---------------------------------------------------------------------------------------------


_SERVE_MARK = "_proxywasm_serve"
_h2_hook_installed = False


def _install_h2_hook() -> None:
    """hypercorn + h2 cannot end an HTTP/2 stream with an empty trailers block, which a
    response that declared trailers (the client sent ``te: trailers``) may end up with when the
    upstream and the filter add none: such a block is dropped, so the stream ends with an empty
    DATA frame instead.  Only for servers started here (a marker on the hypercorn Config)."""
    global _h2_hook_installed
    if _h2_hook_installed:
        return
    from hypercorn.protocol.events import Trailers
    from hypercorn.protocol.h2 import H2Protocol

    original = H2Protocol.stream_send

    async def stream_send(self: Any, event: Any) -> None:
        if isinstance(event, Trailers) and not event.headers and getattr(self.config, _SERVE_MARK, False):
            return
        await original(self, event)

    H2Protocol.stream_send = stream_send  # type: ignore[method-assign]
    _h2_hook_installed = True


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (``localhost``: 127.0.0.1 and ::1, same port)."""
    addrs: list[tuple[int, str]]
    if host == "localhost":
        addrs = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    else:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addrs = []
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr[0]) not in addrs:
                addrs.append((family, sockaddr[0]))
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
        except OSError:
            sock.close()
            if not sockets:
                raise
            continue  # e.g. no IPv6 on this machine
        sockets.append(sock)
        port = sock.getsockname()[1]
    return sockets


async def serve(config: ServeConfig, *, ready: Callable[[int, FilterServer], None] | None = None,
                shutdown: asyncio.Event | None = None, out: Any = None) -> FilterServer:
    """Load the filter, listen, serve until SIGINT/SIGTERM (or ``shutdown`` is set), shut down.

    ``ready(port, server)`` is called once listening; ``out`` replaces stderr for the log."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from proxywasm_host.net.upstream import _MARK, _install_hooks

    server = FilterServer(config, out=out)
    _install_hooks()  # request trailers (h1 chunked, h2) and raw h2 pseudo-headers into the scope
    _install_h2_hook()
    sockets = _bind(config.host, config.port)
    port = sockets[0].getsockname()[1]
    hc = Config()
    hc.bind = [f"fd://{sock.detach()}" for sock in sockets]
    hc.include_server_header = False
    hc.graceful_timeout = config.graceful_timeout
    hc.keep_alive_timeout = 60
    hc.accesslog = None
    hc.errorlog = _HypercornErrors.logger(server)
    setattr(hc, _MARK, True)
    setattr(hc, _SERVE_MARK, True)
    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            server.log("info", f"{signal.Signals(signum).name}: shutting down (again to force)")
            stop.set()
        else:
            os._exit(130)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    upstream = config.upstream or "the built-in echo upstream"
    server.log("info", f"serving {config.wasm if not isinstance(config.wasm, bytes) else 'filter'} "
                       f"(ABI {server.plugin.abi_version}) on http://{shown_host}:{port} (HTTP/1.1 and h2c) "
                       f"-> {upstream}")
    await server.start()
    if ready is not None:
        ready(port, server)
    try:
        await hypercorn_serve(server.app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.close()
        s = server.stats
        server.log("info", f"stopped after {s['requests']} requests ({s['local_replies']} local replies, "
                           f"{s['fail_closed']} failed closed, {s['upstream_errors']} upstream errors, "
                           f"{s['bad_requests']} refused)")
    return server


class _HypercornErrors(logging.Handler):
    """hypercorn's error log, onto the server's log."""

    def __init__(self, server: FilterServer) -> None:
        super().__init__(logging.WARNING)
        self.server = server

    @classmethod
    def logger(cls, server: FilterServer) -> logging.Logger:
        logger = logging.getLogger(f"proxywasm_host.serve.{id(server)}")
        logger.propagate = False
        logger.handlers = [cls(server)]
        logger.setLevel(logging.WARNING)
        return logger

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionAbortedError):
            return  # our own way of cutting a response short
        level = {logging.CRITICAL: "critical", logging.ERROR: "error"}.get(record.levelno, "warn")
        text = record.getMessage() + (f": {exc!r}" if exc is not None else "")
        self.server.log(level, text, source="hypercorn")


def run_echo(host: str = "127.0.0.1", port: int = 0, ready: Callable[[int], None] | None = None) -> None:
    """Serve :func:`echo_app` alone (the benchmark's upstream): ``python -m proxywasm_host.serve.server echo``."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    async def main() -> None:
        sockets = _bind(host, port)
        bound = sockets[0].getsockname()[1]
        hc = Config()
        hc.bind = [f"fd://{s.detach()}" for s in sockets]
        hc.accesslog = None
        hc.include_server_header = False
        hc.keep_alive_timeout = 60
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"echo upstream on http://{host}:{bound}", file=sys.stderr, flush=True)
        if ready is not None:
            ready(bound)
        await hypercorn_serve(echo_app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(prog="python -m proxywasm_host.serve.server")
    parser.add_argument("what", choices=["echo"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    run_echo(ns.host, ns.port)
