"""A loopback TCP proxy that can lose one reply: the server applies a command, the client never
hears back. Used to prove that a client's re-send gets the first attempt's answer."""

from __future__ import annotations

import contextlib
import socket
import threading


class DroppingProxy:
    """Forwards 127.0.0.1:``port`` to a Redis server. After :meth:`arm`, the first request that
    contains ``pattern`` is delivered to the server, and the connection is closed when the
    reply comes back, before the client sees it."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.pattern: bytes | None = None
        self.dropped = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: bytes) -> None:
        with self._lock:
            self.pattern = pattern

    def close(self) -> None:
        self._closed = True
        for s in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            self._sockets += [client, upstream]
            flag = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, flag), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, flag), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, flag: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self.pattern is not None and self.pattern in data:
                        self.pattern = None
                        flag.set()  # lose the reply to this request
                upstream.sendall(data)

    def _down(self, upstream: socket.socket, client: socket.socket, flag: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if flag.is_set():
                    self.dropped += 1
                    for s in (client, upstream):  # shutdown wakes the other thread's recv
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    return
                client.sendall(data)
