"""The ``proxywasm_fuzz`` fixture's runner (imported when the fixture is first used: it loads
the harness and wasmtime)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxywasm_host.fuzz import FuzzReport, Invariant, fuzz


def _target(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("proxywasm")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        options.setdefault("wasm", marker.args[0])
    wasm = options.get("wasm")
    if wasm is None:
        module = request.getfixturevalue("proxywasm_module")
        wasm = module.origin
    path = Path(wasm)
    return {
        "wasm": str(path if path.is_absolute() else Path(request.config.rootpath) / path),
        "root_id": options.get("root_id", ""),
        "configuration": options.get("configuration", b""),
        "vm_configuration": options.get("vm_configuration", b""),
    }


def fuzz_runner(request: pytest.FixtureRequest) -> Callable[..., FuzzReport]:
    """What the ``proxywasm_fuzz`` fixture returns (see its documentation)."""

    def run(invariant: Invariant | None = None, **kwargs: Any) -> FuzzReport:
        __tracebackhide__ = True
        options = {**_target(request), **kwargs}
        report = fuzz(options.pop("wasm"), invariant=invariant, **options)
        if not report.ok:
            pytest.fail(f"{report.summary()}\n\nreproduce it with this test:\n\n{report.reproducer()}", pytrace=False)
        return report

    return run
