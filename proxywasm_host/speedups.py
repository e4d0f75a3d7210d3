"""Which compiled parts run: the core compiled by mypyc, the C codec, the C crossings.

Three optional parts are built by ``pip install`` when a C compiler is there (``setup.py``):

* the hot core modules and the harness's stream driver (:data:`COMPILED_MODULES`), compiled
  by mypyc from their own typed Python source: the same ``.py`` files run interpreted without it;
* ``core/_codec.c``, the serialized-map codec (kept in C: faster than mypyc's build of
  ``core/codec.py``'s Python twin, see benchmarks/README.md);
* ``runtime/_speedups.c``, the crossings into and out of wasmtime that need C function
  pointers (the fallback is ctypes).

``PROXYWASM_HOST_NO_SPEEDUPS=1`` (set before ``proxywasm_host`` is imported) turns all
three off at once: the pure-Python path, same behaviour, slower.  In a source checkout the
compiled core is also left aside while any of its ``.py`` files is newer than the build
(an edit runs at once, interpreted, until ``pip install -e .`` compiles it again).  :func:`describe` says
which path runs without importing wasmtime or the core (``proxywasm-host inspect`` and
the pytest header print :func:`summary`).

This module imports nothing of the package: the package root installs :class:`SourceFinder`
first thing, so the switch holds for every core module imported after it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: the environment variable that turns every compiled part off
SWITCH = "PROXYWASM_HOST_NO_SPEEDUPS"

#: the modules setup.py has mypyc compile (setup.py reads this tuple from this file)
COMPILED_MODULES = (
    "proxywasm_host.core.text",
    "proxywasm_host.core.lazy",
    "proxywasm_host.core.codec",
    "proxywasm_host.core.headers",
    "proxywasm_host.core.context",
    "proxywasm_host.core.spec",
    "proxywasm_host.core.vm",
    "proxywasm_host.core.stream",
    "proxywasm_host.core.hostcalls",
    "proxywasm_host.core.hostcalls.base",
    "proxywasm_host.core.hostcalls.basics",
    "proxywasm_host.core.hostcalls.data",
    "proxywasm_host.core.hostcalls.streams",
    "proxywasm_host.core.hostcalls.shared",
    "proxywasm_host.core.hostcalls.callouts",
    "proxywasm_host.core.hostcalls.higress",
    "proxywasm_host.core.hostcalls.wasi",
    # the harness's stream driver: every test event goes through it (it imports only the core)
    "proxywasm_host.harness.stream",
)

#: the library mypyc puts the compiled code of all of them in (setup.py's group name)
COMPILED_GROUP = "proxywasm_host.core._compiled__mypyc"


def disabled() -> bool:
    """True when ``PROXYWASM_HOST_NO_SPEEDUPS`` asks for the pure-Python path."""
    return bool(os.environ.get(SWITCH))


_PACKAGE = Path(__file__).resolve().parent


def _extension(name: str, package: Path = _PACKAGE) -> Path | None:
    """The extension file that ``import name`` would find in this package (a module, or a
    package's ``__init__``), without importing anything."""
    base = package.joinpath(*name.split(".")[1:])
    for stem in (base / "__init__", base):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = stem.with_name(stem.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def stale_sources(package: Path = _PACKAGE) -> list[str]:
    """In a source checkout (``setup.py`` beside the package: an editable install), the
    compiled modules whose ``.py`` changed after mypyc's library was built: the compiled
    code would run the old source.  Empty for an installed package, or without a build."""
    if not (package.parent / "setup.py").is_file():
        return []
    library = _extension(COMPILED_GROUP, package)
    if library is None:
        return []
    built = library.stat().st_mtime
    stale = []
    for name in COMPILED_MODULES:
        base = package.joinpath(*name.split(".")[1:])
        source = base / "__init__.py" if base.is_dir() else base.with_name(base.name + ".py")
        if source.is_file() and source.stat().st_mtime > built:
            stale.append(name)
    return stale


def _use_source(stale: list[str] | None = None) -> bool:
    """True when the compiled core must not run: the switch, mypyc's library missing, or a
    source changed since it was built (then every compiled module runs from its source: the
    compiled ones call each other directly, so they are used all together or not at all).
    ``stale``: :func:`stale_sources` when the caller has it already."""
    return disabled() or _extension(COMPILED_GROUP) is None or bool(stale_sources() if stale is None else stale)


class SourceFinder(importlib.abc.MetaPathFinder):
    """Imports a compiled core module from its ``.py`` source instead of its extension
    when the switch is set, or when mypyc's library is missing (an extension whose
    library did not build would fail to import)."""

    def __init__(self) -> None:
        self._source: bool | None = None

    def _source_wanted(self) -> bool:
        if self._source is None:
            self._source = _use_source()
        return self._source

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES or not self._source_wanted():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None  # not compiled: the usual import finds the source
        package = spec.submodule_search_locations is not None
        source = Path(spec.origin).with_name("__init__.py" if package else fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=spec.submodule_search_locations
        )


def install() -> None:
    """Put :class:`SourceFinder` in front of the import system (once)."""
    if not any(isinstance(f, SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder())


def _is_compiled(name: str, use_source: bool) -> bool:
    module = sys.modules.get(name)
    if module is not None:
        return not str(getattr(module, "__file__", "")).endswith(".py")
    return not use_source and _extension(name) is not None


def describe() -> dict[str, object]:
    """Which path runs: ``core`` ("compiled", "pure" or "partly compiled"), the compiled
    modules, ``codec`` ("C" or "Python") and ``crossings`` ("C" or "ctypes").  Decided as
    the imports decide it, without importing wasmtime or the core."""
    stale = stale_sources()  # (once: the pytest header line runs this at every pytest start)
    use_source = _use_source(stale)
    compiled = [name for name in COMPILED_MODULES if _is_compiled(name, use_source)]
    core = "compiled" if len(compiled) == len(COMPILED_MODULES) else "partly compiled" if compiled else "pure"
    codec = sys.modules.get("proxywasm_host.core.codec")
    if codec is not None:
        c_codec = bool(getattr(codec, "C_CODEC", False))
    else:
        c_codec = not disabled() and _extension("proxywasm_host.core._codec") is not None
    capi = sys.modules.get("proxywasm_host.runtime._capi")
    if capi is not None:
        c_crossings = bool(getattr(capi, "SPEEDUPS", False))
    else:
        c_crossings = not disabled() and _extension("proxywasm_host.runtime._speedups") is not None
    return {
        "core": core,
        "compiled_modules": compiled,
        "codec": "C" if c_codec else "Python",
        "crossings": "C" if c_crossings else "ctypes",
        "switch": f"{SWITCH}=1" if disabled() else None,
        "stale": stale,
    }


def summary() -> str:
    """One line: ``core compiled (mypyc, 16 modules), codec C, crossings C``."""
    d = describe()
    modules = d["compiled_modules"]
    count = len(modules) if isinstance(modules, list) else 0
    core = f"core {d['core']}" + (f" (mypyc, {count} of {len(COMPILED_MODULES)} modules)" if count else "")
    line = f"{core}, codec {d['codec']}, crossings {d['crossings']}"
    if d["switch"]:
        line += f" ({d['switch']})"
    elif d["stale"]:
        line += " (the core's sources changed since it was compiled: `pip install -e .` compiles it again)"
    return line
