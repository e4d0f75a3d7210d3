"""``serve --reload``: load the filter again when its ``.wasm`` file changes (a rebuild), without
dropping the server.

The file's (inode, size, mtime) is polled every ``reload_interval`` seconds (no file-watching
dependency).  A change is loaded once the file has stayed the same for one more interval (a
build or a copy still writing it is waited for); a load that fails is reported only if the
file then stays as it is for ``settle`` seconds (a writer that paused mid-file gets retried).  The new build is compiled off the loop
thread, then started with the same configuration in the same host (so it sees the same shared
data, as a new VM with the same ``vm_id`` does in Envoy).  New requests get it; the streams in
flight finish on the previous build, which is then shut down (``on_done``, ``on_delete``) and
forgotten.  A new build that fails to compile, start or configure leaves the running one in
place, with one log line saying why.  Content that did not change (a ``touch``) is not reloaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from proxywasm_host.errors import ProxyWasmError

if TYPE_CHECKING:  # pragma: no cover
    from proxywasm_host.serve.server import FilterServer

__all__ = ["Reloader", "file_signature"]


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of ``path``, or None when it is missing (being replaced)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Reloader:
    """Watches the served ``.wasm`` file and swaps the build (module doc)."""

    def __init__(self, server: FilterServer) -> None:
        wasm = server.config.wasm
        if not isinstance(wasm, (str, Path)):
            raise ValueError("--reload needs the filter as a file path")
        self.server = server
        self.path = Path(wasm)
        self.interval = server.config.reload_interval
        #: seconds a failed build must stay what the file holds before the failure is logged
        self.settle = max(1.0, 4 * self.interval)
        self.signature = file_signature(self.path)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.reloads = 0
        self.failures = 0

    async def watch(self) -> None:
        """Poll the file until cancelled; load each settled change."""
        while True:
            await asyncio.sleep(self.interval)
            now = file_signature(self.path)
            if now == self.signature:
                continue
            while True:  # wait until it stops changing
                await asyncio.sleep(self.interval)
                again = file_signature(self.path)
                if again == now:
                    break
                now = again
            self.signature = now
            if now is None:
                self.server.log("warn", f"[{self.server.name}] {self.path} is gone: still serving the previous build")
                continue
            failure = await self.reload()
            if failure is None:
                continue
            # a writer that paused longer than one interval leaves a partial file: only a
            # failure that is still what the file holds a while later is reported
            waited = 0.0
            while waited < self.settle and file_signature(self.path) == now:
                await asyncio.sleep(self.interval)
                waited += self.interval
            if file_signature(self.path) == now:
                self.failures += 1
                self.server.log("error", f"[{self.server.name}] reload of {self.path} failed, still serving the "
                                         f"previous build: {failure}")

    async def reload(self) -> str | None:
        """Load the file's current content as the new build; the reason (one line) when it cannot."""
        server = self.server
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            return f"cannot read it ({exc.strerror or exc})"
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 == self.sha256:
            server.log("debug", f"[{server.name}] {self.path} changed on disk but not its content: not reloaded")
            return None
        from proxywasm_host.runtime.module import CompiledModule

        try:
            compiled = await asyncio.to_thread(CompiledModule.load, data)  # compiling is the slow part
            server.sync_clock()
            plugin = server.load(compiled)
        except ProxyWasmError as exc:
            return _one_line(exc)
        except Exception as exc:  # noqa: BLE001 - whatever a new build does, the watcher and the old build go on
            return "unexpected " + _one_line(exc)
        previous = server.plugin
        server.plugin = plugin
        self.sha256 = sha256
        self.reloads += 1
        in_flight = len(previous.streams)
        server.retiring.append(previous)
        if not in_flight:
            server.retire(previous)
        server.drain_logs()
        server.log("info", f"[{server.name}] reloaded {self.path} (sha256 {sha256[:12]}, ABI {plugin.abi_version}): "
                           f"new requests get the new build"
                           + (f"; {in_flight} in flight finish on the previous one" if in_flight else ""))
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")
