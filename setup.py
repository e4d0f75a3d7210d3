"""Build the optional C parts: the runtime layer's crossings (proxywasm_host/_speedups.c)
and the core's map codec (proxywasm_host/_codec.c).

Everything else is in pyproject.toml.  Without a C compiler the extensions are skipped:
the runtime falls back to ctypes for the same crossings and the codec to Python (slower,
same behaviour).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "proxywasm_host._speedups",
            ["proxywasm_host/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "proxywasm_host._codec",
            ["proxywasm_host/_codec.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
