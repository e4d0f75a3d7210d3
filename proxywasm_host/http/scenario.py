"""Backend-neutral description of one HTTP exchange and of its outcome.

A :class:`Scenario` says which plugin to load and what the downstream client
and the upstream server send.  Any backend (the in-process host, a real
Envoy) turns it into an :class:`ExchangeResult`, so results of different
backends can be compared field by field.  Pure data: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

HeaderPair = tuple[str, str]
HeaderList = tuple[HeaderPair, ...]
HeaderInput = Union[Iterable[Sequence[str]], "dict[str, str]", None]


def header_list(headers: HeaderInput) -> HeaderList:
    """Normalise headers given as a dict or an iterable of pairs."""
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, dict) else headers
    out = []
    for item in items:
        if len(item) != 2:
            raise ValueError(f"a header must be a (name, value) pair, got {item!r}")
        name, value = item
        out.append((str(name), str(value)))
    return tuple(out)


@dataclass(frozen=True)
class PluginSpec:
    """Which module to load and how Envoy would configure it."""

    wasm: Path
    root_id: str = ""
    configuration: bytes = b""
    vm_configuration: bytes = b""
    vm_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class HttpRequest:
    """What the downstream client sends."""

    headers: HeaderList
    body_chunks: tuple[bytes, ...] = ()
    trailers: HeaderList | None = None


@dataclass(frozen=True)
class HttpResponse:
    """What the upstream server answers (status travels as ``:status``)."""

    status: int = 200
    headers: HeaderList = ()
    body_chunks: tuple[bytes, ...] = ()
    trailers: HeaderList | None = None


@dataclass(frozen=True)
class Scenario:
    plugin: PluginSpec
    request: HttpRequest
    response: HttpResponse = HttpResponse()


@dataclass
class UpstreamRequest:
    """What reached the upstream after the filter ran."""

    headers: list[HeaderPair]
    body: bytes = b""
    trailers: list[HeaderPair] | None = None


@dataclass
class DownstreamResponse:
    """What the downstream client received."""

    status: int
    headers: list[HeaderPair]
    body: bytes = b""
    trailers: list[HeaderPair] | None = None


@dataclass
class LocalReply:
    """A reply the filter generated with ``proxy_send_local_response``."""

    status: int
    body: bytes
    headers: list[HeaderPair]
    details: str
    grpc_status: int | None


@dataclass
class LogRecord:
    level: str  # "trace", "debug", "info", "warn", "error", "critical"
    message: str


@dataclass
class ExchangeResult:
    abi_version: str
    upstream_request: UpstreamRequest | None
    downstream_response: DownstreamResponse | None
    local_reply: LocalReply | None = None
    logs: list[LogRecord] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        def text(data: bytes) -> str:
            return data.decode("utf-8", "surrogateescape")

        def pairs(headers: list[HeaderPair] | None) -> list[list[str]] | None:
            return None if headers is None else [[k, v] for k, v in headers]

        up = self.upstream_request
        down = self.downstream_response
        return {
            "abi_version": self.abi_version,
            "upstream_request": None
            if up is None
            else {"headers": pairs(up.headers), "body": text(up.body), "trailers": pairs(up.trailers)},
            "downstream_response": None
            if down is None
            else {
                "status": down.status,
                "headers": pairs(down.headers),
                "body": text(down.body),
                "trailers": pairs(down.trailers),
            },
            "local_reply": None
            if self.local_reply is None
            else {
                "status": self.local_reply.status,
                "body": text(self.local_reply.body),
                "headers": pairs(self.local_reply.headers),
                "details": self.local_reply.details,
                "grpc_status": self.local_reply.grpc_status,
            },
            "logs": [{"level": r.level, "message": r.message} for r in self.logs],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_json_dict(), ensure_ascii=False, **kwargs)
