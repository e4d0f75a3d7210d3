"""Instrument a wasm module for coverage of the filter's own code (pure bytes, no wasmtime).

:func:`instrument` rewrites a module so that it counts how often each *site* ran: the
first instruction of every defined function (function coverage) and, where the module
carries DWARF line tables (:mod:`.dwarf`), every instruction that starts a line-table row
(line coverage).  Before a site's instruction it inserts a stack-neutral counter
increment into a memory of its own, added to the module (multi-memory) and exported as
:data:`COUNTERS_EXPORT`::

    i32.const 0  i32.const 0  i32.load $counters offset=4*site
    i32.const 1  i32.add      i32.store $counters offset=4*site

Wasm branches are structured (label depths, not byte offsets), so inserting instructions
at instruction boundaries keeps every branch right; only the body sizes and the code
section's size change.  The DWARF of the original no longer matches the new offsets, so
the instrumented copy drops its ``.debug_*`` sections (backtraces keep the function names
of the ``name`` section, not file:line).  What each site means is the
:class:`CoverageMap` returned with the bytes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxywasm_host.runtime.binary import _leb128

#: the export name of the counters memory an instrumented module adds
COUNTERS_EXPORT = "__proxywasm_coverage_counters"

_SECTION_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}
_PAGE = 65536


class InstrumentError(ValueError):
    """The module cannot be instrumented (malformed, or an instruction this decoder does not know)."""


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _skip_leb(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def _name(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _leb128(data, pos)
    return data[pos : pos + length].decode("utf-8", "replace"), pos + length


@dataclass
class Section:
    id: int
    start: int  #: offset of the payload (after the size)
    end: int
    name: str = ""  #: custom sections only
    header: int = 0  #: offset of the section id byte


def sections(data: bytes) -> list[Section]:
    if data[:4] != b"\0asm" or data[4:8] != b"\x01\0\0\0":
        raise InstrumentError("not a wasm binary module (version 1)")
    out = []
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, start = _leb128(data, pos + 1)
        section = Section(sid, start, start + size, header=pos)
        if section.end > len(data):
            raise InstrumentError("truncated section")
        if sid == 0:
            section.name, _ = _name(data, start)
        out.append(section)
        pos = start + size
    return out


def custom_sections(data: bytes) -> dict[str, bytes]:
    """Custom section name -> payload (after the name)."""
    out = {}
    for s in sections(data):
        if s.id == 0:
            _, body = _name(data, s.start)
            out[s.name] = data[body : s.end]
    return out


# -- instruction decoding ------------------------------------------------------------------
def _skip_valtype(code: bytes, pos: int) -> int:
    byte = code[pos]
    if byte in (0x63, 0x64):  # (ref null? heaptype)
        return _skip_leb(code, pos + 1)
    return pos + 1


def _skip_blocktype(code: bytes, pos: int) -> int:
    byte = code[pos]
    if byte in (0x63, 0x64):
        return _skip_leb(code, pos + 1)
    if 0x40 <= byte <= 0x7F:  # empty (0x40) or a one-byte value type
        return pos + 1
    return _skip_leb(code, pos)  # a type index (s33)


def _skip_memarg(code: bytes, pos: int) -> int:
    flags, pos = _leb128(code, pos)
    if flags & 0x40:  # multi-memory: a memory index follows
        pos = _skip_leb(code, pos)
    return _skip_leb(code, pos)


#: opcodes whose immediates are: nothing / one LEB / two LEBs
_NO_IMM = frozenset([0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4, *range(0x45, 0xC5)])
_ONE_LEB = frozenset([0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18, *range(0x20, 0x27), 0x3F, 0x40,
                      0x41, 0x42, 0xD2, 0xD5, 0xD6])
_TWO_LEB = frozenset([0x11, 0x13])
_FC_IMMS = {8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1}
_FD_MEMARG = frozenset([*range(0, 12), 92, 93])
_FD_LANE = frozenset(range(21, 35))
_FD_MEMARG_LANE = frozenset(range(84, 92))


def instruction_offsets(code: bytes, pos: int, end: int) -> list[int]:
    """The offset of every instruction in ``code[pos:end]`` (one function's expression)."""
    out = []
    while pos < end:
        out.append(pos)
        op = code[pos]
        pos += 1
        if op in _NO_IMM:
            continue
        if op in _ONE_LEB:
            pos = _skip_leb(code, pos)
        elif 0x28 <= op <= 0x3E:
            pos = _skip_memarg(code, pos)
        elif op in (0x02, 0x03, 0x04, 0x06):
            pos = _skip_blocktype(code, pos)
        elif op in _TWO_LEB:
            pos = _skip_leb(code, _skip_leb(code, pos))
        elif op == 0x0E:  # br_table
            count, pos = _leb128(code, pos)
            for _ in range(count + 1):
                pos = _skip_leb(code, pos)
        elif op == 0x43:
            pos += 4
        elif op == 0x44:
            pos += 8
        elif op == 0x1C:  # select t*
            count, pos = _leb128(code, pos)
            for _ in range(count):
                pos = _skip_valtype(code, pos)
        elif op == 0xD0:  # ref.null heaptype
            pos = _skip_leb(code, pos)
        elif op == 0x1F:  # try_table
            pos = _skip_blocktype(code, pos)
            count, pos = _leb128(code, pos)
            for _ in range(count):
                kind = code[pos]
                pos = _skip_leb(code, pos + 1)
                if kind in (0, 1):
                    pos = _skip_leb(code, pos)
        elif op == 0xFC:
            sub, pos = _leb128(code, pos)
            for _ in range(_FC_IMMS.get(sub, 0)):
                pos = _skip_leb(code, pos)
            if sub > 17:
                raise InstrumentError(f"unknown instruction 0xfc {sub} at {pos}")
        elif op == 0xFD:
            sub, pos = _leb128(code, pos)
            if sub in _FD_MEMARG:
                pos = _skip_memarg(code, pos)
            elif sub in (12, 13):
                pos += 16
            elif sub in _FD_LANE:
                pos += 1
            elif sub in _FD_MEMARG_LANE:
                pos = _skip_memarg(code, pos) + 1
        elif op == 0xFE:
            sub, pos = _leb128(code, pos)
            pos = pos + 1 if sub == 3 else _skip_memarg(code, pos)
        else:
            raise InstrumentError(f"unknown instruction {op:#x} at {pos - 1}")
    if pos != end:
        raise InstrumentError("instruction runs past the end of its function")
    return out


# -- the module's functions ----------------------------------------------------------------
@dataclass
class FunctionBody:
    index: int  #: function index (imports first)
    start: int  #: offset of the body (its locals), relative to the code section payload
    code: int  #: offset of the first instruction (after the locals)
    end: int  #: one past the body's last byte (its final ``end``)


@dataclass
class ModuleLayout:
    sections: list[Section]
    imported_functions: int = 0
    imported_memories: int = 0
    defined_memories: int = 0
    bodies: list[FunctionBody] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    code_section: Section | None = None


def _count_imports(data: bytes, section: Section) -> tuple[int, int]:
    funcs = mems = 0
    count, pos = _leb128(data, section.start)
    for _ in range(count):
        _, pos = _name(data, pos)
        _, pos = _name(data, pos)
        kind = data[pos]
        pos += 1
        if kind == 0:
            funcs += 1
            pos = _skip_leb(data, pos)
        elif kind == 1:  # table: reftype limits
            pos = _skip_valtype(data, pos)
            pos = _skip_limits(data, pos)
        elif kind == 2:
            mems += 1
            pos = _skip_limits(data, pos)
        elif kind == 3:  # global: valtype mut
            pos = _skip_valtype(data, pos) + 1
        elif kind == 4:  # tag: attribute, type index
            pos = _skip_leb(data, pos + 1)
        else:
            raise InstrumentError(f"unknown import kind {kind}")
    return funcs, mems


def _skip_limits(data: bytes, pos: int) -> int:
    flags = data[pos]
    pos = _skip_leb(data, pos + 1)
    if flags & 1:
        pos = _skip_leb(data, pos)
    if flags & 8:  # custom page size
        pos = _skip_leb(data, pos)
    return pos


def _function_names(data: bytes, start: int, end: int) -> dict[int, str]:
    pos = start
    names: dict[int, str] = {}
    while pos < end:
        sub = data[pos]
        size, pos = _leb128(data, pos + 1)
        if sub == 1:
            count, p = _leb128(data, pos)
            for _ in range(count):
                index, p = _leb128(data, p)
                names[index], p = _name(data, p)
        pos += size
    return names


def layout(data: bytes) -> ModuleLayout:
    """Where the module's function bodies are, its memory counts and function names."""
    found = ModuleLayout(sections(data))
    for s in found.sections:
        if s.id == 2:
            found.imported_functions, found.imported_memories = _count_imports(data, s)
        elif s.id == 5:
            found.defined_memories, _ = _leb128(data, s.start)
        elif s.id == 10:
            found.code_section = s
        elif s.id == 0 and s.name == "name":
            _, body = _name(data, s.start)
            try:
                found.names = _function_names(data, body, s.end)
            except (IndexError, UnicodeDecodeError):
                found.names = {}
    code = found.code_section
    if code is not None:
        count, pos = _leb128(data, code.start)
        for i in range(count):
            size, body = _leb128(data, pos)
            nlocals, p = _leb128(data, body)
            for _ in range(nlocals):
                p = _skip_valtype(data, _skip_leb(data, p))
            found.bodies.append(FunctionBody(found.imported_functions + i, body - code.start, p - code.start,
                                             body + size - code.start))
            pos = body + size
    return found


# -- what the counters mean ----------------------------------------------------------------
@dataclass
class FunctionSite:
    name: str
    site: int  #: the counter of its first instruction
    file: str | None = None  #: where its first line-table row points (None without DWARF)
    line: int = 0


@dataclass
class CoverageMap:
    """What each counter of an instrumented module counts."""

    sites: int
    functions: list[FunctionSite]
    #: (source file, line) -> the counters of the instructions that start rows of that line
    lines: dict[tuple[str, int], list[int]]
    #: the module had DWARF line tables (else: function coverage only)
    has_lines: bool
    #: line-table rows that point outside any function or inside an instruction
    dropped_rows: int = 0
    #: why there is no line coverage although the module has line tables
    note: str = ""


@dataclass
class Instrumented:
    wasm: bytes
    map: CoverageMap


def _counter(memory: int, site: int) -> bytes:
    offset = _uleb(4 * site)
    mem = _uleb(memory)
    return (b"\x41\x00\x41\x00\x28\x42" + mem + offset + b"\x41\x01\x6a\x36\x42" + mem + offset)


def _section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + _uleb(len(payload)) + payload


def _vec_add(data: bytes, section: Section, entry: bytes) -> bytes:
    count, pos = _leb128(data, section.start)
    return _uleb(count + 1) + data[pos : section.end] + entry


def instrument(data: bytes, rows: Iterable[tuple[int, str, int]] | None = None) -> Instrumented:
    """Instrument ``data`` (see the module docstring).

    ``rows``: the module's line-table rows as (code offset, source file, line), offsets
    relative to the code section payload as DWARF gives them (None or empty: function
    coverage only)."""
    info = layout(data)
    if info.code_section is None:
        raise InstrumentError("the module has no code section")
    code = info.code_section
    code_bytes = data[code.start : code.end]
    site_of: dict[int, int] = {}  # code offset -> counter index

    def site_at(offset: int) -> int:
        found = site_of.get(offset)
        if found is None:
            found = site_of[offset] = len(site_of)
        return found

    functions = []
    for body in info.bodies:
        name = info.names.get(body.index, f"function[{body.index}]")
        functions.append(FunctionSite(name, site_at(body.code)))
    lines: dict[tuple[str, int], list[int]] = {}
    dropped = 0
    row_list = sorted(rows or ())
    if row_list:
        starts = [b.start for b in info.bodies]
        boundaries: dict[int, set[int]] = {}
        first_row: dict[int, tuple[str, int]] = {}
        for address, file, line in row_list:
            i = bisect.bisect_right(starts, address) - 1
            if line <= 0:  # compiler-made code of no line
                continue
            if i < 0 or not info.bodies[i].start <= address < info.bodies[i].end:
                dropped += 1
                continue
            body = info.bodies[i]
            offsets = boundaries.get(i)
            if offsets is None:
                offsets = boundaries[i] = set(instruction_offsets(code_bytes, body.code, body.end))
            where = body.code if address < body.code else address
            if where not in offsets:
                dropped += 1
                continue
            first_row.setdefault(i, (file, line))
            sites = lines.setdefault((file, line), [])
            site = site_at(where)
            if site not in sites:
                sites.append(site)
        for i, (file, line) in first_row.items():
            functions[i].file, functions[i].line = file, line
    memory = info.imported_memories + info.defined_memories
    pages = max(1, -(-4 * len(site_of) // _PAGE))
    # rewrite the code section: counters before their instructions
    by_body: dict[int, list[int]] = {}
    bodies_sorted = info.bodies
    starts = [b.start for b in bodies_sorted]
    for offset in site_of:
        by_body.setdefault(bisect.bisect_right(starts, offset) - 1, []).append(offset)
    out = bytearray(_uleb(len(info.bodies)))
    for i, body in enumerate(bodies_sorted):
        parts = [code_bytes[body.start : body.code]]
        last = body.code
        for offset in sorted(by_body.get(i, ())):
            parts.append(code_bytes[last:offset])
            parts.append(_counter(memory, site_of[offset]))
            last = offset
        parts.append(code_bytes[last : body.end])
        new = b"".join(parts)
        out += _uleb(len(new)) + new
    new_code = _section(10, bytes(out))
    memory_entry = b"\x01" + _uleb(pages) + _uleb(pages)
    export_entry = _uleb(len(COUNTERS_EXPORT)) + COUNTERS_EXPORT.encode() + b"\x02" + _uleb(memory)
    result = bytearray(data[:8])
    have = {s.id for s in info.sections}
    pending = []
    if 5 not in have:
        pending.append((5, _uleb(1) + memory_entry))
    if 7 not in have:
        pending.append((7, _uleb(1) + export_entry))
    for s in info.sections:
        order = _SECTION_ORDER.get(s.id)
        while pending and order is not None and _SECTION_ORDER[pending[0][0]] < order:
            sid, payload = pending.pop(0)
            result += _section(sid, payload)
        if s.id == 0 and s.name.startswith(".debug_"):
            continue  # stale after the rewrite
        if s.id == 5:
            result += _section(5, _vec_add(data, s, memory_entry))
        elif s.id == 7:
            result += _section(7, _vec_add(data, s, export_entry))
        elif s.id == 10:
            result += new_code
        else:
            result += data[s.header : s.end]
    for sid, payload in pending:
        result += _section(sid, payload)
    return Instrumented(bytes(result), CoverageMap(len(site_of), functions, lines, bool(row_list), dropped))
