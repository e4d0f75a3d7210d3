"""The stream attributes ``proxy_get_property`` answers from an HTTP stream (docs/abi-notes.md §10)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.properties import Int, Timestamp, UInt
from proxywasm_host.core.text import to_text as _s

if TYPE_CHECKING:
    from proxywasm_host.core.stream import HttpContext


# ----------------------------------------------------------------------------------------
# Stream attributes (docs/abi-notes.md §10): attribute path -> function of the stream giving
# its current value, or ABSENT when the stream does not have it (yet).  Computed on demand,
# one attribute per lookup, from the stream's state at that moment.
# ----------------------------------------------------------------------------------------
ABSENT: Any = object()


def _request_map(ctx: HttpContext) -> HeaderMap | None:
    # ``or``: an empty map counts as absent, the forwarded copy answers instead
    return ctx.request.headers or ctx.request.forwarded_headers


def _response_map(ctx: HttpContext) -> HeaderMap | None:
    return ctx.response.headers or ctx.response.forwarded_headers


def _joined(hmap: HeaderMap) -> dict[str, str]:
    """Header name -> value, repeated names joined with "," (Envoy's header map attributes)."""
    out: dict[str, str] = {}
    for k, v in hmap.items():
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


def joined_value(hmap: HeaderMap, name: str) -> str | None:
    """``_joined(hmap).get(name)`` without building the dict: ``name`` as text, exact case."""
    try:
        key = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None  # no header name decodes to this text
    values = [v for k, v in hmap.frozen_pairs() if k == key]
    if not values:
        return None
    return ",".join([_s(v) for v in values])


def _request_header(name: str, default: str | None) -> Any:
    """request.<attr> read from one request header (``default`` None: absent without it)."""

    def compute(ctx: HttpContext) -> Any:
        req = _request_map(ctx)
        if req is None:
            return ABSENT
        value = req.value(name, default)
        if value is None:
            return ABSENT
        return value or (default or "")

    return compute


def _request_path(ctx: HttpContext) -> str:
    req = _request_map(ctx)
    return ABSENT if req is None else (req.value(":path", "") or "")


def _url_path(ctx: HttpContext) -> Any:
    path = _request_path(ctx)
    return path if path is ABSENT else path.split("?", 1)[0]


def _query(ctx: HttpContext) -> Any:
    path = _request_path(ctx)
    return path if path is ABSENT else (path.split("?", 1)[1] if "?" in path else "")


def _on_request(value: Any) -> Any:
    """request.<attr> that exists once the request headers do."""

    def compute(ctx: HttpContext) -> Any:
        return ABSENT if _request_map(ctx) is None else value(ctx)

    return compute


def _request_headers(ctx: HttpContext) -> Any:
    req = _request_map(ctx)
    return ABSENT if req is None else _joined(req)


def _response_code(ctx: HttpContext) -> Any:
    resp = _response_map(ctx)
    if resp is None:
        return ABSENT
    try:
        return Int(int(resp.value(":status", "0") or 0))
    except ValueError:
        return ABSENT


def _response_headers(ctx: HttpContext) -> Any:
    resp = _response_map(ctx)
    return ABSENT if resp is None else _joined(resp)


def _response_trailers(ctx: HttpContext) -> Any:
    trailers = ctx.response.trailers or ctx.response.forwarded_trailers
    return ABSENT if trailers is None else dict(trailers.items())


def _after_stream(value: Any) -> Any:
    """An attribute Envoy has from the access-log phase on (on_log and later)."""

    def compute(ctx: HttpContext) -> Any:
        return value(ctx) if ctx.completed or ctx.in_log else ABSENT

    return compute


def _code_details(ctx: HttpContext) -> Any:
    if (ctx.completed or ctx.in_log) and ctx.local_response is not None:
        return ctx.local_response.details
    return ABSENT


def _constant(value: Any) -> Any:
    return lambda ctx: value


HEADER_MAPS: dict[tuple[str, ...], Any] = {("request", "headers"): _request_map, ("response", "headers"): _response_map}

ATTRIBUTES: dict[tuple[str, ...], Any] = {
    ("request", "path"): _request_path,
    ("request", "url_path"): _url_path,
    ("request", "query"): _query,
    ("request", "host"): _request_header(":authority", ""),
    ("request", "scheme"): _request_header(":scheme", "http"),
    ("request", "method"): _request_header(":method", ""),
    ("request", "headers"): _request_headers,
    ("request", "referer"): _request_header("referer", None),
    ("request", "useragent"): _request_header("user-agent", None),
    ("request", "id"): _request_header("x-request-id", None),
    ("request", "time"): _on_request(lambda ctx: Timestamp(ctx.request_time_ns)),
    ("request", "protocol"): _on_request(lambda ctx: "HTTP/1.1"),
    ("response", "code"): _response_code,
    ("response", "headers"): _response_headers,
    ("response", "trailers"): _response_trailers,
    ("request", "size"): _after_stream(lambda ctx: Int(ctx.request.forwarded_bytes)),
    ("response", "size"): _after_stream(lambda ctx: Int(ctx.response.forwarded_bytes)),
    ("request", "duration"): _after_stream(lambda ctx: Int(ctx.host.clock.wall_ns - ctx.request_time_ns)),
    ("response", "code_details"): _code_details,
    ("source", "address"): _constant("127.0.0.1:52400"),
    ("source", "port"): _constant(Int(52400)),
    ("destination", "address"): _constant("127.0.0.1:8080"),
    ("destination", "port"): _constant(Int(8080)),
    ("connection", "id"): lambda ctx: UInt(ctx.id),
    ("connection_id",): lambda ctx: UInt(ctx.id),
    ("connection", "mtls"): _constant(False),
}
