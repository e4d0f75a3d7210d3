"""An Envoy-like HTTP header map: ordered, duplicates allowed, names lower-cased.

Operations mirror what Envoy 1.40 does behind the proxy-wasm header hostcalls
(docs/abi-notes.md §5.4; measured: docs/conformance.md, issue 12 table): ``get`` returns the
first value, ``add`` appends, ``replace`` removes every entry of the name and appends
the new one at the end (it does not keep the old position), ``remove`` drops every
entry of the name.  Like Envoy's header map, pseudo-headers (``:authority`` ...) stay
in front: one that is added or replaced goes to the end of the pseudo-header block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from proxywasm_host.core.codec import text_pairs
from proxywasm_host.core.text import to_bytes as _b
from proxywasm_host.core.text import to_text as _s
from proxywasm_host.errors import HarnessUsageError

Pair = tuple[bytes, bytes]


#: header name text -> its lower-cased UTF-8, for the names tests send again and again (the
#: same few dozen in a test run): a lookup is cheaper than encode + lower and the two bytes
#: objects they make and free.  Bounded, for a run that generates random names.
_NAMES: dict[str, bytes] = {}
_NAMES_MAX = 2048


#: (name, value) bytes -> the same as text, for the entries read back again and again (every
#: exchange's result decodes what went past the filter).  Bounded, like _NAMES.
_TEXT: dict[Pair, tuple[str, str]] = {}
_TEXT_MAX = 4096


def _text(pair: Pair) -> tuple[str, str]:
    text = (_s(pair[0]), _s(pair[1]))
    if len(_TEXT) >= _TEXT_MAX:
        _TEXT.clear()
    _TEXT[pair] = text
    return text


def _entry(item: Any) -> Pair:
    """One (name, value) entry the general way (bytes, lists, lone surrogates).  ``item`` is
    whatever a test passed, checked here (typed Any: compiled, a narrower annotation would
    be checked first, with a message that names no header)."""
    if isinstance(item, (str, bytes)) or len(item) != 2:
        # what a test passed: the harness hands its header lists over unchecked
        raise HarnessUsageError(f"headers must be a dict or a list of (name, value) pairs; got item {item!r}")
    name, value = item
    for part, what in ((name, "name"), (value, "value")):
        if not isinstance(part, (str, bytes, bytearray, memoryview)):
            raise TypeError(
                f"header {name!r}: the {what} must be str or bytes, got {type(part).__name__} {part!r}"
                + (f" (write {str(part)!r})" if isinstance(part, (int, float)) and what == "value" else "")
            )
    return _b(name).lower(), _b(value)


def _with_pseudo(pairs: tuple[Pair, ...], name: bytes, value: bytes) -> tuple[Pair, ...]:
    """``pairs`` with the pseudo-header entry inserted after the last pseudo-header."""
    end = 0
    while end < len(pairs) and pairs[end][0][:1] == b":":
        end += 1
    return pairs[:end] + ((name, value),) + pairs[end:]


class HeaderMap:
    """Mutable ordered multimap of header name/value bytes."""

    # The entries are one tuple of (name, value) tuples, replaced (never changed in place) by
    # every mutation: a copy shares it, and a tuple of bytes tuples is something Python's
    # cyclic GC stops tracking after one collection, where a list of them stays tracked and
    # is walked again by every collection while the stream is kept (Plugin.streams).
    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[Sequence[str | bytes]] = ()) -> None:
        if pairs == ():  # an empty map (from_pairs and copy start so: nothing to convert)
            self._pairs: tuple[Pair, ...] = ()
            return
        if type(pairs) is not list:
            pairs = list(pairs)  # may be walked twice below
        # the usual case, (str, str) tuples, in one call (C when built); else bytes, lists,
        # lone surrogates (see _b)
        encoded = text_pairs(pairs, _NAMES, _NAMES_MAX)  # type: ignore[arg-type]
        self._pairs = encoded if encoded is not None else tuple([_entry(item) for item in pairs])

    # -- hostcall-level operations (bytes) ---------------------------------------------
    def pairs(self) -> list[Pair]:
        return list(self._pairs)

    def set_pairs(self, pairs: Iterable[Pair]) -> None:
        # Envoy clears the map and adds each pair: pseudo-headers end up in front.  (The
        # entries as Any: compiled, a Pair would be checked to hold bytes, and a test may
        # set a bytearray value.)
        given: list[Any] = list(pairs)
        entries = [(k.lower(), v) for k, v in given]
        if any(k[:1] == b":" for k, _ in entries[1:]):
            entries = [e for e in entries if e[0][:1] == b":"] + [e for e in entries if e[0][:1] != b":"]
        self._pairs = tuple(entries)

    def get(self, name: bytes) -> bytes | None:
        name = name.lower()
        for k, v in self._pairs:
            if k == name:
                return v
        return None

    def add(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name[:1] == b":":
            self._pairs = _with_pseudo(self._pairs, name, value)
        else:
            self._pairs += ((name, value),)

    def replace(self, name: bytes, value: bytes) -> None:
        """Envoy ``setCopy``: every entry of ``name`` goes, the new one is appended (a
        pseudo-header at the end of the pseudo-header block)."""
        name = name.lower()
        kept = tuple([(k, v) for k, v in self._pairs if k != name])
        if name[:1] == b":":
            self._pairs = _with_pseudo(kept, name, value)
        else:
            self._pairs = kept + ((name, value),)

    def remove(self, name: bytes) -> None:
        name = name.lower()
        self._pairs = tuple([(k, v) for k, v in self._pairs if k != name])

    def byte_size(self) -> int:
        """Envoy ``HeaderMap::byteSize()``: sum of name and value lengths."""
        return sum(len(k) + len(v) for k, v in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    # -- test-author conveniences (str) -------------------------------------------------
    def items(self) -> list[tuple[str, str]]:
        """All entries, in order, as text."""
        text = _TEXT.get
        # (as Any: compiled, a Pair is checked to hold bytes, and a test may have set a bytearray)
        entries: tuple[Any, ...] = self._pairs
        try:  # the usual case: entries seen before (the same few headers again and again)
            return [text(pair) or _text(pair) for pair in entries]
        except TypeError:  # an unhashable value (a bytearray a test put in): not remembered
            pass
        try:  # all valid UTF-8 (see _s), decoded inline
            return [(k.decode(), v.decode()) for k, v in entries]
        except UnicodeDecodeError:
            return [(_s(k), _s(v)) for k, v in entries]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __getitem__(self, name: str) -> str:
        value = self.get(_b(name))
        if value is None:
            raise KeyError(f"no header {name.lower()!r}; present: {[k for k, _ in self.items()]}")
        return _s(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, (str, bytes)) and self.get(_b(name)) is not None

    def value(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name`` as text, or ``default``."""
        value = self.get(_b(name))
        return default if value is None else _s(value)

    def get_all(self, name: str) -> list[str]:
        key = _b(name).lower()
        return [_s(v) for k, v in self._pairs if k == key]

    @classmethod
    def from_pairs(cls, pairs: tuple[Pair, ...]) -> HeaderMap:
        """A map of ``pairs`` as :meth:`frozen_pairs` gave them (lower-cased names, bytes)."""
        hmap = cls()  # (not cls.__new__: a compiled class has no __new__ to call)
        hmap._pairs = pairs
        return hmap

    def frozen_pairs(self) -> tuple[Pair, ...]:
        """The entries as they are now, immutable (later changes to the map don't show)."""
        return self._pairs

    def copy(self) -> HeaderMap:
        clone = HeaderMap()
        clone._pairs = self._pairs  # immutable: shared until either map changes
        return clone

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeaderMap):
            return self._pairs == other._pairs
        if isinstance(other, (list, tuple)):
            try:
                return self.items() == [(str(k).lower(), str(v)) for k, v in other]
            except (TypeError, ValueError):
                return False
        if isinstance(other, dict):
            return self.items() == [(str(k).lower(), str(v)) for k, v in other.items()]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HeaderMap({self.items()!r})"


def compare_header_lists(
    actual: Sequence[tuple[str, str]], expected: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, list[str], list[str]]]]:
    """How ``actual`` differs from ``expected``: entries whose name is missing, entries whose
    name is unexpected, and (name, actual values, expected values) for names present in both
    with different values.  All empty with unequal lists means: same headers, other order."""
    a_names = {k for k, _ in actual}
    e_names = {k for k, _ in expected}
    missing = [(k, v) for k, v in expected if k not in a_names]
    unexpected = [(k, v) for k, v in actual if k not in e_names]
    changed = []
    for name in dict.fromkeys(k for k, _ in expected if k in a_names):
        av = [v for k, v in actual if k == name]
        ev = [v for k, v in expected if k == name]
        if av != ev:
            changed.append((name, av, ev))
    return missing, unexpected, changed


def one_or_all(values: list[str]) -> str:
    """``'x'`` for one value, ``['x', 'y']`` for several (for diff messages)."""
    return repr(values if len(values) > 1 else values[0])
