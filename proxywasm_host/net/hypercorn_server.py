"""Run an ASGI app on hypercorn through its public API only (``hypercorn.asyncio.serve`` and
``hypercorn.config.Config``), with as many of :class:`~proxywasm_host.net.httpserver.Limits`
as hypercorn can hold.

What each limit becomes (docs/serve.md has the table):

* ``idle_timeout`` → ``keep_alive_timeout`` (a connection with no request in flight);
* ``max_header_bytes`` → ``h11_max_incomplete_size`` (HTTP/1.1: h11 answers 431) and
  ``h2_max_header_list_size`` (HTTP/2: advertised in SETTINGS);
* ``max_concurrent_streams`` → ``h2_max_concurrent_streams``; ``graceful_timeout`` → the same;
* ``request_headers_timeout`` and ``max_connections``: hypercorn has neither (its
  ``read_timeout`` applies to every read of a connection, so it would also close a connection
  waiting for a paused or slow response); :data:`HYPERCORN_LACKS` names them and the
  ASGI app cannot see a connection before its request, so they are only held by our own server.

``keep_alive_max_requests`` is lifted (hypercorn closes a connection after 1,000 requests;
Envoy has no such limit by default), the ``server`` and ``date`` headers are left to the app
(hypercorn's ``date`` came on top of the upstream's: two of them).  h2's record of closed
streams is bounded (:func:`~proxywasm_host.net._http_conn.bound_h2_closed_streams`).  hypercorn's error log goes to ``report``; an app that raises
``ConnectionAbortedError`` (a response cut short on purpose) is not reported.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from proxywasm_host.net._http_conn import ASGIApp, Limits, bound_h2_closed_streams

__all__ = ["HYPERCORN_LACKS", "bound_h2_closed_streams", "hypercorn_config", "serve_hypercorn"]

#: Limits fields hypercorn's public configuration cannot express
HYPERCORN_LACKS = ("request_headers_timeout", "max_connections")
_NO_LIMIT = 2**31 - 1


class _ReportHandler(logging.Handler):
    """hypercorn's error log, onto ``report(message, level)``."""

    def __init__(self, report: Callable[[str, str], None]) -> None:
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionAbortedError):
            return  # the app cut a response short on purpose
        level = {logging.CRITICAL: "critical", logging.ERROR: "error"}.get(record.levelno, "warn")
        self.report(record.getMessage() + (f": {exc!r}" if exc is not None else ""), level)


def hypercorn_config(sockets: list[socket.socket], limits: Limits,
                     report: Callable[[str, str], None] | None = None) -> Any:
    """A ``hypercorn.config.Config`` serving on ``sockets`` (taken over: detached) with ``limits``."""
    from hypercorn.config import Config

    config = Config()
    for sock in sockets:
        try:  # accepted connections inherit it (hypercorn sets it only on sockets it binds)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    config.bind = [f"fd://{sock.detach()}" for sock in sockets]
    config.backlog = 1024
    config.keep_alive_timeout = limits.idle_timeout or _NO_LIMIT
    config.keep_alive_max_requests = _NO_LIMIT
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.h2_max_header_list_size = limits.max_header_bytes
    config.h2_max_concurrent_streams = limits.max_concurrent_streams
    config.graceful_timeout = limits.graceful_timeout
    config.include_server_header = False
    config.include_date_header = False  # the app's: Envoy keeps the upstream's date, adds one only when absent
    config.accesslog = None
    logger = logging.getLogger(f"proxywasm_host.net.hypercorn.{id(config)}")
    logger.propagate = False
    logger.handlers = [_ReportHandler(report)] if report is not None else [logging.NullHandler()]
    logger.setLevel(logging.WARNING)
    config.errorlog = logger
    return config


async def serve_hypercorn(app: ASGIApp, sockets: list[socket.socket], shutdown: asyncio.Event, *,
                          limits: Limits | None = None, report: Callable[[str, str], None] | None = None,
                          end_in_flight: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``sockets`` (listening; taken over) until ``shutdown`` is set.

    hypercorn then stops accepting and waits for every open connection to close, so
    ``end_in_flight()`` (the app's: end the requests still running) is called once the
    graceful timeout has passed."""
    from hypercorn.asyncio import serve

    limits = limits or Limits()
    bound_h2_closed_streams(limits.max_concurrent_streams)
    config = hypercorn_config(sockets, limits, report)
    if end_in_flight is not None:
        config.graceful_timeout = limits.graceful_timeout + 1.0  # for the connections to close after it
    timer: asyncio.TimerHandle | None = None

    async def trigger() -> None:
        nonlocal timer
        await shutdown.wait()
        if end_in_flight is not None:
            timer = asyncio.get_running_loop().call_later(limits.graceful_timeout, end_in_flight)

    try:
        await serve(app, config, shutdown_trigger=trigger)  # type: ignore[arg-type]
    finally:
        if timer is not None:
            timer.cancel()
