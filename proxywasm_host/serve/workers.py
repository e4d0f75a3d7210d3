"""``serve --workers N``: N processes serving the same sockets, each with its own copy of the filter.

hypercorn runs the processes (``hypercorn.run.run`` with ``Config.workers`` and
``worker_class`` ``uvloop`` or ``asyncio``: its own multi-process mode, spawn start method); each
one imports :data:`app`, which builds a :class:`~proxywasm_host.serve.server.FilterServer` from
the serve configuration the parent put in the environment (``PROXYWASM_HOST_SERVE_CONFIG``) at
ASGI lifespan start-up and shuts it down at lifespan shutdown.

Like Envoy's worker threads, every worker has its own VM of the filter (its own root context,
ticks and callouts).  Unlike Envoy, they share nothing else: shared data, shared queues and
metrics are per process, so a filter that counts across requests in shared data counts per
worker.  The parent loads the filter once before the workers start, so a filter that cannot
load or start is reported (exit 2 / 1) before any process is spawned.  At shutdown (Ctrl-C,
SIGTERM) hypercorn stops the workers; requests still in flight are waited for (hypercorn's own
graceful shutdown), which a single process (no ``--workers``) cuts at the graceful timeout.
"""

from __future__ import annotations

import base64
import os
import pickle
import sys
from typing import Any

from proxywasm_host.net.asgi import Receive, Send
from proxywasm_host.serve.config import ServeConfig

__all__ = ["ENV", "app", "run_workers"]

ENV = "PROXYWASM_HOST_SERVE_CONFIG"


class _WorkerApp:
    """The ASGI app of one worker process: the FilterServer from the parent's configuration."""

    def __init__(self) -> None:
        self.server: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self.server is not None:
            await self.server.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        from proxywasm_host.net.hypercorn_server import bound_h2_closed_streams
        from proxywasm_host.serve.server import FilterServer, tune_gc_for_serving

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    config: ServeConfig = pickle.loads(base64.b64decode(os.environ[ENV]))
                    bound_h2_closed_streams(config.max_concurrent_streams)  # (a spawned process: set here too)
                    self.server = FilterServer(config)
                    await self.server.start()
                    tune_gc_for_serving(config)
                except Exception as exc:  # noqa: BLE001 - hypercorn reports a failed start-up
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.server is not None:
                    await self.server.close()
                    s = self.server.stats
                    self.server.log("info", f"worker {os.getpid()} stopped after {s['requests']} requests")
                await send({"type": "lifespan.shutdown.complete"})
                return


#: what each worker process runs (``hypercorn.config.Config.application_path``)
app = _WorkerApp()


def run_workers(config: ServeConfig, workers: int, *, loop: str) -> int:
    """Serve with ``workers`` processes (module doc); returns hypercorn's exit code."""
    from hypercorn.run import run

    from proxywasm_host.net.hypercorn_server import hypercorn_config
    from proxywasm_host.serve.config import HTTP_SERVERS
    from proxywasm_host.serve.echo import bind
    from proxywasm_host.serve.server import FilterServer, limits_of

    probe = FilterServer(config)  # load errors before any worker is spawned
    sockets = bind(config.host, config.port)
    port = sockets[0].getsockname()[1]
    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    upstream = config.upstream or "the built-in echo upstream"
    probe.log("info", f"serving {config.wasm if not isinstance(config.wasm, bytes) else 'filter'} (ABI {probe.plugin.abi_version}) on http://{shown_host}:{port} "
                      f"(HTTP/1.1 and h2c) -> {upstream}")
    probe.log("info", f"HTTP server: {HTTP_SERVERS['hypercorn']}; {workers} worker processes, event loop: {loop}, "
                      "each with its own VM (shared data is per worker)")
    hc = hypercorn_config(sockets, limits_of(config))
    hc.workers = workers
    hc.worker_class = loop
    hc.application_path = f"{__name__}:app"
    os.environ[ENV] = base64.b64encode(pickle.dumps(config)).decode()
    sys.stderr.flush()
    return int(run(hc))
