"""``serve --reload`` (issue 15 item 6): a rebuilt .wasm is picked up without dropping the server.

The rebuild is a real file replacement (another fixture's bytes written over the watched path,
atomically with os.replace and in place, chunk by chunk, as cargo or cp do) and every check is a
real HTTP request to the running server.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("h2")
httpx = pytest.importorskip("httpx")

from test_server import HELLO, SERVERS, fixture, get, serving  # noqa: E402

INTERVAL = 0.1


def _wait_for(srv, text: str, timeout: float = 20.0, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.out.text.count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged {count}x within {timeout} s:\n{srv.out.text}")


def _hello(srv) -> str | None:
    return get(srv.url + "/headers").json()["headers"].get("X-Hello")


def _write_in_place(path: Path, data: bytes, pieces: int = 4, gap: float = 0.0) -> None:
    """Overwrite ``path`` in place (same inode), in pieces: what cp or a linker writing the file does."""
    size = -(-len(data) // pieces)
    with open(path, "r+b") as f:
        f.truncate(0)
        for i in range(0, len(data), size):
            f.write(data[i:i + size])
            f.flush()
            os.fsync(f.fileno())
            if gap:
                time.sleep(gap)


@pytest.mark.parametrize("http_server", SERVERS)
def test_an_atomic_rebuild_is_served_to_new_requests(tmp_path, http_server):
    watched = tmp_path / "filter.wasm"
    shutil.copy(HELLO, watched)
    with serving(watched, reload=True, reload_interval=INTERVAL, http_server=http_server) as srv:
        assert _hello(srv) is not None
        new = tmp_path / "filter.wasm.new"
        shutil.copy(fixture("noop"), new)
        os.replace(new, watched)  # a new inode
        _wait_for(srv, "reloaded")
        assert _hello(srv) is None  # the no-op filter adds nothing
        assert "failed" not in srv.out.text
        # and back: a second rebuild, written in place this time (same inode)
        _write_in_place(watched, HELLO.read_bytes())
        _wait_for(srv, "reloaded", count=2)
        assert _hello(srv) is not None
        assert srv.server.reloader.reloads == 2 and not srv.server.retiring
        assert len(srv.server.host.plugins) == 1  # the previous builds are gone, with their VMs


def test_a_slow_in_place_write_is_waited_for_and_requests_never_fail(tmp_path):
    """The file is rewritten in place over ~1 s (several polls see it change): it is loaded
    once it stops changing, and the requests sent all along are answered by one build or the
    other, never dropped."""
    watched = tmp_path / "filter.wasm"
    shutil.copy(HELLO, watched)
    statuses: list[int] = []
    stop = threading.Event()
    with serving(watched, reload=True, reload_interval=INTERVAL) as srv:
        def load() -> None:
            with httpx.Client(trust_env=False, timeout=10) as client:
                while not stop.is_set():
                    statuses.append(client.get(srv.url + "/get").status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            _write_in_place(watched, fixture("noop").read_bytes(), pieces=8, gap=0.15)
            _wait_for(srv, "reloaded")
            time.sleep(0.3)
        finally:
            stop.set()
            worker.join(10)
        assert _hello(srv) is None
        assert srv.server.reloader.reloads == 1 and srv.server.reloader.failures == 0, srv.out.text
    assert statuses and set(statuses) == {200}, statuses


@pytest.mark.parametrize("broken", ["garbage", "truncated", "configure"])
def test_a_broken_build_keeps_the_running_one_and_says_so_in_one_line(tmp_path, broken):
    """A build that does not compile, or whose on_configure refuses the configuration, is not
    taken: one error line, the previous build keeps serving, and the next good build loads."""
    watched = tmp_path / "filter.wasm"
    shutil.copy(HELLO, watched)
    # the config fixture refuses a configuration that is not JSON; hello_world ignores it
    with serving(watched, reload=True, reload_interval=INTERVAL, configuration=b"not json") as srv:
        bad = {"garbage": b"\0asm-not-really",
               "truncated": fixture("noop").read_bytes()[:5000],
               "configure": fixture("config").read_bytes()}[broken]
        new = tmp_path / "new.wasm"
        new.write_bytes(bad)
        os.replace(new, watched)
        _wait_for(srv, "reload of")
        lines = [line for line in srv.out.lines if "reload of" in line]
        assert len(lines) == 1 and "failed, still serving the previous build" in lines[0], lines
        assert "Traceback" not in srv.out.text
        assert _hello(srv) is not None  # the previous build still answers
        assert srv.server.reloader.reloads == 0
        shutil.copy(fixture("noop"), new)
        os.replace(new, watched)
        _wait_for(srv, "reloaded")
        assert _hello(srv) is None


def test_requests_in_flight_finish_on_the_previous_build(tmp_path):
    """A request paused by the filter (pause_until_tick) and then waiting on the slow echo is
    in flight across the reload: it finishes on the build it started on, the requests after
    the reload get the new one, and the previous build is shut down once its last stream ends."""
    watched = tmp_path / "filter.wasm"
    shutil.copy(fixture("pause_until_tick"), watched)
    with serving(watched, reload=True, reload_interval=INTERVAL) as srv:
        result: dict[str, httpx.Response] = {}

        def slow() -> None:
            result["r"] = get(srv.url + "/delay/2")

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(0.5)
        assert srv.server.active  # in flight
        new = tmp_path / "new.wasm"
        shutil.copy(HELLO, new)
        os.replace(new, watched)
        _wait_for(srv, "reloaded")
        assert "1 in flight finish on the previous one" in srv.out.text
        assert srv.server.retiring  # the previous build still runs the slow request
        fresh = get(srv.url + "/headers").json()["headers"]
        assert "X-Hello" in fresh and "X-Paused" not in fresh
        worker.join(10)
        before = result["r"].json()["headers"]
        assert result["r"].status_code == 200 and before.get("X-Paused") == "yes" and "X-Hello" not in before
        _wait_for(srv, "the previous build has no streams left: shut down")
        assert not srv.server.retiring and len(srv.server.host.plugins) == 1


def test_unchanged_content_is_not_reloaded_and_reload_is_off_by_default(tmp_path):
    watched = tmp_path / "filter.wasm"
    shutil.copy(HELLO, watched)
    with serving(watched, reload=True, reload_interval=INTERVAL, log_level="debug") as srv:
        os.utime(watched, ns=(time.time_ns(), time.time_ns() + 10**9))  # touch: same bytes
        _wait_for(srv, "changed on disk but not its content")
        assert srv.server.reloader.reloads == 0
    with serving(watched, reload_interval=INTERVAL) as srv:
        assert srv.server.reloader is None
        shutil.copy(fixture("noop"), watched)
        time.sleep(5 * INTERVAL)
        assert _hello(srv) is not None and "reload" not in srv.out.text.lower()


def test_the_cli_documents_reload_and_refuses_it_for_an_image():
    import subprocess
    import sys

    from test_server import REPO

    helped = subprocess.run([sys.executable, "-m", "proxywasm_host", "serve", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert "--reload" in helped.stdout and "in flight finish on the old one" in " ".join(helped.stdout.split())
    out = subprocess.run([sys.executable, "-m", "proxywasm_host", "serve", "oci://localhost:5000/x:1", "--reload"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "--reload watches a .wasm file" in out.stderr
