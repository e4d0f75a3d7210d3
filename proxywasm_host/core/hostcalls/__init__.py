"""Every host function of the proxy-wasm ABI, implemented against an abstract guest.

:class:`AbiHost` holds the ABI state of one VM instance (contexts, logs, clock, shared
data, metrics, ...) and implements each ``proxy_*`` import and each WASI import as a
method taking and returning plain ints.  It never imports wasmtime: the runtime layer
hands it a :class:`~proxywasm_host.core.guest.Guest` (memory view, allocator) and binds
the methods listed in :data:`~proxywasm_host.core.spec.HOSTCALLS` as imports.  Statuses
follow Envoy/cpp-host where the spec text differs (``docs/abi-notes.md``).

The methods live in one module per area of the ABI (:mod:`.basics`, :mod:`.data`,
:mod:`.streams`, :mod:`.shared`, :mod:`.callouts`, :mod:`.higress`, :mod:`.wasi`) over the
common state of :mod:`.base`, one class per area, each built on the next (``BasicCalls`` on
``DataCalls`` ... ``WasiCalls`` on ``AbiHostBase``): a single line of inheritance, because
mypyc compiles these modules (``setup.py``) and a compiled class has one base.  Tests and
the runtime may subclass :class:`AbiHost` (``allow_interpreted_subclasses``).

A hostcall never lets a Python exception escape into wasmtime: bad
guest memory becomes ``INVALID_MEMORY_ACCESS`` (or WASI ``EFAULT``), anything else is
recorded in :attr:`AbiHost.host_errors` and answered ``INTERNAL_FAILURE``.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxywasm_host.core.hostcalls.basics import BasicCalls
from proxywasm_host.core.hostcalls.callouts import ENVOY_FOREIGN_FUNCTIONS


@mypyc_attr(allow_interpreted_subclasses=True)
class AbiHost(BasicCalls):
    """ABI state of one VM instance plus the implementation of every hostcall."""


__all__ = ["ENVOY_FOREIGN_FUNCTIONS", "AbiHost"]
