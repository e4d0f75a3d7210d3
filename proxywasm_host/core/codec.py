"""Byte formats of the proxy-wasm ABI, read and written in place.

The serialized map ("pairs") format, the property path format and Envoy's
property value encodings (docs/abi-notes.md §6).  Encoding builds the whole map as one
``bytes`` (then one copy into guest memory); decoding reads in place from a buffer
(normally a memoryview over the guest's linear memory).  No wasmtime.

:func:`encode_pairs`, :func:`decode_pairs` and :func:`text_pairs` run in C (``_codec.c``,
built by ``pip install``) when it is built, unless ``PROXYWASM_HOST_NO_SPEEDUPS`` is set;
the Python versions below are the fallback and the reference the C ones are tested against
(this module is also compiled by mypyc, but the C ones are faster still: see
benchmarks/README.md, "Compiled core").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import cast

from proxywasm_host.speedups import disabled as speedups_disabled

Pair = tuple[bytes, bytes]

#: cpp-host refuses (parses as an empty map) serialized maps bigger than this.
MAX_PAIRS_BYTES = 1 << 20
#: ... or with more pairs than this.
MAX_PAIRS_COUNT = 1024

_U32 = struct.Struct("<I")


def pairs_size(pairs: Sequence[Pair]) -> int:
    """Number of bytes :func:`encode_pairs_into` writes for ``pairs``."""
    total = 4
    for key, value in pairs:
        total += 10 + len(key) + len(value)
    return total


def py_encode_pairs(pairs: Sequence[Pair]) -> bytes:
    """Serialize ``pairs``: u32 N, N × (u32 key_len, u32 value_len), then ``key\\0value\\0`` per pair.

    Built with one ``struct.pack`` and one ``join`` (C loops) rather than a Python loop of
    small writes: about half the time for a typical request's headers.
    """
    n = len(pairs)
    if not n:
        return b"\0\0\0\0"
    flat = list(chain.from_iterable(pairs))  # key, value, key, value, ...
    return struct.pack(f"<{2 * n + 1}I", n, *map(len, flat)) + b"\0".join(flat) + b"\0"


def encode_pairs_into(buf: memoryview, offset: int, pairs: Sequence[Pair]) -> int:
    """Serialize ``pairs`` into ``buf[offset:]``; return the number of bytes written."""
    data = encode_pairs(pairs)
    buf[offset : offset + len(data)] = data
    return len(data)


def py_decode_pairs(buf: memoryview | bytes, offset: int = 0, size: int | None = None) -> list[Pair] | None:
    """Parse a serialized map from ``buf[offset:offset+size]``.

    Returns ``None`` when the bytes are malformed or over cpp-host's limits;
    Envoy then treats the map as empty (docs/abi-notes.md §6.1).  Sizes below 4 bytes
    (the spec's "size 0 or a single 0x00") are an empty map, not an error.
    """
    if size is None:
        size = len(buf) - offset
    if offset < 0 or size < 0 or offset + size > len(buf):
        raise ValueError(f"decode_pairs(): {size} bytes at offset {offset} are outside the {len(buf)}-byte buffer")
    if size < 4:
        return []
    if size > MAX_PAIRS_BYTES:
        return None
    end = offset + size
    (n,) = _U32.unpack_from(buf, offset)
    if n > MAX_PAIRS_COUNT:
        return None
    lengths = offset + 4
    data = lengths + 8 * n
    if data > end:
        return None
    # all lengths in one unpack, the strings in one copy: slicing bytes is cheaper than
    # turning a memoryview slice into bytes per key and value
    lens = struct.unpack_from(f"<{2 * n}I", buf, lengths)
    blob = bytes(buf[data:end])
    stop = end - data
    pos = 0
    out: list[Pair] = []
    for i in range(0, 2 * n, 2):
        kend = pos + lens[i]
        vend = kend + 1 + lens[i + 1]
        if vend + 1 > stop or blob[kend] != 0 or blob[vend] != 0:
            return None
        out.append((blob[pos:kend], blob[kend + 1 : vend]))
        pos = vend + 1
    if pos != stop:
        return None
    return out


def py_text_pairs(pairs: list[object], names: dict[str, bytes], names_max: int) -> tuple[Pair, ...] | None:
    """A header map's entries from a list of ``(str, str)`` tuples: names lower-cased UTF-8,
    taken from (or added to, while it is smaller than ``names_max``) the ``names`` cache,
    values UTF-8.  None when an item is anything else or does not encode (lone surrogates):
    the caller's general path handles, or reports, those."""

    def name(text: str) -> bytes:
        got = text.encode().lower()
        if len(names) < names_max:
            names[text] = got
        return got

    for item in pairs:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str or type(item[1]) is not str:
            return None
    checked = cast("list[tuple[str, str]]", pairs)  # (what the loop above made sure of)
    try:
        return tuple([(names[k] if k in names else name(k), v.encode()) for k, v in checked])
    except UnicodeEncodeError:
        return None


encode_pairs = py_encode_pairs
decode_pairs = py_decode_pairs
text_pairs = py_text_pairs
if not speedups_disabled():
    try:
        from proxywasm_host.core._codec import decode_pairs, encode_pairs, text_pairs  # type: ignore[no-redef]  # noqa: F401, F811
    except ImportError:  # not built (no C compiler at install time)
        pass
#: True when encode_pairs/decode_pairs/text_pairs are the C ones
C_CODEC = encode_pairs is not py_encode_pairs


def split_property_path(path: bytes) -> list[bytes]:
    """Split a NUL-separated property path; a trailing NUL is tolerated."""
    if path.endswith(b"\0"):
        path = path[:-1]
    if not path:
        return []
    return path.split(b"\0")


def join_property_path(segments: Iterable[str | bytes]) -> bytes:
    return b"\0".join(s.encode() if isinstance(s, str) else s for s in segments)


# --- property values (Envoy serializeValue, docs/abi-notes.md §6.3) ---------------------


def encode_int(value: int) -> bytes:
    """int64 attribute: 8 bytes little-endian two's complement."""
    return struct.pack("<q", value)


def encode_uint(value: int) -> bytes:
    return struct.pack("<Q", value)


def encode_bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def encode_double(value: float) -> bytes:
    return struct.pack("<d", value)


def encode_map(pairs: Sequence[Pair]) -> bytes:
    return encode_pairs(pairs)


def encode_list(items: Sequence[bytes]) -> bytes:
    """Lists travel as pairs with each element as the key and an empty value."""
    return encode_pairs([(item, b"") for item in items])
