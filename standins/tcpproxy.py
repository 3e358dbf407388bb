"""A loopback TCP relay in front of a service (Azurite) that can refuse, or fall silent.

* ``broken = True`` -- storage *refuses*: every new connection is accepted and reset at once (a
  front end restarting). Clients fail fast.
* ``silent = True`` -- a network partition: connections are accepted and nothing is answered;
  what was under way stops flowing both ways. Clients wait for their own timeouts. When the
  relay speaks again, new connections are forwarded; the ones that met the silence stay dead
  and open -- half-open, as after a load balancer or NAT lost their state -- until :meth:`close`.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to a target; can be switched to refuse or to stay silent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.broken = False
        self._silent = False
        self._lock = threading.Lock()
        self._stranded: list[socket.socket] = []  # connections that met the silence
        self.accepted_while_silent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="flaky-proxy").start()

    @property
    def silent(self) -> bool:
        return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        with self._lock:
            self._silent = value

    def close(self) -> None:
        self._stop.set()
        _close(self._listener)
        with self._lock:
            self._silent = False
            stranded, self._stranded = self._stranded, []
        for sock in stranded:
            _close(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.broken:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            if self._strand(client):  # accepted, and never answered
                with self._lock:
                    self.accepted_while_silent += 1
                continue
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _strand(self, *sockets: socket.socket) -> bool:
        """While silent: keep the sockets open and unanswered, for good (until :meth:`close`)."""
        with self._lock:
            if not self._silent:
                return False
            self._stranded += sockets
            return True

    def _pipe_pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        self._pipe(upstream, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while (data := source.recv(65536)) and not self._stop.is_set() and not self.broken:
                if self._strand(source, sink):  # bytes sent into a partition are lost
                    return
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
