"""Stream attribute lookups (proxy_get_property on request.*, response.*, ...) compute only the
attribute asked for; the answers must be exactly those of the previous implementation, which
built every attribute of the stream for each lookup (kept below as the reference)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from proxywasm_host.core.context import PluginConfig
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.properties import Int, Timestamp, UInt, _navigate
from proxywasm_host.core.stream import HttpContext, LocalResponse
from proxywasm_host.core.types import AbiVersion
from proxywasm_host.core.vm import Vm


def reference_attributes(self: HttpContext) -> dict[tuple[str, ...], Any]:
    """The former HttpContext.current_attributes, verbatim."""
    attrs: dict[tuple[str, ...], Any] = {}
    req = self.request.headers or self.request.forwarded_headers
    if req is not None:
        path = req.value(":path", "") or ""
        attrs[("request", "path")] = path
        attrs[("request", "url_path")] = path.split("?", 1)[0]
        attrs[("request", "query")] = path.split("?", 1)[1] if "?" in path else ""
        attrs[("request", "host")] = req.value(":authority", "") or ""
        attrs[("request", "scheme")] = req.value(":scheme", "http") or "http"
        attrs[("request", "method")] = req.value(":method", "") or ""
        headers: dict[str, str] = {}
        for k, v in req.items():
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        attrs[("request", "headers")] = headers
        for name, attr in (("referer", "referer"), ("user-agent", "useragent"), ("x-request-id", "id")):
            value = req.value(name)
            if value is not None:
                attrs[("request", attr)] = value
        attrs[("request", "time")] = Timestamp(self.request_time_ns)
        attrs[("request", "protocol")] = "HTTP/1.1"
    resp = self.response.headers or self.response.forwarded_headers
    if resp is not None:
        try:
            attrs[("response", "code")] = Int(int(resp.value(":status", "0") or 0))
        except ValueError:
            pass
        rh: dict[str, str] = {}
        for k, v in resp.items():
            rh[k] = f"{rh[k]},{v}" if k in rh else v
        attrs[("response", "headers")] = rh
    trailers = self.response.trailers or self.response.forwarded_trailers
    if trailers is not None:
        attrs[("response", "trailers")] = dict(trailers.items())
    if self.completed or self.in_log:
        attrs[("request", "size")] = Int(self.request.forwarded_bytes)
        attrs[("response", "size")] = Int(self.response.forwarded_bytes)
        attrs[("request", "duration")] = Int(self.host.clock.wall_ns - self.request_time_ns)
        if self.local_response is not None:
            attrs[("response", "code_details")] = self.local_response.details
    attrs[("source", "address")] = "127.0.0.1:52400"
    attrs[("source", "port")] = Int(52400)
    attrs[("destination", "address")] = "127.0.0.1:8080"
    attrs[("destination", "port")] = Int(8080)
    attrs[("connection", "id")] = UInt(self.id)
    attrs[("connection_id",)] = UInt(self.id)
    attrs[("connection", "mtls")] = False
    attrs.update(self.attributes)
    return attrs


def reference_lookup(ctx: HttpContext, segments: list[str]) -> tuple[bool, Any]:
    attrs = reference_attributes(ctx)
    # the stream's own attributes are at most 3 segments deep, user-supplied ones any depth
    for length in range(len(segments), 0, -1):
        key = tuple(segments[:length])
        if key in attrs:
            return _navigate(attrs[key], segments[length:])
    return False, None


REQUESTS = [
    None,
    [],
    [(":path", "/a?b=c&d"), (":authority", "h:1"), (":method", "POST"), (":scheme", "https"),
     ("referer", "r"), ("user-agent", "ua"), ("x-request-id", "id-1"), ("x-dup", "1"), ("x-dup", "2")],
    [(":path", ""), (":scheme", ""), ("referer", ""), ("x-request-id", "")],
    [(":path", "/plain"), ("user-agent", "\udcff-bytes")],
]
RESPONSES = [None, [], [(":status", "204"), ("x-a", "1"), ("x-a", "2")], [(":status", "oops")], [(":status", "")]]
TRAILERS = [None, [], [("t", "1"), ("t", "2")]]
USER = [{}, {("request", "path"): "/user", ("custom", "a", "b", "c"): 1, ("custom",): {"k": [1, 2]},
             ("request", "headers", "x-dup"): "user-dup"}]
PATHS = [
    ["request", "path"], ["request", "url_path"], ["request", "query"], ["request", "host"], ["request", "scheme"],
    ["request", "method"], ["request", "headers"], ["request", "headers", "x-dup"], ["request", "headers", "X-Dup"],
    ["request", "headers", "missing"], ["request", "headers", "user-agent"], ["request", "headers", ":path"],
    ["request", "headers", "\udcff"], ["request", "headers", "\ud800"], ["response", "headers", "X-A"], ["request", "referer"], ["request", "useragent"], ["request", "id"],
    ["request", "time"], ["request", "protocol"], ["request", "size"], ["request", "duration"], ["request"],
    ["request", "path", "deeper"], ["response", "code"], ["response", "headers"], ["response", "headers", "x-a"],
    ["response", "trailers"], ["response", "trailers", "t"], ["response", "size"], ["response", "code_details"],
    ["source", "address"], ["source", "port"], ["destination", "address"], ["destination", "port"],
    ["connection", "id"], ["connection_id"], ["connection", "mtls"], ["connection"], ["custom"],
    ["custom", "k"], ["custom", "k", "1"], ["custom", "a", "b", "c"], ["custom", "a"], ["nothing", "here"],
]


def make_context(user: dict[tuple[str, ...], Any]) -> HttpContext:
    host = AbiHost(AbiVersion.V0_2_1)
    root = host.new_root_context(PluginConfig())
    # a real Vm over no guest: nothing here calls into one (the context only reads vm.host)
    return HttpContext(Vm(host, SimpleNamespace()), root, attributes=user)  # type: ignore[arg-type]


def _map(pairs: list[tuple[str, str]] | None) -> HeaderMap | None:
    return None if pairs is None else HeaderMap(pairs)


@pytest.mark.parametrize("user", USER)
def test_lookups_match_the_full_rebuild(user: dict[tuple[str, ...], Any]) -> None:
    ctx = make_context(user)
    checked = 0
    for req, fwd_req, resp, fwd_resp, trailers, fwd_trailers, phase, local in itertools.product(
        REQUESTS, (None, REQUESTS[2]), RESPONSES, (None, RESPONSES[2]), TRAILERS, (None, TRAILERS[2]), ("open", "in_log", "completed"), (False, True)
    ):
        ctx.request.headers, ctx.request.forwarded_headers = _map(req), _map(fwd_req)
        ctx.response.headers, ctx.response.forwarded_headers = _map(resp), _map(fwd_resp)
        ctx.response.trailers, ctx.response.forwarded_trailers = _map(trailers), _map(fwd_trailers)
        ctx.in_log, ctx.completed = phase == "in_log", phase == "completed"
        ctx.local_response = LocalResponse(403, b"", [], "denied_by_filter", None) if local else None
        ctx.request.forwarded_bytes, ctx.response.forwarded_bytes = 3, 5
        ctx.host.clock.wall_ns = ctx.request_time_ns + 1234
        assert ctx.current_attributes() == reference_attributes(ctx)
        for path in PATHS:
            expected = reference_lookup(ctx, path)
            got = ctx.stream_property(path)
            assert got == expected, (path, got, expected)
            assert type(got[1]) is type(expected[1]), path  # Int vs UInt vs Timestamp decides the encoding
            checked += 1
    assert checked > 100000
