"""Argument readers every subcommand shares (one copy, so that every command treats ``@FILE`` alike)."""

from __future__ import annotations

import sys
from pathlib import Path


def read_text_arg(value: str | None) -> bytes:
    """``TEXT`` or ``@FILE`` (``--config``, ``--vm-config``); an unreadable FILE is a usage error: exit 2."""
    if value is None:
        return b""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            # exit 2, as documented for usage errors (SystemExit with a message would exit 1)
            print(f"proxywasm-host: cannot read {value[1:]}: {exc.strerror}", file=sys.stderr)
            raise SystemExit(2) from None
    return value.encode()
