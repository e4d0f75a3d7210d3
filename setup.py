"""Build the optional C part of the runtime layer (proxywasm_host/_speedups.c).

Everything else is in pyproject.toml.  Without a C compiler the extension is skipped and
the runtime falls back to ctypes for the same crossings (slower, same behaviour).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "proxywasm_host._speedups",
            ["proxywasm_host/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
