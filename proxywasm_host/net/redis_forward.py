"""Send a filter's Redis call (Higress's ``proxy_redis_call``) to a real Redis server and
answer it with the server's reply: one RESP command out, one RESP reply back."""

from __future__ import annotations

import socket

from proxywasm_host.core.higress import RedisCall, resp_length


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        n = resp_length(bytes(buf))
        if n is not None:
            reply = bytes(buf[:n])
            del buf[:n]
            return reply
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("the Redis server closed the connection")
        buf += chunk


def forward_redis_call(call: RedisCall, address: str, *, username: str = "", password: str = "",
                       timeout_s: float = 5.0) -> None:
    """Answer ``call`` from the Redis server at ``host:port`` (AUTH first when the filter's
    proxy_redis_init gave a password); a connection error fails the call (status 1)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s) as sock:
            buf = bytearray()
            if password:
                sock.sendall(_command("AUTH", username, password) if username else _command("AUTH", password))
                _read_reply(sock, buf)
            sock.sendall(call.query)
            reply = _read_reply(sock, buf)
    except OSError:
        call.fail(1)
        return
    call.respond(reply)
