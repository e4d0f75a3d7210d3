"""What ``proxywasm-host serve`` takes: :class:`ServeConfig`, its limits and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from proxywasm_host.core.types import LogLevel
from proxywasm_host.http.profiles import HOP_BY_HOP

__all__ = ["DEFAULT_BUFFER_LIMIT", "FAILURE_POLICIES", "HOP_BY_HOP", "HTTP_SERVERS", "SERVER_NAME", "ServeConfig",
           "canonical_header_name", "parse_cluster"]

#: bytes a stream may hold (buffered by the filter, or not yet sent on) before it is failed;
#: Envoy's default per_connection_buffer_limit_bytes
DEFAULT_BUFFER_LIMIT = 1 << 20
SERVER_NAME = "proxywasm-host"

#: what each ``--failure-policy`` means for the requests after the filter traps (Envoy's
#: ``FailurePolicy`` of a Wasm filter)
FAILURE_POLICIES = {
    "fail_closed": "every later request gets 503 until serve restarts",
    "fail_open": "later requests pass through without the filter",
    "fail_reload": "the filter is loaded afresh for the next request",
}

#: the HTTP servers serve runs on: hypercorn (the default) and our own (net/httpserver.py), which
#: also holds what hypercorn's public API cannot (docs/serve.md, "HTTP servers")
HTTP_SERVERS = {
    "hypercorn": "hypercorn (without the request headers timeout, a connection limit, HTTP/2 request trailers "
                 "and stream resets: --http-server builtin has them)",
    "builtin": "the builtin h11/h2 server (HTTP/1.1 and h2c; request trailers, the request headers timeout, "
               "max connections, HTTP/2 stream resets)",
}

_LEVELS = {lv.label: lv for lv in LogLevel}


def text(value: bytes) -> str:
    """Wire bytes → str, reversibly (``raw`` undoes it)."""
    return value.decode("utf-8", "surrogateescape")


def raw(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def parse_cluster(spec: str) -> tuple[str, str]:
    """``NAME=URL`` → (name, url); the URL must be ``http://host:port[/prefix]``."""
    name, sep, url = spec.partition("=")
    if not sep or not name or not url:
        raise ValueError(f"expected NAME=URL, got {spec!r}")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"cluster {name!r}: {url!r} is not an http://host[:port] URL")
    return name, url.rstrip("/")


def canonical_header_name(name: str) -> str:
    """``x-request-id`` → ``X-Request-Id`` (how httpbin shows header names)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@dataclass
class ServeConfig:
    """Everything ``proxywasm-host serve`` takes (see ``proxywasm-host serve --help``).

    Limits, with Envoy's names (docs/serve.md): ``upstream_timeout`` the route timeout (15 s);
    ``idle_timeout`` the stream idle timeout (300 s); ``request_timeout`` the whole request
    (off, as Envoy); ``request_headers_timeout`` from a request's first byte to its last header
    (10 s; Envoy: off); ``connection_idle_timeout`` a connection with no request (3600 s);
    ``buffer_limit`` what a filter may buffer (1 MiB: 413 for a request, 500 for a response);
    ``max_connections`` (None: no limit) and ``max_concurrent_streams`` per HTTP/2 connection.
    A timeout of 0 is off."""

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
    request_timeout: float = 0.0  # Envoy's request_timeout: off by default
    request_headers_timeout: float = 10.0
    connection_idle_timeout: float = 3600.0  # Envoy's common_http_protocol_options.idle_timeout
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    max_connections: int | None = None
    max_concurrent_streams: int = 100
    graceful_timeout: float = 1.0
    environment: dict[str, str] = field(default_factory=dict)
    callback_deadline_s: float = 10.0
    http_server: str = "hypercorn"  # or "builtin": proxywasm_host.net.httpserver (see HTTP_SERVERS)
    reload: bool = False  # load the .wasm again when the file changes (serve/reload.py)
    reload_interval: float = 0.5  # seconds between looks at the file

    def __post_init__(self) -> None:
        if self.failure_policy not in FAILURE_POLICIES:
            raise ValueError(f"failure policy must be one of {', '.join(FAILURE_POLICIES)}, not {self.failure_policy!r}")
        for name in ("upstream_timeout", "idle_timeout", "request_timeout", "request_headers_timeout",
                     "connection_idle_timeout", "graceful_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.buffer_limit < 1:
            raise ValueError("buffer_limit must be at least 1 byte")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        log_level(self.log_level)
        if self.reload and not isinstance(self.wasm, (str, Path)):
            raise ValueError("reload needs the filter as a file path")
        if self.reload_interval <= 0:
            raise ValueError("reload_interval must be positive")
        if self.http_server not in HTTP_SERVERS:
            raise ValueError(f"http server must be one of {', '.join(HTTP_SERVERS)}, not {self.http_server!r}")
        if self.http_server == "hypercorn" and self.max_connections is not None:
            raise ValueError("max_connections needs the builtin HTTP server (hypercorn has no connection limit)")


def log_level(name: str) -> LogLevel:
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(_LEVELS)}") from None


def level_of(label: str) -> LogLevel:
    return _LEVELS.get(label, LogLevel.INFO)
