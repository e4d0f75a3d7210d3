"""A real downstream client for the Envoy backend: HTTP/1.1 over h11 and h2c over h2."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxywasm_host.envoy.process import _H2_FORBIDDEN
from proxywasm_host.http.profiles import split_pseudo_headers
from proxywasm_host.http.scenario import (
    DownstreamResponse,
    HttpRequest,
)


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
