"""proxywasm-host: run proxy-wasm filters in-process, the way Envoy runs them.

Public surface: :class:`Host`, :class:`Plugin`, :class:`HttpStream` (the harness),
:class:`HeaderMap`, the ABI enums, the scenario types and the exceptions.
"""

from .errors import (
    FilterFailed,
    FilterTrap,
    HarnessUsageError,
    HostBug,
    ModuleLoadError,
    ProxyWasmError,
)
from .harness import Host, HttpStream, Plugin
from .headers import HeaderMap
from .hostcalls import LogEntry
from .runtime import CompiledModule
from .scenario import (
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
from .stream import CallbackRecord, LocalResponse
from .types import AbiVersion, Action, BufferType, LogLevel, MapType, MetricType, Status, StreamType

__version__ = "0.1.0"

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
    "HostBug",
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
