from __future__ import annotations

import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WASM = REPO / "fixtures" / "wasm"
WAT = REPO / "fixtures" / "wat"

RUST_TARGETS = ("wasm32-unknown-unknown", "wasm32-wasip1")


def fixture_wasm(name: str) -> Path:
    """Path of a committed fixture module; fails loudly when it is missing."""
    path = WASM / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"fixture {path} is missing: rebuild with `python fixtures/build.py`")
    return path


def u32(mem: memoryview, addr: int) -> int:
    return struct.unpack_from("<I", mem, addr)[0]
