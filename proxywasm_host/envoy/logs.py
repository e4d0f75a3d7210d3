"""Envoy's log lines: parsing, the filter's own log records and the wasm trace lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from proxywasm_host.http.scenario import (
    LogRecord,
    PluginSpec,
)

_LOG_LINE = re.compile(
    r"^\[(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\[(?P<thread>\d+)\]"
    r"\[(?P<level>[a-z]+)\]\[(?P<logger>[^\]]*)\] (?:\[(?P<source>[^\]]*)\] )?(?P<message>.*)$"
)
_LEVELS = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warning": "warn",
    "warn": "warn",
    "error": "error",
    "critical": "critical",
}


@dataclass
class EnvoyLogLine:
    time: str
    thread: int
    level: str  # spdlog's name: trace, debug, info, warning, error, critical
    logger: str  # component: wasm, main, http, ...; "access" for our access-log lines
    source: str  # "path/file.cc:123" or ""
    message: str  # continuation lines of a multi-line message joined by "\n"


def parse_envoy_log(text: str) -> list[EnvoyLogLine]:
    """Split Envoy's log into records; lines that do not start a record continue the last one."""
    out: list[EnvoyLogLine] = []
    for raw in text.splitlines():
        if raw.startswith('{"') and '"pwh_access":' in raw:
            # a line of our stderr access log (see ACCESS_LOG_FORMAT)
            out.append(EnvoyLogLine(time="", thread=0, level="info", logger="access", source="", message=raw))
            continue
        m = _LOG_LINE.match(raw)
        if m:
            out.append(
                EnvoyLogLine(
                    time=m["time"],
                    thread=int(m["thread"]),
                    level=m["level"],
                    logger=m["logger"],
                    source=m["source"] or "",
                    message=m["message"],
                )
            )
        elif out:
            out[-1].message += "\n" + raw
    return out


def log_prefix(plugin: PluginSpec, *, root: bool = False) -> str:
    """What Envoy puts between ``wasm log`` and ``: ``: for a stream context the plugin's name,
    root id and vm id (PluginBase::makeLogPrefix); for a root context (``root``: on_vm_start,
    on_configure, on_tick, on_queue_ready, a callout answer until the SDK switches to the stream
    with proxy_set_effective_context) only the root id and vm id, no name (Envoy 1.40, measured:
    docs/abi-notes.md §5.2)."""
    parts = (plugin.root_id, plugin.vm_id) if root else (plugin.name, plugin.root_id, plugin.vm_id)
    return "".join(" " + part for part in parts if part)


def log_heads(plugin: PluginSpec) -> tuple[str, ...]:
    """The starts of the module's own log records: the stream context's, then the root
    context's (the same when the plugin has no name)."""
    stream, root = (f"wasm log{log_prefix(plugin, root=r)}: " for r in (False, True))
    return (stream,) if stream == root else (stream, root)


def _module_message(message: str, heads: tuple[str, ...]) -> str | None:
    for head in heads:
        if message.startswith(head):
            return message[len(head) :]
    return None


def filter_logs(lines: Iterable[EnvoyLogLine], plugin: PluginSpec) -> list[LogRecord]:
    """The module's own ``proxy_log`` records, in order."""
    heads = log_heads(plugin)
    records = []
    for line in lines:
        if line.logger == "wasm":
            message = _module_message(line.message, heads)
            if message is not None:
                records.append(LogRecord(level=_LEVELS.get(line.level, line.level), message=message))
    return records


def trace_lines(lines: Iterable[EnvoyLogLine], plugin: PluginSpec) -> list[str]:
    """The ``wasm`` component's other records: with wasm:trace, every call between Envoy and the module."""
    heads = log_heads(plugin)
    return [line.message for line in lines if line.logger == "wasm" and _module_message(line.message, heads) is None]


# --------------------------------------------------------------------------
# the Envoy process
