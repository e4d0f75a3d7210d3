"""A bounded soak of ``proxywasm-host serve``: mixed load for a fixed time, then a report.

    python benchmarks/soak.py [--seconds 60] [--filter hello_world] [--json OUT] [--http-server hypercorn|builtin]

serve runs as a subprocess (the tutorial filter, the built-in echo) on 127.0.0.1; one asyncio
client process drives, at the same time:

* HTTP/1.1 clients (keep-alive) and HTTP/2 clients (prior knowledge, several streams each)
  asking ``/headers``: the good requests, timed;
* one client POSTing large bodies (8 MiB, streamed) to ``/post`` and checking the length the
  echo saw;
* with ``--http-server builtin`` (the server that has a request headers timeout), slow
  clients trickling their request headers one byte every 0.5 s: each must be closed at
  serve's ``--request-headers-timeout`` (5 s here), then another starts;
* bad requests: ``Content-Length`` with ``Transfer-Encoding``, garbage, a 100 KiB header,
  a bad chunk size: each must get its 4xx and leave the server serving.

Report: good requests per second, errors among them, p50 / p99 latency, large bodies done,
slow clients closed (and after how long), bad requests answered, and serve's RSS at start
(after warm-up), peak and end (after the load stops).  Done when: no errors on good requests,
every slow client closed near the timeout, RSS end ≤ start + 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADERS_TIMEOUT = 5.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.large_done = 0
        self.slow_closed: list[float] = []
        self.slow_open_at_end = 0
        self.bad_answered: dict[str, int] = {}
        self.bad_wrong: list[str] = []


async def good_http1(url: str, stop: float, stats: Stats) -> None:
    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                r = await client.get(url + "/headers")
                if r.status_code != 200 or "X-Hello" not in r.text:
                    stats.errors.append(f"h1 status {r.status_code}")
                else:
                    stats.latencies.append(time.monotonic() - t)
            except Exception as exc:  # noqa: BLE001 - counted
                stats.errors.append(f"h1 {type(exc).__name__}")


async def good_http2(url: str, stop: float, stats: Stats, streams: int) -> None:
    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=10, http1=False, http2=True) as client:

        async def one() -> None:
            while time.monotonic() < stop:
                t = time.monotonic()
                try:
                    r = await client.get(url + "/headers")
                    if r.status_code != 200 or r.http_version != "HTTP/2" or "X-Hello" not in r.text:
                        stats.errors.append(f"h2 status {r.status_code} {r.http_version}")
                    else:
                        stats.latencies.append(time.monotonic() - t)
                except Exception as exc:  # noqa: BLE001 - counted
                    stats.errors.append(f"h2 {type(exc).__name__}")

        await asyncio.gather(*(one() for _ in range(streams)))


async def large_bodies(url: str, stop: float, stats: Stats, size: int) -> None:
    import httpx

    chunk = b"z" * 65536

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(size // len(chunk)):
            yield chunk

    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        while time.monotonic() < stop:
            try:
                r = await client.post(url + "/post", content=body())
                if r.status_code != 200 or r.json().get("body_length") != size:
                    stats.errors.append(f"large body: {r.status_code}")
                else:
                    stats.large_done += 1
            except Exception as exc:  # noqa: BLE001 - counted
                stats.errors.append(f"large body {type(exc).__name__}")


async def slow_client(port: int, stop: float, stats: Stats) -> None:
    request = b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 400 + b"\r\n\r\n"
    while time.monotonic() < stop - HEADERS_TIMEOUT - 2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        closed = False
        for i in range(len(request)):
            try:
                writer.write(request[i:i + 1])
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 0.5)
                if data or reader.at_eof():
                    closed = True
                    break
            except asyncio.TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if time.monotonic() > stop:
                break
        if closed:
            stats.slow_closed.append(time.monotonic() - start)
        else:
            stats.slow_open_at_end += 1
        writer.close()


BAD = {
    "content-length+transfer-encoding": (b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"400"),
    "garbage": (b"\x16\x03\x01\x02\x00 hello\r\n\r\n", b"400"),
    "100 KiB header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n", b"431"),
    "bad chunk": (b"POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", b"400"),
}


async def bad_requests(port: int, stop: float, stats: Stats) -> None:
    while time.monotonic() < stop:
        for name, (raw, status) in BAD.items():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(200), 10)
                writer.close()
            except (OSError, asyncio.TimeoutError) as exc:
                stats.bad_wrong.append(f"{name}: {type(exc).__name__}")
                continue
            if answer.startswith(b"HTTP/1.1 " + status):
                stats.bad_answered[name] = stats.bad_answered.get(name, 0) + 1
            else:
                stats.bad_wrong.append(f"{name}: {answer[:30]!r}")
        await asyncio.sleep(0.2)


async def drive(port: int, pid: int, args: argparse.Namespace) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}"
    stats = Stats()
    warm = Stats()
    await good_http1(url, time.monotonic() + 2, warm)  # warm-up
    rss_start = rss_mib(pid)
    samples = [rss_start]
    stop = time.monotonic() + args.seconds
    started = time.monotonic()

    async def sample() -> None:
        while time.monotonic() < stop:
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.5)

    await asyncio.gather(
        sample(),
        *(good_http1(url, stop, stats) for _ in range(args.http1)),
        *(good_http2(url, stop, stats, 4) for _ in range(args.http2)),
        large_bodies(url, stop, stats, args.body_mib * 1024 * 1024),
        *(slow_client(port, stop, stats) for _ in range(args.slow)),
        bad_requests(port, stop, stats),
    )
    elapsed = time.monotonic() - started
    await asyncio.sleep(2)
    rss_end = rss_mib(pid)
    lat = sorted(stats.latencies)
    return {
        "seconds": round(elapsed, 1),
        "good_requests": len(lat),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "good_request_errors": len(stats.errors),
        "error_kinds": sorted(set(stats.errors))[:10],
        "latency_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "latency_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1) if lat else None,
        "large_bodies": stats.large_done,
        "large_body_mib": args.body_mib,
        "slow_clients_closed": len(stats.slow_closed),
        "slow_close_s_min_max": [round(min(stats.slow_closed), 1), round(max(stats.slow_closed), 1)]
        if stats.slow_closed else None,
        "slow_clients_open_at_end": stats.slow_open_at_end,
        "bad_requests_answered": stats.bad_answered,
        "bad_requests_wrong": stats.bad_wrong[:10],
        "rss_mib_start_peak_end": [round(rss_start, 1), round(max(samples), 1), round(rss_end, 1)],
        "flat_memory": rss_end <= rss_start * 1.10,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--filter", default="hello_world")
    parser.add_argument("--http1", type=int, default=6, help="HTTP/1.1 keep-alive clients")
    parser.add_argument("--http2", type=int, default=2, help="HTTP/2 connections (4 streams each)")
    parser.add_argument("--slow", type=int, help="slow header clients at a time (default 20; builtin server only)")
    parser.add_argument("--http-server", choices=["hypercorn", "builtin"], default="hypercorn",
                        help="serve's HTTP server; slow clients need builtin (hypercorn has no request headers timeout)")
    parser.add_argument("--body-mib", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.slow and args.http_server != "builtin":
        parser.error("--slow needs --http-server builtin (hypercorn has no request headers timeout)")
    if args.slow is None:
        args.slow = 20 if args.http_server == "builtin" else 0
    wasm = REPO / "fixtures" / "wasm" / f"{args.filter}-wasm32-unknown-unknown.wasm"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxywasm_host", "serve", str(wasm), "--host", "127.0.0.1", "--port", "0",
         "--request-headers-timeout", str(HEADERS_TIMEOUT), "--http-server", args.http_server],
        stderr=subprocess.PIPE, text=True, cwd=REPO)
    port = 0
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    log: list[str] = []
    while not port and time.monotonic() < deadline:
        line = proc.stderr.readline()
        log.append(line)
        m = re.search(r"on http://[^ ]*:(\d+) ", line)
        if m:
            port = int(m.group(1))
    if not port:
        proc.kill()
        print("serve did not start:\n" + "".join(log), file=sys.stderr)
        return 1
    import threading

    threading.Thread(target=lambda: [log.append(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        report = asyncio.run(drive(port, proc.pid, args))
    finally:
        proc.terminate()
        proc.wait(15)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["good_request_errors"] == 0 and report["flat_memory"] and report["slow_clients_open_at_end"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
