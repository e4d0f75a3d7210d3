"""Hypothesis strategies for HTTP exchanges as Envoy delivers them to a filter.

Use them in your own property tests (``pip install 'proxywasm-host[test]'``)::

    from hypothesis import given
    from proxywasm_host import strategies as pst

    @given(pst.exchanges())
    def test_never_drops_the_path(proxywasm_plugin, exchange):
        result = proxywasm_plugin.exchange(exchange.request, exchange.response, profile=exchange.profile)
        ...

Everything is composable: every strategy takes the strategies it is made of as
arguments (``http_requests(headers=header_lists(names=st.sampled_from(["x-a"])))``), and
:func:`exchanges` takes ``requests``/``responses`` of your own.

What they generate is what a client and an upstream send *to Envoy*: header names in any
case, ``Host`` on HTTP/1.1, duplicates, bodies split into chunks, trailers (HTTP/2 only:
Envoy's HTTP/1 codec drops request trailers).  Running an :class:`Exchange` with its
:attr:`Exchange.profile` (``envoy-http1``/``envoy-http2``, see
:mod:`proxywasm_host.http.profiles`) gives the filter exactly what Envoy 1.40 would: names
lower-cased, pseudo-headers first, hop-by-hop headers removed, ``x-request-id`` added,
``end_of_stream`` where Envoy puts it.  Values stay within what Envoy's codecs accept
(visible ASCII, inner spaces and tabs, no CR/LF/NUL, no leading or trailing space)
unless ``hostile=True``, which adds non-UTF-8 bytes (as lone surrogates, see
:mod:`proxywasm_host.core.text`), values up to Envoy's 60 KiB header limit, up to 100
headers (Envoy's default cap) and large bodies.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from proxywasm_host.http.scenario import HeaderList, HttpRequest, HttpResponse

__all__ = [
    "COMMON_REQUEST_HEADERS",
    "COMMON_RESPONSE_HEADERS",
    "HTTP1",
    "HTTP2",
    "Exchange",
    "bodies",
    "body_chunks",
    "exchanges",
    "header_lists",
    "header_names",
    "header_values",
    "http_requests",
    "http_responses",
    "methods",
    "paths",
    "protocols",
    "statuses",
    "trailers",
]

HTTP1 = "HTTP/1.1"
HTTP2 = "HTTP/2"

#: request headers real clients send (a filter asking for one of them meets it often)
COMMON_REQUEST_HEADERS = (
    "accept", "accept-encoding", "accept-language", "authorization", "cache-control", "content-length",
    "content-type", "cookie", "forwarded", "if-none-match", "origin", "range", "referer", "te",
    "user-agent", "x-forwarded-for", "x-forwarded-proto", "x-request-id", "x-b3-traceid", "traceparent",
)
#: response headers real upstreams send
COMMON_RESPONSE_HEADERS = (
    "cache-control", "content-encoding", "content-length", "content-type", "etag", "location",
    "set-cookie", "server", "vary", "www-authenticate", "x-content-type-options",
)

#: RFC 9110 tchar: what a header name may be made of
_TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_TOKEN = string.ascii_lowercase + string.digits + "-"
#: visible ASCII: what a header value may hold (plus inner spaces / tabs)
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
#: separators filters split values on; generated often so a parser meets them
_SEPARATORS = ",;=: /\"'"
#: Envoy's limits (HCM defaults): 60 KiB of request headers, 100 headers
MAX_HEADERS_KIB = 60
MAX_HEADERS_COUNT = 100


def _cased(name: str, how: int) -> str:
    """``name`` as given, lower, Title-Case or UPPER: clients send all of them, Envoy lower-cases."""
    if how == 1:
        return name.lower()
    if how == 2:
        return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))
    if how == 3:
        return name.upper()
    return name


def _all_cased(names: Sequence[str]) -> list[str]:
    """Each name in each of the four casings, in that order (what ``sampled_from`` draws
    with one choice, where a name and then its casing took two nested draws and a map)."""
    return [_cased(name, how) for name in names for how in range(4)]


#: ``Host`` as clients write it (HTTP/1.1); the URL schemes (HTTP/2)
_HOST_NAMES = st.sampled_from(_all_cased(["host"]))
_SCHEMES = st.sampled_from(["http", "https"])


def header_names(
    *,
    known: Sequence[str] = COMMON_REQUEST_HEADERS,
    extra: Sequence[str] = (),
    casing: bool = True,
) -> st.SearchStrategy[str]:
    return _header_names(tuple(known), tuple(sorted(set(extra))), casing)


@functools.lru_cache(maxsize=64)
def _header_names(known: tuple[str, ...], extra: tuple[str, ...], casing: bool) -> st.SearchStrategy[str]:
    """Header names: ``extra`` (e.g. names learned from the filter) most often, then
    ``known`` ones, then made-up tokens (``x-...`` and any RFC 9110 token); in any case
    when ``casing``."""
    cased = _all_cased if casing else list
    parts: list[st.SearchStrategy[str]] = []
    if extra:
        parts.append(st.sampled_from(cased(sorted(set(extra)))))
    if known:
        parts.append(st.sampled_from(cased(known)))
    made_up = [st.text(_TOKEN, min_size=1, max_size=12).map(lambda s: "x-" + s), st.text(_TCHAR, min_size=1, max_size=20)]
    if casing:
        made_up = [st.tuples(names, st.integers(0, 3)).map(lambda nh: _cased(*nh)) for names in made_up]
    return st.one_of(*parts, *made_up)


def _trimmed(text: str) -> str:
    return text.strip(" \t")


def _obs_text(data: bytes) -> str:
    """Bytes a value may carry on the wire (visible ASCII, space, tab, 0x80-0xFF) as text:
    the non-UTF-8 ones become lone surrogates, which the host sends as those bytes."""
    kept = bytes(b for b in data if b in (0x09, 0x20) or 0x21 <= b <= 0x7E or b >= 0x80)
    return kept.decode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=16)
def header_values(*, hostile: bool = False, max_size: int = 64) -> st.SearchStrategy[str]:
    """Header values Envoy accepts: tokens, numbers, comma/semicolon lists (what merged
    duplicate headers look like), quoted strings, free visible text.  With ``hostile``
    also non-UTF-8 bytes (lone surrogates, sent as the raw bytes), non-ASCII UTF-8 and
    values up to Envoy's 60 KiB limit."""
    token = st.text(_TOKEN, min_size=1, max_size=10)
    item = st.one_of(token, st.integers(-(2**63), 2**64).map(str), st.sampled_from(["", "*", "null", "true", "0"]))
    parts: list[st.SearchStrategy[str]] = [
        token,
        st.integers(-(2**31), 2**64).map(str),
        st.tuples(st.sampled_from([",", ", ", ";", "; ", " ,"]), st.lists(item, min_size=2, max_size=4)).map(
            lambda sep_items: sep_items[0].join(sep_items[1])
        ),
        st.tuples(token, token).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.text(_VCHAR + " \t" + _SEPARATORS * 3, max_size=max_size),
        st.sampled_from(["", "Bearer token", "application/json", "text/html; charset=utf-8", "gzip, br", '"quoted"']),
    ]
    if hostile:
        parts += [
            st.binary(min_size=1, max_size=16).map(_obs_text),
            st.text(st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=["Cs"]), max_size=8),
            st.integers(1024, MAX_HEADERS_KIB * 1024 - 1024).map(lambda n: "v" * n),
        ]
    # (one map over all of them: the shrinker then reaches the smallest value of any kind,
    # e.g. "," for a list; trimming each kind apart made it stop at "0,0")
    return st.one_of(*parts).map(_trimmed)


@functools.lru_cache(maxsize=64)
def header_lists(
    *,
    names: st.SearchStrategy[str] | None = None,
    values: st.SearchStrategy[str] | None = None,
    min_size: int = 0,
    max_size: int = 8,
    duplicates: bool = True,
    hostile: bool = False,
) -> st.SearchStrategy[HeaderList]:
    """Lists of (name, value) pairs in wire order.  With ``duplicates`` a name may repeat
    (Envoy keeps each one, in order); ``hostile`` sometimes makes 25 up to Envoy's cap of 100."""
    names = header_names() if names is None else names
    values = header_values(hostile=hostile) if values is None else values
    pairs = st.tuples(names, values)
    unique = None if duplicates else (lambda p: p[0].lower())
    lists = st.lists(pairs, min_size=min_size, max_size=max_size, unique_by=unique)
    if hostile:  # sometimes many, up to Envoy's cap: padding that shrinks away on its own
        padding = st.sampled_from([0, 0, 0, MAX_HEADERS_COUNT // 4, MAX_HEADERS_COUNT - max_size - 4])
        return st.tuples(lists, padding).map(lambda lp: (*lp[0], *((f"x-pad-{i}", "p") for i in range(lp[1]))))
    return lists.map(tuple)


def _no_reserved(pairs: HeaderList, reserved: frozenset[str]) -> HeaderList:
    return tuple((k, v) for k, v in pairs if k.lower() not in reserved and not k.startswith(":"))


@functools.lru_cache(maxsize=64)
def methods() -> st.SearchStrategy[str]:
    return st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])


@functools.lru_cache(maxsize=4)
def paths(*, hostile: bool = False) -> st.SearchStrategy[str]:
    """Request targets: ``/``, segments, query strings, percent-escapes."""
    segment = st.text(string.ascii_letters + string.digits + "-._~%", min_size=0, max_size=8)
    query = st.lists(st.tuples(segment, segment), max_size=3).map(
        lambda kv: ("?" + "&".join(f"{k}={v}" for k, v in kv)) if kv else ""
    )
    path = st.builds(lambda segs, q: "/" + "/".join(segs) + q, st.lists(segment, max_size=4), query)
    if hostile:
        path = st.one_of(path, st.text(_VCHAR, min_size=1, max_size=256).map(lambda s: "/" + s))
    return path


@functools.lru_cache(maxsize=64)
def authorities() -> st.SearchStrategy[str]:
    host = st.sampled_from(["localhost", "example.com", "Example.COM", "127.0.0.1", "[::1]", "a.b.c.d.example"])
    return st.one_of(host, st.builds(lambda h, p: f"{h}:{p}", host, st.integers(1, 65535)))


@functools.lru_cache(maxsize=16)
def bodies(*, max_size: int = 256, hostile: bool = False) -> st.SearchStrategy[bytes]:
    """Bodies: empty, text, JSON-ish, any bytes; ``hostile``: up to 1 MiB."""
    parts: list[st.SearchStrategy[bytes]] = [
        st.just(b""),
        st.text(max_size=max_size).map(lambda s: s.encode()),
        st.binary(max_size=max_size),
        st.dictionaries(st.text(_TOKEN, max_size=6), st.integers() | st.text(max_size=6), max_size=4).map(
            lambda d: repr(d).replace("'", '"').encode()
        ),
    ]
    if hostile:
        parts.append(st.integers(64 * 1024, 1 << 20).map(lambda n: b"b" * n))
    return st.one_of(*parts)


@functools.lru_cache(maxsize=64)
def body_chunks(body: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[tuple[bytes, ...]]:
    """A body split where the network would split it: one chunk, several, or none."""
    body = bodies() if body is None else body
    return st.tuples(body, st.lists(st.integers(1, 1 << 20), max_size=4)).map(_split)


def _split(body_cuts: tuple[bytes, list[int]]) -> tuple[bytes, ...]:
    data, cuts = body_cuts
    if not data:
        return ()
    at = sorted({c % len(data) for c in cuts} - {0})
    return tuple(data[a:b] for a, b in zip([0, *at], [*at, len(data)]))


@functools.lru_cache(maxsize=4)
def trailers(*, hostile: bool = False) -> st.SearchStrategy[HeaderList]:
    names = header_names(known=("grpc-status", "grpc-message", "x-checksum", "server-timing"))
    return header_lists(names=names, values=header_values(hostile=hostile), min_size=1, max_size=3)


@functools.lru_cache(maxsize=64)
def protocols() -> st.SearchStrategy[str]:
    return st.sampled_from([HTTP1, HTTP2])


@functools.lru_cache(maxsize=64)
def statuses() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([200, 201, 204, 301, 304, 400, 401, 403, 404, 429, 500, 502, 503]),
                     st.integers(200, 599))


_REQUEST_RESERVED = frozenset({"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
                               "upgrade", "content-length"})


@st.composite
def http_requests(
    draw: st.DrawFn,
    *,
    protocol: str | None = None,
    headers: st.SearchStrategy[HeaderList] | None = None,
    body: st.SearchStrategy[tuple[bytes, ...]] | None = None,
    with_trailers: bool | None = None,
    hostile: bool = False,
    extra_header_names: Sequence[str] = (),
) -> HttpRequest:
    """A client's request: ``:method``, ``:path``, ``:authority`` (``Host`` on HTTP/1.1,
    as a client sends it), ``:scheme`` on HTTP/2, then ``headers`` (default:
    :func:`header_lists` over :func:`header_names` with ``extra_header_names``), a body
    split into chunks and, on HTTP/2, sometimes trailers."""
    proto = draw(protocols()) if protocol is None else protocol
    names = header_names(extra=extra_header_names)
    regular = draw(header_lists(names=names, hostile=hostile) if headers is None else headers)
    regular = _no_reserved(regular, _REQUEST_RESERVED)
    if proto == HTTP2:  # HTTP/2 forbids upper-case names (Envoy resets such a stream)
        regular = tuple((k.lower(), v) for k, v in regular)
    chunks = draw(body_chunks(bodies(hostile=hostile)) if body is None else body)
    method = draw(methods())
    path = draw(paths(hostile=hostile))
    authority = draw(authorities())
    if proto == HTTP1:
        pseudo: HeaderList = ((":method", method), (":path", path), (draw(_HOST_NAMES), authority))
    else:
        pseudo = ((":method", method), (":scheme", draw(_SCHEMES)), (":authority", authority), (":path", path))
    framing: HeaderList = ()
    with_length: bool = draw(st.booleans())
    if chunks and with_length:
        framing = (("content-length", str(sum(len(c) for c in chunks))),)
    tr = None
    if proto == HTTP2 and (with_trailers if with_trailers is not None else draw(st.booleans())):
        tr = draw(trailers(hostile=hostile))
    return HttpRequest(headers=pseudo + regular + framing, body_chunks=tuple(chunks), trailers=tr)


_RESPONSE_RESERVED = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                                "content-length"})


@st.composite
def http_responses(
    draw: st.DrawFn,
    *,
    status: st.SearchStrategy[int] | None = None,
    headers: st.SearchStrategy[HeaderList] | None = None,
    body: st.SearchStrategy[tuple[bytes, ...]] | None = None,
    with_trailers: bool | None = None,
    hostile: bool = False,
    extra_header_names: Sequence[str] = (),
) -> HttpResponse:
    """An upstream's response: status, headers, a body in chunks (none for 204/304), and
    sometimes trailers (Envoy's default upstream protocol here is HTTP/2)."""
    code = draw(statuses() if status is None else status)
    names = header_names(known=COMMON_RESPONSE_HEADERS, extra=extra_header_names)
    regular = _no_reserved(draw(header_lists(names=names, hostile=hostile) if headers is None else headers),
                           _RESPONSE_RESERVED)
    chunks: tuple[bytes, ...] = ()
    if code not in (204, 304):
        chunks = draw(body_chunks(bodies(hostile=hostile)) if body is None else body)
    tr = None
    if with_trailers if with_trailers is not None else draw(st.integers(0, 3)) == 3:
        tr = draw(trailers(hostile=hostile))
    return HttpResponse(status=code, headers=regular, body_chunks=chunks, trailers=tr)


@dataclass(frozen=True)
class Exchange:
    """One generated exchange: what the client sends, what the upstream answers, and the
    client's protocol (:attr:`profile` is the stream profile that delivers it as Envoy does)."""

    request: HttpRequest
    response: HttpResponse = field(default_factory=HttpResponse)
    protocol: str = HTTP1

    @property
    def profile(self) -> str:
        return "envoy-http2" if self.protocol == HTTP2 else "envoy-http1"

    def to_python(self) -> str:
        """The exchange as Python source (the arguments of ``Plugin.exchange``)."""
        return (
            f"HttpRequest(headers={self.request.headers!r}, body_chunks={self.request.body_chunks!r}, "
            f"trailers={self.request.trailers!r}),\n"
            f"HttpResponse(status={self.response.status!r}, headers={self.response.headers!r}, "
            f"body_chunks={self.response.body_chunks!r}, trailers={self.response.trailers!r}),\n"
            f"profile={self.profile!r}"
        )


@st.composite
def exchanges(
    draw: st.DrawFn,
    *,
    protocol: str | None = None,
    requests: st.SearchStrategy[HttpRequest] | None = None,
    responses: st.SearchStrategy[HttpResponse] | None = None,
    hostile: bool = False,
    extra_header_names: Sequence[str] = (),
    extra_response_header_names: Sequence[str] = (),
) -> Exchange:
    """A request and a response over HTTP/1.1 or HTTP/2 (or ``protocol``).  Pass your own
    ``requests``/``responses`` strategies to narrow them; ``extra_header_names`` /
    ``extra_response_header_names`` are generated often (names your filter reads)."""
    proto = draw(protocols()) if protocol is None else protocol
    request = draw(
        http_requests(protocol=proto, hostile=hostile, extra_header_names=extra_header_names)
        if requests is None
        else requests
    )
    response = draw(
        http_responses(hostile=hostile, extra_header_names=extra_response_header_names)
        if responses is None
        else responses
    )
    return Exchange(request, response, proto)
