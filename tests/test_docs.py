"""Citations of docs/abi-notes.md point at sections that exist.

The code, the tests and the docs cite the ABI notes as ``docs/abi-notes.md §N`` (or
``§N.M``, possibly a list: ``§6.2, §6.3 and §10``).  Every cited number must be a heading
of docs/abi-notes.md.  abi/README.md and the notes themselves use bare ``§N`` for the
same document, so every ``§`` in them is checked too.  The external reference the notes
replace is not part of the repository and must not be cited any more.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "docs" / "abi-notes.md"
#: files in which every bare "§N" refers to docs/abi-notes.md
BARE_SECTION_FILES = ("docs/abi-notes.md", "abi/README.md")
#: the old external reference, spelled so that this file does not cite it
OLD_REFERENCE = "ABI_" + "FACTS"

_SECTION = r"§(\d+(?:\.\d+)*)"
_HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
# "abi-notes.md" (optionally in backticks or a link), then one or more "§N" joined by
# commas / "and" / whitespace, comment markers allowed between lines
_CITATION = re.compile(r"abi-notes\.md`?(?:\]\([^)]*\))?\s*((?:(?:,|and|#|\s)*" + _SECTION + r")+)")


def headings(text: str) -> set[str]:
    return set(_HEADING.findall(text))


def cited_sections(text: str, bare: bool = False) -> list[str]:
    """Section numbers cited in ``text``: after ``abi-notes.md``, or every ``§N`` if ``bare``."""
    if bare:
        return re.findall(_SECTION, text)
    out: list[str] = []
    for match in _CITATION.finditer(text):
        out.extend(re.findall(_SECTION, match.group(1)))
    return out


def repository_files() -> list[Path]:
    """Tracked and new (not ignored) text files of the repository."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        skip = {".git", ".venv", "build", "dist", "target", "node_modules", "__pycache__"}
        listed = [
            str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and ".egg-info" not in str(p)
        ]
    files = []
    for name in listed:
        path = ROOT / name
        if name and path.is_file() and path.suffix not in {".wasm", ".so", ".png", ".gz", ".tar"}:
            files.append(path)
    return files


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def test_notes_have_numbered_sections() -> None:
    found = headings(NOTES.read_text(encoding="utf-8"))
    # the top-level sections and a sample of subsections the code leans on
    assert {str(n) for n in range(1, 12)} <= found
    assert {"2.5", "3.2", "4.4", "5.4", "6.1", "7.7"} <= found


def test_citation_parser() -> None:
    text = (
        "(docs/abi-notes.md §6.2, §6.3, §10)  # docs/abi-notes.md §2.2 and\n"
        "    # §2.6;  [`docs/abi-notes.md` §11](docs/abi-notes.md)  RFC 9112 §6.1"
    )
    assert cited_sections(text) == ["6.2", "6.3", "10", "2.2", "2.6", "11"]
    assert cited_sections("§4.6 and §99", bare=True) == ["4.6", "99"]
    assert headings("## 3. Passing values\n### 3.2 Handing bytes back\n#### not a number\n") == {"3", "3.2"}


def test_every_citation_names_an_existing_section() -> None:
    sections = headings(NOTES.read_text(encoding="utf-8"))
    bad: list[str] = []
    total = 0
    for path in repository_files():
        text = _text(path)
        if text is None or "§" not in text:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for number in cited_sections(text, bare=rel in BARE_SECTION_FILES):
            total += 1
            if number not in sections:
                bad.append(f"{rel}: §{number}")
    assert total > 30, f"only {total} citations found: is the citation pattern still right?"
    assert not bad, "citations of docs/abi-notes.md sections that do not exist:\n" + "\n".join(bad)


def test_nothing_cites_the_old_external_reference() -> None:
    offenders = []
    for path in repository_files():
        text = _text(path)
        if text is not None and OLD_REFERENCE in text:
            rel = path.relative_to(ROOT).as_posix()
            lines = [str(i) for i, line in enumerate(text.splitlines(), 1) if OLD_REFERENCE in line]
            offenders.append(f"{rel}:{','.join(lines)}")
    assert not offenders, (
        f"{OLD_REFERENCE} is not in the repository; cite docs/abi-notes.md §N instead:\n" + "\n".join(offenders)
    )
