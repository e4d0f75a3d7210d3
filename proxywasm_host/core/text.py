"""The one text policy of the host: how test-supplied text and guest bytes convert.

Header names and values, paths and cluster names are UTF-8 with ``surrogateescape`` (any
bytes survive a round trip to text and back).  Without an error handler str.encode() and
bytes.decode() take a faster path and give the same result whenever they succeed, so the
handler is only named for the rare text that needs it.  Bodies given as text are UTF-8.
"""

from __future__ import annotations

import collections.abc as _abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

from proxywasm_host.errors import HarnessUsageError

#: headers as a test gives them: a mapping, or (name, value) pairs
Headers = Union[Mapping[str, str], Iterable[Sequence[str]]]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | these)


def to_bytes(value: str | bytes | bytearray | memoryview) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return bytes(value)


def to_text(value: bytes | bytearray) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("utf-8", "surrogateescape")


def header_pairs(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    # a list (the usual case) skips the slower ABC isinstance check
    items = headers if type(headers) is list else headers.items() if isinstance(headers, _abc.Mapping) else headers
    out = []
    for item in items:
        if type(item) is not tuple or len(item) != 2:  # the common case costs one check
            if isinstance(item, (str, bytes)) or len(item) != 2:
                raise HarnessUsageError(
                    f"headers must be a dict or a list of (name, value) pairs; got item {item!r}"
                )
            item = (item[0], item[1])
        out.append(item)
    return out


def header_pairs_for_map(headers: Headers | None) -> list[tuple[str, str]]:
    """``header_pairs(headers)`` for headers that only go into a new HeaderMap: a list, the usual
    case, is passed on as it is (not copied, not checked here: the HeaderMap checks each item
    and says what is wrong with a bad one)."""
    if type(headers) is list:
        return headers
    return header_pairs(headers)


def body_bytes(data: str | bytes | bytearray) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise HarnessUsageError(f"a body must be str or bytes, got {type(data).__name__}")


def decode_pairs_text(pairs: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(to_text(k), to_text(v)) for k, v in pairs]

