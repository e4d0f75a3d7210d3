"""How Envoy turns a filter's local reply into a response (plain and gRPC), as measured."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxywasm_host.core.stream import LocalResponse


# ----------------------------------------------------------------------------------------
# Local replies (Envoy's Utility::sendLocalReply as measured: docs/conformance.md, issue 12 table)
# ----------------------------------------------------------------------------------------
def local_reply_headers(reply: LocalResponse, *, grpc: bool) -> list[tuple[str, str]]:
    """The response headers Envoy makes of a local reply.  To a gRPC request: ``:status
    200``, the filter's headers, ``content-type: application/grpc``, ``grpc-status`` (the
    filter's, else mapped from the HTTP status) and ``grpc-message`` (the body,
    percent-encoded, when there is one); the body is not sent.  To any other request: the
    status, the filter's headers, ``content-length`` and ``content-type: text/plain`` when
    there is a body; a gRPC status is ignored."""
    if grpc:
        code = reply.grpc_status if reply.grpc_status is not None else http_to_grpc_status(reply.status_code)
        headers = [(":status", "200"), *reply.headers]
        # content-type is an inline header in Envoy: set in place when the filter gave one
        for i, (k, _) in enumerate(headers):
            if k == "content-type":
                headers[i] = ("content-type", "application/grpc")
                break
        else:
            headers.append(("content-type", "application/grpc"))
        headers.append(("grpc-status", str(code)))
        if reply.body:
            headers.append(("grpc-message", grpc_percent_encode(reply.body)))
        return headers
    headers = [(":status", str(reply.status_code)), *reply.headers]
    if reply.body:
        headers.append(("content-length", str(len(reply.body))))
        if not any(k == "content-type" for k, _ in reply.headers):
            headers.append(("content-type", "text/plain"))
    return headers


#: Envoy's Grpc::Utility::httpToGrpcStatus (the gRPC spec's HTTP -> gRPC mapping)
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def http_to_grpc_status(http_status: int) -> int:
    return _HTTP_TO_GRPC.get(http_status, 2)  # 2 = UNKNOWN


def grpc_percent_encode(data: bytes) -> str:
    """Envoy's ``grpc-message`` encoding: bytes outside ' '..'~', and '%', become %XX."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in data)
