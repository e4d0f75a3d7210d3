"""proxywasm-host: run proxy-wasm filters in-process, the way Envoy runs them.

Public surface: :class:`Host`, :class:`Plugin`, :class:`HttpStream` (the harness),
:class:`HeaderMap`, the ABI enums, the scenario types and the exceptions.  Names are
resolved on first use (PEP 562), so ``import proxywasm_host`` or a core module does not
load wasmtime; the layers are described in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from proxywasm_host import speedups as _speedups  # (the package's own submodule)

# before any core module is imported: PROXYWASM_HOST_NO_SPEEDUPS=1 imports the compiled
# core modules from their source (see proxywasm_host/speedups.py)
_speedups.install()

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AbiVersion": "proxywasm_host.core.types",
    "Action": "proxywasm_host.core.types",
    "BufferType": "proxywasm_host.core.types",
    "LogLevel": "proxywasm_host.core.types",
    "MapType": "proxywasm_host.core.types",
    "MetricType": "proxywasm_host.core.types",
    "Status": "proxywasm_host.core.types",
    "StreamType": "proxywasm_host.core.types",
    "HeaderMap": "proxywasm_host.core.headers",
    "LogEntry": "proxywasm_host.core.observer",
    "CallbackRecord": "proxywasm_host.core.stream",
    "LocalResponse": "proxywasm_host.core.stream",
    "FilterFailed": "proxywasm_host.errors",
    "FilterTrap": "proxywasm_host.errors",
    "HarnessUsageError": "proxywasm_host.errors",
    "ModuleLoadError": "proxywasm_host.errors",
    "ProxyWasmError": "proxywasm_host.errors",
    "DownstreamResponse": "proxywasm_host.http.scenario",
    "ExchangeResult": "proxywasm_host.http.scenario",
    "HttpRequest": "proxywasm_host.http.scenario",
    "HttpResponse": "proxywasm_host.http.scenario",
    "LocalReply": "proxywasm_host.http.scenario",
    "LogRecord": "proxywasm_host.http.scenario",
    "PluginSpec": "proxywasm_host.http.scenario",
    "Scenario": "proxywasm_host.http.scenario",
    "UpstreamRequest": "proxywasm_host.http.scenario",
    "CompiledModule": "proxywasm_host.runtime.module",
    "Host": "proxywasm_host.harness.host",
    "HttpStream": "proxywasm_host.harness.stream",
    "Plugin": "proxywasm_host.harness.plugin",
}

__all__ = [
    "AbiVersion",
    "Action",
    "BufferType",
    "CallbackRecord",
    "CompiledModule",
    "DownstreamResponse",
    "ExchangeResult",
    "FilterFailed",
    "FilterTrap",
    "HarnessUsageError",
    "HeaderMap",
    "Host",
    "HttpRequest",
    "HttpResponse",
    "HttpStream",
    "LocalReply",
    "LocalResponse",
    "LogEntry",
    "LogLevel",
    "LogRecord",
    "MapType",
    "MetricType",
    "ModuleLoadError",
    "Plugin",
    "PluginSpec",
    "ProxyWasmError",
    "Scenario",
    "Status",
    "StreamType",
    "UpstreamRequest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proxywasm_host' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from proxywasm_host.core.headers import HeaderMap
    from proxywasm_host.core.observer import LogEntry
    from proxywasm_host.core.stream import CallbackRecord, LocalResponse
    from proxywasm_host.core.types import (
        AbiVersion,
        Action,
        BufferType,
        LogLevel,
        MapType,
        MetricType,
        Status,
        StreamType,
    )
    from proxywasm_host.errors import (
        FilterFailed,
        FilterTrap,
        HarnessUsageError,
        ModuleLoadError,
        ProxyWasmError,
    )
    from proxywasm_host.harness.host import Host
    from proxywasm_host.harness.plugin import Plugin
    from proxywasm_host.harness.stream import HttpStream
    from proxywasm_host.http.scenario import (
        DownstreamResponse,
        ExchangeResult,
        HttpRequest,
        HttpResponse,
        LocalReply,
        LogRecord,
        PluginSpec,
        Scenario,
        UpstreamRequest,
    )
    from proxywasm_host.runtime.module import CompiledModule
