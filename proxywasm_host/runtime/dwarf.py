"""A wasm module's DWARF line tables as (code offset, source file, line) rows (no wasmtime).

The ``.debug_*`` custom sections of a module built with debug info (Rust: ``debug =
"line-tables-only"`` or ``true`` and no ``strip``) are read with pyelftools (DWARF 2 to 5).
Addresses in wasm DWARF are offsets from the start of the code section's payload.  A file
is named as DWARF names it: its directory joined to the unit's ``DW_AT_comp_dir`` when
relative (so a build with ``--remap-path-prefix`` gives the remapped paths).
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

from proxywasm_host.errors import ProxyWasmError

#: the sections pyelftools reads for line tables, and the ones its DWARFInfo takes that a wasm module lacks
_SECTIONS = ("debug_info", "debug_abbrev", "debug_str", "debug_ranges", "debug_line", "debug_addr",
             "debug_str_offsets", "debug_line_str", "debug_loclists", "debug_rnglists")
_NOT_READ = ("debug_aranges", "debug_frame", "eh_frame", "debug_loc", "debug_pubtypes", "debug_pubnames",
             "debug_sup", "gnu_debugaltlink", "debug_types")


def _section(sections: dict[str, bytes], name: str) -> Any:
    from elftools.dwarf.dwarfinfo import DebugSectionDescriptor

    data = sections.get(name)
    if data is None:
        return None
    return DebugSectionDescriptor(io.BytesIO(data), name, None, len(data), 0)


def has_line_tables(sections: dict[str, bytes]) -> bool:
    return ".debug_line" in sections and ".debug_info" in sections


def line_rows(sections: dict[str, bytes]) -> list[tuple[int, str, int]]:
    """Every row of every line table (end-of-sequence rows left out) as (address, file, line)."""
    if not has_line_tables(sections):
        return []
    try:
        from elftools.dwarf.dwarfinfo import DwarfConfig, DWARFInfo
    except ImportError:
        raise ProxyWasmError(
            "line coverage reads the module's DWARF with pyelftools: pip install pyelftools "
            "(or pip install 'proxywasm-host[test]')"
        ) from None
    info = DWARFInfo(
        DwarfConfig(little_endian=True, machine_arch="wasm", default_address_size=4),
        **{f"{name}_sec": _section(sections, "." + name) for name in _SECTIONS},
        **{f"{name}_sec": None for name in _NOT_READ},
    )
    rows: list[tuple[int, str, int]] = []
    for cu in info.iter_CUs():
        program = info.line_program_for_CU(cu)
        if program is None:
            continue
        top = cu.get_top_DIE()
        comp_dir_attr = top.attributes.get("DW_AT_comp_dir")
        comp_dir = comp_dir_attr.value.decode("utf-8", "replace") if comp_dir_attr is not None else ""
        header = program.header
        version = header["version"]
        dirs = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d) for d in header["include_directory"]]
        if version < 5:
            dirs = [comp_dir, *dirs]  # DWARF 4: index 0 is the compilation directory
        files: list[str] = []
        for entry in header["file_entry"]:
            name = entry.name.decode("utf-8", "replace") if isinstance(entry.name, bytes) else str(entry.name)
            directory = dirs[entry.dir_index] if entry.dir_index < len(dirs) else ""
            if not posixpath.isabs(directory):
                directory = posixpath.join(comp_dir, directory)
            files.append(posixpath.normpath(posixpath.join(directory, name)))
        base = 1 if version < 5 else 0  # DWARF 4 file indices start at 1
        for entry in program.get_entries():
            state = entry.state
            if state is None or state.end_sequence:
                continue
            index = state.file - base
            if 0 <= index < len(files):
                rows.append((state.address, files[index], state.line))
    return rows
