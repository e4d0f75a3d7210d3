"""``proxywasm-host build``: cargo for the wasm target, then the path of the built module.

A thin convenience over ``cargo build --target wasm32-unknown-unknown --release`` run in a
Rust filter crate: cargo's own diagnostics stream to stderr as usual, and the ``.wasm``
artifacts cargo reports (``--message-format=json-render-diagnostics``) are returned / printed.
The harness never needs it: it loads any ``.wasm``.  ``$CARGO`` picks the cargo binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, cast

from proxywasm_host.errors import BuildError

__all__ = ["BuildError", "build"]

DEFAULT_TARGET = "wasm32-unknown-unknown"



def build(
    crate: str | os.PathLike[str] = ".",
    *,
    target: str = DEFAULT_TARGET,
    release: bool = True,
    package: str | None = None,
    cargo: str | None = None,
    extra_args: Sequence[str] = (),
    stderr: object = None,
) -> list[Path]:
    """Build the crate (a directory with Cargo.toml, or the Cargo.toml itself) and return
    the ``.wasm`` files cargo produced (cdylib artifacts for ``target``)."""
    path = Path(crate)
    manifest = path if path.name == "Cargo.toml" else path / "Cargo.toml"
    if not manifest.is_file():
        raise BuildError(f"{manifest}: no Cargo.toml (run in a Rust filter crate, or pass its directory)", 2)
    binary = cargo or os.environ.get("CARGO") or shutil.which("cargo")
    if not binary:
        raise BuildError("cargo not found (install Rust, e.g. rustup, and `rustup target add wasm32-unknown-unknown`)", 2)
    cmd = [binary, "build", "--manifest-path", str(manifest), "--target", target,
           "--message-format=json-render-diagnostics"]
    if release:
        cmd.append("--release")
    if package:
        cmd += ["--package", package]
    cmd += list(extra_args)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=cast("IO[str]", stderr or sys.stderr), text=True)
    except OSError as exc:
        raise BuildError(f"cannot run {binary}: {exc.strerror}", 2) from None
    artifacts: list[Path] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("reason") == "compiler-artifact":
            for name in message.get("filenames") or []:
                if name.endswith(".wasm") and Path(name) not in artifacts:
                    artifacts.append(Path(name))
    code = proc.wait()
    if code != 0:
        raise BuildError(f"cargo build failed (exit {code})", code)
    if not artifacts:
        raise BuildError(f"cargo built no .wasm for {target}: is the crate a cdylib "
                         "([lib] crate-type = [\"cdylib\"])?", 1)
    return artifacts
