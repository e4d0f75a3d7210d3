"""Coverage of the filter's own code: the counters of instrumented modules, summed and
written as lcov or Cobertura XML (no wasmtime here).

:class:`CodeCoverage` is the collector a :class:`~proxywasm_host.Host` is given
(``Host(code_coverage=...)``; without one, the collector :func:`activate` installed for
the process, as ``--proxywasm-filter-coverage`` and ``proxywasm-host run --coverage`` do).
Every VM of an instrumented module (:func:`~proxywasm_host.runtime.instrument.instrument`)
attaches its counters memory; the collector reads and zeroes it when asked
(:meth:`CodeCoverage.data`) and when the VM goes away, so nothing is counted twice and
no VM is kept alive for coverage.

:class:`CoverageData` is what crosses processes (pytest-xdist workers hand theirs to the
controller as plain lists): per module, function entry counts and per source line the
count of its most-run instruction; adding two sums them.  :func:`write_report` keeps the
source files a :class:`SourceFilter` keeps (by default: those on disk under the root,
after the path map) and writes lcov (``.info``/any name) or Cobertura (a ``.xml`` name).
"""

from __future__ import annotations

import fnmatch
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from proxywasm_host.runtime.instrument import CoverageMap


@dataclass
class ModuleCoverage:
    origin: str
    has_lines: bool
    #: function name -> [source file or None, line, entry count]
    functions: dict[str, list[Any]] = field(default_factory=dict)
    #: (source file, line) -> count
    lines: dict[tuple[str, int], int] = field(default_factory=dict)
    note: str = ""


class CoverageData:
    """Function and line counts per module (by the sha256 of its original bytes)."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleCoverage] = {}

    def add_counts(self, key: str, origin: str, cmap: CoverageMap, counts: Iterable[int]) -> None:
        values = list(counts)
        module = self.modules.get(key)
        if module is None:
            module = self.modules[key] = ModuleCoverage(origin, cmap.has_lines, note=cmap.note)
        for fn in cmap.functions:
            entry = module.functions.setdefault(fn.name, [fn.file, fn.line, 0])
            entry[2] += values[fn.site]
        for where, sites in cmap.lines.items():
            module.lines[where] = module.lines.get(where, 0) + max(values[s] for s in sites)

    def add(self, other: CoverageData) -> None:
        for key, theirs in other.modules.items():
            mine = self.modules.get(key)
            if mine is None:
                mine = self.modules[key] = ModuleCoverage(theirs.origin, theirs.has_lines, note=theirs.note)
            for name, (file, line, count) in theirs.functions.items():
                mine.functions.setdefault(name, [file, line, 0])[2] += count
            for where, count in theirs.lines.items():
                mine.lines[where] = mine.lines.get(where, 0) + count

    def to_plain(self) -> dict[str, Any]:
        """Lists, strings and ints only (what pytest-xdist's execnet and JSON carry)."""
        return {
            key: {"origin": m.origin, "has_lines": m.has_lines, "note": m.note,
                  "functions": [[name, *entry] for name, entry in m.functions.items()],
                  "lines": [[file, line, count] for (file, line), count in m.lines.items()]}
            for key, m in self.modules.items()
        }

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> CoverageData:
        data = cls()
        for key, m in plain.items():
            module = data.modules[key] = ModuleCoverage(m["origin"], m["has_lines"], note=m.get("note", ""))
            module.functions = {name: [file, line, count] for name, file, line, count in m["functions"]}
            module.lines = {(file, line): count for file, line, count in m["lines"]}
        return data


class CodeCoverage:
    """The collector: counters of every instrumented VM, read back into :class:`CoverageData`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = CoverageData()
        #: token -> (module key, origin, map, counters view getter, things kept alive)
        self._live: dict[int, tuple[str, str, CoverageMap, Callable[[], memoryview], Any]] = {}
        self._next = 0
        #: counts read from VMs that went away, not yet added
        self._pending: list[tuple[str, str, CoverageMap, list[int] | None]] = []

    def attach(self, owner: object, key: str, origin: str, cmap: CoverageMap,
               counters: Callable[[], memoryview], keep: Any = None) -> None:
        """Count ``owner``'s counters (a VM's instance): ``counters()`` gives a writable view
        of its counters memory while ``keep`` (its store) is alive; read when ``owner`` dies."""
        with self._lock:
            token = self._next
            self._next += 1
            self._live[token] = (key, origin, cmap, counters, keep)
        weakref.finalize(owner, self._release, token)

    @staticmethod
    def _take(cmap: CoverageMap, counters: Callable[[], memoryview]) -> list[int] | None:
        """The counts so far (None: none ran), the counters zeroed."""
        view = counters()[: 4 * cmap.sites]
        words = view.cast("I")
        if not any(words):
            return None
        values = words.tolist()
        view[:] = bytes(len(view))
        return values

    def _release(self, token: int) -> None:
        # a finalizer: it may run inside data() (the cyclic GC), so it takes no lock: it reads
        # the dying VM's counters (its store goes with this entry) and queues them
        entry = self._live.pop(token, None)
        if entry is not None:
            key, origin, cmap, counters, _keep = entry
            self._pending.append((key, origin, cmap, self._take(cmap, counters)))

    def data(self) -> CoverageData:
        """Everything counted so far (the live VMs' counters are read and zeroed)."""
        with self._lock:
            enabled = gc.isenabled()
            gc.disable()  # no VM dies (and is read by its finalizer) while the live ones are read
            try:
                for key, origin, cmap, counters, _keep in list(self._live.values()):
                    self._pending.append((key, origin, cmap, self._take(cmap, counters)))
                while self._pending:
                    key, origin, cmap, values = self._pending.pop(0)
                    self._data.add_counts(key, origin, cmap, values or [0] * cmap.sites)
            finally:
                if enabled:
                    gc.enable()
            out = CoverageData()
            out.add(self._data)
            return out

    def add(self, other: CoverageData) -> None:
        """Add another process's counts (an xdist worker's)."""
        with self._lock:
            self._data.add(other)


_active: CodeCoverage | None = None


def activate(collector: CodeCoverage | None) -> CodeCoverage | None:
    """Make ``collector`` the one every :class:`~proxywasm_host.Host` created without
    ``code_coverage=`` uses (None: none); returns the previous one."""
    global _active
    previous, _active = _active, collector
    return previous


def active() -> CodeCoverage | None:
    return _active


# -- reports -------------------------------------------------------------------------------
@dataclass
class SourceFilter:
    """Which source files a report keeps, and where they are on this machine.

    ``path_map``: (prefix as DWARF names it, prefix here) pairs, the first match applies
    (a build with ``--remap-path-prefix`` names paths that exist nowhere). A file is kept
    when it exists here, matches one of ``include`` (fnmatch globs on the mapped path;
    none given: it is under ``root``, or anywhere when ``root`` is None) and none of
    ``exclude``."""

    root: Path | None = None
    path_map: list[tuple[str, str]] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def resolve(self, file: str) -> str | None:
        mapped = file
        for old, new in self.path_map:
            if file == old or file.startswith(old.rstrip("/") + "/"):
                rest = file[len(old.rstrip("/")) :].lstrip("/")
                base = Path(new) if Path(new).is_absolute() or self.root is None else self.root / new
                mapped = str(base / rest)
                break
        path = Path(mapped)
        if not path.is_absolute():
            path = (self.root or Path.cwd()) / path
        mapped = os.path.normpath(path)
        if self.include:
            if not any(fnmatch.fnmatch(mapped, pattern) for pattern in self.include):
                return None
        elif self.root is not None and not mapped.startswith(str(self.root).rstrip("/") + "/"):
            return None
        if any(fnmatch.fnmatch(mapped, pattern) for pattern in self.exclude):
            return None
        return mapped if path.is_file() else None


@dataclass
class FileReport:
    lines: dict[int, int] = field(default_factory=dict)
    #: name -> (line, count)
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Report:
    files: dict[str, FileReport]
    left_out: list[str]  #: source files (as DWARF names them) the filter left out
    #: modules without line tables: (origin, functions run, functions, note)
    function_only: list[tuple[str, int, int, str]]

    @property
    def lines_found(self) -> int:
        return sum(len(f.lines) for f in self.files.values())

    @property
    def lines_hit(self) -> int:
        return sum(1 for f in self.files.values() for c in f.lines.values() if c)

    @property
    def functions_found(self) -> int:
        return sum(len(f.functions) for f in self.files.values())

    @property
    def functions_hit(self) -> int:
        return sum(1 for f in self.files.values() for _line, c in f.functions.values() if c)


def build_report(data: CoverageData, sources: SourceFilter) -> Report:
    files: dict[str, FileReport] = {}
    left_out: set[str] = set()
    resolved: dict[str, str | None] = {}

    def where(file: str) -> str | None:
        if file not in resolved:
            resolved[file] = sources.resolve(file)
            if resolved[file] is None:
                left_out.add(file)
        return resolved[file]

    function_only = []
    for module in data.modules.values():
        if not module.has_lines:
            run = sum(1 for _f, _l, count in module.functions.values() if count)
            function_only.append((module.origin, run, len(module.functions), module.note))
            continue
        for (file, line), count in module.lines.items():
            path = where(file)
            if path is not None:
                report = files.setdefault(path, FileReport())
                report.lines[line] = report.lines.get(line, 0) + count
        for name, (file, line, count) in module.functions.items():
            path = where(file) if file is not None else None
            if path is not None:
                report = files.setdefault(path, FileReport())
                old_line, old = report.functions.get(name, (line, 0))
                report.functions[name] = (old_line, old + count)
                report.lines.setdefault(line, 0)
    return Report(dict(sorted(files.items())), sorted(left_out), function_only)


def lcov(report: Report, test_name: str = "") -> str:
    """The report as an lcov tracefile (genhtml, IDE coverage gutters, Codecov ...)."""
    out: list[str] = []
    for path, f in report.files.items():
        out += [f"TN:{test_name}", f"SF:{path}"]
        for name, (line, _count) in sorted(f.functions.items(), key=lambda kv: (kv[1][0], kv[0])):
            out.append(f"FN:{line},{name}")
        for name, (_line, count) in sorted(f.functions.items(), key=lambda kv: (kv[1][0], kv[0])):
            out.append(f"FNDA:{count},{name}")
        out += [f"FNF:{len(f.functions)}", f"FNH:{sum(1 for _l, c in f.functions.values() if c)}"]
        out += [f"DA:{line},{count}" for line, count in sorted(f.lines.items())]
        out += [f"LF:{len(f.lines)}", f"LH:{sum(1 for c in f.lines.values() if c)}", "end_of_record"]
    return "\n".join(out) + "\n" if out else ""


def cobertura(report: Report, root: Path | None = None) -> str:
    """The report as Cobertura XML (GitLab and Jenkins coverage views); one package per directory."""
    def rate(hit: int, found: int) -> str:
        return f"{hit / found:.4f}" if found else "1"

    packages: dict[str, list[tuple[str, FileReport]]] = {}
    for path, f in report.files.items():
        packages.setdefault(os.path.dirname(path), []).append((path, f))
    base = str(root) if root is not None else "/"
    out = ['<?xml version="1.0" ?>',
           f'<coverage line-rate="{rate(report.lines_hit, report.lines_found)}" branch-rate="0" '
           f'lines-covered="{report.lines_hit}" lines-valid="{report.lines_found}" branches-covered="0" '
           f'branches-valid="0" complexity="0" version="proxywasm-host" timestamp="{int(time.time() * 1000)}">',
           f"  <sources><source>{_text(base)}</source></sources>", "  <packages>"]
    for directory, members in sorted(packages.items()):
        hit = sum(1 for _p, f in members for c in f.lines.values() if c)
        found = sum(len(f.lines) for _p, f in members)
        out.append(f'    <package name={quoteattr(os.path.relpath(directory, base))} line-rate="{rate(hit, found)}" '
                   'branch-rate="0" complexity="0">')
        out.append("      <classes>")
        for path, f in members:
            fhit = sum(1 for c in f.lines.values() if c)
            out.append(f'        <class name={quoteattr(os.path.basename(path))} filename={quoteattr(os.path.relpath(path, base))} '
                       f'line-rate="{rate(fhit, len(f.lines))}" branch-rate="0" complexity="0">')
            out.append("          <methods>")
            for name, (line, count) in sorted(f.functions.items(), key=lambda kv: kv[1][0]):
                out.append(f'            <method name={quoteattr(name)} signature="" line-rate="{1 if count else 0}" '
                           f'branch-rate="0" complexity="0"><lines><line number="{line}" hits="{count}"/></lines></method>')
            out.append("          </methods>")
            out.append("          <lines>")
            out += [f'            <line number="{line}" hits="{count}"/>' for line, count in sorted(f.lines.items())]
            out += ["          </lines>", "        </class>"]
        out += ["      </classes>", "    </package>"]
    out += ["  </packages>", "</coverage>"]
    return "\n".join(out) + "\n"


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(data: CoverageData, path: str | Path, sources: SourceFilter) -> Report:
    """Write ``data`` to ``path``: Cobertura XML when the name ends in ``.xml``, else lcov."""
    report = build_report(data, sources)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = cobertura(report, sources.root) if target.suffix == ".xml" else lcov(report)
    target.write_text(text)
    return report


def summary(report: Report, path: str | Path) -> list[str]:
    """Lines for a terminal: what was written, what was left out and why."""
    lines = [f"wrote {path}: {len(report.files)} source files, lines {report.lines_hit}/{report.lines_found}, "
             f"functions {report.functions_hit}/{report.functions_found}"]
    if report.left_out:
        shown = ", ".join(report.left_out[:3]) + (", ..." if len(report.left_out) > 3 else "")
        lines.append(f"{len(report.left_out)} source files left out (not on disk after the path map, outside the root, "
                     f"or filtered): {shown}")
    for origin, run, total, note in report.function_only:
        lines.append(f"{origin}: no DWARF line tables, function coverage only: {run}/{total} functions ran"
                     + (f" ({note})" if note else ""))
    return lines
