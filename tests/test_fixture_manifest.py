"""The committed wasm fixtures match fixtures/manifest.json.

Every manifest entry names its sources (``source`` + ``extra_sources``) and the sha256
of both the sources and the .wasm built from them; this test recomputes both, so it
fails when a filter's source changed without a rebuild, when a .wasm was replaced by
hand, or when a .wasm in fixtures/wasm has no entry. Fix: rebuild with
``bash fixtures/install-toolchains.sh && python fixtures/build.py`` (or ``--only rust``)
and commit the .wasm files together with fixtures/manifest.json.

Standard library + pytest only: it needs no toolchain and imports no toolchain module.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
MANIFEST = FIXTURES / "manifest.json"
WASM_DIR = FIXTURES / "wasm"


def _load_common():
    name = "_fixtures_toolchains_common"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FIXTURES / "toolchains" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


def _entries() -> dict[str, dict]:
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text()).get("fixtures", {})


ENTRIES = _entries()
REBUILD = "rebuild: bash fixtures/install-toolchains.sh && python fixtures/build.py"


def test_manifest_exists_and_lists_fixtures():
    assert MANIFEST.exists(), f"fixtures/manifest.json is missing; {REBUILD}"
    assert ENTRIES, "fixtures/manifest.json lists no fixture"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entry_matches_wasm_and_sources(name):
    common = _load_common()
    entry = ENTRIES[name]
    fixture = common.fixture_from_entry(name, entry)
    assert fixture.wasm.exists(), f"{fixture.wasm.relative_to(REPO)} is missing; {REBUILD}"
    if "wasm" in entry:
        assert REPO / entry["wasm"] == fixture.wasm
    assert common.file_sha256(fixture.wasm) == entry["wasm_sha256"], (
        f"{name}: the .wasm differs from the one the manifest records; {REBUILD}"
    )
    assert fixture.source.exists(), f"{name}: source {entry['source']} is missing"
    for extra in fixture.extra_sources:
        assert extra.exists(), f"{name}: extra source {extra.relative_to(REPO)} is missing"
    assert common.source_sha256(fixture) == entry["source_sha256"], (
        f"{name}: sources changed since the .wasm was built; {REBUILD}"
    )


def test_every_wasm_has_a_manifest_entry():
    orphans = sorted(p.name for p in WASM_DIR.glob("*.wasm") if p.stem not in ENTRIES)
    assert not orphans, f"fixtures/wasm files without a manifest entry: {orphans}; {REBUILD}"
