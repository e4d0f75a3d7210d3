"""Backend-neutral description of one HTTP exchange and of its outcome.

A :class:`Scenario` says which plugin to load and what the downstream client
and the upstream server send.  Any backend (the in-process host, a real
Envoy) turns it into an :class:`ExchangeResult`, so results of different
backends can be compared field by field.  Pure data: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from proxywasm_host.core.lazy import Later
from proxywasm_host.core.stream import LocalResponse

HeaderPair = tuple[str, str]
HeaderList = tuple[HeaderPair, ...]
HeaderInput = Union[Iterable[Sequence[str]], "dict[str, str]", None]


def header_list(headers: HeaderInput) -> HeaderList:
    """Normalise headers given as a dict or an iterable of pairs."""
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, dict) else headers
    if type(items) is tuple:
        # the usual case (an HttpRequest's own headers): (str, str) tuples, returned as they are
        for item in items:
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str or type(item[1]) is not str:
                break
        else:
            return items
    out = []
    for item in items:
        if len(item) != 2:
            raise ValueError(f"a header must be a (name, value) pair, got {item!r}")
        name, value = item
        out.append((str(name), str(value)))
    return tuple(out)


@dataclass(frozen=True)
class PluginSpec:
    """Which module to load and how Envoy would configure it: the one description of a
    plugin that ``Host.load_plugin``, the pytest marker, ``serve``, the CLI and the Envoy
    backend all take.  ``properties`` and ``environment`` do not take part in ``==``."""

    wasm: Path
    root_id: str = ""
    configuration: bytes = b""
    vm_configuration: bytes = b""
    vm_id: str = ""
    name: str = ""
    #: plugin properties (``proxy_get_property`` paths -> values), as Host.load_plugin takes them
    properties: Mapping[Any, Any] = field(default_factory=dict, compare=False)
    #: the VM's environment variables (Envoy: vm_config.environment_variables)
    environment: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: Envoy's failure_policy: fail_closed | fail_open | fail_reload
    failure_policy: str = "fail_closed"

    #: the options :meth:`of` accepts (the pytest marker's arguments)
    OPTIONS: ClassVar[tuple[str, ...]] = ("root_id", "configuration", "vm_configuration", "vm_id", "name", "properties", "environment", "failure_policy")

    @classmethod
    def of(cls, wasm: str | Path, **options: Any) -> PluginSpec:
        """A spec from loosely typed options (text or bytes configurations), as the pytest
        marker and the command line give them; an unknown option is a ValueError naming it."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise ValueError(f"unknown plugin option(s) {unknown}; known: {', '.join(cls.OPTIONS)}")

        def raw(value: Any) -> bytes:
            return value.encode() if isinstance(value, str) else bytes(value or b"")

        return cls(
            wasm=Path(wasm),
            root_id=str(options.get("root_id", "")),
            configuration=raw(options.get("configuration", b"")),
            vm_configuration=raw(options.get("vm_configuration", b"")),
            vm_id=str(options.get("vm_id", "")),
            name=str(options.get("name", "")),
            properties=dict(options.get("properties") or {}),
            environment=dict(options.get("environment") or {}),
            failure_policy=str(options.get("failure_policy", "fail_closed")),
        )


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


#: a reply the filter generated with ``proxy_send_local_response`` (one type with the core's)
LocalReply = LocalResponse


@dataclass
class LogRecord:
    level: str  # "trace", "debug", "info", "warn", "error", "critical"
    message: str


def _made_when_read(name: str) -> property:
    key = "_" + name

    def get(self: Any) -> Any:
        value = self.__dict__[key]
        if type(value) is Later:
            value = self.__dict__[key] = value.make()
        return value

    def set(self: Any, value: Any) -> None:
        self.__dict__[key] = value

    return property(get, set)


@dataclass
class ExchangeResult:
    """What one exchange did.  ``upstream_request`` and ``downstream_response`` may be given
    as :class:`Later` values: they are made when first read (``==``, ``repr``,
    ``dataclasses.replace`` and pickling read them like any field)."""

    abi_version: str
    upstream_request: UpstreamRequest | None
    downstream_response: DownstreamResponse | None
    local_reply: LocalReply | None = None
    logs: list[LogRecord] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        self.upstream_request, self.downstream_response  # noqa: B018 (made now: a Later holds a function)
        return self.__dict__

    @classmethod
    def of(
        cls,
        abi_version: str,
        upstream_request: UpstreamRequest | Later | None,
        downstream_response: DownstreamResponse | Later | None,
        local_reply: LocalReply | None,
        logs: list[LogRecord],
    ) -> ExchangeResult:
        """The constructor's result with every field given, made at once (``Plugin.exchange``,
        once per exchange: the dataclass's ``__init__`` sets the two sides through their
        properties)."""
        result = cls.__new__(cls)
        result.__dict__ = {
            "abi_version": abi_version,
            "_upstream_request": upstream_request,
            "_downstream_response": downstream_response,
            "local_reply": local_reply,
            "logs": logs,
        }
        return result

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


# the two sides as properties over the dataclass's fields (set by its __init__ as usual)
ExchangeResult.upstream_request = _made_when_read("upstream_request")  # type: ignore[assignment]
ExchangeResult.downstream_response = _made_when_read("downstream_response")  # type: ignore[assignment]
