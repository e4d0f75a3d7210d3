"""A real TCP upstream for network-filter tests: a threaded server on 127.0.0.1 that records
what it receives, echoes it back when asked, and half-closes when its peer does (or when the
test tells it to)."""

from __future__ import annotations

import socket
import threading


class TcpUpstream:
    """Accepts connections on an ephemeral loopback port; per connection: record every byte,
    echo each piece when ``echo``, and on the peer's FIN send our own FIN and close."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self.saw_eof = False
        self.closed_first = False  # we sent FIN before the peer did
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"tcp-upstream-{self.port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpUpstream:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.saw_eof = True
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    break
                with self._lock:
                    self.received += data
                if self.echo:
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def half_close(self) -> None:
        """Send FIN on every open connection (the upstream ends first)."""
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_WR)
                    if not self.saw_eof:
                        self.closed_first = True
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped = True
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except OSError:
                    pass
