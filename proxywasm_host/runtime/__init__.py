"""The wasmtime runtime layer: the only package that imports wasmtime.

Modules: :mod:`.module` (compile, validate, link, instantiate, call), :mod:`.binary`
(the export-section reader, no wasmtime), :mod:`.cache` (compiled code on disk) and
:mod:`._capi` (the unchecked C-API crossings, with the optional C module ``_speedups``).
"""
