"""Build the optional compiled parts (proxywasm_host/speedups.py says which run):

* the hot core modules, compiled by mypyc from their own typed source (the list is
  ``COMPILED_MODULES`` in proxywasm_host/speedups.py);
* the core's map codec in C (proxywasm_host/core/_codec.c);
* the runtime layer's crossings into and out of wasmtime (proxywasm_host/runtime/_speedups.c).

Everything else is in pyproject.toml.  Each part is optional: without a C compiler (or
without mypyc) it is skipped and the same Python source runs (slower, same behaviour);
``PROXYWASM_HOST_NO_SPEEDUPS=1`` at run time turns all three off.
"""

import ast
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def compiled_modules() -> tuple[str, ...]:
    """``COMPILED_MODULES`` and the group name from proxywasm_host/speedups.py (read, not
    imported: the package is not importable while it is being built)."""
    found: dict[str, object] = {}
    for node in ast.parse((HERE / "proxywasm_host" / "speedups.py").read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("COMPILED_MODULES", "COMPILED_GROUP"):
                    found[target.id] = ast.literal_eval(node.value)
    return found["COMPILED_MODULES"], found["COMPILED_GROUP"]  # type: ignore[return-value]


def mypyc_extensions() -> list[Extension]:
    names, group = compiled_modules()
    paths = []
    for name in names:
        base = Path(*name.split("."))
        paths.append(str(base / "__init__.py" if (HERE / base).is_dir() else base.with_suffix(".py")))
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("proxywasm-host: mypyc is not installed: the core runs as Python", file=sys.stderr)
        return []
    try:
        # (the build environment has no wasmtime: modules outside the compiled set are read
        # for their types only, their errors are mypy's job in CI, not the build's)
        options = ["--follow-imports=silent", "--ignore-missing-imports"]
        extensions = mypycify(options + paths, opt_level="3", group_name=group.removesuffix("__mypyc"))
    except (Exception, SystemExit) as exc:  # a type error, or no compiler for mypyc's checks
        print(f"proxywasm-host: mypyc could not compile the core ({exc}): it runs as Python", file=sys.stderr)
        return []
    for ext in extensions:
        ext.optional = True  # no C compiler: skipped (proxywasm_host.speedups then loads the source)
    return extensions


setup(
    ext_modules=[
        Extension(
            "proxywasm_host.runtime._speedups",
            ["proxywasm_host/runtime/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "proxywasm_host.core._codec",
            ["proxywasm_host/core/_codec.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        *mypyc_extensions(),
    ]
)
