"""The C map codec (proxywasm_host/core/_codec.c) against the Python one it replaces: the same
bytes out for every map, the same map (or None, or ValueError) back for every input,
valid, damaged or random."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxywasm_host.core import codec

c_codec: Any = None
if not os.environ.get("PROXYWASM_HOST_NO_SPEEDUPS"):
    try:
        from proxywasm_host.core import _codec as c_codec
    except ImportError:  # not built: test_the_c_codec_is_built_and_in_use says so
        pass

header_bytes = st.binary(min_size=0, max_size=48)
pairs_strategy = st.lists(st.tuples(header_bytes, header_bytes), max_size=30)


def test_the_c_codec_is_built_and_in_use() -> None:
    if os.environ.get("PROXYWASM_HOST_NO_SPEEDUPS"):
        assert not codec.C_CODEC
        return
    assert c_codec is not None and codec.C_CODEC, "proxywasm_host.core._codec is not built: run `pip install -e .` with a C compiler"
    assert codec.encode_pairs is c_codec.encode_pairs and codec.decode_pairs is c_codec.decode_pairs
    assert codec.text_pairs is c_codec.text_pairs


def _both(fn_c, fn_py, *args):  # type: ignore[no-untyped-def]
    """Each implementation's result, or the exception type it raised."""
    out = []
    for fn in (fn_c, fn_py):
        try:
            out.append(fn(*args))
        except ValueError as exc:
            out.append(type(exc))
    return out


needs_c = pytest.mark.skipif(c_codec is None, reason="the C codec is not in use (PROXYWASM_HOST_NO_SPEEDUPS)")


@needs_c
@given(pairs_strategy)
def test_encode_is_byte_for_byte_the_python_encoding(pairs: list[tuple[bytes, bytes]]) -> None:
    assert c_codec.encode_pairs(pairs) == codec.py_encode_pairs(pairs)
    assert c_codec.encode_pairs(tuple(pairs)) == codec.py_encode_pairs(pairs)


@needs_c
def test_encode_takes_any_bytes_like_and_refuses_the_rest() -> None:
    pairs = [(bytearray(b"k"), memoryview(b"v1")), (b"", b"")]
    assert c_codec.encode_pairs(pairs) == codec.py_encode_pairs([(b"k", b"v1"), (b"", b"")])
    with pytest.raises(TypeError, match="bytes-like"):
        c_codec.encode_pairs([("text", b"v")])
    with pytest.raises(TypeError, match=r"\(key, value\)"):
        c_codec.encode_pairs([(b"k", b"v", b"extra")])
    with pytest.raises(TypeError):
        c_codec.encode_pairs(42)


@needs_c
@settings(max_examples=300)
@given(pairs_strategy, st.data())
def test_decode_agrees_on_valid_and_damaged_maps(pairs: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    encoded = bytearray(codec.py_encode_pairs(pairs))
    assert c_codec.decode_pairs(bytes(encoded)) == pairs
    # damage it: overwrite a byte, cut it short or grow it
    how = data.draw(st.sampled_from(["poke", "cut", "grow", "count"]))
    if how == "poke":
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    elif how == "cut":
        encoded = encoded[: data.draw(st.integers(0, len(encoded)))]
    elif how == "grow":
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    else:
        struct.pack_into("<I", encoded, 0, data.draw(st.integers(0, 2**32 - 1)))
    c_out, py_out = _both(c_codec.decode_pairs, codec.py_decode_pairs, memoryview(encoded))
    assert c_out == py_out
    assert c_codec.decode_pairs(bytes(encoded)) == c_out  # a view or bytes: the same


@needs_c
@settings(max_examples=300)
@given(st.binary(max_size=64), st.integers(-2, 70), st.one_of(st.none(), st.integers(-2, 70)))
def test_decode_agrees_on_any_bytes_and_range(buf: bytes, offset: int, size: int | None) -> None:
    c_out, py_out = _both(c_codec.decode_pairs, codec.py_decode_pairs, buf, offset, size)
    assert c_out == py_out


@needs_c
def test_decode_limits_are_cpp_hosts() -> None:
    at_limit = codec.py_encode_pairs([(b"k%d" % i, b"") for i in range(codec.MAX_PAIRS_COUNT)])
    assert len(c_codec.decode_pairs(at_limit)) == codec.MAX_PAIRS_COUNT
    over = codec.py_encode_pairs([(b"k%d" % i, b"") for i in range(codec.MAX_PAIRS_COUNT + 1)])
    assert c_codec.decode_pairs(over) is None is codec.py_decode_pairs(over)
    big = codec.py_encode_pairs([(b"k", b"v" * codec.MAX_PAIRS_BYTES)])
    assert c_codec.decode_pairs(big) is None is codec.py_decode_pairs(big)
    just = codec.py_encode_pairs([(b"k", b"v" * (codec.MAX_PAIRS_BYTES - 15))])
    assert len(just) == codec.MAX_PAIRS_BYTES
    assert c_codec.decode_pairs(just) == [(b"k", b"v" * (codec.MAX_PAIRS_BYTES - 15))]


@needs_c
def test_decode_reads_in_place_from_a_window() -> None:
    encoded = codec.py_encode_pairs([(b"a", b"1")])
    arena = memoryview(bytearray(b"\xAA" * 7 + encoded + b"\xBB" * 5))
    assert c_codec.decode_pairs(arena, 7, len(encoded)) == [(b"a", b"1")]
    assert c_codec.decode_pairs(arena, 7, len(encoded) + 1) is None  # one trailing byte too many
    with pytest.raises(ValueError, match="outside"):
        c_codec.decode_pairs(arena, 7, len(arena))


texts = st.text(max_size=12)  # includes lone surrogates, which UTF-8 cannot encode
items = st.one_of(
    st.tuples(texts, texts),
    st.tuples(texts, texts).map(list),  # a list, not a tuple
    st.tuples(st.binary(max_size=4), texts),
    st.tuples(texts, st.binary(max_size=4)),
    st.tuples(texts),
    st.tuples(texts, texts, texts),
)


@needs_c
@settings(max_examples=400)
@given(st.lists(items, max_size=8), st.integers(0, 6), st.dictionaries(texts, st.binary(max_size=4), max_size=3))
def test_text_pairs_agrees_on_entries_and_the_names_cache(pairs: list, names_max: int, seeded: dict) -> None:  # type: ignore[type-arg]
    c_names, py_names = dict(seeded), dict(seeded)
    c_out = c_codec.text_pairs(pairs, c_names, names_max)
    assert c_out == codec.py_text_pairs(pairs, py_names, names_max)
    assert c_names == py_names  # the same names cached (a seeded entry is used as it is)
    assert len(c_names) <= max(names_max, len(seeded))
    if c_out is not None:
        assert c_out == tuple((k.encode().lower() if k not in seeded else seeded[k], v.encode()) for k, v in pairs)


def test_text_pairs_never_changes_shared_bytes_objects() -> None:
    """A one-letter name lower-cased must be a new bytes object: CPython shares one object
    per single byte, and lower-casing that one in place turned every b"Q" in the process
    into b"q" (it broke pytest-xdist's wire protocol)."""
    for letter in "AQZ":
        for names in ({}, {letter: b"seeded"}):
            for fn in (codec.text_pairs, codec.py_text_pairs):
                out = fn([(letter, letter)], dict(names), 8)
                assert out is not None
                assert bytes([ord(letter)]) == letter.encode() and bytes([ord(letter)])[0] == ord(letter)
                assert out[0][1] == letter.encode()
    assert codec.text_pairs([("Q", "")], {}, 8) == ((b"q", b""),)
    assert b"Q"[0] == 0x51 and bytes([0x51]).lower() == b"q"
