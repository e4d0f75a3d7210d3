"""The host's import and export tables must equal the ABI data files in abi/ exactly."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from proxywasm_host.core import types
from proxywasm_host.core.spec import HOSTCALLS, imports_for
from proxywasm_host.core.types import AbiVersion
from proxywasm_host.core.vm import guest_exports

ABI_DIR = REPO / "abi"


def load(name: str) -> dict:
    return json.loads((ABI_DIR / name).read_text())


@pytest.mark.parametrize("version", list(AbiVersion))
def test_env_imports_match(version: AbiVersion) -> None:
    data = load(f"abi-{version.value}.json")
    assert data["marker_export"] == version.marker
    expected = {(i["module"], i["name"]): (tuple(i["params"]), tuple(i["results"])) for i in data["imports"]}
    actual = {
        (module, spec.name): (spec.wasm_params, spec.wasm_results)
        for module, spec in imports_for(version)
        if module == "env"
    }
    assert actual == expected


def test_wasi_imports_match() -> None:
    data = load("wasi.json")
    expected = {f["name"]: (tuple(f["params"]), tuple(f["results"])) for f in data["functions"]}
    for version in AbiVersion:
        for module in data["modules"]:
            actual = {
                spec.name: (spec.wasm_params, spec.wasm_results)
                for m, spec in imports_for(version)
                if m == module
            }
            assert actual == expected, (version, module)


@pytest.mark.parametrize("version", list(AbiVersion))
def test_guest_exports_match(version: AbiVersion) -> None:
    data = load(f"abi-{version.value}.json")
    expected = {e["name"]: (tuple(e["params"]), tuple(e["results"])) for e in data["exports"]}
    assert guest_exports(version) == expected


ENUMS = {
    "status": types.Status,
    "log_level": types.LogLevel,
    "map_type": types.MapType,
    "buffer_type": types.BufferType,
    "action": types.Action,
    "metric_type": types.MetricType,
    "peer_type": types.PeerType,
}


@pytest.mark.parametrize("version", list(AbiVersion))
def test_enums_match(version: AbiVersion) -> None:
    data = load(f"abi-{version.value}.json")["enums"]
    for key, enum in ENUMS.items():
        expected = {m.name: m.value for m in enum}
        if version is AbiVersion.V0_2_100 and key == "buffer_type":
            from proxywasm_host.core.higress import REDIS_CALL_RESPONSE

            expected["REDIS_CALL_RESPONSE"] = REDIS_CALL_RESPONSE  # Higress's Redis reply buffer
        assert expected == data[key], key
    if version != AbiVersion.V0_1_0:
        assert {m.name: m.value for m in types.StreamType} == data["stream_type"]


def test_every_declared_hostcall_is_in_some_abi_file() -> None:
    names = set()
    for version in AbiVersion:
        names |= {i["name"] for i in load(f"abi-{version.value}.json")["imports"]}
    names |= {f["name"] for f in load("wasi.json")["functions"]}
    assert set(HOSTCALLS) == names
