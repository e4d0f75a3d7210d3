"""A header value that is not str/bytes is a TypeError naming the header (an int used to
become that many NUL bytes: bytes(5))."""

from __future__ import annotations

import pytest
from conftest import fixture_wasm

from proxywasm_host import Host

HELLO = fixture_wasm("hello_world-wasm32-unknown-unknown")


@pytest.mark.parametrize("value", [5, 5.0, None, ["a"]])
def test_non_text_value_is_a_type_error_naming_the_header(value: object) -> None:
    stream = Host().load_plugin(HELLO).http_stream()
    with pytest.raises(TypeError, match=r"header 'content-length': the value must be str or bytes"):
        stream.send_request_headers({":authority": "a", "content-length": value})  # type: ignore[dict-item]
    assert stream.callbacks == []  # refused before the filter saw anything


def test_int_value_message_says_what_to_write() -> None:
    stream = Host().load_plugin(HELLO).http_stream()
    with pytest.raises(TypeError, match=r"got int 5 \(write '5'\)"):
        stream.send_request_headers([(":authority", "a"), ("content-length", 5)])  # type: ignore[list-item]


def test_non_text_name_is_a_type_error_too() -> None:
    stream = Host().load_plugin(HELLO).http_stream()
    with pytest.raises(TypeError, match=r"header 7: the name must be str or bytes"):
        stream.send_request_headers({":authority": "a", 7: "x"})  # type: ignore[dict-item]


def test_str_and_bytes_still_work() -> None:
    stream = Host().load_plugin(fixture_wasm("noop-wasm32-unknown-unknown")).http_stream()
    stream.send_request_headers({":authority": "a", "x-b": b"\xff", "x-s": "5"}, end_of_stream=True)
    assert stream.request_headers.get(b"x-s") == b"5"
    assert stream.request_headers.get(b"x-b") == b"\xff"
