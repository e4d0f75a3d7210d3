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

How they draw: Hypothesis's cost is per value drawn (its bookkeeping per strategy drawn
through, ~25 µs each; benchmarks/README.md), so a request draws few, larger values.  Every
choice among a fixed set (a method, a header name in one of its casings, the kind of a
value, a host with or without a port, where a body is cut ...) is one byte or two of a
single byte string drawn once per request and once per header ("picks": an index is the
bytes modulo the number of entries), and a header value's characters are the bytes after
its picks (each modulo the value's alphabet); made-up names, paths and bodies are drawn as
texts and bytes of their own.  Shrinking lowers each byte towards 0, which walks each choice
towards its first entry, where it ends (as lowering ``st.one_of``'s or ``st.sampled_from``'s
index did), and shortens a value; the header list is a ``st.lists`` (a header is deleted as
a whole).  Groups of entries (known names, made-up names ...) are repeated to weigh what
``st.one_of`` over them gave each.  A strategy of this module drawn inside another one of
this module reads its picks from the caller's byte string.
"""

from __future__ import annotations

import functools
import string
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

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
#: (digits first in each alphabet: a character is a byte's share of 256 in it, and byte 0,
#: where shrinking ends, is then "0", as Hypothesis shrinks text)
_TCHAR = string.digits + string.ascii_letters + "!#$%&'*+-.^_`|~"
_TOKEN = string.digits + string.ascii_lowercase + "-"
#: visible ASCII: what a header value may hold (plus inner spaces / tabs)
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
#: Envoy's limits (HCM defaults): 60 KiB of request headers, 100 headers
MAX_HEADERS_KIB = 60
MAX_HEADERS_COUNT = 100


T = TypeVar("T")


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
    """Each name in each of the four casings, in that order (one pick chooses both)."""
    return [_cased(name, how) for name in names for how in range(4)]


def _equal_shares(*groups: Sequence[Any]) -> tuple[Any, ...]:
    """The non-empty ``groups`` in order, each repeated to about the size of the largest: one
    pick over the result chooses a group as ``st.one_of`` over them would, then an entry of it."""
    kept = [list(g) for g in groups if g]
    largest = max(len(g) for g in kept)
    return tuple(entry for g in kept for entry in g * max(1, round(largest / len(g))))


# ------------------------------------------------------------------------------------------
# picks: the choices among fixed entries, read from one drawn byte string
# ------------------------------------------------------------------------------------------


def _width(entries: int) -> int:
    """Bytes per pick among ``entries`` (two above 16: the modulo stays close to uniform)."""
    return 1 if entries <= 16 else 2 if entries <= 4096 else 3


class _Picks:
    """A cursor over the drawn byte string: each part of a value takes its picks in turn."""

    __slots__ = ("at", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def number(self, width: int) -> int:
        start = self.at
        self.at += width
        return int.from_bytes(self.data[start : self.at], "big")

    def pick(self, entries: Sequence[T]) -> T:
        return entries[self.number(_width(len(entries))) % len(entries)]

    def rest(self) -> bytes:
        """The bytes after the picks (a part with a ``tail`` reads them last)."""
        data, self.at = self.data[self.at :], len(self.data)
        return data

    def share(self) -> bytes:
        """The first half (rounded up) of the bytes left: a made-up name's characters, the
        rest being its value's."""
        end = self.at + (len(self.data) - self.at + 1) // 2
        data, self.at = self.data[self.at : end], end
        return data


@dataclass(frozen=True)
class _Part:
    """How this module makes a value: ``make(draw, picks)`` reads ``width`` bytes of picks
    (always that many, whatever it makes: the bytes after them keep their meaning when
    shrinking changes an earlier choice), then, with a ``tail``, the up to ``tail`` bytes
    after them (a header value's characters), and ``draws`` its other free-form parts."""

    width: int
    make: Callable[[st.DrawFn, _Picks], Any]
    tail: int = 0
    draws: bool = True


_NO_PICKS = _Picks(b"")

#: this module's strategies -> their part, so that another strategy of this module makes
#: their values with its own picks (no draw of their own)
_PARTS: weakref.WeakKeyDictionary[st.SearchStrategy[Any], _Part] = weakref.WeakKeyDictionary()


def _strategy(
    width: int, make: Callable[[st.DrawFn, _Picks], T], tail: int = 0, *, draws: bool = True
) -> st.SearchStrategy[T]:
    """The strategy of a part: its picks (one draw of ``width`` to ``width + tail`` bytes), then ``make``."""
    picks = st.binary(min_size=width, max_size=width + tail) if width + tail else None

    @st.composite
    def strategy(draw: st.DrawFn) -> T:
        result: T = make(draw, _NO_PICKS if picks is None else _Picks(draw(picks)))
        return result

    made = strategy()
    _PARTS[made] = _Part(width, make, tail, draws)
    return made


def _part(strategy: st.SearchStrategy[T], *, last: bool = False) -> _Part:
    """The part of one of this module's strategies (one with a tail only as the ``last``
    part of the caller's bytes); any other strategy is drawn as it is."""
    part = _PARTS.get(strategy)
    if part is None or (part.tail and not last):
        return _Part(0, lambda draw, picks: draw(strategy))
    return part


# ------------------------------------------------------------------------------------------
# header names and values
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MadeUp:
    """A made-up name, cased ``how``: ``x-`` and a token (``prefixed``), or any RFC 9110 token."""

    prefixed: bool
    how: int


#: a made-up name's characters: the first half of the bytes after the picks
_NAME_TAIL = 40


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
    when ``casing``.  Each of the four groups about a quarter of the picks."""
    cased = _all_cased if casing else list
    hows = range(4) if casing else range(1)
    entries = _equal_shares(cased(extra), cased(known), [_MadeUp(True, how) for how in hows],
                            [_MadeUp(False, how) for how in hows])

    def name(draw: st.DrawFn, picks: _Picks) -> str:
        entry = picks.pick(entries)
        if isinstance(entry, str):
            return entry
        if entry.prefixed:
            return _cased("x-" + _chars(picks.share(), _TOKEN, 1, 12), entry.how)
        return _cased(_chars(picks.share(), _TCHAR, 1, 20), entry.how)

    return _strategy(_width(len(entries)), name, _NAME_TAIL, draws=False)


def _trimmed(text: str) -> str:
    return text.strip(" \t")


def _obs_text(data: bytes) -> str:
    """Bytes a value may carry on the wire (visible ASCII, space, tab, 0x80-0xFF) as text:
    the non-UTF-8 ones become lone surrogates, which the host sends as those bytes."""
    kept = bytes(b for b in data if b in (0x09, 0x20) or 0x21 <= b <= 0x7E or b >= 0x80)
    return kept.decode("utf-8", "surrogateescape")


#: the separators a list value is joined with (what merged duplicate headers look like)
_LIST_SEPARATORS = (",", ", ", ";", "; ", " ,")
_VALUE_LITERALS = ("", "Bearer token", "application/json", "text/html; charset=utf-8", "gzip, br", '"quoted"')
#: a value's characters are the bytes after its picks; a list's items (tokens, numbers,
#: ``*``, empty), ``|`` between them
_LIST_CHARS = _TOKEN + "*|"
_TEXT_CHARS = string.digits + "".join(c for c in _VCHAR + " \t" if c not in string.digits)
#: the most bytes a value reads (numbers: 9; a huge value: 2)
_VALUE_TAIL = 64
_NUMBERS = (-(2**31), 2**64)
_HUGE = (1024, MAX_HEADERS_KIB * 1024 - 1024)


def _chars(data: bytes, alphabet: str, min_size: int = 0, max_size: int = _VALUE_TAIL) -> str:
    """``data`` as characters of ``alphabet`` (padded with its first to ``min_size``)."""
    size = len(alphabet)
    text = "".join(alphabet[b * size >> 8] for b in data[:max_size])
    return text + alphabet[0] * (min_size - len(text))


def _number(data: bytes, low: int, high: int) -> int:
    """A number in [low, high] from up to 9 bytes: 0 from none, then 1, -1, 2, -2 ... (and
    modulo the range), so that shrinking the bytes shrinks the number towards 0."""
    n = int.from_bytes(data[:9], "big")
    signed = (n + 1) // 2 * (1 if n % 2 else -1)
    return low + (signed - low) % (high - low + 1)


def _non_ascii(data: bytes) -> str:
    """Up to 8 characters from 0x80 up (3 bytes each; no surrogates)."""
    points = (0x80 + int.from_bytes(data[i : i + 3], "big") % (0x110000 - 0x80 - 0x800) for i in range(0, min(len(data), 24), 3))
    return "".join(chr(p if p < 0xD800 else p + 0x800) for p in points)


def _list_value(separator: str, items: str) -> str:
    """Items joined by ``separator``, at least two: a text without ``|`` is cut in the middle
    (the empty text makes the smallest list, ``,``)."""
    parts = items.split("|")
    if len(parts) == 1:
        parts = [items[: len(items) // 2], items[len(items) // 2 :]]
    return separator.join(parts)


def _key_value(pair: str) -> str:
    return f"{pair[: len(pair) // 2]}={pair[len(pair) // 2 :]}"


@functools.lru_cache(maxsize=16)
def header_values(*, hostile: bool = False, max_size: int = 64) -> st.SearchStrategy[str]:
    """Header values Envoy accepts: tokens, numbers, comma/semicolon lists (what merged
    duplicate headers look like), ``key=value``, free visible text, common literal values,
    each kind a sixth of the picks.  With ``hostile`` also non-UTF-8 bytes (lone
    surrogates, sent as the raw bytes), non-ASCII UTF-8 and values up to Envoy's 60 KiB
    limit.  No leading or trailing space or tab (Envoy's codecs strip them).

    A value is one byte string: its kind, separator and literal are picks, its characters
    the bytes after them (so a value changes kind without moving any other draw)."""
    kinds = ["token", "number", "list", "key=value", "text", "literal"]
    if hostile:
        kinds += ["bytes", "non-ascii", "huge"]
    text_size = min(max_size, _VALUE_TAIL)

    def value(draw: st.DrawFn, picks: _Picks) -> str:
        what, separator, literal = picks.pick(kinds), picks.pick(_LIST_SEPARATORS), picks.pick(_VALUE_LITERALS)
        data = picks.rest()
        if what == "literal":
            return literal
        if what == "token":
            return _chars(data, _TOKEN, 1, 10)
        if what == "number":
            return str(_number(data, *_NUMBERS))
        if what == "key=value":
            return _key_value(_chars(data, _TOKEN, 2, 20))
        if what == "list":
            text = _list_value(separator, _chars(data, _LIST_CHARS, 0, 48))
        elif what == "text":
            text = _chars(data, _TEXT_CHARS, 0, text_size)
        elif what == "bytes":
            text = _obs_text(data[:16] or b"0")
        elif what == "non-ascii":
            text = _non_ascii(data)
        else:
            text = "v" * _number(data[:2], *_HUGE)
        # (trimmed last, for every kind: the shrinker then reaches the smallest value of any
        # kind, e.g. "," for a list)
        return _trimmed(text)

    return _strategy(3, value, _VALUE_TAIL, draws=False)


#: how many padding headers a hostile list gets (mostly none: it shrinks away on its own)
_PADDING = (0, 0, 0, MAX_HEADERS_COUNT // 4)


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
    (Envoy keeps each one, in order); ``hostile`` sometimes makes 25 up to Envoy's cap of 100.
    With this module's names and values a header is one element of a ``st.lists``: a byte
    string (the name's picks, the value's picks, then the characters of both), made into the
    pair without a draw of its own."""
    names = header_names() if names is None else names
    values = header_values(hostile=hostile) if values is None else values
    made: Callable[[st.DrawFn, Any], tuple[str, str]]
    name_part, value_part = _PARTS.get(names), _PARTS.get(values)
    if name_part is not None and value_part is not None and not (name_part.draws or value_part.draws):
        make_name, make_value = name_part.make, value_part.make
        wn, wv = name_part.width, value_part.width

        def pair_of(draw: st.DrawFn, data: bytes) -> tuple[str, str]:
            tail = data[wn + wv :]
            name_picks = _Picks(data[:wn] + tail)
            name = make_name(draw, name_picks)
            return name, make_value(draw, _Picks(data[wn : wn + wv] + tail[name_picks.at - wn :]))

        element: st.SearchStrategy[Any] = st.binary(min_size=wn + wv, max_size=wn + wv + name_part.tail + value_part.tail)
        made = pair_of
    else:
        name_part, value_part = _part(names), _part(values, last=True)
        make_name, make_value = name_part.make, value_part.make
        element = _strategy(name_part.width + value_part.width,
                            lambda draw, picks: (make_name(draw, picks), make_value(draw, picks)), value_part.tail)
        made = lambda draw, pair: pair  # noqa: E731
    unique = None if duplicates else (lambda e: made(_NO_DRAWS, e)[0].lower())
    lists = st.lists(element, min_size=min_size, max_size=max_size, unique_by=unique)
    # hostile: sometimes many, up to Envoy's cap (padding that shrinks away on its own)
    padding = (*_PADDING, MAX_HEADERS_COUNT - max_size - 4) if hostile else (0,)

    def header_list(draw: st.DrawFn, picks: _Picks) -> HeaderList:
        extra = picks.pick(padding) if hostile else 0
        pairs = tuple(made(draw, e) for e in draw(lists))
        return (*pairs, *((f"x-pad-{i}", "p") for i in range(extra))) if extra else pairs

    return _strategy(1 if hostile else 0, header_list)


def _no_draws(strategy: st.SearchStrategy[Any]) -> Any:
    raise AssertionError("a header made from its bytes draws nothing")


_NO_DRAWS = cast(st.DrawFn, _no_draws)


def _no_reserved(pairs: HeaderList, reserved: frozenset[str]) -> HeaderList:
    return tuple((k, v) for k, v in pairs if k.lower() not in reserved and not k.startswith(":"))


# ------------------------------------------------------------------------------------------
# the rest of a request and a response
# ------------------------------------------------------------------------------------------

_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")


@functools.lru_cache(maxsize=64)
def methods() -> st.SearchStrategy[str]:
    return _strategy(1, lambda draw, picks: picks.pick(_METHODS))


_SEGMENT_CHARS = string.ascii_letters + string.digits + "-._~%"
#: a path after its ``/``: segments, ``/`` between them, and a query (``?k=v&k=v``) in one text
_PATH_TEXTS = st.text(_SEGMENT_CHARS + "/?=&", max_size=48)
_HOSTILE_PATHS = st.text(_VCHAR, min_size=1, max_size=256)


@functools.lru_cache(maxsize=4)
def paths(*, hostile: bool = False) -> st.SearchStrategy[str]:
    """Request targets: ``/``, segments, query strings, percent-escapes; ``hostile``: also
    any visible ASCII after the ``/`` (half of the picks)."""
    if not hostile:
        return _strategy(0, lambda draw, picks: "/" + draw(_PATH_TEXTS))
    return _strategy(1, lambda draw, picks: "/" + draw(picks.pick((_PATH_TEXTS, _HOSTILE_PATHS))))


_HOSTS = ("localhost", "example.com", "Example.COM", "127.0.0.1", "[::1]", "a.b.c.d.example")
_AUTHORITIES = tuple((host, False) for host in _HOSTS) + tuple((host, True) for host in _HOSTS)


def _authority(draw: st.DrawFn, picks: _Picks) -> str:
    host, with_port = picks.pick(_AUTHORITIES)
    port = picks.number(2) % 65535 + 1
    return f"{host}:{port}" if with_port else host


@functools.lru_cache(maxsize=64)
def authorities() -> st.SearchStrategy[str]:
    """A host, half of the picks with a port."""
    return _strategy(3, _authority)


_TEXT_BODIES = st.text(max_size=256)
_BINARY_BODIES = st.binary(max_size=256)
#: a JSON-ish object's members, read from bytes (see _json_object)
_JSON_BODIES = st.binary(max_size=64)
_HUGE_BODIES = st.integers(64 * 1024, 1 << 20)


def _unicode(data: bytes, size: int) -> tuple[str, int]:
    """Up to ``size`` characters from ``data``: a byte below 0x80 is that character, one
    above starts a 3-byte code point from 0x80 up (no surrogates).  (Text, bytes read.)"""
    chars: list[str] = []
    i = 0
    while i < len(data) and len(chars) < size:
        if data[i] < 0x80:
            chars.append(chr(data[i]))
            i += 1
        else:
            point = 0x80 + int.from_bytes(data[i : i + 3], "big") % (0x110000 - 0x80 - 0x800)
            chars.append(chr(point if point < 0xD800 else point + 0x800))
            i += 3
    return "".join(chars), i


def _json_object(data: bytes) -> bytes:
    """A JSON-ish object of up to 4 members (keys of up to 6 token characters, values a number
    or a text of up to 6 characters), as the Python repr with double quotes: each member is
    a head byte (key length, number or text, value length) and the bytes it says."""
    members: dict[str, int | str] = {}
    i = 0
    while i < len(data) and len(members) < 4:
        head = data[i]
        key_size, text, value_size = head % 7, head >> 7, (head >> 3) % 10
        key = _chars(data[i + 1 : i + 1 + key_size], _TOKEN)
        i += 1 + key_size
        if text:
            members[key], used = _unicode(data[i:], min(value_size, 6))
            i += used
        else:
            n = int.from_bytes(data[i : i + value_size], "big")
            members[key] = (n + 1) // 2 * (1 if n % 2 else -1)
            i += value_size
    return repr(members).replace("'", '"').encode()


@functools.lru_cache(maxsize=16)
def bodies(*, max_size: int = 256, hostile: bool = False) -> st.SearchStrategy[bytes]:
    """Bodies: empty, text, JSON-ish, any bytes (each a quarter of the picks); ``hostile``:
    also up to 1 MiB."""
    text = _TEXT_BODIES if max_size == 256 else st.text(max_size=max_size)
    binary = _BINARY_BODIES if max_size == 256 else st.binary(max_size=max_size)
    kinds = ["empty", "text", "binary", "json", *(["huge"] if hostile else [])]

    def body(draw: st.DrawFn, picks: _Picks) -> bytes:
        kind = picks.pick(kinds)
        if kind == "empty":
            return b""
        if kind == "text":
            return draw(text).encode()
        if kind == "binary":
            return draw(binary)
        if kind == "json":
            return _json_object(draw(_JSON_BODIES))
        return b"b" * draw(_HUGE_BODIES)

    return _strategy(1, body)


#: where a body is cut: a count (0-4) and four 3-byte numbers (each modulo the body's length)
_CUT_COUNTS = (0, 1, 2, 3, 4)
_CUTS_WIDTH = 1 + 4 * 3


@functools.lru_cache(maxsize=64)
def body_chunks(body: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[tuple[bytes, ...]]:
    """A body split where the network would split it: one chunk, several, or none."""
    body_part = _part(bodies() if body is None else body)
    make_body = body_part.make

    def chunks(draw: st.DrawFn, picks: _Picks) -> tuple[bytes, ...]:
        data = make_body(draw, picks)
        count = picks.pick(_CUT_COUNTS)
        cuts = [picks.number(3) for _ in range(4)][:count]
        return _split(data, cuts) if data else ()

    return _strategy(body_part.width + _CUTS_WIDTH, chunks)


def _split(data: bytes, cuts: list[int]) -> tuple[bytes, ...]:
    at = sorted({c % len(data) for c in cuts} - {0})
    return tuple(data[a:b] for a, b in zip([0, *at], [*at, len(data)]))


@functools.lru_cache(maxsize=4)
def trailers(*, hostile: bool = False) -> st.SearchStrategy[HeaderList]:
    names = header_names(known=("grpc-status", "grpc-message", "x-checksum", "server-timing"))
    return header_lists(names=names, values=header_values(hostile=hostile), min_size=1, max_size=3)


_PROTOCOLS = (HTTP1, HTTP2)


@functools.lru_cache(maxsize=64)
def protocols() -> st.SearchStrategy[str]:
    return _strategy(1, lambda draw, picks: picks.pick(_PROTOCOLS))


_STATUSES = _equal_shares((200, 201, 204, 301, 304, 400, 401, 403, 404, 429, 500, 502, 503), [None])


def _status(draw: st.DrawFn, picks: _Picks) -> int:
    code, any_code = picks.pick(_STATUSES), 200 + picks.number(2) % 400
    return any_code if code is None else code


@functools.lru_cache(maxsize=64)
def statuses() -> st.SearchStrategy[int]:
    """A common status half of the picks, any from 200 to 599 the other half."""
    return _strategy(_width(len(_STATUSES)) + 2, _status)


_REQUEST_RESERVED = frozenset({"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
                               "upgrade", "content-length"})
_HOST_NAMES = tuple(_all_cased(["host"]))
_SCHEMES = ("http", "https")
_YES_NO = (False, True)


def http_requests(
    *,
    protocol: str | None = None,
    headers: st.SearchStrategy[HeaderList] | None = None,
    body: st.SearchStrategy[tuple[bytes, ...]] | None = None,
    with_trailers: bool | None = None,
    hostile: bool = False,
    extra_header_names: Sequence[str] = (),
) -> st.SearchStrategy[HttpRequest]:
    """A client's request: ``:method``, ``:path``, ``:authority`` (``Host`` on HTTP/1.1,
    as a client sends it), ``:scheme`` on HTTP/2, then ``headers`` (default:
    :func:`header_lists` over :func:`header_names` with ``extra_header_names``), a body
    split into chunks and, on HTTP/2, sometimes trailers."""
    parts = [
        _part(protocols()),
        _part(header_lists(names=header_names(extra=extra_header_names), hostile=hostile)
              if headers is None else headers),
        _part(body_chunks(bodies(hostile=hostile)) if body is None else body),
        _part(methods()), _part(paths(hostile=hostile)), _part(authorities()), _part(trailers(hostile=hostile)),
    ]
    (_, make_protocol), (_, make_headers), (_, make_chunks), (_, make_method), (_, make_path), \
        (_, make_authority), (_, make_trailers) = ((p.width, p.make) for p in parts)
    width = sum(p.width for p in parts) + 4  # and the Host casing, the scheme, content-length?, trailers?

    def request(draw: st.DrawFn, picks: _Picks) -> HttpRequest:
        drawn = make_protocol(draw, picks)
        proto = drawn if protocol is None else protocol
        regular = _no_reserved(make_headers(draw, picks), _REQUEST_RESERVED)
        if proto == HTTP2:  # HTTP/2 forbids upper-case names (Envoy resets such a stream)
            regular = tuple((k.lower(), v) for k, v in regular)
        chunks = make_chunks(draw, picks)
        method, path, authority = make_method(draw, picks), make_path(draw, picks), make_authority(draw, picks)
        host_name, scheme = picks.pick(_HOST_NAMES), picks.pick(_SCHEMES)
        with_length, trailing = picks.pick(_YES_NO), picks.pick(_YES_NO)
        if proto == HTTP1:
            pseudo: HeaderList = ((":method", method), (":path", path), (host_name, authority))
        else:
            pseudo = ((":method", method), (":scheme", scheme), (":authority", authority), (":path", path))
        framing: HeaderList = ()
        if chunks and with_length:
            framing = (("content-length", str(sum(len(c) for c in chunks))),)
        tr = None
        if proto == HTTP2 and (with_trailers if with_trailers is not None else trailing):
            tr = make_trailers(draw, picks)
        return HttpRequest(headers=pseudo + regular + framing, body_chunks=tuple(chunks), trailers=tr)

    return _strategy(width, request)


_RESPONSE_RESERVED = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                                "content-length"})
_TRAILERS_SOMETIMES = (False, False, False, True)


def http_responses(
    *,
    status: st.SearchStrategy[int] | None = None,
    headers: st.SearchStrategy[HeaderList] | None = None,
    body: st.SearchStrategy[tuple[bytes, ...]] | None = None,
    with_trailers: bool | None = None,
    hostile: bool = False,
    extra_header_names: Sequence[str] = (),
) -> st.SearchStrategy[HttpResponse]:
    """An upstream's response: status, headers, a body in chunks (none for 204/304), and
    sometimes trailers (Envoy's default upstream protocol here is HTTP/2)."""
    names = header_names(known=COMMON_RESPONSE_HEADERS, extra=extra_header_names)
    parts = [
        _part(statuses() if status is None else status),
        _part(header_lists(names=names, hostile=hostile) if headers is None else headers),
        _part(body_chunks(bodies(hostile=hostile)) if body is None else body),
        _part(trailers(hostile=hostile)),
    ]
    (_, make_status), (_, make_headers), (_, make_chunks), (_, make_trailers) = ((p.width, p.make) for p in parts)
    width = sum(p.width for p in parts) + 1

    def response(draw: st.DrawFn, picks: _Picks) -> HttpResponse:
        code = make_status(draw, picks)
        regular = _no_reserved(make_headers(draw, picks), _RESPONSE_RESERVED)
        body_picks = _Picks(picks.data[picks.at :])  # (the body's picks are read whether or not it has one)
        picks.at += parts[2].width
        chunks: tuple[bytes, ...] = () if code in (204, 304) else make_chunks(draw, body_picks)
        trailing = picks.pick(_TRAILERS_SOMETIMES)
        tr = make_trailers(draw, picks) if (with_trailers if with_trailers is not None else trailing) else None
        return HttpResponse(status=code, headers=regular, body_chunks=chunks, trailers=tr)

    return _strategy(width, response)


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


def exchanges(
    *,
    protocol: str | None = None,
    requests: st.SearchStrategy[HttpRequest] | None = None,
    responses: st.SearchStrategy[HttpResponse] | None = None,
    hostile: bool = False,
    extra_header_names: Sequence[str] = (),
    extra_response_header_names: Sequence[str] = (),
) -> st.SearchStrategy[Exchange]:
    """A request and a response over HTTP/1.1 or HTTP/2 (or ``protocol``).  Pass your own
    ``requests``/``responses`` strategies to narrow them; ``extra_header_names`` /
    ``extra_response_header_names`` are generated often (names your filter reads)."""
    request_parts = {
        proto: _part(http_requests(protocol=proto, hostile=hostile, extra_header_names=extra_header_names)
                     if requests is None else requests)
        for proto in _PROTOCOLS
    }
    request_width = max(p.width for p in request_parts.values())  # (the same layout for both)
    response = _part(http_responses(hostile=hostile, extra_header_names=extra_response_header_names)
                     if responses is None else responses)
    protocol_part = _part(protocols())

    def exchange(draw: st.DrawFn, picks: _Picks) -> Exchange:
        drawn = protocol_part.make(draw, picks)
        proto = drawn if protocol is None else protocol
        request_picks = _Picks(picks.data[picks.at : picks.at + request_width])
        picks.at += request_width
        return Exchange(request_parts[proto].make(draw, request_picks), response.make(draw, picks), proto)

    return _strategy(protocol_part.width + request_width + response.width, exchange)
