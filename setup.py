"""Build the optional C parts: the runtime layer's crossings (proxywasm_host/runtime/_speedups.c)
and the core's map codec (proxywasm_host/core/_codec.c).

Everything else is in pyproject.toml.  Without a C compiler the extensions are skipped:
the runtime falls back to ctypes for the same crossings and the codec to Python (slower,
same behaviour).
"""

from setuptools import Extension, setup

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
    ]
)
