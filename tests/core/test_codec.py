"""The pairs codec: round-trips, Envoy's strictness, and encoding in place."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from proxywasm_host.core import codec

header_bytes = st.binary(min_size=0, max_size=64)
pairs_strategy = st.lists(st.tuples(header_bytes, header_bytes), max_size=40)


def test_worked_example_from_abi_facts() -> None:
    encoded = codec.encode_pairs([(b"a", b"1"), (b"b", b"22")])
    assert encoded.hex() == "02000000" "0100000001000000" "0100000002000000" "61003100" "6200323200"
    assert len(encoded) == 29


@given(pairs_strategy)
def test_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    encoded = codec.encode_pairs(pairs)
    assert len(encoded) == codec.pairs_size(pairs)
    assert codec.decode_pairs(encoded) == pairs


@given(pairs_strategy, st.integers(min_value=0, max_value=300))
def test_encode_in_place_touches_only_its_range(pairs: list[tuple[bytes, bytes]], offset: int) -> None:
    size = codec.pairs_size(pairs)
    arena = bytearray(b"\xAA" * (offset + size + 16))
    view = memoryview(arena)
    written = codec.encode_pairs_into(view, offset, pairs)
    assert written == size
    assert arena[:offset] == b"\xAA" * offset
    assert arena[offset + size :] == b"\xAA" * 16
    assert codec.decode_pairs(view, offset, size) == pairs


@settings(max_examples=25)
@given(st.integers(min_value=900, max_value=1024), st.integers(min_value=0, max_value=2**32))
def test_large_maps_round_trip(count: int, seed: int) -> None:
    rnd = random.Random(seed)
    pairs = [(rnd.randbytes(rnd.randint(1, 8)), rnd.randbytes(rnd.randint(0, 200))) for _ in range(count)]
    assert codec.decode_pairs(codec.encode_pairs(pairs)) == pairs


def test_non_ascii_and_embedded_nul_values() -> None:
    pairs = [("ключ".encode(), "значение ✓".encode()), (b"bin", b"\x00\xff\x00"), (b"empty", b"")]
    assert codec.decode_pairs(codec.encode_pairs(pairs)) == pairs


def test_empty_map_encodings_are_all_empty() -> None:
    assert codec.decode_pairs(b"") == []
    assert codec.decode_pairs(b"\x00") == []
    assert codec.decode_pairs(b"\x00\x00\x00\x00") == []


def test_malformed_maps_are_rejected_whole() -> None:
    good = codec.encode_pairs([(b"k", b"v")])
    assert codec.decode_pairs(good[:-1]) is None  # missing final NUL
    assert codec.decode_pairs(good + b"x") is None  # trailing bytes
    bad_nul = bytearray(good)
    bad_nul[-3] = ord("x")  # the NUL after the key
    assert codec.decode_pairs(bytes(bad_nul)) is None
    assert codec.decode_pairs(struct.pack("<I", 5) + b"\0" * 8) is None  # count overruns
    assert codec.decode_pairs(struct.pack("<III", 1, 100, 0) + b"k\0\0") is None  # length overruns


def test_cpp_host_limits() -> None:
    too_many = codec.encode_pairs([(b"k", b"")] * (codec.MAX_PAIRS_COUNT + 1))
    assert codec.decode_pairs(too_many) is None
    too_big = codec.encode_pairs([(b"k", b"v" * (codec.MAX_PAIRS_BYTES))])
    assert codec.decode_pairs(too_big) is None
    assert codec.decode_pairs(codec.encode_pairs([(b"k", b"")] * codec.MAX_PAIRS_COUNT)) is not None


@given(st.binary(max_size=200))
def test_decoder_never_raises_on_garbage(data: bytes) -> None:
    result = codec.decode_pairs(data)
    assert result is None or isinstance(result, list)


def test_property_path() -> None:
    assert codec.join_property_path(["request", "path"]) == b"request\0path"
    assert codec.split_property_path(b"request\0path") == [b"request", b"path"]
    assert codec.split_property_path(b"request\0path\0") == [b"request", b"path"]
    assert codec.split_property_path(b"") == []
