"""HTTP and gRPC callouts a filter dispatched, waiting for the test (or a real upstream)
to answer them.  Pure state; delivery into the guest goes through the owning
:class:`~proxywasm_host.core.vm.Vm` (docs/abi-notes.md §5.6, §7.7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxywasm_host.core.text import body_bytes as _bytes
from proxywasm_host.core.text import header_pairs as _pairs
from proxywasm_host.errors import HarnessUsageError


@dataclass
class HttpCallout:
    """One ``proxy_http_call``: what the filter sent, and how it ended."""

    token: int
    cluster: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]
    timeout_ms: int
    root_context_id: int
    context_id: int  # the context that dispatched it (the SDK routes the answer there)
    dispatched_at_ns: int
    state: str = "pending"  # answered | failed | timed_out | cancelled (its root was deleted)
    _deliver: Callable[..., None] | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def http_request(self) -> tuple[str, str, list[tuple[str, str]]]:
        """(method, path, headers) to send to a real upstream: pseudo-headers become the request
        line and ``host`` (unless a host header is already there).  An empty ``:authority`` is
        an empty ``host``, as Envoy sends it over HTTP/1.1 (docs/abi-notes.md §7.7)."""
        headers = [(k, v) for k, v in self.headers if not k.startswith(":")]
        authority = self.header(":authority")
        if authority is not None and not any(k == "host" for k, _ in headers):
            headers.insert(0, ("host", authority))
        return self.header(":method") or "GET", self.header(":path") or "/", headers

    def _finish(self, state: str) -> Callable[..., None]:
        if not self.pending:
            raise HarnessUsageError(
                f"callout {self.token} to {self.cluster!r} was already {self.state}; each callout is answered once"
            )
        assert self._deliver is not None
        self.state = state
        return self._deliver

    def respond(
        self,
        status: int = 200,
        headers: Any = None,
        body: str | bytes = b"",
        trailers: Any = None,
    ) -> None:
        """Answer the callout: the filter's ``proxy_on_http_call_response`` runs now."""

        pairs = [(":status", str(status)), *[(str(k), str(v)) for k, v in _pairs(headers)]]
        self._finish("answered")(self, pairs, _bytes(body), list(_pairs(trailers)), None)

    def fail(self) -> None:
        """The upstream reset the call: Envoy calls back with no headers/body/trailers and
        ``proxy_get_status`` answers (11 BrokenConnection, "reset")."""
        self._finish("failed")(self, None, b"", [], (11, b"reset"))

    def time_out(self) -> None:
        """The callout's timeout expired: Envoy's async client answers 504 itself."""
        body = b"upstream request timeout"
        headers = [(":status", "504"), ("content-length", str(len(body))), ("content-type", "text/plain")]
        self._finish("timed_out")(self, headers, body, [], None)


@dataclass
class GrpcCall:
    """One ``proxy_grpc_call`` (unary) or ``proxy_grpc_stream``."""

    token: int
    streaming: bool
    cluster: str
    service: str
    method: str
    initial_metadata: list[tuple[str, str]]
    sent_messages: list[bytes]
    timeout_ms: int
    root_context_id: int
    context_id: int
    state: str = "open"  # half_closed | cancelled | closed
    local_end_stream: bool = False
    dispatched_at_ns: int = 0  # the host's monotonic clock when the filter opened it
    routed: bool = field(default=False, repr=False, compare=False)  # handed to a router / real server
    _deliver: Callable[..., None] | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        """Open or half-closed: the filter may still get callbacks for it."""
        return self.state in ("open", "half_closed")

    @property
    def message(self) -> bytes:
        """The request message of a unary call (the first message of a stream)."""
        return self.sent_messages[0] if self.sent_messages else b""

    def _check_open(self, what: str) -> Callable[..., None]:
        if self.state in ("cancelled", "closed"):
            raise HarnessUsageError(f"cannot {what}: gRPC {'stream' if self.streaming else 'call'} {self.token} is {self.state}")
        assert self._deliver is not None
        return self._deliver

    def respond(self, message: bytes) -> None:
        """Unary success: ``proxy_on_grpc_receive`` with the response message."""
        if self.streaming:
            raise HarnessUsageError("respond() answers a unary call; for a stream use send_message()/close()")
        deliver = self._check_open("respond")
        self.state = "closed"
        deliver(self, "receive", message)

    def send_initial_metadata(self, metadata: Any) -> None:

        self._check_open("send initial metadata")(self, "initial_metadata", _pairs(metadata))

    def send_message(self, message: bytes) -> None:
        self._check_open("send a message")(self, "receive", message)

    def send_trailing_metadata(self, metadata: Any) -> None:

        self._check_open("send trailing metadata")(self, "trailing_metadata", _pairs(metadata))

    def close(self, status: int, message: str = "") -> None:
        """The call or stream ends with a gRPC status: ``proxy_on_grpc_close``."""
        deliver = self._check_open("close")
        self.state = "closed"
        deliver(self, "close", (status, message.encode()))

    def time_out(self) -> None:
        """A unary call's ``timeout_ms`` passed without an answer: Envoy's gRPC client closes
        it itself with UNAVAILABLE (14), ``proxy_get_status`` message ``upstream request
        timeout{response_timeout}`` (measured on Envoy 1.40; a gRPC server that enforces the
        deadline Envoy sends it answers DEADLINE_EXCEEDED (4) first, as a real server does
        here too).  ``Host.advance_time`` calls it when the deadline passes."""
        if self.streaming:
            raise HarnessUsageError("a gRPC stream has no timeout; close() it with the status you want")
        self.close(14, "upstream request timeout{response_timeout}")
