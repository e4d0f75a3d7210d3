"""The package's layer order, read from every module's imports (function-level ones too).

An import may only point to the importer's own layer or to a layer it is declared to
build on (``ALLOWED``); the core imports none of the I/O libraries; no two modules import
each other, directly or through others.  ``import proxywasm_host`` and the core load no
wasmtime.  Imports under ``if TYPE_CHECKING:`` never run and are not counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxywasm_host"

#: layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    # which compiled parts run (imports nothing of ours; every layer may ask)
    "speedups": set(),
    "core": {"errors", "speedups"},
    "http": {"errors", "core"},
    "runtime": {"errors", "core", "speedups"},
    "net": {"errors", "core", "http"},
    "harness": {"errors", "core", "http", "runtime", "net"},
    "envoy": {"errors", "core", "http", "runtime", "net", "harness"},
    "serve": {"errors", "core", "http", "runtime", "net", "harness"},
    "deploy": {"errors", "core", "http", "runtime", "net", "harness", "envoy"},
    "strategies": {"errors", "core", "http", "runtime", "net", "harness"},
    "fuzz": {"errors", "core", "http", "runtime", "net", "harness", "envoy", "strategies"},
    "pytest_plugin": {"errors", "core", "http", "runtime", "net", "harness", "envoy", "strategies", "fuzz", "speedups"},
    "cli": {"errors", "core", "http", "runtime", "net", "harness", "envoy", "serve", "deploy", "strategies", "fuzz", "speedups"},
    # the package root only re-exports (lazily) and runs the CLI
    "__init__": {"errors", "core", "http", "runtime", "harness", "speedups"},
    "__main__": {"cli"},
}

#: third-party or stdlib I/O modules the sans-IO core must not import
CORE_FORBIDDEN = {"wasmtime", "asyncio", "pytest", "hypercorn", "h2", "h11", "aiohttp", "requests", "socket", "oras"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "proxywasm_host", module
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported module, line) for every import that can run, at any depth."""
    found: list[tuple[str, int]] = []
    package_parts = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # ``from package import submodule`` imports the submodule too
            for alias in node.names:
                found.append((f"{target}.{alias.name}", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def collect(package: Path) -> dict[str, tuple[Path, list[tuple[str, int]]]]:
    modules: dict[str, tuple[Path, list[tuple[str, int]]]] = {}
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, package)
        modules[name] = (path, imports_of(path.read_text(), name, path.name == "__init__.py"))
    return modules


def violations(modules: dict[str, tuple[Path, list[tuple[str, int]]]]) -> list[str]:
    """Every import against the layer order, every forbidden core import, every cycle."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, imports) in modules.items():
        layer = layer_of(name)
        if layer not in ALLOWED:
            problems.append(f"{name}: layer {layer!r} is not declared in ALLOWED")
            continue
        for target, line in imports:
            top = target.split(".")[0]
            if layer == "core" and top in CORE_FORBIDDEN:
                problems.append(f"{path.name}:{line}: the core imports {target}")
            if top != "proxywasm_host":
                continue
            if target not in modules:
                continue  # ``from pkg import name`` where name is not a module
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in ALLOWED[layer]:
                problems.append(f"{name}:{line}: imports {target} ({layer} -> {target_layer} runs against the layer order)")
            if target != name:
                graph[name].add(target)
    problems.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_package_follows_the_layer_order_and_has_no_cycles() -> None:
    problems = violations(collect(PACKAGE))
    assert not problems, "\n".join(problems)


def test_every_module_says_what_it_owns() -> None:
    """Each module opens with a docstring whose first line says what it owns."""
    missing = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_a_back_import_is_caught(tmp_path: Path) -> None:
    """The checker itself: a core module importing the harness, even inside a function,
    and two modules importing each other are reported."""
    pkg = tmp_path / "proxywasm_host"
    (pkg / "core").mkdir(parents=True)
    (pkg / "harness").mkdir()
    for folder in (pkg, pkg / "core", pkg / "harness"):
        (folder / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text(
        "from proxywasm_host.core import b\n"
        "def late():\n    from proxywasm_host.harness import host\n    return host\n"
    )
    (pkg / "core" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from proxywasm_host.harness import host\nfrom . import a\n")
    (pkg / "harness" / "host.py").write_text("import wasmtime\nfrom proxywasm_host.core import a\n")
    problems = violations(collect(pkg))
    assert any("proxywasm_host.core.a:3: imports proxywasm_host.harness.host" in p for p in problems), problems
    assert not any("core.b:3" in p for p in problems), problems  # TYPE_CHECKING does not count
    assert any(p.startswith("import cycle:") and "proxywasm_host.core.a" in p and "proxywasm_host.core.b" in p for p in problems), problems
    assert not any("harness" in p and "the core imports" in p for p in problems)


def test_the_core_refuses_io_libraries(tmp_path: Path) -> None:
    pkg = tmp_path / "proxywasm_host"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "x.py").write_text("def f():\n    import asyncio\n    return asyncio\n")
    assert violations(collect(pkg)) == ["x.py:2: the core imports asyncio"]


@pytest.mark.parametrize(
    ("module", "may_load"),
    [
        ("proxywasm_host", set()),
        ("proxywasm_host.core.types", set()),
        ("proxywasm_host.core.stream", set()),
        ("proxywasm_host.core.vm", set()),
        ("proxywasm_host.http.profiles", set()),
        # the plugin runs inside pytest; the harness (and wasmtime) load with the first fixture
        ("proxywasm_host.pytest_plugin", {"pytest"}),
    ],
)
def test_importing_loads_no_wasmtime(module: str, may_load: set[str]) -> None:
    watched = {"wasmtime", "asyncio", "pytest", "h2", "hypercorn"}
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(watched)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == repr(sorted(may_load)), f"importing {module} loaded {out}"
